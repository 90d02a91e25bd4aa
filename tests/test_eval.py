"""longlive.eval: VBench scoring vs the paper's tables, weight-free metrics vs hand computations, clip rules, the
VBench adapter's offline checks (with a fake `vbench` module), and the metric registry. CPU, no weights."""

from __future__ import annotations

import math
import sys
import types
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import numpy as np
import pytest
import torch

from longlive.eval import clips, fidelity, flicker, scoring, vbench_adapter
from longlive.eval.metrics import METRICS, MissingInputError, Needs, compute_metrics, get_metric, register_metric

# ---------------------------------------------------------------------------------------------------------------
# scoring


def _printed(x: float) -> Decimal:
    """Round half-up to 2 decimals as a paper prints (after shaving float noise)."""
    return Decimal(repr(round(x, 9))).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


@pytest.mark.parametrize("label", [k for k, r in scoring.PAPER_TABLE4.items() if r["quality"] is not None])
def test_table4_total_from_quality_and_semantic(label: str) -> None:
    row = scoring.PAPER_TABLE4[label]
    assert _printed(scoring.total_score(row["quality"], row["semantic"])) == Decimal(str(row["total"]))


def test_table4_has_the_paper_rows() -> None:
    bf16 = scoring.PAPER_TABLE4["LongLive-2.0 5B BF16 4-step"]
    assert (bf16["total"], bf16["quality"], bf16["semantic"]) == (85.06, 86.67, 78.63)
    assert len(scoring.PAPER_TABLE4) == 6
    assert scoring.PAPER_TABLE4["Wan2.2-TI2V-5B 50-step"]["total"] == 83.32
    for row in scoring.PAPER_TABLE5.values():
        dims = {k: v for k, v in row.items() if k in scoring.DIMENSIONS}
        assert len(dims) == 6 and set(dims) <= set(scoring.QUALITY_DIMENSIONS)
        assert all(0 < v <= 100 for v in dims.values())


@pytest.mark.parametrize("dim", scoring.DIMENSIONS)
def test_normalization_at_min_and_max(dim: str) -> None:
    lo, hi = scoring.NORMALIZATION[dim]
    assert scoring.normalize(dim, lo) == 0.0
    assert scoring.normalize(dim, hi) == pytest.approx(1.0, abs=1e-12)


def test_normalization_hand_values() -> None:
    assert scoring.normalize("temporal_flickering", 0.8) == pytest.approx((0.8 - 0.6293) / (1 - 0.6293))
    assert scoring.normalize("motion_smoothness", 0.98) == pytest.approx((0.98 - 0.706) / (0.9975 - 0.706))
    assert scoring.normalize("temporal_flickering", 0.5) < 0  # unclipped, as the official script
    assert scoring.normalize("Subject Consistency", 1.0) == 1.0  # leaderboard spelling accepted


def _at(value: str, **override: str) -> dict[str, float]:
    pick = {"min": 0, "max": 1}
    return {d: scoring.NORMALIZATION[d][pick[override.get(d, value)]] for d in scoring.DIMENSIONS}


def test_weights_and_divisors() -> None:
    assert sum(scoring.WEIGHTS[d] for d in scoring.QUALITY_DIMENSIONS) == 6.5
    assert sum(scoring.WEIGHTS[d] for d in scoring.SEMANTIC_DIMENSIONS) == 9
    assert scoring.quality_score(_at("max")) == pytest.approx(100.0)
    assert scoring.quality_score(_at("min")) == 0.0
    # dynamic degree counts half: alone at max → 0.5/6.5; alone at min → 6/6.5
    assert scoring.quality_score(_at("min", dynamic_degree="max")) == pytest.approx(100 * 0.5 / 6.5)
    assert scoring.quality_score(_at("max", dynamic_degree="min")) == pytest.approx(100 * 6 / 6.5)
    assert scoring.quality_score(_at("min", imaging_quality="max")) == pytest.approx(100 / 6.5)
    assert scoring.semantic_score(_at("min", scene="max")) == pytest.approx(100 / 9)
    assert scoring.semantic_score(_at("max")) == pytest.approx(100.0)
    assert scoring.total_score(100.0, 0.0) == 80.0 and scoring.total_score(0.0, 100.0) == 20.0


def test_scoring_errors() -> None:
    dims = _at("max")
    del dims["color"]
    with pytest.raises(KeyError, match="missing: color"):
        scoring.semantic_score(dims)
    with pytest.raises(KeyError, match="unknown VBench dimension 'sharpness'"):
        scoring.quality_score({**_at("max"), "sharpness": 0.5})
    with pytest.raises(ValueError, match="percent"):
        scoring.quality_score({**_at("max"), "subject_consistency": 97.48})
    with pytest.raises(ValueError, match="twice"):
        scoring.quality_score({**_at("max"), "subject consistency": 0.9})
    with pytest.raises(ValueError, match="fraction"):
        scoring.normalize("color", float("nan"))


def test_vbench_scores_columns() -> None:
    quality_only = {d: v for d, v in _at("max").items() if d in scoring.QUALITY_DIMENSIONS}
    assert scoring.vbench_scores(quality_only) == {
        "vbench_quality": pytest.approx(100.0),
        "vbench_semantic": None,
        "vbench_total": None,
    }
    full = scoring.vbench_scores(_at("max", color="min"))
    assert full["vbench_total"] == pytest.approx(scoring.total_score(100.0, 100 * 8 / 9))
    with pytest.raises(KeyError, match="semantic"):
        scoring.vbench_scores({**quality_only, "color": 0.5})
    assert scoring.dimension_percent({"subject_consistency": 0.9748}) == {"subject_consistency": pytest.approx(97.48)}


# ---------------------------------------------------------------------------------------------------------------
# temporal flickering


def _hand_flicker(frames: np.ndarray) -> float:
    f = frames.astype(np.float64)
    maes = [np.abs(f[i + 1] - f[i]).mean() for i in range(len(f) - 1)]
    return (255.0 - float(np.mean(maes))) / 255.0


def test_flicker_static_is_max() -> None:
    frames = np.full((5, 6, 8, 3), 77, dtype=np.uint8)
    assert flicker.temporal_flickering(frames) == 1.0


def test_flicker_alternating_frames() -> None:
    frames = np.zeros((6, 4, 4, 3), dtype=np.uint8)
    frames[1::2] = 255
    assert flicker.temporal_flickering(frames) == 0.0
    frames = np.full((7, 4, 4, 3), 10, dtype=np.uint8)
    frames[1::2] = 50
    assert flicker.temporal_flickering(frames) == pytest.approx(1 - 40 / 255, abs=1e-15)


@pytest.mark.parametrize("t", [2, 3, 17, 40])  # 17/40 cross the internal 16-pair slab
def test_flicker_matches_float64_hand_computation(t: int) -> None:
    frames = np.random.default_rng(t).integers(0, 256, size=(t, 5, 7, 3), dtype=np.uint8)
    assert flicker.temporal_flickering(frames) == pytest.approx(_hand_flicker(frames), abs=1e-13)
    assert flicker.temporal_flickering(torch.from_numpy(frames)) == flicker.temporal_flickering(frames)
    np.testing.assert_allclose(flicker.frame_mae(frames)[0], np.abs(frames[1].astype(float) - frames[0]).mean())


def test_flicker_input_errors() -> None:
    with pytest.raises(ValueError, match="at least 2 frames"):
        flicker.temporal_flickering(np.zeros((1, 4, 4, 3), np.uint8))
    with pytest.raises(TypeError, match="uint8"):
        flicker.temporal_flickering(np.zeros((3, 4, 4, 3), np.float32))
    with pytest.raises(ValueError, match=r"\[T, H, W, 3\]"):
        flicker.temporal_flickering(np.zeros((3, 4, 4), np.uint8))


@pytest.mark.skipif(not flicker.vbench_available(), reason="the optional vbench package is not importable")
def test_flicker_equals_vbench_own(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    frames = np.repeat(rng.integers(0, 256, size=(1, 32, 48, 3), dtype=np.uint8), 12, axis=0)
    frames[1::3] = np.clip(frames[1::3].astype(int) + 9, 0, 255).astype(np.uint8)  # periodic flicker
    res = flicker.compare_with_vbench(frames, fps=8, workdir=tmp_path)
    assert res["ours"] == pytest.approx(_hand_flicker(frames), abs=1e-13)
    assert res["vbench_frames"] == pytest.approx(res["ours"], abs=1e-6)
    assert res["vbench_file"] == pytest.approx(res["ours_decoded"], abs=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# fidelity


def test_latent_rel_err_values() -> None:
    ref = torch.randn(1, 4, 3, 5, 6)
    assert fidelity.latent_rel_err(ref, ref.clone()) == 0.0
    assert fidelity.latent_rel_err(ref * 1.1, ref) == pytest.approx(0.1, rel=1e-6)
    x = ref + 0.01 * torch.randn_like(ref)
    exact = (x.double() - ref.double()).norm() / ref.double().norm()
    assert fidelity.latent_rel_err(x, ref) == pytest.approx(float(exact), rel=1e-12)
    assert fidelity.latent_rel_err(x.bfloat16(), ref.numpy()) > 0


def test_latent_rel_err_zero_reference_and_errors() -> None:
    zero = torch.zeros(2, 3)
    assert fidelity.latent_rel_err(zero, zero) == 0.0
    assert fidelity.latent_rel_err(torch.ones(2, 3), zero) == math.inf
    assert math.isnan(fidelity.latent_rel_err(torch.full((2, 3), float("nan")), torch.ones(2, 3)))
    with pytest.raises(ValueError, match="shape mismatch"):
        fidelity.latent_rel_err(torch.ones(2, 3), torch.ones(3, 2))


def test_latent_rel_err_chunked_and_from_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from safetensors.torch import save_file

    monkeypatch.setattr(fidelity, "_CHUNK", 7)
    ref = torch.randn(3, 5, 4)
    x = ref + torch.randn_like(ref)
    expect = float((x.double() - ref.double()).norm() / ref.double().norm())
    assert fidelity.latent_rel_err(x, ref) == pytest.approx(expect, rel=1e-12)
    save_file({"latents": x}, str(tmp_path / "x.safetensors"))
    save_file({"latents": ref, "other": ref.clone()}, str(tmp_path / "ref.safetensors"))
    assert fidelity.latent_rel_err(tmp_path / "x.safetensors", tmp_path / "ref.safetensors", key="latents") == (
        pytest.approx(expect, rel=1e-12)
    )
    with pytest.raises(ValueError, match="pass key="):
        fidelity.latent_rel_err(tmp_path / "x.safetensors", tmp_path / "ref.safetensors")


def test_psnr_from_video_files(tmp_path: Path) -> None:
    from longlive.eval.loading import load_frames
    from longlive.output import write_mp4

    frames = np.zeros((4, 16, 24, 3), dtype=np.uint8)
    frames[:, :, 12:] = 200
    path = write_mp4(frames, tmp_path / "v.mp4", fps=8)
    assert load_frames(path).shape == frames.shape
    assert fidelity.psnr(path, frames) > 30.0  # H.264 at CRF 18 on flat colours


def test_psnr() -> None:
    ref = np.random.default_rng(1).integers(0, 255, size=(3, 4, 6, 3), dtype=np.uint8)
    assert fidelity.psnr(ref, ref.copy()) == math.inf
    off = ref + 1  # |diff| = 1 everywhere → MSE 1
    assert fidelity.psnr(off, ref) == pytest.approx(20 * math.log10(255.0), abs=1e-12)
    assert fidelity.psnr(off, ref, max=1.0) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="shape mismatch"):
        fidelity.psnr(ref[:2], ref)
    with pytest.raises(ValueError, match="shape mismatch"):
        fidelity.psnr(ref[:, :2], ref)


# ---------------------------------------------------------------------------------------------------------------
# VBench-Long clips


@pytest.mark.parametrize(
    ("n", "fps", "expect"),
    [
        (64, 16, [(0, 32), (32, 64)]),
        (65, 16, [(0, 32), (32, 64), (33, 65)]),  # leftover: one full clip ending at the last frame
        (95, 16, [(0, 32), (32, 64), (63, 95)]),
        (32, 16, [(0, 32)]),
        (31, 16, [(0, 31)]),  # shorter than a clip: the whole video
        (1, 16, [(0, 1)]),
        (100, 23.976, [(0, 46), (46, 92), (54, 100)]),  # int(23.976) · 2 = 46
    ],
)
def test_clip_ranges(n: int, fps: float, expect: list[tuple[int, int]]) -> None:
    assert clips.clip_ranges(n, fps) == expect


def test_clip_ranges_cover_and_errors() -> None:
    for n in range(1, 200, 7):
        r = clips.clip_ranges(n, 16, clip_seconds=10)
        assert r[0][0] == 0 and r[-1][1] == n and all(b - a == min(n, 160) for a, b in r)
    assert clips.clip_ranges(960, 16) == [(i, i + 32) for i in range(0, 960, 32)]  # 60 s at 16 fps: 30 clips
    assert clips.VBENCH_LONG_CLIP_SECONDS["human_action"] == 10.0
    with pytest.raises(ValueError):
        clips.clip_ranges(0, 16)
    with pytest.raises(ValueError, match="no frames"):
        clips.clip_ranges(10, 0.5)


def test_score_long_video() -> None:
    frames = np.zeros((70, 2, 2, 3), dtype=np.uint8)
    frames[32:] = 200  # a cut exactly at the clip boundary: clips 0 and 1 are static, the extended last one too
    assert clips.per_clip_scores(frames, 16, lambda c: c.shape[0]) == [32, 32, 32]
    assert clips.score_long_video(frames, 16, flicker.temporal_flickering) == 1.0
    assert flicker.temporal_flickering(frames) < 1.0
    assert clips.score_long_video(frames, 16, lambda c: float(c[0, 0, 0, 0])) == pytest.approx((0 + 200 + 200) / 3)


# ---------------------------------------------------------------------------------------------------------------
# VBench adapter (fake `vbench`; nothing is downloaded or run for real)


@pytest.fixture
def videos(tmp_path: Path) -> Path:
    d = tmp_path / "videos"
    d.mkdir()
    (d / "a cat-0.mp4").write_bytes(b"")
    return d


@pytest.fixture
def no_external_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for var in ("LONGLIVE_VBENCH_PYTHON", "VBENCH_CACHE_DIR", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    for name in [m for m in sys.modules if m == "vbench" or m.startswith("vbench.")]:
        monkeypatch.delitem(sys.modules, name)  # a real vbench imported earlier must not leak into these tests
    return tmp_path


def _fake_vbench(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, seen: dict | None = None) -> types.ModuleType:
    mod = types.ModuleType("vbench")
    mod.__file__ = str(tmp_path / "fake_vbench" / "__init__.py")

    class VBench:
        def __init__(self, device: str, full_info_dir: str, output_path: str) -> None:
            self.out = Path(output_path)

        def evaluate(self, videos_path: str, name: str, dimension_list: list[str], local: bool, mode: str) -> None:
            import json
            import os

            if seen is not None:
                seen.update(
                    local=local,
                    mode=mode,
                    offline=os.environ.get("HF_HUB_OFFLINE"),
                    cache=os.environ.get("VBENCH_CACHE_DIR"),
                )
            data = {d: [0.9, [{"video_path": videos_path, "video_results": 0.9}]] for d in dimension_list}
            (self.out / f"{name}_eval_results.json").write_text(json.dumps(data))

    mod.VBench = VBench
    monkeypatch.setitem(sys.modules, "vbench", mod)
    return mod


def test_adapter_missing_package(monkeypatch: pytest.MonkeyPatch, videos: Path, no_external_env: Path) -> None:
    monkeypatch.setitem(sys.modules, "vbench", None)  # import vbench → ImportError
    with pytest.raises(vbench_adapter.VBenchUnavailableError) as err:
        vbench_adapter.run_vbench(videos, ["temporal_flickering"], cache_dir=no_external_env / "cache")
    assert "pip install longlive[vbench]" in str(err.value) and "optional" in str(err.value)
    with pytest.raises(vbench_adapter.VBenchUnavailableError, match="optional"):
        vbench_adapter.run_vbench(videos, ["temporal_flickering"], python=str(no_external_env / "no-such-python"))


def test_adapter_missing_weights_lists_every_path(
    monkeypatch: pytest.MonkeyPatch, videos: Path, no_external_env: Path
) -> None:
    _fake_vbench(monkeypatch, no_external_env)
    cache = no_external_env / "vbench_cache"
    dims = ["subject_consistency", "aesthetic_quality", "temporal_style", "temporal_flickering"]
    with pytest.raises(vbench_adapter.MissingWeightsError) as err:
        vbench_adapter.run_vbench(videos, dims, cache_dir=cache, out_dir=no_external_env / "out")
    msg = str(err.value)
    expected = [
        cache / "dino_model/facebookresearch_dino_main/hubconf.py",
        cache / "dino_model/dino_vitbase16_pretrain.pth",
        cache / "clip_model/ViT-L-14.pt",
        cache / "aesthetic_model/emb_reader/sa_0_4_vit_l_14_linear.pth",
        cache / "ViCLIP/ViClip-InternVid-10M-FLT.pth",
        cache / "ViCLIP/bpe_simple_vocab_16e6.txt.gz",
        no_external_env / "torch_home/hub/checkpoints/dino_vitbase16_pretrain.pth",  # DINO's hubconf → torch hub
    ]
    for path in expected:
        assert str(path) in msg
    assert "temporal_flickering" not in msg  # needs no weights
    assert len(err.value.missing) == len(expected) + 1  # + vision_transformer.py of the DINO clone
    assert not (no_external_env / "out").exists()  # nothing ran


def test_adapter_runs_offline_once_cache_is_full(
    monkeypatch: pytest.MonkeyPatch, videos: Path, no_external_env: Path
) -> None:
    seen: dict = {}
    _fake_vbench(monkeypatch, no_external_env, seen)
    cache = no_external_env / "vbench_cache"
    dims = ["subject_consistency", "imaging_quality", "temporal_flickering"]
    for rel in {r for d in dims for r in vbench_adapter.VBENCH_WEIGHT_FILES[d]}:
        (cache / rel).parent.mkdir(parents=True, exist_ok=True)
        (cache / rel).touch()
    hub = no_external_env / "torch_home/hub/checkpoints/dino_vitbase16_pretrain.pth"
    hub.parent.mkdir(parents=True)
    hub.touch()
    vbench_adapter.check_weights(dims, cache)
    out = vbench_adapter.run_vbench(videos, dims, cache_dir=cache, out_dir=no_external_env / "out", device="cpu")
    assert out == {d: 0.9 for d in dims}
    assert seen == {"local": True, "mode": "custom_input", "offline": "1", "cache": str(cache)}


def test_adapter_unavailable_reason(monkeypatch: pytest.MonkeyPatch, no_external_env: Path) -> None:
    cache = no_external_env / "vbench_cache"
    monkeypatch.setitem(sys.modules, "vbench", None)
    assert "pip install longlive[vbench]" in vbench_adapter.unavailable_reason(["temporal_flickering"], cache)
    _fake_vbench(monkeypatch, no_external_env)
    assert vbench_adapter.unavailable_reason(["temporal_flickering"], cache) is None
    reason = vbench_adapter.unavailable_reason(["dynamic_degree"], cache)
    assert reason is not None and str(cache / "raft_model/models/raft-things.pth") in reason
    err = vbench_adapter.MissingWeightsError("msg", [("color", "/x")])
    assert str(err) == "msg" and err.args[1] == [("color", "/x")] and isinstance(err, FileNotFoundError)
    import pickle

    assert pickle.loads(pickle.dumps(err)).missing == [("color", "/x")]


def test_adapter_dimension_checks(no_external_env: Path, videos: Path) -> None:
    vbench_adapter.check_weights(["temporal_flickering"], no_external_env / "empty")
    with pytest.raises(ValueError, match="custom_input"):
        vbench_adapter.run_vbench(videos, ["temporal_flickering", "scene"])
    with pytest.raises(KeyError, match="unknown VBench dimension"):
        vbench_adapter.run_vbench(videos, ["flicker"])
    with pytest.raises(vbench_adapter.MissingWeightsError, match="models--bert-base-uncased"):
        vbench_adapter.check_weights(["scene"], no_external_env / "empty")
    assert set(vbench_adapter.VBENCH_WEIGHT_FILES) == set(scoring.DIMENSIONS)


# ---------------------------------------------------------------------------------------------------------------
# metric registry


def test_registry_builtins_fill_schema_columns() -> None:
    from longlive.runner.schema import METRICS as COLUMNS

    for name in ("temporal_flickering", "psnr_vs_ref", "latent_rel_err_vs_ref"):
        assert name in METRICS and name in COLUMNS and callable(METRICS[name])
    assert get_metric("psnr_vs_ref").needs == Needs(frames=True, reference=True)
    assert get_metric("psnr_vs_ref").needs.inputs() == ("frames", "ref_frames")
    assert get_metric("latent_rel_err_vs_ref").needs.inputs() == ("latents", "ref_latents")
    assert get_metric("temporal_flickering_long").needs.inputs() == ("frames", "fps")


def test_registry_compute_by_name() -> None:
    frames = np.random.default_rng(2).integers(0, 256, size=(40, 4, 4, 3), dtype=np.uint8)
    lat = torch.randn(1, 2, 3, 4, 4)
    got = compute_metrics(
        ["temporal_flickering", "psnr_vs_ref", "latent_rel_err_vs_ref", "temporal_flickering_long"],
        frames=frames,
        ref_frames=frames,
        latents=lat,
        ref_latents=lat,
        fps=16,
    )
    assert got == {
        "temporal_flickering": pytest.approx(_hand_flicker(frames)),
        "psnr_vs_ref": math.inf,
        "latent_rel_err_vs_ref": 0.0,
        "temporal_flickering_long": pytest.approx(np.mean([_hand_flicker(frames[0:32]), _hand_flicker(frames[8:40])])),
    }
    assert compute_metrics(["psnr_vs_ref"], skip_missing=True, frames=frames) == {"psnr_vs_ref": None}
    with pytest.raises(MissingInputError, match="ref_frames"):
        compute_metrics(["psnr_vs_ref"], frames=frames)
    with pytest.raises(KeyError, match="registered"):
        get_metric("fvd")


def test_register_metric(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("longlive.eval.metrics.METRICS", dict(METRICS))
    from longlive.eval import metrics

    @register_metric("mean_pixel", needs=Needs(frames=True))
    def mean_pixel(frames: np.ndarray) -> float:
        """Mean pixel value."""
        return float(np.mean(frames))

    assert metrics.METRICS["mean_pixel"](frames=np.full((2, 2, 2, 3), 4, np.uint8), fps=8) == 4.0
    assert metrics.METRICS["mean_pixel"].description == "Mean pixel value."
    with pytest.raises(ValueError, match="already registered"):
        register_metric("mean_pixel", needs=Needs(frames=True))(mean_pixel)
    with pytest.raises(TypeError, match="unknown metric inputs"):
        metrics.METRICS["mean_pixel"](frames=np.zeros((2, 2, 2, 3), np.uint8), video=1)
    assert "mean_pixel" not in METRICS
