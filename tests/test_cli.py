"""The `longlive generate` command: clear errors before any work, and a real tiny video on disk."""

import json

import pytest
import torch

from longlive.cli import main
from longlive.model.checkpoint import save_generator
from longlive.model.dit import build_model
from longlive.model.presets import get_preset


@pytest.fixture(autouse=True)
def _isolated_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("LONGLIVE_WEIGHTS", str(tmp_path / "weights"))


def _run(capsys, *args):
    code = main(["generate", *args])
    return code, capsys.readouterr().err


def test_unknown_preset(capsys, tmp_path):
    code, err = _run(capsys, "--preset", "wan3", "--frames", "8", "--out", str(tmp_path))
    assert code == 2 and "unknown preset 'wan3'" in err and "tiny" in err


def test_frames_not_a_multiple_of_the_chunk(capsys, tmp_path):
    code, err = _run(capsys, "--preset", "tiny", "--frames", "5", "--out", str(tmp_path))
    assert code == 2 and "--frames 5 is not a multiple of the tiny chunk of 2" in err


def test_missing_weight_file_names_expected_path(capsys, tmp_path):
    code, err = _run(capsys, "--preset", "wan2.2-ti2v-5b", "--frames", "8", "--out", str(tmp_path))
    assert code == 2
    assert str(tmp_path / "weights" / "wan2.2-ti2v-5b" / "model_bf16.pt") in err
    code, err = _run(
        capsys, "--preset", "tiny", "--frames", "4", "--checkpoint", str(tmp_path / "no.pt"), "--out", str(tmp_path)
    )
    assert code == 2 and f"expected {tmp_path / 'no.pt'}" in err


def test_checkpoint_shape_mismatch_names_key(capsys, tmp_path):
    other = get_preset("tiny").with_overrides(ffn_dim=200)
    path = save_generator(build_model(other), tmp_path / "model_bf16.pt")
    code, err = _run(
        capsys, "--preset", "tiny", "--frames", "4", "--checkpoint", str(path), "--out", str(tmp_path), "--no-progress"
    )
    assert code == 2 and "model.blocks.0.ffn.0.weight has shape [200, 128]" in err


def test_unknown_decode_mode(capsys, tmp_path):
    code, err = _run(capsys, "--preset", "tiny", "--frames", "4", "--decode", "teleport", "--out", str(tmp_path))
    assert code == 2 and "unknown --decode 'teleport'" in err


def test_generates_video_strip_and_result(capsys, tmp_path):
    import imageio.v3 as iio

    out = tmp_path / "run"
    code, _ = _run(
        capsys,
        "--preset",
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
    assert row["windows"][1] == [0, 1, 2, 3]
    assert torch.__version__.split("+")[0] in result["manifest"]["packages"]["torch"]


def test_compiled_generation_equals_eager(capsys, tmp_path):
    """`--compile default` warms every window length up first (reported as compile_s) and writes the eager latents."""
    from safetensors.torch import load_file

    from longlive.infer.video import VideoRequest, make_video

    base = dict(preset="tiny", frames=10, steps=2, seed=1, device="cpu", progress=False, save_latents=True)
    eager = make_video(VideoRequest(**base), tmp_path / "eager")
    compiled = make_video(VideoRequest(**base, compile="default"), tmp_path / "compiled")
    assert eager["compile_s"] is None and compiled["compile_s"] > 0 and compiled["compile"] == "default"
    a, b = (load_file(tmp_path / d / "latents.safetensors")["latents"] for d in ("eager", "compiled"))
    torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="unknown --compile 'fast'"):  # runner requests are checked too
        make_video(VideoRequest(**{**base, "compile": "fast"}), tmp_path / "bad")
    with pytest.raises(SystemExit) as exc:
        _run(capsys, "--preset", "tiny", "--frames", "4", "--compile", "fastest", "--out", str(tmp_path))
    assert exc.value.code == 2 and "invalid choice: 'fastest'" in capsys.readouterr().err
