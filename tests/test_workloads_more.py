"""The quant_kernels and tiny_default workloads: their checks and rows through the runner, and the pure helpers
behind their columns (bytes accounting, headline columns, evaluation columns)."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from longlive.experiments.spec import RunSpec, from_config
from longlive.model.presets import get_preset
from longlive.runner import executor
from longlive.runner.executor import run_sweep
from longlive.runner.matrix import expand
from longlive.runner.schema import METRICS
from longlive.runner.store import ResultsStore
from longlive.weights import SHIPPED_TINY
from longlive.workloads import get_workload, tiny
from longlive.workloads import quant_kernels as qk

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the skip on a machine without CUDA")


def _rows(results: Path) -> list[dict]:
    return list(ResultsStore(results).latest().values())


# quant_kernels ------------------------------------------------------------------------------------------------------


@NO_CUDA
def test_quant_kernels_preset_is_an_explained_skip_without_cuda(tmp_path):
    counts = run_sweep("quant_kernels", [], tmp_path, progress=False)
    assert counts["skipped"] == 1 and counts["ok"] == counts["failed"] == 0
    (row,) = _rows(tmp_path)
    assert row["workload"] == "quant_kernels" and row["experiment"] == "quant_kernels"
    assert row["status"] == "skipped" and "CUDA" in row["reason"]
    assert row["model"] == "wan2.2-ti2v-5b" and row["hardware"] == "gpu" and row["precision"] == "bf16"
    assert not (tmp_path / "cells").exists() or not any((tmp_path / "cells").iterdir())  # no cell process ran


def test_quant_kernels_check_reasons_and_invalid_settings():
    wl = get_workload("quant_kernels")
    (cpu_cell,) = expand("quant_kernels", ["hardware=cpu"])
    reason = wl.check(from_config(cpu_cell.config))
    assert "CUDA" in reason and "hardware=cpu" in reason
    # invalid on every machine, not a skip: the sweep stops at expansion, naming the cell and the reason
    with pytest.raises(ValueError, match="1 of 1 cells are invalid(.|\n)*wan2.2-ti2v-5b shapes"):
        expand("quant_kernels", ["model=tiny", "hardware=cpu"])
    with pytest.raises(ValueError, match="1 of 1 cells are invalid(.|\n)*bf16"):
        expand("quant_kernels", ["precision=fp32", "hardware=cpu"])
    tiny = from_config({**cpu_cell.config, "model": {"name": "tiny"}})
    with pytest.raises(ValueError, match="wan2.2-ti2v-5b shapes"):  # the workload's own check says the same
        wl.check(tiny)


def test_quant_kernels_bytes_match_a_hand_count():
    # act_7040x3072 in bf16: n = 7040 * 3072 = 21_626_880 values, 2 bytes each.
    rows, n = 7040, 21_626_880
    # NVFP4 quantise: read 2n, write n/2 nibble bytes + n/16 E4M3 scales + the fp32 global scale and amax (8).
    assert qk.case_bytes("nvfp4_q", rows, n, 2) == 43_253_760 + 10_813_440 + 1_351_680 + 8
    # NVFP4 dequantise: read nibbles, scales, global scale (4); write bf16.
    assert qk.case_bytes("nvfp4_dq", rows, n, 2) == 10_813_440 + 1_351_680 + 4 + 43_253_760
    # FP8 row quantise: read 2n, write n bytes + one fp32 scale per row; dequantise: the reverse.
    assert qk.case_bytes("fp8_q", rows, n, 2) == 43_253_760 + 21_626_880 + 28_160
    assert qk.case_bytes("fp8_dq", rows, n, 2) == 21_626_880 + 28_160 + 43_253_760
    with pytest.raises(ValueError):
        qk.case_bytes("int4_q", rows, n, 2)


def test_quant_kernels_summary_is_median_based():
    s = qk.summarise([5.0, 1.0, 3.0, 2.0, 4.0], nbytes=3_000_000_000, copy_gbps=2000.0)
    assert s["ms_median"] == 3.0 and s["gbps"] == pytest.approx(1000.0)  # 3 GB in 3 ms
    assert s["ms_p10"] == pytest.approx(1.4) and s["ms_p90"] == pytest.approx(4.6)
    assert s["frac_copy"] == pytest.approx(0.5)
    assert qk.summarise([1.0], 1, None)["frac_copy"] is None


def test_quant_kernels_shapes_are_the_5b_presets():
    cfg = get_preset(qk.MODEL)
    assert {s[1] for s in qk.SHAPES.values()} | {s[0] for s in qk.SHAPES.values()} >= {cfg.dim, cfg.ffn_dim}
    assert qk.SHAPES["w_14336x3072"] == (cfg.ffn_dim, cfg.dim)
    assert set(qk.HEADLINE_SHAPES.values()) <= set(qk.SHAPES)
    src = Path(qk.__file__).read_text()
    assert "longlive.bench" not in src.split('"""', 2)[2]  # the measurement lives here, not in the old bench


def _fake_measurement() -> dict:
    """A measurement with a distinct GB/s per (shape, case, impl): (shape index + 1) * 1000 + case index, the
    reference a tenth of that at ten times the time."""
    rows = []
    for si, (sname, shape) in enumerate(qk.SHAPES.items()):
        for ci, (label, op, _, _) in enumerate(qk.CASES[sname.split("_")[0]]):
            nbytes = qk.case_bytes(op, shape[0], shape[0] * shape[1], 2)
            gbps = (si + 1) * 1000.0 + ci
            for impl, scale in (("triton", 1.0), ("torch_ref", 10.0)):
                ms = nbytes / (gbps / scale * 1e9) * 1e3
                rows.append({"shape_name": sname, "shape": list(shape), "dtype": "bf16", "kernel": label,
                             "impl": impl, "bytes": nbytes, "ms_median": ms, "ms_p10": ms, "ms_p90": ms,
                             "gbps": gbps / scale, "frac_copy": gbps / scale / 4000.0})
    return {"copy": {"gbps": 4000.0, "ms_median": 1.07, "bytes": 4 << 30}, "rows": rows}


def test_quant_kernels_headline_columns_come_from_the_headline_shapes():
    res = _fake_measurement()
    cols = qk.headline(res)
    names = [c for k in ("act", "w", "kv") for *_, c in qk.CASES[k]]
    assert set(cols) == {"copy_gbps", *(f"{n}_gbps" for n in names), "nvfp4_quant_act_frac_copy",
                         "nvfp4_quant_act_ref_gbps", "nvfp4_quant_act_speedup"}
    assert len(names) == len(set(names)) == 17
    shape_index = {s: i for i, s in enumerate(qk.SHAPES)}
    assert cols["copy_gbps"] == 4000.0
    assert cols["nvfp4_quant_act_gbps"] == (shape_index["act_7040x3072"] + 1) * 1000.0  # case 0 of act
    assert cols["nvfp4_quant_weight_mse_16x16_gbps"] == (shape_index["w_14336x3072"] + 1) * 1000.0 + 2
    assert cols["fp8_dequant_kv_gbps"] == (shape_index["kv_7040x3072"] + 1) * 1000.0 + 3
    assert cols["nvfp4_quant_act_ref_gbps"] == pytest.approx(100.0)
    assert cols["nvfp4_quant_act_speedup"] == pytest.approx(10.0)
    assert cols["nvfp4_quant_act_frac_copy"] == pytest.approx(0.25)
    timing = qk.timing_definitions(list(cols))
    assert set(timing) == set(cols) and all(qk.TIMING_DEFINITION in t for t in timing.values())
    assert "w_14336x3072" in timing["nvfp4_quant_weight_gbps"]
    text = qk.table(res)
    assert text.startswith("copy_ (2 GiB): 4000 GB/s")
    triton_rows = [r for r in res["rows"] if r["impl"] == "triton"]
    assert len([ln for ln in text.splitlines() if ln.startswith("| act_") or ln.startswith("| w_")
                or ln.startswith("| kv_")]) == len(triton_rows) == 30
    assert "| 10× |" in text  # reference / Triton time
    # without the reference the main case's reference columns are None
    no_ref = {"copy": res["copy"], "rows": triton_rows}
    assert qk.headline(no_ref)["nvfp4_quant_act_speedup"] is None


# tiny_default -------------------------------------------------------------------------------------------------------

# The cell's process with train_tiny replaced by a stand-in that writes the files train_tiny writes and returns the
# shipped run's evaluation (longlive/assets/tiny/MANIFEST.json): the real recipe takes minutes even at a 0.3-minute
# budget (codec, 1600 clips, 400 probe steps, 3 x 12 evaluation videos), so the runner path is tested with this.
FAKE_CELL = textwrap.dedent('''
    import json, sys
    from pathlib import Path

    import longlive.workloads.tiny as tiny_workload
    from longlive.runner.cell import main
    from longlive.weights import SHIPPED_TINY

    def fake_train_tiny(out, *, minutes, seed):
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        man = json.loads((SHIPPED_TINY / "MANIFEST.json").read_text())
        for name in ("model_bf16.pt", "model_2step.pt", "vae.safetensors", "vae_stats.json",
                     "text_encoder.safetensors", "vae_reconstruction.png"):
            (out / name).write_bytes(b"x")
        evals = man["eval"]
        for run, tag in (("4-step", "4-step"), ("2-step (LoRA)", "2-step-lora"),
                         ("4-step NVFP4 W4A4 + NVFP4 KV", "4-step-nvfp4")):
            (out / "samples" / tag).mkdir(parents=True)
            (out / "samples" / tag / "strip.png").write_bytes(b"x")
            evals[run]["strip"] = str(out / "samples" / tag / "strip.png")
        result = {"manifest": {"config": {"recipe": man["recipe"], "minutes": minutes}, "seed": seed},
                  "minutes": minutes * 0.9, "vae": {"kind": "pca codec"},
                  "vae_reconstruction": man["vae_reconstruction"], "text_encoder": {"pretrain_steps": 0},
                  "ar_steps": man["ar_steps"], "ar_summary": {"loss": 0.5},
                  "lora": {"steps": man["lora_steps"], "path": str(out / "lora" / "lora.pt")},
                  "eval": evals, "metric": man["metric"]}
        (out / "tiny_eval.json").write_text(json.dumps(result))
        (out / "called.json").write_text(json.dumps({"minutes": minutes, "seed": seed}))
        return result

    tiny_workload.train_tiny = fake_train_tiny
    sys.exit(main(sys.argv[1:]))
''')


def test_tiny_default_row_through_the_runner(tmp_path, monkeypatch):
    script = tmp_path / "fake_cell.py"
    script.write_text(FAKE_CELL)
    monkeypatch.setattr(executor, "cell_command",
                        lambda cell, spec_path, row_path: [sys.executable, str(script), str(spec_path), str(row_path)])
    results = tmp_path / "results"
    counts = run_sweep("tiny_default", ["train_minutes=0.3", "seed=3"], results, progress=False)
    assert counts["ok"] == 1, _rows(results)
    (row,) = _rows(results)
    assert row["status"] == "ok" and row["workload"] == "tiny_default" and row["hardware"] == "cpu"
    assert row["model"] == "tiny" and row["precision"] == "fp32" and row["config"]["train_minutes"] == 0.3
    cell = results / "cells" / row["cell_id"]
    assert json.loads((cell / "tiny" / "called.json").read_text()) == {"minutes": 0.3, "seed": 3}

    shipped = json.loads((SHIPPED_TINY / "MANIFEST.json").read_text())
    four, two, nv = (shipped["eval"][k] for k in tiny.VARIANTS)
    for m in tiny.EVAL_METRICS:
        assert row[m] == pytest.approx(four[m]) and row[f"{m}_2step"] == pytest.approx(two[m])
        assert row[f"{m}_nvfp4"] == pytest.approx(nv[m])
    assert row["temporal_flickering"] == pytest.approx(0.9907696488878394)  # a schema column, filled
    assert row["palette_match_2step"] == pytest.approx(0.7345061500867208)
    assert row["vae_psnr_db"] == pytest.approx(shipped["vae_reconstruction"]["psnr_db"])
    assert row["ar_steps"] == shipped["ar_steps"] and row["lora_steps"] == shipped["lora_steps"]
    assert row["train_wall_s"] == pytest.approx(0.3 * 0.9 * 60)
    assert set(METRICS) <= set(row)
    assert set(row["timing_definition"]) == {"train_wall_s", "denoise_fps", "denoise_fps_2step", "denoise_fps_nvfp4"}
    assert row["metrics_extra"]["eval"]["4-step"]["per_prompt"] == four["per_prompt"]
    assert row["metrics_extra"]["recipe"] == shipped["recipe"] and "palette_match:" in row["metrics_extra"]["metric"]
    arts = row["artifacts"]
    assert {"model_bf16", "model_2step", "vae", "vae_stats", "text_encoder", "tiny_eval", "vae_reconstruction",
            "strip_4step", "strip_2step", "strip_nvfp4"} <= set(arts)
    assert arts["strip_2step"] == f"cells/{row['cell_id']}/tiny/samples/2-step-lora/strip.png"
    assert all((results / p).is_file() for p in arts.values())


def test_tiny_default_columns_without_a_lora_run(tmp_path):
    shipped = json.loads((SHIPPED_TINY / "MANIFEST.json").read_text())
    evals = {k: v for k, v in shipped["eval"].items() if k != "2-step (LoRA)"}
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "model_bf16.pt").write_bytes(b"x")
    result = {"eval": evals, "lora": {"steps": 0}, "ar_steps": 412, "minutes": float("nan"), "vae_reconstruction": {}}
    cols = tiny.eval_columns(result)
    assert cols["shape_match"] == pytest.approx(evals["4-step"]["shape_match"])
    assert all(cols[f"{m}_2step"] is None for m in tiny.EVAL_METRICS)  # present, None: the run does not exist
    assert cols["lora_steps"] == 0 and cols["train_wall_s"] is None and cols["vae_psnr_db"] is None
    # strips recorded elsewhere (the shipped run's /tmp paths) are not listed; files that exist are
    assert tiny.artifacts(tmp_path / "tiny", tmp_path, result) == {"model_bf16": "tiny/model_bf16.pt"}


def test_tiny_default_check():
    wl = get_workload("tiny_default")
    ok = RunSpec()
    ok.workload.name, ok.train_minutes = "tiny_default", 0.5
    assert wl.check(ok) is None
    gpu = RunSpec()
    gpu.hardware.name, gpu.hardware.device, gpu.hardware.min_gpus = "gpu", "cuda", 1
    assert "CPU recipe" in wl.check(gpu)
    big = RunSpec()
    big.model.name = "wan2.1-t2v-1.3b"
    with pytest.raises(ValueError, match="tiny preset"):
        wl.check(big)
    none = RunSpec()
    none.train_minutes = 0
    with pytest.raises(ValueError, match="train_minutes"):
        wl.check(none)
