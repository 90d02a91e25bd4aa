"""The tiny default end to end at a toy budget: codec, text encoder, AR model, evaluation, all written where
`longlive generate --model tiny` looks, and loadable."""

from __future__ import annotations

import json

import torch

from longlive.train.tiny import EVAL_PROMPTS, TinyRecipe, ship, train_tiny


def test_train_tiny_writes_loadable_weights_and_an_evaluation(tmp_path):
    from longlive.model.checkpoint import load_generator
    from longlive.model.dit import build_model
    from longlive.model.presets import get_preset
    from longlive.vae import load_vae

    torch.set_num_threads(1)
    result = train_tiny(tmp_path, minutes=0.3, samples=6, codec_clips=4, eval_seeds=1,
                        recipe=TinyRecipe(speed=(0.2, 0.3), long_latents=12, long_clips=2))  # a variant, as a value
    for name in ("vae.safetensors", "vae_stats.json", "text_encoder.safetensors", "model_bf16.pt", "tiny_eval.json",
                 "vae_reconstruction.png"):
        assert (tmp_path / name).is_file(), name
    assert result["ar_steps"] >= 400  # the probe always runs; a spent budget still adds its minimum
    assert result["lora"]["steps"] == 0  # no time left in 18 s: the LoRA is skipped, not half-trained
    # the long phase ran through the KV window on 12-latent clips (past the 8-latent window), at least its minimum
    long = result["long"]
    assert long["tf_window"] and long["latents"] == 12 and long["clips"] == 2 and long["steps"] >= 30
    assert long["steps"] <= 200  # planned from its budget: an 18 s recipe has seconds, not minutes, for this phase
    codec = load_vae("tiny-pca", tmp_path / "vae.safetensors")
    assert bool(codec.first_tube)
    model = build_model(get_preset("tiny"))
    load_generator(model, tmp_path / "model_bf16.pt")
    saved = json.loads((tmp_path / "tiny_eval.json").read_text())
    evals = saved["eval"]
    assert set(evals) == {"procedural (real clips)", "4-step", "4-step NVFP4 W4A4 + NVFP4 KV"}
    for name in ("4-step", "4-step NVFP4 W4A4 + NVFP4 KV"):
        row = evals[name]
        assert 0.0 <= row["palette_match"] <= 1.0 and 0.0 <= row["foreground_fraction"] <= 1.0
        assert len(row["per_prompt"]["prompt_colour_match"]) == len(EVAL_PROMPTS)
        assert 0.0 <= row["shape_match"] <= 1.0 and 0.0 <= row["shape_iou"] <= 1.0
        assert len(row["per_prompt"]["shape_match"]) == len(EVAL_PROMPTS)
        assert (tmp_path / "samples" / ("4-step" if name == "4-step" else "4-step-nvfp4") / "strip.png").is_file()
    assert evals["procedural (real clips)"]["prompt_colour_match"] > 0.9  # the metrics on real clips
    assert evals["procedural (real clips)"]["shape_match"] == 1.0
    # real clips of the task move: at least 0.08 sides/s × 60 frames / 24 fps less what a bounce takes back
    assert evals["procedural (real clips)"]["centroid_travel_px"] > 5.0
    assert "centroid_travel_px" in evals["4-step"]
    assert evals["4-step NVFP4 W4A4 + NVFP4 KV"]["weight_rule"] == "mse" and evals["4-step"]["weight_rule"] is None
    assert "1 seeds each" in saved["metric"]
    assert saved["manifest"]["git_commit"] and saved["manifest"]["config"]["recipe"]["task"]["speed"] == [0.2, 0.3]

    # shipping: refused without the 2-step generator, then (given one) safetensors + a manifest that load back
    import pytest

    with pytest.raises(FileNotFoundError, match="model_2step.pt"):
        ship(tmp_path, tmp_path / "shipped")
    (tmp_path / "model_2step.pt").write_bytes((tmp_path / "model_bf16.pt").read_bytes())
    man = ship(tmp_path, tmp_path / "shipped" / "tiny", notes="test")
    assert set(man["files"]) == {"model_bf16.safetensors", "model_2step.safetensors", "vae.safetensors",
                                 "vae_stats.json", "text_encoder.safetensors"}
    assert man["eval"] == evals and man["trained"] == saved["manifest"] and man["notes"] == "test"
    from longlive.weights import default_paths

    paths = default_paths(get_preset("tiny"), root=tmp_path / "shipped")
    assert paths.generator.name == "model_bf16.safetensors"
    shipped = build_model(get_preset("tiny"))
    load_generator(shipped, paths.generator)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), shipped.state_dict().values(),
                                                 strict=True))
