"""The tiny task's evaluation metrics by name (issue 21): each registered metric equals the call the tiny default's
evaluation makes (`longlive.train.tiny._evaluate`) on procedural and degraded clips; one caption per call; their good
directions; and windowing through `longlive.eval.drift`, NaN windows included."""

from __future__ import annotations

import math

import pytest
import torch

from longlive.eval.drift import check_window_quality, resolve_window_metrics, window_columns, windowed_metrics
from longlive.eval.metrics import METRICS, Needs, compute_metrics, get_metric
from longlive.eval.palette import COLOURS, foreground_fraction, named_colours, palette_match, prompt_colour_match
from longlive.eval.shapes import named_shape, shape_iou, shape_match
from longlive.train import tiny
from longlive.train.data import ProceduralVideos

TINY = ("palette_match", "prompt_colour_match", "shape_match", "shape_iou", "foreground_fraction")
PROMPTED = ("prompt_colour_match", "shape_match", "shape_iou")
OFF_PALETTE = (90, 200, 120)  # ≥ 60 (L∞) from every palette colour: no palette_match at tol 24
SQUARE = "A blue square bounces on a grey background."


@pytest.fixture(scope="module")
def gen() -> ProceduralVideos:
    """The tiny default's task (grey background, one large shape) at 64 × 64 px, for speed."""
    return ProceduralVideos(64, 64, 24, seed=7, **tiny.TinyRecipe().task)


def _degraded(frames: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """A model-like clip: the procedural frames with uniform noise of ±40 per channel (off-palette, off-blend)."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randint(-40, 41, frames.shape, generator=g, dtype=torch.int16)
    return (frames.to(torch.int16) + noise).clamp(0, 255).to(torch.uint8)


def _as_evaluated(frames: torch.Tensor, prompt: str) -> dict[str, float]:
    """The numbers `longlive.train.tiny._evaluate` computes for one video, with its own arguments."""
    palette = torch.tensor(list(tiny.COLOURS.values()), dtype=torch.uint8)
    grey = torch.tensor(tiny.COLOURS["grey"])
    kind = named_shape(prompt)
    return {"palette_match": palette_match(frames, palette),
            "prompt_colour_match": prompt_colour_match(frames, named_colours(prompt), grey),
            "shape_match": shape_match(frames, kind, grey), "shape_iou": shape_iou(frames, kind, grey),
            "foreground_fraction": foreground_fraction(frames, grey)}


def test_named_colours_reads_captions_as_the_tiny_evaluation(gen):
    for text, colour in zip(tiny.EVAL_PROMPTS, ("red", "blue", "yellow"), strict=True):
        assert named_colours(text).tolist() == [list(COLOURS[colour])], text
    for i in range(6):  # every procedural caption names its object's colour
        text = gen.clip(i, 1)[1]
        names = [n for n in COLOURS if n != "grey" and n in text.lower().split()]
        assert named_colours(text).tolist() == [list(COLOURS[n]) for n in COLOURS if n in names], text
    assert named_colours("A red circle turns green on a grey background.").tolist() == [list(COLOURS["red"]),
                                                                                        list(COLOURS["green"])]
    assert named_colours("A circle on a grey background.").shape == (0, 3)


@pytest.mark.parametrize("index", [0, 1, 2])
@pytest.mark.parametrize("degrade", [False, True])
def test_each_metric_equals_the_tiny_evaluations_value(gen, index, degrade):
    frames, caption, _ = gen.clip(index, 29)
    if degrade:
        frames = _degraded(frames, seed=index)
    expected = _as_evaluated(frames, caption)
    if degrade:  # the noisy clip is off the palette: the comparison is not of two 1.0s
        assert expected["palette_match"] < 0.9
    # by name, through compute_metrics, with the prompt as the row passes it (a list) and as one string
    assert compute_metrics(TINY, frames=frames, prompt=[caption]) == expected
    assert {n: get_metric(n)(frames=frames, prompt=caption) for n in TINY} == expected
    assert get_metric("shape_iou")(frames=frames.numpy(), prompt=[caption, caption]) == expected["shape_iou"]


def test_a_video_with_nothing_drawn():
    grey = torch.full((4, 16, 16, 3), 128, dtype=torch.uint8)
    got = compute_metrics(TINY, frames=grey, prompt=SQUARE)
    assert math.isnan(got["prompt_colour_match"]) and got["shape_iou"] == 0.0 and got["shape_match"] == 0.0
    assert got["palette_match"] == 1.0 and got["foreground_fraction"] == 0.0


@pytest.mark.parametrize("name", [*PROMPTED, "stray_share"])
def test_several_prompts_are_an_error(name):
    frames = torch.full((2, 8, 8, 3), 128, dtype=torch.uint8)
    two = [SQUARE, "The scene transitions. A red circle bounces on a grey background."]
    reads = "shape" if name.startswith("shape") else "colours"
    with pytest.raises(ValueError, match=rf"^{name} reads one caption's {reads}, got 2 prompts .*measure each shot's "
                                         r"frames with its own prompt"):
        get_metric(name)(frames=frames, prompt=two)


def test_a_prompt_without_its_shape_or_colour_is_an_error():
    frames = torch.full((2, 8, 8, 3), 128, dtype=torch.uint8)
    for name in ("shape_match", "shape_iou"):
        with pytest.raises(ValueError, match=rf"{name} needs a prompt naming exactly one shape \(circle, square, "
                                             r"triangle\); got 'A blue blob"):
            get_metric(name)(frames=frames, prompt="A blue blob bounces on a grey background.")
    with pytest.raises(ValueError, match=r"prompt_colour_match needs a prompt naming an object colour .*red.*got "
                                         r"'A square"):
        get_metric("prompt_colour_match")(frames=frames, prompt="A square bounces on a grey background.")


def test_registration_needs_and_directions():
    assert {n: METRICS[n].higher_is_better for n in TINY} == {
        "palette_match": True, "prompt_colour_match": True, "shape_match": True, "shape_iou": True,
        "foreground_fraction": None}
    for n in PROMPTED:
        assert METRICS[n].needs == Needs(frames=True, prompt=True)
    # palette_match and foreground_fraction read no caption (the whole palette, the grey background): a row without
    # prompts still gets them
    assert METRICS["palette_match"].needs == METRICS["foreground_fraction"].needs == Needs(frames=True)
    assert all(METRICS[n].description for n in TINY)


def test_foreground_fraction_is_reported_but_never_windowed():
    # listed among quality.metrics it is left out of the default windows (not an invalid cell) ...
    assert resolve_window_metrics(None, ["foreground_fraction", "palette_match", "shape_iou"]) == ["palette_match",
                                                                                                    "shape_iou"]
    check_window_quality(None, ["foreground_fraction"], 2.0)
    # ... and asked for by name it is refused, with the reason
    with pytest.raises(ValueError, match="'foreground_fraction' declares no direction"):
        check_window_quality(["foreground_fraction"], [], 2.0)
    with pytest.raises(ValueError, match=r"windows take metrics of the frames only \((?!.*foreground).*palette_match"):
        check_window_quality(["psnr_vs_ref"], [], 2.0)


def test_a_corrupted_last_window_drops_its_palette_match(gen):
    """Three 2-s windows of a procedural clip; an off-palette block painted into the last window's frames: that
    window's palette_match drops by the block's share, the drift is negative, the worst window is the last."""
    frames, caption, _ = gen.clip(3, 3 * 48)
    clean = frames.clone()
    frames[96:, 2:10, 2:18] = torch.tensor(OFF_PALETTE, dtype=torch.uint8)  # 8 × 16 px of 64 × 64
    names = ["palette_match", "prompt_colour_match", "shape_iou"]
    cols, definition = windowed_metrics(names, frames, 24.0, prompt=[caption])
    assert "3 windows of a 144-frame video" in definition
    for name in names:  # each window's value is the metric on that slice
        per = cols[name + "_per_window"]
        assert per == [get_metric(name)(frames=frames[a:b], prompt=caption) for a, b in ((0, 48), (48, 96), (96, 144))]
    per, drift, worst, worst_i = window_columns("palette_match")
    before = palette_match(clean[96:], torch.tensor(list(COLOURS.values()), dtype=torch.uint8))
    assert cols[per][:2] == [palette_match(clean[a:b], torch.tensor(list(COLOURS.values()), dtype=torch.uint8))
                             for a, b in ((0, 48), (48, 96))]
    assert cols[per][2] == pytest.approx(before - 8 * 16 / 64**2, abs=1e-6)  # the block hid palette pixels only
    assert cols[drift] == pytest.approx(cols[per][2] - cols[per][0]) and cols[drift] < -0.02
    assert (cols[worst], cols[worst_i]) == (cols[per][2], 2)
    # the off-palette block is foreground in no prompted colour: prompt-colour match drops in that window too
    pcm = cols["prompt_colour_match_per_window"]
    assert pcm[2] < min(pcm[:2]) and cols["prompt_colour_match_worst_window_index"] == 2


def test_a_window_with_nothing_drawn_has_no_prompt_colour_match(gen):
    """NaN (nothing drawn) is None per window, skipped for the worst window, and no drift when at an end; shape_iou
    scores an empty window 0 and keeps its drift."""
    frames, caption, _ = gen.clip(4, 3 * 48)
    frames[:48] = torch.tensor(COLOURS["grey"], dtype=torch.uint8)  # the first window: background only
    cols, _ = windowed_metrics(["prompt_colour_match", "shape_iou"], frames, 24.0, prompt=caption)
    per, drift, worst, worst_i = window_columns("prompt_colour_match")
    assert cols[per][0] is None and all(isinstance(v, float) for v in cols[per][1:])
    assert cols[drift] is None
    assert cols[worst_i] in (1, 2) and cols[worst] == min(cols[per][1:])
    iou = cols["shape_iou_per_window"]
    assert iou[0] == 0.0 and cols["shape_iou_drift"] == pytest.approx(iou[2])
    assert cols["shape_iou_worst_window_index"] == 0
    frames[96:] = torch.tensor(COLOURS["grey"], dtype=torch.uint8)  # the last too: nothing to compare either end
    cols, _ = windowed_metrics(["prompt_colour_match"], frames, 24.0, prompt=caption)
    assert cols[per][0] is cols[per][2] is None and cols[drift] is None
    assert (cols[worst_i], cols[worst]) == (1, cols[per][1])


def test_windowed_values_equal_the_whole_video_metric_on_a_single_window(gen):
    frames, caption, _ = gen.clip(5, 40)  # shorter than one 2-s window: one window, the whole video
    cols, _ = windowed_metrics([*PROMPTED, "palette_match"], frames, 24.0, prompt=[caption])
    whole = _as_evaluated(frames, caption)
    for name in (*PROMPTED, "palette_match"):
        assert cols[name + "_per_window"] == [whole[name]]
        assert cols[name + "_drift"] is None
