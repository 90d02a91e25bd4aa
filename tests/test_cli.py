"""The `longlive generate` command: clear errors before any work, and a real tiny video on disk."""

import json

import pytest
import torch

from longlive.cli import main
from longlive.infer.video import VideoRequest, validate
from longlive.model.checkpoint import save_generator
from longlive.model.dit import build_model
from longlive.model.presets import get_preset


@pytest.fixture(autouse=True)
def _isolated_weights(tmp_path, monkeypatch):
    (tmp_path / "weights").mkdir()  # LONGLIVE_WEIGHTS must be an existing folder
    monkeypatch.setenv("LONGLIVE_WEIGHTS", str(tmp_path / "weights"))


def _run(capsys, *args):
    code = main(["generate", *args])
    return code, capsys.readouterr().err


def test_unknown_preset(capsys, tmp_path):
    code, err = _run(capsys, "--model", "wan3", "--frames", "8", "--out", str(tmp_path))
    assert code == 2 and "unknown preset 'wan3'" in err and "tiny" in err


def test_frames_not_a_multiple_of_the_chunk(capsys, tmp_path):
    code, err = _run(capsys, "--model", "tiny", "--frames", "5", "--out", str(tmp_path))
    assert code == 2 and "--frames 5 is not a multiple of the tiny chunk of 2" in err


def test_missing_weight_file_names_expected_path(capsys, tmp_path):
    code, err = _run(capsys, "--model", "wan2.2-ti2v-5b", "--frames", "8", "--out", str(tmp_path))
    assert code == 2
    assert str(tmp_path / "weights" / "wan2.2-ti2v-5b" / "model_bf16.pt") in err
    code, err = _run(
        capsys, "--model", "tiny", "--frames", "4", "--checkpoint", str(tmp_path / "no.pt"), "--out", str(tmp_path)
    )
    assert code == 2 and f"expected {tmp_path / 'no.pt'}" in err


def test_checkpoint_shape_mismatch_names_key(capsys, tmp_path):
    other = get_preset("tiny").with_overrides(ffn_dim=200)
    path = save_generator(build_model(other), tmp_path / "model_bf16.pt")
    code, err = _run(
        capsys, "--model", "tiny", "--frames", "4", "--checkpoint", str(path), "--out", str(tmp_path), "--no-progress"
    )
    assert code == 2 and "model.blocks.0.ffn.0.weight has shape [200, 128]" in err


def test_unknown_decode_mode(capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        _run(capsys, "--model", "tiny", "--frames", "4", "--decode", "teleport", "--out", str(tmp_path))
    assert exc.value.code == 2 and "invalid choice: 'teleport'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown --decode 'teleport'"):  # requests built in code are checked too
        validate(VideoRequest(model="tiny", frames=4, decode="teleport"))


def test_decode_none_writes_latents_without_a_vae(capsys, tmp_path):
    code, err = _run(capsys, "--model", "tiny", "--frames", "4", "--steps", "2", "--decode", "none", "--out",
                     str(tmp_path / "n"), "--no-progress")
    assert code == 0, err
    row = json.loads((tmp_path / "n" / "result.json").read_text())["rows"][0]
    assert row["artifacts"] == {"latents": "latents.safetensors"} and not (tmp_path / "n" / "video.mp4").exists()
    assert row["e2e_fps"] > 0 and row["vae_warmup_s"] is None and row["decode"] == "none"


def test_generates_video_strip_and_result(capsys, tmp_path):
    import imageio.v3 as iio

    out = tmp_path / "run"
    code, _ = _run(
        capsys,
        "--model",
        "tiny",
        "--device",
        "cpu",
        "--frames",
        "4",
        "--steps",
        "2",
        "--seed",
        "3",
        "--prompt",
        "a ball",
        "--prompt",
        "The scene transitions. a box",
        "--switch-at",
        "1",
        "--out",
        str(out),
        "--no-progress",
    )
    assert code == 0
    frames = iio.imread(out / "video.mp4")
    assert frames.shape == (1 + 4 * 3, 128, 128, 3)
    assert (out / "strip.png").stat().st_size > 0
    result = json.loads((out / "result.json").read_text())
    row = result["rows"][0]
    assert row["frames_video"] == 13 and row["steps"] == 2 and row["denoise_fps"] > 0 and row["e2e_fps"] > 0
    assert "denoise_fps" in row["timing_definition"] and result["manifest"]["seed"] == 3
    assert row["metrics_extra"]["windows"][1] == [0, 1, 2, 3]
    assert (row["model"], row["workload"], row["frames"]) == ("tiny", "infer", 4)  # the runner's row schema
    assert torch.__version__.split("+")[0] in result["manifest"]["packages"]["torch"]


def test_compiled_generation_equals_eager(capsys, tmp_path):
    """`--compile default` warms every window length up first (reported as compile_s) and writes the eager latents."""
    from safetensors.torch import load_file

    from longlive.infer.assemble import make_video
    from longlive.infer.video import VideoRequest

    base = dict(model="tiny", frames=10, steps=2, seed=1, device="cpu", progress=False, save_latents=True)
    eager = make_video(VideoRequest(**base), tmp_path / "eager")
    compiled = make_video(VideoRequest(**base, compile="default"), tmp_path / "compiled")
    assert eager.metrics["compile_s"] is None and compiled.metrics["compile_s"] > 0
    assert compiled.metrics["compile"] == "default"
    a, b = (load_file(tmp_path / d / "latents.safetensors")["latents"] for d in ("eager", "compiled"))
    torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="unknown --compile 'fast'"):  # runner requests are checked too
        make_video(VideoRequest(**{**base, "compile": "fast"}), tmp_path / "bad")
    with pytest.raises(SystemExit) as exc:
        _run(capsys, "--model", "tiny", "--frames", "4", "--compile", "fastest", "--out", str(tmp_path))
    assert exc.value.code == 2 and "invalid choice: 'fastest'" in capsys.readouterr().err


def _no_work(monkeypatch):
    """Make any generation, sweep cell, training or merge blow up, so a test proves a check ran before the work."""
    import longlive.cli as cli  # imported before patching: it binds make_video by name
    import longlive.infer.assemble as assemble
    import longlive.infer.fidelity as fidelity
    import longlive.model.dit as dit
    import longlive.runner.executor as executor
    import longlive.train.lora as lora
    import longlive.train.tiny as tiny
    import longlive.train.trainer as trainer

    def boom(*a, **k):
        raise AssertionError("work started before the output path was checked")

    monkeypatch.setattr(assemble, "make_video", boom)
    monkeypatch.setattr(cli, "make_video", boom)
    monkeypatch.setattr(fidelity, "make_video", boom)
    monkeypatch.setattr(assemble, "build", boom)
    monkeypatch.setattr(executor, "run_sweep", boom)
    monkeypatch.setattr(cli, "run_sweep", boom)
    monkeypatch.setattr(cli, "train_tiny", boom)
    monkeypatch.setattr(dit, "build_model", boom)
    monkeypatch.setattr(trainer, "build_data", boom)
    monkeypatch.setattr(tiny, "train_tiny", boom)
    monkeypatch.setattr(lora, "merge_lora_into_checkpoint", boom)


@pytest.mark.parametrize("kind", ["file", "under_file"])
def test_output_paths_are_checked_before_any_work(capsys, tmp_path, monkeypatch, kind):
    _no_work(monkeypatch)
    blocker = tmp_path / "taken"
    blocker.write_text("not a folder")
    out = blocker if kind == "file" else blocker / "sub" / "dir"
    expected = "exists and is not a folder" if kind == "file" else f"{blocker} is a file"
    commands = [
        ["generate", "--model", "tiny", "--frames", "4", "--out", str(out)],
        ["fidelity", "--model", "tiny", "--frames", "4", "--precision", "nvfp4", "--out", str(out)],
        ["sweep", "frames=4", "--results", str(out)],
        ["train", "--model", "tiny", "--train-steps", "1", "--out", str(out)],
        ["train", "--model", "tiny", "--tiny-default", "--out", str(out)],
        ["report", str(tmp_path), "--out", str(out)],
    ]
    for argv in commands:
        assert main(argv) == 2, argv
        assert expected in capsys.readouterr().err, argv
    merge_out = tmp_path if kind == "file" else blocker / "merged.pt"
    assert main(["lora", "merge", "--base", "b.pt", "--lora", "l.pt", "--out", str(merge_out)]) == 2
    err = capsys.readouterr().err
    assert ("is a folder; give the path of the file" if kind == "file" else f"{blocker} is a file") in err


def test_result_json_is_written_atomically(capsys, tmp_path, monkeypatch):
    """A full disk while result.json is written leaves no half-written result (the video and strip stay)."""
    import errno
    from pathlib import Path

    real = Path.write_text

    def full_disk(self, text, *a, **k):
        if "result" in self.name:
            real(self, text[: len(text) // 2], *a, **k)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, text, *a, **k)

    monkeypatch.setattr(Path, "write_text", full_disk)
    out = tmp_path / "run"
    argv = ["generate", "--model", "tiny", "--frames", "4", "--steps", "2", "--out", str(out), "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err  # one line naming the file, no traceback
    assert f"longlive generate: error: [Errno 28] could not write {out / 'result.json'}: No space left" in err
    assert (out / "video.mp4").is_file() and (out / "strip.png").is_file()
    assert sorted(p.name for p in out.iterdir()) == ["strip.png", "video.mp4"]  # no result.json, no temp file


def test_frames_default_to_about_five_seconds(capsys, tmp_path):
    from longlive.model.presets import default_frames

    assert default_frames(get_preset("tiny")) == 30 and default_frames(get_preset("wan2.2-ti2v-5b")) == 32
    out = tmp_path / "five"
    code, err = _run(capsys, "--model", "tiny", "--prompt", "a red circle", "--steps", "2", "--out", str(out),
                     "--no-progress")
    assert code == 0, err
    row = json.loads((out / "result.json").read_text())["rows"][0]
    assert row["frames"] == 30 and row["frames_video"] == 117 and row["video_seconds"] == pytest.approx(4.875)
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "about 5 s of video: wan2.2-ti2v-5b 32, wan2.1-t2v-1.3b 21, tiny 30" in help_text
    assert "its first chunk is conditioned on the prompt as written, the shot's later chunks on the bare caption" in \
        help_text


def test_generate_takes_the_named_precisions_and_records_the_name(capsys, tmp_path):
    """`generate --precision` takes the names sweeps and `fidelity` take; the row's precision column is the name."""
    from longlive.experiments import precisions

    assert {"fp32", "bf16", "fp8", "fp8-emulated", "nvfp4"} <= set(precisions())
    out = tmp_path / "q"
    code, err = _run(capsys, "--model", "tiny", "--frames", "4", "--steps", "2", "--precision", "nvfp4",
                     "--kv-quant", "nvfp4", "--out", str(out), "--no-progress")
    assert code == 0, err
    row = json.loads((out / "result.json").read_text())["rows"][0]
    assert (row["precision"], row["metrics_extra"]["dtype"], row["linear_quant"], row["linear_backend"],
            row["weight_rule"], row["kv_quant"]) == ("nvfp4", "bf16", "nvfp4", "emulated", "mse", "nvfp4")
    code, err = _run(capsys, "--model", "tiny", "--frames", "4", "--steps", "2", "--precision", "nvfp4",
                     "--weight-rule", "static_6", "--out", str(tmp_path / "s6"), "--no-progress")
    assert json.loads((tmp_path / "s6" / "result.json").read_text())["rows"][0]["weight_rule"] == "static_6"
    with pytest.raises(SystemExit):
        main(["generate", "--model", "tiny", "--precision", "fp4", "--out", str(tmp_path / "x")])
    assert "invalid choice: 'fp4'" in capsys.readouterr().err


def test_lora_at_build_equals_a_merged_checkpoint(capsys, tmp_path):
    """`generate --lora` merges W + (alpha/rank)·B·A into the loaded Linears (before fuse and quantise): the same
    video as `longlive lora merge` into a checkpoint, up to the merged checkpoint's BF16 rounding of the weights."""
    from safetensors.torch import load_file

    from longlive.eval.fidelity import latent_rel_err
    from longlive.train.lora import save_lora

    cfg = get_preset("tiny")
    base = save_generator(build_model(cfg, dtype=torch.bfloat16, seed=5), tmp_path / "model_bf16.pt")
    g = torch.Generator().manual_seed(3)
    lora = {}
    for name in ("blocks.0.self_attn.q", "blocks.1.ffn.0"):
        lin = build_model(cfg, device="meta", dtype=torch.float32, init=False).get_submodule(name)
        lora[f"{name}.lora_A.weight"] = torch.randn(4, lin.in_features, generator=g) * 0.3
        lora[f"{name}.lora_B.weight"] = torch.randn(lin.out_features, 4, generator=g) * 0.3
    save_lora(tmp_path / "l.pt", lora, lora_rank=4, alpha=8)  # scale alpha / rank = 2
    common = ["--model", "tiny", "--frames", "4", "--steps", "4", "--decode", "none", "--no-progress"]
    code, err = _run(capsys, *common, "--checkpoint", str(base), "--lora", str(tmp_path / "l.pt"), "--out",
                     str(tmp_path / "a"))
    assert code == 0, err
    assert "LoRA" in err and "merged into 2 Linears (scale 2)" in err
    assert main(["lora", "merge", "--base", str(base), "--lora", str(tmp_path / "l.pt"), "--out",
                 str(tmp_path / "merged.pt")]) == 0
    code, err = _run(capsys, *common, "--checkpoint", str(tmp_path / "merged.pt"), "--out", str(tmp_path / "b"))
    assert code == 0, err
    code, err = _run(capsys, *common, "--checkpoint", str(base), "--out", str(tmp_path / "c"))
    assert code == 0, err
    lat = {k: load_file(str(tmp_path / k / "latents.safetensors"))["latents"] for k in "abc"}
    same, moved = latent_rel_err(lat["a"], lat["b"]), latent_rel_err(lat["a"], lat["c"])
    assert same < 1e-2 and moved > 20 * same, (same, moved)
    code, err = _run(capsys, *common, "--lora", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "d"))
    assert code != 0 and "missing.pt" in err
