"""The tiny preset's trained weights ship with the package: intact, used by default, overridable, and far better
than seeded random weights on the tiny task's quality metrics."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from longlive.eval.palette import palette_match, prompt_colour_match
from longlive.eval.shapes import named_shape, shape_iou, shape_match
from longlive.infer.assemble import make_video
from longlive.infer.video import VideoRequest
from longlive.model.presets import get_preset
from longlive.train.data import COLOURS
from longlive.train.tiny import SHIPPED, TinyRecipe, named_colours
from longlive.weights import SHIPPED_TINY, default_paths

MANIFEST = SHIPPED_TINY / "MANIFEST.json"


def test_manifest_matches_the_shipped_files():
    man = json.loads(MANIFEST.read_text())
    assert set(man["files"]) == set(SHIPPED.values())
    for name, meta in man["files"].items():
        data = (SHIPPED_TINY / name).read_bytes()
        assert len(data) == meta["bytes"] and hashlib.sha256(data).hexdigest() == meta["sha256"], name
    assert man["trained"]["git_commit"] and man["retrain"].startswith("longlive train --model tiny --tiny-default")
    assert man["recipe"] == TinyRecipe().as_dict()  # the shipped weights come from today's default recipe
    assert man["ar_steps"] > 1000 and man["lora_steps"] > 0
    for variant in ("4-step", "2-step (LoRA)", "4-step NVFP4 W4A4 + NVFP4 KV"):
        assert 0.0 <= man["eval"][variant]["shape_match"] <= 1.0


def test_shipped_weights_are_the_default_and_longlive_weights_overrides(tmp_path, monkeypatch):
    cfg = get_preset("tiny")
    monkeypatch.delenv("LONGLIVE_WEIGHTS", raising=False)
    paths = default_paths(cfg)
    assert paths.generator == SHIPPED_TINY / "model_bf16.safetensors" and paths.generator.is_file()
    assert paths.generator_2step == SHIPPED_TINY / "model_2step.safetensors" and paths.vae.is_file()
    monkeypatch.setenv("LONGLIVE_WEIGHTS", str(tmp_path))
    assert default_paths(cfg).generator == tmp_path / "tiny" / "model_bf16.pt"
    res = make_video(VideoRequest(model="tiny", frames=4, steps=2, progress=False), tmp_path / "own")
    assert any("seeded random" in n for n in res.notes)  # LONGLIVE_WEIGHTS/tiny is empty: nothing shipped used
    monkeypatch.delenv("LONGLIVE_WEIGHTS")
    four = make_video(VideoRequest(model="tiny", frames=4, steps=4, progress=False), tmp_path / "four")
    two = make_video(VideoRequest(model="tiny", frames=4, steps=2, progress=False), tmp_path / "two")
    assert four.notes == ["generator: shipped tiny weights (model_bf16.safetensors)"]
    assert two.notes == ["generator: shipped tiny weights (model_2step.safetensors)"]  # the 2-step LoRA merge


def _scores(tmp_path, random_weights: bool) -> dict[str, float]:
    grey = torch.tensor(COLOURS["grey"])
    palette = torch.tensor(list(COLOURS.values()), dtype=torch.uint8)
    prompts = ("A red circle bounces on a grey background.", "A blue square bounces on a grey background.")
    pal, col, shp, iou = [], [], [], []
    for i, prompt in enumerate(prompts):
        for seed in (11, 12):
            req = VideoRequest(model="tiny", frames=8, prompts=[prompt], steps=4, seed=seed, progress=False,
                               random_weights=random_weights)
            frames = make_video(req, tmp_path / f"{random_weights}-{i}-{seed}").video
            pal.append(palette_match(frames, palette))
            col.append(prompt_colour_match(frames, named_colours(prompt), grey))
            shp.append(shape_match(frames, named_shape(prompt), grey))
            iou.append(shape_iou(frames, named_shape(prompt), grey))

    def mean(xs: list[float]) -> float:
        return sum(x if x == x else 0.0 for x in xs) / len(xs)  # NaN: nothing drawn, no match

    return {"palette": mean(pal), "colour": mean(col), "shape": mean(shp), "iou": mean(iou)}


@pytest.mark.slow
def test_shipped_weights_beat_random_weights_by_a_wide_margin(tmp_path, monkeypatch):
    """Quality, never time: 2 prompts x 2 seeds unseen by the evaluation, 29 frames each."""
    monkeypatch.delenv("LONGLIVE_WEIGHTS", raising=False)
    trained, random = _scores(tmp_path, False), _scores(tmp_path, True)
    # Measured at the shipped run26: prompt colour 0.95 vs 0.005, IoU with the prompted shape 0.81 vs 0.008. Palette
    # match hardly separates them (random weights decode to near-grey, which is on the palette: 0.84 vs 0.70), nor
    # does shape match, whose chance level is 0.33 (0.43 vs 0.38), so they only need to be no worse.
    assert trained["colour"] > 0.6 and trained["colour"] > random["colour"] + 0.5, (trained, random)
    assert trained["iou"] > 0.5 and trained["iou"] > random["iou"] + 0.4, (trained, random)
    assert trained["palette"] > random["palette"] and trained["shape"] >= random["shape"], (trained, random)
