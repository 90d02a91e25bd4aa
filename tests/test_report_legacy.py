"""Results of the retired bench scripts (committed under reports/) convert once into runner rows with exact field
mappings, render in the report, and are refused by `longlive report` with the command that converts them."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from longlive.model.presets import get_preset
from longlive.report import build_report, load_results
from longlive.report.cli import main as report_main
from longlive.report.legacy import convert_bench, legacy_script, write_converted
from longlive.runner.schema import AXES, IDENTITY, METRICS, NESTED, STATUSES, TIMES, empty_row

ROOT = Path(__file__).resolve().parents[1]
PERF = ROOT / "reports/perf/h200-run2-a9747a8/rows.jsonl"  # bf16 + fp8, fidelity vs fp32 eager, nvfp4 KV at 32 chunks
SP = ROOT / "reports/sp-5b/h200x4/e2e_sp4_4step.json"  # sp=4 denoise row + end-to-end row with tiled decode
VAE = ROOT / "reports/perf/h200-run2-a9747a8/vae_eager_cl.json"
TRAIN = ROOT / "reports/train-5b/h200x4/table1/run2/bf16-nosp.json"
DMD = ROOT / "reports/train-5b/h200x4/table2/nvfp4-all.json"
PROBE = ROOT / "reports/train-5b/h200x4/probes/fp8_memory_probe.json"  # a one-off list, not a bench result
CHUNK = get_preset("wan2.2-ti2v-5b").chunk_frames
COLUMNS = {*AXES, *IDENTITY, *METRICS, *NESTED, *TIMES}
OOM_TEXT = "CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity of 139.72 GiB"


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _check_schema(rows: list[dict]) -> None:
    for r in rows:
        assert set(r) == COLUMNS, set(r) ^ COLUMNS  # every column, nothing else at the top level
        assert r["status"] in STATUSES and r["experiment"].startswith("legacy-bench:")
        assert r["metrics_extra"]["legacy_source"]["row"] == rows.index(r)
        assert r["hardware"] == "h200" and r["manifest"]["gpu"] == "NVIDIA H200"
    assert len({r["cell_id"] for r in rows}) == len(rows)


@pytest.fixture(scope="module")
def failed_ladder(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """train_ladder / dmd_memory rows of configs that ran out of memory or lacked a backend, in the exact shape the
    scripts wrote them (none is committed: every committed config ran), with a committed file's manifest."""
    root = tmp_path_factory.mktemp("ladder")
    manifest = json.loads(TRAIN.read_text())["manifest"]
    rows = {
        "bf16-nosp-192.json": {"config": "bf16-nosp", "preset": "wan2.2-ti2v-5b", "frames": 192, "status": "oom",
                               "error": OOM_TEXT, "timing": "train_iter_s"},
        "nvfp4-emulated-balanced.json": {"config": "nvfp4-emulated-balanced", "preset": "wan2.2-ti2v-5b",
                                         "frames": 96, "status": "unavailable", "error": "nvfp4 needs triton",
                                         "timing": "train_iter_s"},
        "nvfp4-generator.json": {"config": "nvfp4-generator", "status": "oom", "error": OOM_TEXT, "latents": 32},
    }
    paths = []
    for name, row in rows.items():
        cfg = dict(manifest, config={**manifest["config"], "config": [row["config"]]})
        if "latents" in row:
            cfg["config"] = {"preset": "wan2.2-ti2v-5b", "latents": 32, "rank": 128}
        (root / name).write_text(json.dumps({**row, "manifest": cfg}, indent=2))
        paths.append(root / name)
    return paths


def test_perf_rows(tmp_path: Path) -> None:
    src = _jsonl(PERF)
    rows = convert_bench(PERF)
    _check_schema(rows)
    assert len(rows) == len(src) == 6
    assert [r["cell_id"] for r in convert_bench(PERF)] == [r["cell_id"] for r in rows]  # deterministic
    for s, r in zip(src, rows, strict=True):
        assert (r["experiment"], r["workload"], r["status"], r["reason"]) == ("legacy-bench:perf", "infer", "ok", None)
        assert r["model"] == s["preset"] == "wan2.2-ti2v-5b"
        assert r["frames"] == s["chunks"] * CHUNK
        assert (r["precision"], r["kv_quant"], r["steps"], r["compile"]) == (s["precision"], s["kv_quant"],
                                                                              s["steps"], s["compile"])
        assert (r["sp"], r["exchange"], r["decode"]) == (1, "none", "none")
        assert r["denoise_fps"] == s["denoise_fps"]
        assert r["chunk_ms_median"] == s["chunk_ms_median"] and r["kv_cache_gb"] == s["kv_cache_gb"]
        assert r["timing_definition"]["denoise_fps"] == s["timing_definition"]
        assert r["compile_s"] == s["compile_warmup_s"]
        assert r["latent_rel_err_vs_ref"] == s["latent_rel_err_vs_fp32_eager"]
        assert r["manifest"] == s["manifest"] and r["config"] == s["manifest"]["config"]
        fp8 = s["precision"] == "fp8"
        assert (r["linear_quant"], r["linear_backend"]) == (("fp8", "fp8") if fp8 else ("none", None))
        assert r["gemm_tflops"] == s["gemm_fp8_tflops" if fp8 else "gemm_bf16_tflops"]
        assert r["mfu"] == pytest.approx(s["achieved_tflops"] / r["gemm_tflops"])
        extra = r["metrics_extra"]  # keys without a column keep their name and value
        for k in ("gemm_bf16_tflops", "gemm_fp8_tflops", "chunk_ms", "attn_backend", "warmup_chunks", "model_config",
                  "latent_rel_err_vs_eager"):
            assert extra[k] == s[k]
    assert [r["linear_backend"] for r in rows] == [None, None, "fp8", "fp8", "fp8", "fp8"]  # was "fp8 _scaled_mm"
    assert [r["frames"] for r in rows] == [64, 64, 64, 64, 256, 256]


def test_sp_rows() -> None:
    data = json.loads(SP.read_text())
    rows = convert_bench(SP)
    _check_schema(rows)
    denoise, e2e = rows
    s0, s1 = data["rows"]
    for r, s in ((denoise, s0), (e2e, s1)):
        assert (r["workload"], r["model"], r["frames"]) == ("infer", s["preset"], s["chunks"] * CHUNK)
        assert (r["sp"], r["exchange"], r["steps"], r["precision"]) == (4, "none", 4, "bf16")
        assert r["denoise_fps"] == s["denoise_fps"] and r["manifest"] == data["manifest"]
        assert r["kv_quant"] == "none" and r["linear_quant"] == "none"
    assert denoise["decode"] == "none" and e2e["decode"] == "tiles"  # bench.sp --decode parallel
    assert denoise["timing_definition"] == {"denoise_fps": s0["timing_definition"]}
    assert denoise["kv_cache_gb"] == s0["kv_cache_gb_per_rank"]
    assert denoise["latent_rel_err_vs_ref"] == s0["latent_rel_err_vs_ref"]
    assert denoise["metrics_extra"]["sp_bytes_per_forward"] == s0["bytes_per_forward"]
    assert denoise["metrics_extra"]["sp_bytes_by_kind"] == s0["bytes_by_kind_rank0"]
    assert (e2e["e2e_fps"], e2e["e2e_s"], e2e["frames_video"]) == (s1["e2e_fps"], s1["e2e_s"], s1["frames_video"])
    assert e2e["decode_ms_median"] == s1["decode_ms_steady_median"]
    assert e2e["timing_definition"] == {"e2e_fps": s1["timing_definition"]}


def test_vae_rows() -> None:
    data = json.loads(VAE.read_text())
    (s,) = data["rows"]
    (r,) = convert_bench(VAE)
    _check_schema([r])
    assert (r["experiment"], r["workload"], r["model"], r["precision"]) == ("legacy-bench:vae_decode", "vae_decode",
                                                                            s["preset"], "bf16")
    assert (r["compile"], r["sp"], r["kv_quant"], r["steps"], r["decode"]) == ("none", 1, None, None, None)
    assert r["frames"] == len(s["decode_ms"]) * s["chunk_latents"] == 32
    assert r["decode_fps"] == s["decode_fps"]
    assert r["decode_ms_median"] == statistics.median(s["decode_ms"][1:])
    assert r["peak_allocated_gb"] == s["peak_allocated_gb"]
    assert r["timing_definition"] == {"decode_ms_median": s["timing_definition"], "decode_fps": s["timing_definition"]}
    assert {k: r["metrics_extra"][k] for k in ("decode_ms", "frames", "vae", "channels_last")} == \
        {k: s[k] for k in ("decode_ms", "frames", "vae", "channels_last")}


def test_train_and_dmd_rows(failed_ladder: list[Path]) -> None:
    s = json.loads(TRAIN.read_text())
    (r,) = convert_bench(TRAIN)
    _check_schema([r])
    assert (r["experiment"], r["workload"], r["status"]) == ("legacy-bench:train_ladder", "train", "ok")
    assert (r["model"], r["precision"], r["frames"]) == (s["preset"], "bf16", 96)
    assert (r["sp"], r["dp"], r["train_layout"], r["error_recycling"]) == (1, 4, "none", False)
    assert (r["kv_quant"], r["steps"], r["decode"], r["dmd_quantised"]) == (None, None, None, None)
    assert (r["iter_s"], r["mfu"]) == (s["iter_s"], s["mfu_bf16_peak"])
    assert (r["loss_first"], r["loss_last"]) == (s["loss"][0], s["loss"][-1])
    assert r["tokens_per_s"] == pytest.approx(s["tokens_per_sample"] * s["samples_per_iter"] / s["iter_s"])
    assert r["peak_allocated_gb"] == max(s["peak_allocated_gb_per_rank"])
    assert r["metrics_extra"]["losses"] == s["loss"] and r["metrics_extra"]["bench_config"] == "bf16-nosp"

    d = json.loads(DMD.read_text())
    (r,) = convert_bench(DMD)
    _check_schema([r])
    assert (r["workload"], r["dmd_quantised"], r["precision"], r["frames"]) == ("dmd", "generator+real+critic",
                                                                                "bf16", d["latents"])
    assert (r["peak_allocated_gb"], r["resident_gb"]) == (d["peak_allocated_gb"], d["resident_gb"])
    assert r["iter_s"] == statistics.median(d["iter_s_all"])
    assert r["metrics_extra"]["lora_rank"] == 128

    oom, unavailable, dmd_oom = (convert_bench(p)[0] for p in failed_ladder)
    assert (oom["status"], oom["reason"]) == ("failed", f"OOM: {OOM_TEXT}")
    assert (oom["precision"], oom["sp"], oom["dp"], oom["train_layout"], oom["frames"]) == ("bf16", 1, 4, "none", 192)
    assert oom["iter_s"] is None and oom["manifest"]["gpu"] == "NVIDIA H200"
    assert (unavailable["status"], unavailable["reason"]) == ("skipped", "nvfp4 needs triton")
    assert (unavailable["precision"], unavailable["sp"], unavailable["train_layout"]) == ("nvfp4", 4, "balanced")
    assert (dmd_oom["status"], dmd_oom["reason"], dmd_oom["dmd_quantised"]) == ("failed", f"OOM: {OOM_TEXT}",
                                                                                "generator")


def test_converted_store_renders(tmp_path: Path, failed_ladder: list[Path]) -> None:
    out = tmp_path / "legacy" / "results.jsonl"
    assert report_main(["convert-bench", str(PERF), str(SP), str(VAE), str(TRAIN), str(DMD),
                        str(failed_ladder[0].parent), "--out", str(out)]) == 0
    rows = _jsonl(out)
    assert len(rows) == 6 + 2 + 1 + 1 + 1 + 3
    df = load_results([out.parent])
    assert len(df) == len(rows) and set(df["experiment"]) == {
        "legacy-bench:perf", "legacy-bench:sp", "legacy-bench:vae_decode", "legacy-bench:train_ladder",
        "legacy-bench:dmd_memory"}
    assert sorted(df.loc[df["experiment"] == "legacy-bench:perf", "denoise_fps"]) == \
        sorted(r["denoise_fps"] for r in _jsonl(PERF))
    build_report([out.parent], tmp_path / "report", title="Legacy")
    md = (tmp_path / "report" / "index.md").read_text()
    html = (tmp_path / "report" / "index.html").read_text()
    for r in rows:
        assert f"| {r['cell_id']} |" in md and r["cell_id"] in html
    assert "| legacy-bench:perf | 6 | 0 | 0 | 6 |" in md
    assert "| legacy-bench:train_ladder | 1 | 1 | 1 | 3 |" in md  # the real row, the OOM one, the unavailable one
    assert f"OOM: {OOM_TEXT}" in md and "nvfp4 needs triton" in md
    assert f"{rows[0]['denoise_fps']:.1f}" in md


def test_unrecognised_files_are_errors(tmp_path: Path) -> None:
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"rows": [{"kind": "mystery"}], "manifest": {}}))
    runner = tmp_path / "results.jsonl"
    runner.write_text(json.dumps(empty_row("c1", "x", "infer", {}, 8, 0)) + "\n")
    for path, words in ((PROBE, "not a result file of a retired bench script"),
                        (PERF.parent / "manifest.json", "neither 'rows' + 'manifest' nor 'config' + 'status'"),
                        (other, "match no script"), (runner, "already a results store in the runner's schema")):
        with pytest.raises(ValueError) as err:
            convert_bench(path)
        assert str(path) in str(err.value) and words in str(err.value)
        assert legacy_script(path) is None
    with pytest.raises(ValueError, match="holds no result files"):
        write_converted([tmp_path], tmp_path / "out" / "results.jsonl")


def test_report_points_legacy_files_at_the_conversion(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for src in (PERF, SP, SP.parent, PERF.parent):
        assert report_main([str(src), "--out", str(tmp_path / "r")]) == 2
        err = capsys.readouterr().err
        assert f"longlive report convert-bench {src} --out results/legacy/results.jsonl" in err, err
    assert not (tmp_path / "r").exists()


def test_refuses_to_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "legacy" / "results.jsonl"
    assert report_main(["convert-bench", str(VAE), "--out", str(out)]) == 0
    first = out.read_text()
    assert report_main(["convert-bench", str(TRAIN), "--out", str(out)]) == 2
    assert "exists; pass --force" in capsys.readouterr().err and out.read_text() == first
    with pytest.raises(ValueError, match="exists; pass --force"):
        write_converted([TRAIN], out)
    assert report_main(["convert-bench", str(TRAIN), "--out", str(out), "--force"]) == 0
    assert [r["workload"] for r in _jsonl(out)] == ["train"]
    assert report_main(["convert-bench", str(TRAIN), "--out", str(tmp_path / "x.json")]) == 2  # not a .jsonl
    assert not list(out.parent.glob(".*tmp*"))


def test_generate_result_json_reads_as_a_store(tmp_path: Path) -> None:
    row = empty_row(None, "generate", "infer", {"model": "tiny", "precision": "bf16", "sp": 1, "steps": 2}, 8, 0)
    row.update(status="ok", denoise_fps=12.5)
    (tmp_path / "result.json").write_text(json.dumps({"rows": [row], "manifest": {}}))
    for src in (tmp_path, tmp_path / "result.json"):
        df = load_results([src])
        assert list(df["denoise_fps"]) == [12.5] and list(df["experiment"]) == ["generate"]
