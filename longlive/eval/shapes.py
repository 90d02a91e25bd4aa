"""Is the prompted shape recognisable? A template-matching score for the tiny preset's procedural task.

Colour metrics (`longlive.eval.palette`) cannot tell a square from a blob of the same colour. This one asks what a
viewer asks of each frame: which of the procedural shapes does the drawn object look like? The foreground (pixels
farther than `tol` from the background) is compared with each kind's template — drawn with the signed distance
`shape_sdf` defined here, which the renderer in `longlive.train.data` draws with too, at the foreground's centroid,
with the foreground's area, in the generator's orientation (axis-aligned squares, upward triangles) — and the frame
is recognised as the kind of the best-overlapping template (intersection over union). Real procedural frames score
1.0 (the anti-aliased edges are the only disagreement); a round blob is recognised as a circle whatever the prompt
said, so a model that draws blobs scores about 1/3 over circle, square and triangle prompts.
"""

from __future__ import annotations

import math
import re

import numpy as np
import torch

from longlive.eval.palette import foreground_mask

SHAPES = ("circle", "square", "triangle")
# Area of each kind over r² (r: the drawn radius), from the signed distances below: πr², a square of side 1.6r, an
# equilateral triangle of inradius r/2.
SHAPE_AREA = {"circle": float(np.pi), "square": 2.56, "triangle": 0.75 * float(np.sqrt(3.0))}


def shape_sdf(kind: str, dx, dy, r):
    """Signed distance (px, > 0 inside) of a point (dx, dy) from a shape of radius r centred at the origin: one
    definition for the renderer and for this module's templates. Works on numpy arrays and tensors."""
    if kind == "circle":
        return r - (dx * dx + dy * dy) ** 0.5
    if kind == "square":
        return 0.8 * r - _maximum(abs(dx), abs(dy))
    if kind == "triangle":  # upward equilateral triangle with circumradius r (image y points down)
        return 0.5 * r - _maximum(dy, _maximum(0.866 * dx - 0.5 * dy, -0.866 * dx - 0.5 * dy))
    raise ValueError(f"unknown shape {kind!r}; known shapes: {', '.join(SHAPES)}")


def _maximum(a, b):
    return torch.maximum(a, b) if isinstance(a, torch.Tensor) else np.maximum(a, b)


def _pixel_centres(h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(y [H, 1], x [1, W]) pixel-centre coordinates in float64, the renderer's convention."""
    return (torch.arange(h, dtype=torch.float64)[:, None] + 0.5, torch.arange(w, dtype=torch.float64)[None, :] + 0.5)


def foreground_centroids(frames: torch.Tensor, background: torch.Tensor, tol: int = 48,
                         min_area: float = 0.005) -> torch.Tensor:
    """(x, y) px of each frame's foreground centroid [T, 2] (float64); NaN where less than `min_area` is drawn."""
    fg = foreground_mask(frames, background, tol).to(torch.float64)
    yy, xx = _pixel_centres(*fg.shape[1:])
    area = fg.sum(dim=(1, 2))
    c = torch.stack([(fg * xx).sum(dim=(1, 2)), (fg * yy).sum(dim=(1, 2))], dim=-1) / area.clamp_min(1)[:, None]
    c[area < max(min_area * fg.shape[1] * fg.shape[2], 1e-9)] = float("nan")
    return c


def template_ious(mask: torch.Tensor) -> dict[str, float]:
    """IoU of one foreground mask [H, W] (bool) with each kind's template of the same area and centroid; all NaN
    for an empty mask."""
    area = int(mask.sum())
    if area == 0:
        return {k: float("nan") for k in SHAPES}
    yy, xx = _pixel_centres(*mask.shape)
    m = mask.to(torch.float64)
    cx, cy = float((m * xx).sum()) / area, float((m * yy).sum()) / area
    out = {}
    for kind in SHAPES:
        r = math.sqrt(area / SHAPE_AREA[kind])
        tmpl = shape_sdf(kind, xx - cx, yy - cy, r) > 0
        inter = int((tmpl & mask).sum())
        out[kind] = inter / int((tmpl | mask).sum())
    return out


def recognised_shapes(frames: torch.Tensor, background: torch.Tensor, tol: int = 48,
                      min_area: float = 0.005) -> list[str | None]:
    """The kind each frame's foreground best matches, or None where less than `min_area` of the frame is drawn."""
    fg = foreground_mask(frames, background, tol)
    least = min_area * fg.shape[1] * fg.shape[2]
    kinds: list[str | None] = []
    for mask in fg:
        if mask.sum() < least:
            kinds.append(None)
            continue
        ious = template_ious(mask)
        kinds.append(max(ious, key=ious.get))
    return kinds


def shape_match(frames: torch.Tensor, kind: str, background: torch.Tensor, tol: int = 48,
                min_area: float = 0.005) -> float:
    """Fraction of frames [T, H, W, 3] (uint8) recognised as `kind`; a frame with (almost) nothing drawn counts as
    not recognised."""
    if kind not in SHAPES:
        raise ValueError(f"unknown shape {kind!r}; known shapes: {', '.join(SHAPES)}")
    kinds = recognised_shapes(frames, background, tol, min_area)
    return sum(k == kind for k in kinds) / len(kinds)


def shape_iou(frames: torch.Tensor, kind: str, background: torch.Tensor, tol: int = 48) -> float:
    """Mean IoU of each frame's foreground with the prompted kind's template (0 for an empty frame): how closely the
    drawn object takes that shape, where `shape_match` only says which shape it is nearest."""
    if kind not in SHAPES:
        raise ValueError(f"unknown shape {kind!r}; known shapes: {', '.join(SHAPES)}")
    vals = [template_ious(mask)[kind] for mask in foreground_mask(frames, background, tol)]
    return sum(0.0 if v != v else v for v in vals) / len(vals)


def centroid_travel(frames: torch.Tensor, background: torch.Tensor, tol: int = 48,
                    min_area: float = 0.005) -> float:
    """How far the drawn object gets from where it started: the largest distance (px) of a frame's foreground
    centroid from frame 0's. Shape metrics reward a shape that stands still; this is the motion beside them, to
    compare with real clips. Frames with less than `min_area` drawn are skipped; NaN if frame 0 is one of them."""
    c = foreground_centroids(frames, background, tol, min_area)
    if c[0].isnan().any():
        return float("nan")
    c = c[~c.isnan().any(dim=-1)]
    return float((c - c[:1]).norm(dim=-1).max())


def named_shape(text: str) -> str | None:
    """The one shape a prompt names, or None if it names none or several."""
    words = set(re.findall(r"[a-z]+", text.lower()))
    named = [k for k in SHAPES if k in words]
    return named[0] if len(named) == 1 else None
