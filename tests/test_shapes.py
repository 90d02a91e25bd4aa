"""The shape-recognition metric (longlive.eval.shapes): real procedural frames are recognised as the shape their
caption names, a round blob is a circle whatever the prompt, nothing drawn is never recognised, bad input is refused."""

from __future__ import annotations

import math

import pytest
import torch

from longlive.eval.shapes import (
    SHAPE_AREA,
    SHAPES,
    centroid_travel,
    named_shape,
    recognised_shapes,
    shape_iou,
    shape_match,
    shape_sdf,
    template_ious,
)
from longlive.train.data import COLOURS, ProceduralVideos

GREY = torch.tensor(COLOURS["grey"])


@pytest.mark.parametrize("radius", [(0.08, 0.16), (0.26, 0.32)])
def test_procedural_frames_are_recognised_as_their_caption_says(radius):
    gen = ProceduralVideos(128, 128, 24, seed=3, backgrounds=("grey",), max_shapes=1, radius=radius)
    seen = set()
    for i in range(12):
        frames, caption, _ = gen.clip(i, 9)
        kind = named_shape(caption)
        seen.add(kind)
        assert shape_match(frames, kind, GREY) == 1.0, caption
        assert shape_iou(frames, kind, GREY) > 0.95
        others = [k for k in SHAPES if k != kind]
        assert all(shape_match(frames, k, GREY) == 0.0 for k in others)
    assert seen == set(SHAPES)


def test_shape_areas_match_the_signed_distances():
    n = 2001
    xs = torch.linspace(-1.5, 1.5, n, dtype=torch.float64)
    dy, dx = torch.meshgrid(xs, xs, indexing="ij")
    cell = (3.0 / (n - 1)) ** 2
    for kind in SHAPES:
        area = float((shape_sdf(kind, dx, dy, 1.0) > 0).sum()) * cell
        assert area == pytest.approx(SHAPE_AREA[kind], rel=5e-3), kind


def test_a_round_blob_is_a_circle_and_an_empty_frame_is_nothing():
    yy, xx = torch.meshgrid(torch.arange(96.0), torch.arange(96.0), indexing="ij")
    d = ((xx - 40.5) ** 2 + (yy - 50.5) ** 2).sqrt()
    alpha = (1 - (d - 18).clamp(0, 6) / 6)[..., None]  # a soft-edged disc
    frame = (GREY + alpha * (torch.tensor(COLOURS["blue"]) - GREY)).round().to(torch.uint8)
    empty = GREY.expand(96, 96, 3).to(torch.uint8)
    frames = torch.stack([frame, empty])
    assert recognised_shapes(frames, GREY) == ["circle", None]
    assert shape_match(frames, "circle", GREY) == 0.5  # the empty frame counts as not recognised
    assert shape_match(frames, "square", GREY) == 0.0
    assert shape_iou(frames[1:], "circle", GREY) == 0.0
    assert all(math.isnan(v) for v in template_ious(torch.zeros(8, 8, dtype=torch.bool)).values())


def test_bad_input_is_refused():
    frames = GREY.expand(1, 8, 8, 3).to(torch.uint8)
    with pytest.raises(ValueError, match="unknown shape 'hexagon'"):
        shape_match(frames, "hexagon", GREY)
    with pytest.raises(ValueError, match=r"frames must be \[T, H, W, 3\]"):
        shape_match(frames[0], "circle", GREY)
    with pytest.raises(ValueError, match="unknown shape 'star'"):
        shape_sdf("star", 0.0, 0.0, 1.0)


def test_named_shape():
    assert named_shape("A red circle bounces on a grey background.") == "circle"
    assert named_shape("A blue Square.") == "square"
    assert named_shape("a red circle and a blue square") is None
    assert named_shape("a red blob") is None


def test_centroid_travel_follows_the_rendered_centres() -> None:
    grey = torch.tensor(COLOURS["grey"])
    gen = ProceduralVideos(96, 96, 24, seed=5, backgrounds=("grey",), max_shapes=1, radius=(0.2, 0.25),
                           colour_change=0.0)
    for i in range(6):
        frames, _, meta = gen.clip(i, 30)
        c = torch.as_tensor(meta["centres"], dtype=torch.float64)[:, 0]  # [T, 2] (x, y)
        want = float((c - c[:1]).norm(dim=-1).max())
        # the triangle's centroid is not its drawing centre, but both move together: equal up to the raster
        assert abs(centroid_travel(frames, grey) - want) < 1.0
    still = ProceduralVideos(96, 96, 24, seed=5, backgrounds=("grey",), max_shapes=1, speed=(0.0, 0.0))
    assert centroid_travel(still.clip(0, 12)[0], grey) == 0.0
    blank = torch.full((4, 32, 32, 3), 0, dtype=torch.uint8) + grey.to(torch.uint8)
    assert math.isnan(centroid_travel(blank, grey))
    moved = blank.clone()
    moved[0, 4:12, 4:12] = 255
    moved[2, 4:12, 14:22] = 255  # 10 px to the right; frames 1 and 3 are empty and skipped
    assert centroid_travel(moved, grey) == pytest.approx(10.0)
