"""Stray content for the tiny task: the share of the frame that is neither background nor the prompted object.

The procedural renderer (`longlive.train.data.ProceduralVideos`) paints a shape over a flat background with a
~1 px anti-aliased edge: every pixel is `background + alpha · (object − background)` for some alpha in [0, 1],
rounded to uint8. So every pixel of a real clip lies within 0.87 (rounding) of the straight RGB segment between the
background colour and the object's, edges included; overlapping shapes add segments between their colours. Measuring
distance to these *blends* rather than to the two colours is what lets real clips score 0: the anti-aliased edge of
a circle of radius 37 px is ~1.4 % of a 128² frame, more than the 0.01 the long-video target allows.

The unit is a 2 × 2 pixel block's mean colour (`pool`): a mean of blends is a blend, so rendered clips still score 0,
and an mp4 round trip (yuv420: one chroma sample per 2 × 2 block) keeps them at 0 where single pixels at a yellow
square's edge would leave the blend. A block is stray when
1. its colour is farther than `tol` (Euclidean, 0–255 RGB units) from every blend of the prompted colours (the
   background and the object colours the prompt names), and
2. its nearest blend of palette colours involves a colour the prompt did not name (`palette`, by default the task's
   12 colours): it looks like a *third colour*. An over-saturated or darker shade of the object itself (the tiny
   model paints (255, 0, 0) inside a red circle) is nearest to the object's own blend and is not stray; that is
   colour fidelity, which `prompt_colour_match` measures. `palette=()` drops this condition.

`DEFAULT_STRAY_TOL` = 40 comes from measured clips (reports/tiny-long/README.md, "Tolerance"): rendered clips score
exactly 0 at any tol ≥ 0.87; the same clips through the shipped tiny codec (what a perfect tiny model could at best
emit) score 0.0004 at 40 (0.0046 at 24). For the tiny evaluation prompts every third palette colour at full strength
is ≥ 62 from the prompted blends, and at half strength over the background ≥ 46, except the nearest hue (brown for
red, purple for blue, orange for yellow: 31–36), which is counted from about two-thirds strength.
"""

from __future__ import annotations

import re

import torch

from .loading import VideoLike, as_video
from .palette import COLOURS

DEFAULT_STRAY_TOL = 40.0
"""Euclidean RGB distance (0–255 units) from the prompted blends beyond which a third-colour block is stray."""

DEFAULT_STRAY_POOL = 2
"""Side of the pixel blocks measured (their mean colour): yuv420 video shares one chroma sample per 2 × 2 block, so an
mp4 round trip moves single edge pixels off the blend (up to 0.01 of a frame for a yellow square) but not the
blocks' means; 1 measures every pixel alone."""

_CHUNK = 1 << 16  # pixels per block: bounded memory for long videos


def _colours(value: object, name: str, *, allow_empty: bool = False) -> torch.Tensor:
    """[K, 3] float32 RGB from [3] or [K, 3] values in 0..255, with an error naming `name`."""
    c = torch.as_tensor(value if not isinstance(value, dict) else list(value.values())).to(torch.float32)
    if c.ndim == 1 and c.numel() == 3:
        c = c[None]
    if c.numel() == 0 and allow_empty:
        return c.reshape(0, 3)
    if c.ndim != 2 or c.shape[-1] != 3 or c.shape[0] < 1:
        raise ValueError(f"{name} must be an RGB triple [3] or a list of them [K, 3], got shape {tuple(c.shape)}")
    if not torch.isfinite(c).all() or (c < 0).any() or (c > 255).any():
        raise ValueError(f"{name} must be RGB values in 0..255, got {c.tolist()}")
    return c


def _frames(frames: VideoLike) -> torch.Tensor:
    x = as_video(frames)  # uint8 [T, H, W, 3], or a clear error
    if x.numel() == 0:
        raise ValueError(f"no pixels to measure: frames have shape {tuple(x.shape)} (an empty video)")
    return x


def _pooled(x: torch.Tensor, pool: int) -> torch.Tensor:
    """float32 [T, H//pool, W//pool, 3]: means of pool × pool pixel blocks (a last partial row/column dropped)."""
    if isinstance(pool, bool) or not isinstance(pool, int) or pool < 1:
        raise ValueError(f"pool must be an int >= 1 (pixels per block side; 1: every pixel alone), got {pool!r}")
    t, h, w, _ = x.shape
    if h < pool or w < pool:
        raise ValueError(f"frames of {h}×{w} px are smaller than one {pool}×{pool} block: pass pool=1")
    h2, w2 = h // pool * pool, w // pool * pool
    blocks = x[:, :h2, :w2].reshape(t, h2 // pool, pool, w2 // pool, pool, 3)
    return blocks.float().mean(dim=(2, 4)) if pool > 1 else blocks.reshape(t, h2, w2, 3).float()


def _segment_distance(px: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[N] float32 distance of each colour px [N, 3] to the nearest segment a[s]–b[s] ([S, 3] each).

    |p − a − t·ab|² expanded into dot products (matrix products over the 3 channels), in float64 so the expansion
    loses nothing that matters: a point on a segment comes out at distance < 1e-5."""
    px, a, b = px.double(), a.double(), b.double()
    ab = b - a
    ab2 = (ab * ab).sum(-1)
    pa_ab = px @ ab.T - (a * ab).sum(-1)  # (p − a)·ab  [N, S]
    t = (pa_ab / ab2.clamp_min(1e-12)).clamp(0.0, 1.0)  # a zero-length segment is its end point (t = 0)
    pa2 = (px * px).sum(-1, keepdim=True) - 2 * px @ a.T + (a * a).sum(-1)  # |p − a|²
    d2 = pa2 - 2 * t * pa_ab + t * t * ab2
    return d2.clamp_min(0.0).sqrt().amin(dim=-1).float()


def _distances(px: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """`_segment_distance` over px [N, 3] in blocks of pixels (bounded memory)."""
    out = torch.empty(px.shape[0], dtype=torch.float32)
    for lo in range(0, px.shape[0], _CHUNK):
        out[lo : lo + _CHUNK] = _segment_distance(px[lo : lo + _CHUNK], a, b)
    return out


def _pairs(cols: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Ends of every segment between two of `cols` (a colour with itself included) whose pair `keep[i, j]` is set."""
    i, j = torch.triu_indices(len(cols), len(cols))
    m = keep[i, j]
    return cols[i[m]], cols[j[m]]


def _prompted(background: object, object_colour: object) -> torch.Tensor:
    return torch.cat([_colours(background, "background"), _colours(object_colour, "object_colour")])


def blend_distance(frames: VideoLike, background: object, object_colour: object,
                   pool: int = DEFAULT_STRAY_POOL) -> torch.Tensor:
    """[T, H/pool, W/pool] float32: distance (Euclidean, 0–255 RGB units) of each pool × pool block's mean colour to
    the nearest blend of two prompted colours (background and object colours, each also alone): how far it is from
    anything the renderer paints for this prompt."""
    x = _pooled(_frames(frames), pool)
    prompted = _prompted(background, object_colour)
    a, b = _pairs(prompted, torch.ones(len(prompted), len(prompted), dtype=torch.bool))
    return _distances(x.reshape(-1, 3), a, b).reshape(x.shape[:3])


def stray_mask(frames: VideoLike, background: object, object_colour: object, tol: float = DEFAULT_STRAY_TOL,
               palette: object | None = None, pool: int = DEFAULT_STRAY_POOL) -> torch.Tensor:
    """[T, H/pool, W/pool] bool: the stray pool × pool blocks (module docstring). palette: [K, 3] colours a blend may
    involve (None: the task's `COLOURS`; empty: no third-colour test, every block farther than `tol` from the
    prompted blends is stray)."""
    if not tol >= 0:
        raise ValueError(f"tol must be a distance >= 0 (0–255 RGB units), got {tol}")
    prompted = _prompted(background, object_colour)
    pal = _colours(COLOURS if palette is None else palette, "palette", allow_empty=True)
    x = _pooled(_frames(frames), pool)  # a path is decoded once
    px = x.reshape(-1, 3)
    a, b = _pairs(prompted, torch.ones(len(prompted), len(prompted), dtype=torch.bool))
    d_prompted = _distances(px, a, b)
    stray = d_prompted > tol
    if pal.shape[0] and stray.any():
        others = pal[~(pal[:, None] == prompted[None]).all(-1).any(-1)]  # palette colours the prompt did not name
        cols = torch.cat([prompted, others])
        third = torch.arange(len(cols)) >= len(prompted)
        a, b = _pairs(cols, third[:, None] | third[None, :])  # every blend with an unprompted colour in it
        idx = stray.nonzero().squeeze(1)
        if len(a) == 0:  # the prompt names the whole palette
            stray[idx] = False
        else:
            stray[idx] = _distances(px[idx], a, b) < d_prompted[idx]
    return stray.reshape(x.shape[:3])


def stray_per_frame(frames: VideoLike, background: object, object_colour: object, tol: float = DEFAULT_STRAY_TOL,
                    palette: object | None = None, pool: int = DEFAULT_STRAY_POOL) -> torch.Tensor:
    """[T] float32: each frame's share of stray area."""
    return stray_mask(frames, background, object_colour, tol, palette, pool).float().mean(dim=(1, 2))


def stray_share(frames: VideoLike, background: object, object_colour: object, tol: float = DEFAULT_STRAY_TOL,
                palette: object | None = None, pool: int = DEFAULT_STRAY_POOL) -> float:
    """Share of stray area over the whole video (the mean of `stray_per_frame`: frames all have one size)."""
    return stray_per_frame(frames, background, object_colour, tol, palette, pool).mean().item()


def prompt_colours(prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(background [3], object colours [K, 3]) a tiny-task caption names: the background is the palette colour just
    before the word "background", the objects every other palette colour named, in caption order ("A red circle
    bounces on a grey background; the circle turns green." → grey; red, green)."""
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a caption string, got {type(prompt).__name__}")
    words = re.findall(r"[a-z]+", prompt.lower())
    bg = list(dict.fromkeys(w for w, nxt in zip(words, words[1:], strict=False) if nxt == "background"
                            and w in COLOURS))
    if len(bg) != 1:
        raise ValueError(f"stray_share needs a prompt naming one background colour (\"... on a grey background\", "
                         f"colours: {', '.join(COLOURS)}); got {prompt!r}")
    objects = list(dict.fromkeys(w for w in words if w in COLOURS and w != bg[0]))
    if not objects:
        raise ValueError(f"stray_share needs a prompt naming the object's colour (one of {', '.join(COLOURS)}); "
                         f"got {prompt!r}")
    return torch.tensor(COLOURS[bg[0]]), torch.tensor([COLOURS[c] for c in objects])


def stray_share_for_prompt(frames: VideoLike, prompt: str, tol: float = DEFAULT_STRAY_TOL,
                           pool: int = DEFAULT_STRAY_POOL) -> float:
    """`stray_share` with the background and object colours read from the prompt (`prompt_colours`)."""
    background, objects = prompt_colours(prompt)
    return stray_share(frames, background, objects, tol, pool=pool)
