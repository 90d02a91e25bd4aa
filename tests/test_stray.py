"""The tiny task's stray-content metric (`longlive.eval.stray`): exact shares of painted strays, real clips at the
baseline, a float64 reference on random colours, edge cases and the registry entry."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

from longlive.eval.loading import load_frames
from longlive.eval.metrics import MissingInputError, compute_metrics, get_metric
from longlive.eval.palette import COLOURS
from longlive.eval.stray import (
    DEFAULT_STRAY_TOL,
    blend_distance,
    prompt_colours,
    stray_mask,
    stray_per_frame,
    stray_share,
    stray_share_for_prompt,
)
from longlive.model.presets import get_preset
from longlive.output import write_mp4
from longlive.train.data import COLOURS as RENDER_COLOURS
from longlive.train.data import ProceduralVideos
from longlive.train.tiny import EVAL_PROMPTS, TinyRecipe
from longlive.weights import SHIPPED_TINY, load_vae_for

GREY = torch.tensor(COLOURS["grey"])
RED = torch.tensor(COLOURS["red"])


def tiny_clips(n: int, frames: int = 29, first: int = 20_000):
    gen = ProceduralVideos(128, 128, 24, seed=0, **TinyRecipe().task)
    return [gen.clip(first + i, frames)[:2] for i in range(n)]


def flat(colour, t: int = 2, h: int = 8, w: int = 8) -> torch.Tensor:
    return torch.tensor(colour, dtype=torch.uint8).reshape(1, 1, 1, 3).expand(t, h, w, 3).contiguous()


def test_palette_is_the_renderers():
    assert COLOURS == RENDER_COLOURS


def test_rendered_clips_score_zero_edges_included():
    """Every pixel of a rendered clip is a blend of the prompted colours (anti-aliased edges too), so 0 exactly; on
    the full task too (1–3 shapes, any background, mid-clip colour changes named in the caption)."""
    clips = tiny_clips(3, frames=13)
    full = ProceduralVideos(96, 128, 24, seed=3)
    clips += [full.clip(i, 9)[:2] for i in range(6)]
    for frames, caption in clips:
        assert stray_share_for_prompt(frames, caption) == 0.0, caption
        assert stray_share_for_prompt(frames, caption, pool=1) == 0.0, caption
    frames, caption = clips[0]
    edge = blend_distance(frames, *prompt_colours(caption), pool=1)
    assert edge.max() <= 0.87  # uint8 rounding of an exact blend: at most 0.5 per channel
    # the edge is real: against the two colours alone (no blends) it is far more than the 0.01 target
    d_ends = torch.minimum((frames.float() - GREY.float()).norm(dim=-1),
                           (frames.float() - torch.tensor(COLOURS[caption.split()[1]]).float()).norm(dim=-1))
    assert (d_ends > DEFAULT_STRAY_TOL).float().mean() > 0.005


@pytest.mark.parametrize("pool", [1, 2])
def test_painted_third_colour_block_gives_its_exact_area(pool):
    frames, caption = tiny_clips(1)[0]
    bg, obj = prompt_colours(caption)
    third = next(c for n, c in COLOURS.items() if torch.tensor(c).tolist() not in (bg.tolist(), obj[0].tolist()))
    x = frames.clone()
    x[3, 10:22, 40:50] = torch.tensor(third, dtype=torch.uint8)  # 12 × 10 px, even-aligned
    x[7, 100:104, 0:6] = torch.tensor(third, dtype=torch.uint8)  # 4 × 6 px
    x[7, 0:6, 120:128] = torch.tensor(third, dtype=torch.uint8)  # 6 × 8 px, in a corner
    hw = 128 * 128
    per = stray_per_frame(x, bg, obj, pool=pool)
    want = torch.zeros(x.shape[0])
    want[3], want[7] = 120 / hw, (24 + 48) / hw
    torch.testing.assert_close(per, want, rtol=0, atol=0)
    assert stray_share(x, bg, obj, pool=pool) == pytest.approx(want.mean().item(), abs=1e-9)
    assert stray_mask(x, bg, obj, pool=pool).shape == (x.shape[0], 128 // pool, 128 // pool)


def test_half_strength_block_counts_and_an_odd_block_counts_by_pixel():
    x = flat(COLOURS["grey"], t=3, h=16, w=16)
    blue = torch.tensor(COLOURS["blue"]).float()
    x[1, 2:8, 4:10] = ((blue + GREY.float()) / 2).round().to(torch.uint8)  # 6 × 6 px of half-strength blue
    assert stray_per_frame(x, GREY, RED)[1].item() == pytest.approx(36 / 256)
    x[2, 3:6, 5:8] = blue.to(torch.uint8)  # 3 × 3 px at odd offsets: per pixel it is 9 px exactly
    assert stray_per_frame(x, GREY, RED, pool=1)[2].item() == pytest.approx(9 / 256)


def test_over_saturated_object_shade_is_colour_not_stray():
    """(255, 0, 0) inside a red circle is off the grey–red blend by ~66, but nearest to red itself."""
    x = flat((255, 0, 0))
    assert blend_distance(x, GREY, RED).min() > DEFAULT_STRAY_TOL
    assert stray_share(x, GREY, RED) == 0.0
    assert stray_share(x, GREY, RED, palette=()) == 1.0  # without the third-colour test it is off the blend


def test_edge_cases():
    assert stray_share(flat(COLOURS["grey"]), GREY, RED) == 0.0  # all background
    assert stray_share(flat(COLOURS["red"]), GREY, RED) == 0.0  # all object
    assert stray_share(flat(COLOURS["green"]), GREY, RED) == 1.0  # all a third colour
    assert stray_share(flat(COLOURS["green"]), GREY, torch.stack([RED, torch.tensor(COLOURS["green"])])) == 0.0
    assert stray_share(flat(COLOURS["green"]), GREY, RED, palette=[COLOURS["red"]]) == 0.0  # no third colour
    with pytest.raises(ValueError, match="empty video"):
        stray_share(torch.zeros(0, 8, 8, 3, dtype=torch.uint8), GREY, RED)
    with pytest.raises(TypeError, match="uint8"):
        stray_share(torch.zeros(2, 8, 8, 3), GREY, RED)
    with pytest.raises(ValueError, match=r"\[T, H, W, 3\]"):
        stray_share(torch.zeros(2, 8, 8, dtype=torch.uint8), GREY, RED)
    with pytest.raises(ValueError, match="object_colour must be an RGB triple"):
        stray_share(flat((1, 2, 3)), GREY, [1, 2])
    with pytest.raises(ValueError, match="background must be RGB values in 0..255"):
        stray_share(flat((1, 2, 3)), [300, 0, 0], RED)
    for tol in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="tol must be a distance >= 0"):
            stray_share(flat((1, 2, 3)), GREY, RED, tol=tol)
    with pytest.raises(ValueError, match="pool must be an int >= 1"):
        stray_share(flat((1, 2, 3)), GREY, RED, pool=0)
    with pytest.raises(ValueError, match="smaller than one 2×2 block: pass pool=1"):
        stray_share(flat((1, 2, 3), h=1, w=8), GREY, RED)
    assert stray_share(flat(COLOURS["green"], h=1, w=8), GREY, RED, pool=1) == 1.0


def test_tolerance_boundary():
    """Distance 50 exactly from the segment black–(0, 0, 200): stray for tol < 50, not at 50."""
    x = flat((30, 40, 100))
    assert blend_distance(x, (0, 0, 0), (0, 0, 200)).unique().tolist() == [50.0]
    assert stray_share(x, (0, 0, 0), (0, 0, 200), tol=50.0, palette=()) == 0.0
    assert stray_share(x, (0, 0, 0), (0, 0, 200), tol=49.99, palette=()) == 1.0


def _reference_mask(frames: torch.Tensor, bg, objs, tol: float, palette) -> torch.Tensor:
    """Pixel by pixel in float64, the definition as written (pool=1)."""
    prompted = [torch.tensor(bg, dtype=torch.float64)] + [torch.tensor(o, dtype=torch.float64) for o in objs]
    others = [torch.tensor(c, dtype=torch.float64) for c in palette
              if not any(torch.equal(torch.tensor(c, dtype=torch.float64), p) for p in prompted)]

    def seg(p, a, b):
        ab = b - a
        t = 0.0 if ab.dot(ab) == 0 else float(((p - a).dot(ab) / ab.dot(ab)).clamp(0, 1))
        return float((p - a - t * ab).norm())

    cols = prompted + others
    n = len(prompted)
    out = torch.zeros(frames.shape[:3], dtype=torch.bool)
    for idx in itertools.product(*map(range, frames.shape[:3])):
        p = frames[idx].double()
        d_p = min(seg(p, cols[i], cols[j]) for i in range(n) for j in range(i, n))
        if d_p <= tol:
            continue
        if not palette:  # no third-colour test
            out[idx] = True
            continue
        pairs = [(i, j) for i in range(len(cols)) for j in range(i, len(cols)) if i >= n or j >= n]
        out[idx] = bool(pairs) and min(seg(p, cols[i], cols[j]) for i, j in pairs) < d_p
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_a_float64_reference_on_random_colours(seed):
    g = torch.Generator().manual_seed(seed)
    frames = torch.randint(0, 256, (3, 9, 11, 3), generator=g, dtype=torch.uint8)
    frames[0, 0, :3] = torch.tensor([[0, 0, 0], [255, 255, 255], [128, 128, 128]], dtype=torch.uint8)  # extremes
    frames[0, 1, 0] = RED.to(torch.uint8)  # exactly the object (distance 0)
    bg, objs = COLOURS["grey"], [COLOURS["red"], COLOURS["cyan"]]
    palette = list(COLOURS.values())
    for tol, pal in ((40.0, palette), (25.0, palette), (40.0, ())):
        got = stray_mask(frames, bg, objs, tol=tol, palette=pal, pool=1)
        want = _reference_mask(frames, bg, objs, tol, pal)
        d = blend_distance(frames, bg, objs, pool=1)
        assert (d - tol).abs().min() > 1e-3  # no tie at the tolerance in these draws
        assert torch.equal(got, want), (tol, len(pal))
        assert 0 < got.sum() < got.numel()  # both outcomes exercised


def test_real_clips_through_mp4_and_the_shipped_codec_stay_near_baseline(tmp_path: Path):
    """Rendered clips score 0; an mp4 round trip keeps 0 (2 × 2 blocks: yuv420's chroma block), while per pixel a
    yellow square's edge leaves the blend; the shipped tiny codec (the floor for any tiny model) stays far below
    the 0.01 target."""
    gen = ProceduralVideos(128, 128, 24, seed=0, **TinyRecipe().task)
    frames, caption = gen.clip(20_005, 13)[:2]  # "A yellow square bounces on a grey background."
    assert caption.startswith("A yellow square")
    write_mp4(frames, tmp_path / "a.mp4", fps=24)
    assert stray_share_for_prompt(tmp_path / "a.mp4", caption) == 0.0
    assert stray_share_for_prompt(load_frames(tmp_path / "a.mp4"), caption, pool=1) > 0.003
    vae, _ = load_vae_for(get_preset("tiny"), SHIPPED_TINY / "vae.safetensors")
    for frames, caption in tiny_clips(2, frames=21):
        video = frames.permute(3, 0, 1, 2).float().div(127.5).sub(1.0)[None]
        with torch.no_grad():
            rec = vae.decode(vae.encode(video))[0]
        rec = rec.permute(1, 2, 3, 0).add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8)
        assert stray_share_for_prompt(rec, caption) < 0.003, caption


def test_prompt_colours():
    bg, objs = prompt_colours("A red circle bounces on a grey background.")
    assert bg.tolist() == list(COLOURS["grey"]) and objs.tolist() == [list(COLOURS["red"])]
    bg, objs = prompt_colours("The scene transitions. A grey triangle and a blue circle bounce on a pink background; "
                              "the circle turns orange.")
    assert bg.tolist() == list(COLOURS["pink"])
    assert objs.tolist() == [list(COLOURS[c]) for c in ("grey", "blue", "orange")]
    for prompt in EVAL_PROMPTS:
        assert prompt_colours(prompt)[0].tolist() == list(COLOURS["grey"])
    with pytest.raises(ValueError, match="one background colour"):
        prompt_colours("A red ball bounces")
    with pytest.raises(ValueError, match="the object's colour"):
        prompt_colours("A circle bounces on a grey background.")
    with pytest.raises(TypeError, match="caption string"):
        prompt_colours(["A red circle bounces on a grey background."])


def test_registered_metric_reads_the_prompt(tmp_path: Path):
    frames, caption = tiny_clips(1)[0]
    x = frames.clone()
    x[2, :16, :16] = torch.tensor(COLOURS["green"] if "green" not in caption else COLOURS["purple"], dtype=torch.uint8)
    want = 256 / (128 * 128) / x.shape[0]
    assert compute_metrics(["stray_share"], frames=x, prompt=caption)["stray_share"] == pytest.approx(want)
    assert get_metric("stray_share")(frames=x, prompt=[caption, caption]) == pytest.approx(want)
    assert get_metric("stray_share").higher_is_better is False
    with pytest.raises(ValueError, match="one caption's colours, got 2 prompts"):
        get_metric("stray_share")(frames=x, prompt=[caption, "A blue square bounces on a grey background."])
    with pytest.raises(MissingInputError, match="needs prompt"):
        get_metric("stray_share")(frames=x)
    assert compute_metrics(["stray_share"], skip_missing=True, frames=x) == {"stray_share": None}
