"""The fidelity gate: per-chunk latent error and PSNR against a reference, the gate's pass / fail / margin on synthetic
rows, its report section and chunk plot, and the attn_lowp presets (expansion, reference cells, CPU skips)."""

import json
import math

import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from longlive.eval.fidelity import chunk_frame_ranges, latent_rel_err_per_chunk, psnr, psnr_per_chunk
from longlive.report.build import build_report
from longlive.report.gate import GateRule, apply_gate, as_list, attn_of, gate_table
from longlive.report.load import load_results
from longlive.report.plots import make_plots
from longlive.runner.executor import run_cell
from longlive.runner.matrix import expand, reference_cell
from longlive.runner.schema import LIST_METRICS, METRICS, empty_row
from longlive.runner.store import ResultsStore
from longlive.workloads.quality import fidelity_against

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FIVE_B = "wan2.2-ti2v-5b"


# ---------------------------------------------------------------------------------------------------------------
# per chunk


def test_one_perturbed_chunk_shows_in_that_chunk_only():
    torch.manual_seed(0)
    ref = torch.randn(1, 3, 6, 4, 5)  # [B, C, F, H, W]: 3 chunks of 2 latents
    x = ref.clone()
    delta = 0.01 * torch.randn(1, 3, 2, 4, 5)
    x[:, :, 2:4] += delta
    got = latent_rel_err_per_chunk(x, ref, 2)
    hand = math.sqrt(float((delta.double() ** 2).sum()) / float((ref[:, :, 2:4].double() ** 2).sum()))
    assert len(got) == 3 and got[0] == 0.0 and got[2] == 0.0
    assert got[1] == pytest.approx(hand, rel=1e-6)
    assert latent_rel_err_per_chunk(x, ref, 6) == [pytest.approx(float((x - ref).double().norm()
                                                                       / ref.double().norm()), rel=1e-9)]
    with pytest.raises(ValueError, match="latents have 6 frames along dim 2, not whole chunks of 4"):
        latent_rel_err_per_chunk(x, ref, 4)
    with pytest.raises(ValueError, match="shape mismatch"):
        latent_rel_err_per_chunk(x[:, :, :4], ref, 2)


def test_chunk_frame_ranges_follow_the_causal_vae():
    # 6 latents -> 1 + 4*5 = 21 frames: latent 0 is frame 0, latent l >= 1 frames 4l-3 .. 4l
    assert chunk_frame_ranges(6, 2, 4) == [(0, 5), (5, 13), (13, 21)]
    assert chunk_frame_ranges(6, 2, 4, video_frames=8) == [(0, 5), (5, 8), None]
    assert chunk_frame_ranges(24, 8, 4)[1:] == [(29, 61), (61, 93)]  # 5B chunks: 29 frames, then 32 each
    with pytest.raises(ValueError, match="whole chunks"):
        chunk_frame_ranges(5, 2)


def test_psnr_per_chunk_by_hand():
    ref = torch.full((21, 4, 4, 3), 100, dtype=torch.uint8)
    x = ref.clone()
    x[7, 0, 0, 0] = 110  # one pixel of chunk 1 (frames 5..12) off by 10
    got = psnr_per_chunk(x, ref, chunk_frame_ranges(6, 2, 4, video_frames=21) + [None])
    mse = 100 / (8 * 4 * 4 * 3)
    assert got[0] == math.inf and got[2] == math.inf and got[3] is None
    assert got[1] == pytest.approx(10 * math.log10(255**2 / mse), rel=1e-12)
    assert got[1] == pytest.approx(psnr(x[5:13], ref[5:13]))


def test_fidelity_against_reads_the_cells_preset(tmp_path):
    torch.manual_seed(1)
    cell, ref = tmp_path / "cell", tmp_path / "ref"
    for d in (cell, ref):
        d.mkdir()
    base = torch.randn(1, 16, 8, 8, 8)  # the tiny preset: chunks of 2 latents -> 4 chunks
    moved = base.clone()
    moved[:, :, 6:] *= 1.1  # the last chunk drifts by 10 %
    save_file({"latents": base}, str(ref / "latents.safetensors"))
    save_file({"latents": moved}, str(cell / "latents.safetensors"))
    (cell / "cell.json").write_text(json.dumps({"config": {"model": {"name": "tiny"}}}))
    out = fidelity_against(cell, ref)
    assert out["latent_rel_err_per_chunk"] == [0.0, 0.0, 0.0, pytest.approx(0.1, rel=1e-5)]
    assert out["latent_rel_err_max_chunk"] == pytest.approx(0.1, rel=1e-5)
    assert out["latent_rel_err_vs_ref"] == pytest.approx(float((moved - base).norm() / base.norm()), rel=1e-5)
    assert "psnr_per_chunk" not in out  # no videos: decode=none
    lists = {k for k, v in out.items() if isinstance(v, list)}
    assert lists == {"latent_rel_err_per_chunk"} <= set(LIST_METRICS) and "latent_rel_err_max_chunk" in METRICS
    explicit = fidelity_against(cell, ref, chunk_frames=4)
    assert len(explicit["latent_rel_err_per_chunk"]) == 2
    (cell / "cell.json").unlink()
    assert "latent_rel_err_per_chunk" not in fidelity_against(cell, ref)  # no chunk size known: whole video only


# ---------------------------------------------------------------------------------------------------------------
# the gate on synthetic rows


def _row(cell: str, attn: str, precision: str, kv: str, steps: int, err: float | None, fps: float, *,
         model: str = FIVE_B, seed: int = 0, flicker: float | None = None, per_chunk: list | None = None) -> dict:
    axes = {"model": model, "precision": precision, "kv_quant": kv, "sp": 1, "steps": steps, "decode": "none",
            "hardware": "gpu"}
    r = empty_row(cell, "attn_lowp" if model == FIVE_B else "attn_lowp_tiny", "infer", axes, frames=192, seed=seed)
    r.update(status="ok", latent_rel_err_vs_ref=err, denoise_fps=fps, temporal_flickering=flicker,
             config={"attn": attn, "precision": precision})
    if per_chunk is not None:
        r["latent_rel_err_per_chunk"] = per_chunk
    return r


def _five_b() -> list[dict]:
    return [
        _row("ref4", "cudnn", "bf16", "none", 4, 0.0, 20.0, per_chunk=[0.0, 0.0, 0.0]),
        _row("fp8gemm4", "cudnn", "fp8", "none", 4, 0.25, 24.0, per_chunk=[0.1, 0.2, 0.3]),
        _row("pass4", "cudnn-fp8", "fp8", "none", 4, 0.3, 30.0, per_chunk=[0.1, 0.25, 0.35]),
        _row("tie4", "int8-fp8", "fp8", "none", 4, 0.375, 28.0),  # exactly 1.5 x 0.25
        _row("fail4", "cudnn-fp8", "fp8", "fp8", 4, 0.5, 33.0),
        _row("nobase2", "cudnn-fp8", "fp8", "none", 2, 0.1, 50.0),  # no 2-step baseline row
    ]


def _tiny(attn: str, precision: str, kv: str, values: list[float]) -> list[dict]:
    return [_row(f"t-{attn}-{precision}-{kv}-{s}", attn, precision, kv, 4, 0.0, 100.0, model="tiny", seed=s,
                 flicker=v) for s, v in enumerate(values)]


def test_gate_latent_half_pass_tie_fail_and_missing_baseline():
    gated = apply_gate(pd.DataFrame(_five_b())).set_index("cell_id")
    assert set(gated.index) == {"ref4", "fp8gemm4", "pass4", "tie4", "fail4", "nobase2"}
    assert gated.loc["pass4", "gate_passed"] is True
    assert gated.loc["pass4", "gate_margin"] == pytest.approx(1 - 0.3 / 0.375)
    assert gated.loc["pass4", "gate_threshold"] == 0.375 and gated.loc["pass4", "gate_baseline_err"] == 0.25
    assert gated.loc["tie4", "gate_passed"] is True and gated.loc["tie4", "gate_margin"] == 0.0  # ≤: a tie passes
    assert gated.loc["fail4", "gate_passed"] is False
    assert gated.loc["fail4", "gate_margin"] == pytest.approx(1 - 0.5 / 0.375)
    assert "0.5 > 1.5 × 0.25 = 0.375" in gated.loc["fail4", "gate_rule"]
    assert gated.loc["fp8gemm4", "gate_passed"] is True  # the baseline is within 1.5 x itself
    assert gated.loc["ref4", "gate_margin"] == 1.0
    assert gated.loc["nobase2", "gate_passed"] is None and math.isnan(gated.loc["nobase2", "gate_margin"])
    assert "no baseline latent_rel_err_vs_ref (attn=cudnn precision=fp8 kv_quant=none" in gated.loc["nobase2",
                                                                                                      "gate_rule"]
    assert all("tiny half not checked" in t for t in gated["gate_rule"])
    # configurable: a stricter factor fails the tie, another baseline changes the threshold
    strict = apply_gate(pd.DataFrame(_five_b()), GateRule(factor=1.2)).set_index("cell_id")
    assert strict.loc["tie4", "gate_passed"] is False and strict.loc["pass4", "gate_passed"] is True
    other = apply_gate(pd.DataFrame(_five_b()), GateRule(baseline={"attn": "cudnn-fp8", "precision": "fp8",
                                                                   "kv_quant": "none"})).set_index("cell_id")
    assert other.loc["fail4", "gate_threshold"] == pytest.approx(0.45)


def test_gate_tiny_half_within_the_seed_spread():
    rows = _five_b()
    rows += _tiny("cudnn", "bf16", "none", [0.5, 0.75, 0.625])  # reference: mean 0.625, spread 0.25
    rows += _tiny("cudnn", "fp8", "none", [0.625, 0.625])         # |Δ| 0: margin 1
    rows += _tiny("cudnn-fp8", "fp8", "none", [0.875, 0.875])     # |Δ| 0.25 = spread: a tie passes
    rows += _tiny("int8-fp8", "fp8", "none", [1.0, 0.75])         # mean 0.875: a tie as well
    rows += _tiny("cudnn-fp8", "fp8", "fp8", [0.25, 0.25])        # |Δ| 0.375 > 0.25, and the latent half fails
    gated = apply_gate(pd.DataFrame(rows)).set_index("cell_id")
    assert set(gated.index) == {r["cell_id"] for r in _five_b()}  # tiny rows are evidence, not gated rows
    assert gated.loc["fp8gemm4", "gate_passed"] is True and gated.loc["fp8gemm4", "gate_margin"] == pytest.approx(
        1 - 0.25 / 0.375)
    assert gated.loc["pass4", "gate_passed"] is True and gated.loc["pass4", "gate_margin"] == 0.0  # tiny tie binds
    assert "tiny temporal_flickering |Δ| 0.25 ≤ 1 × spread 0.25 (2 vs 3 seeds)" in gated.loc["pass4", "gate_rule"]
    assert gated.loc["fail4", "gate_passed"] is False
    assert gated.loc["fail4", "gate_margin"] == pytest.approx(1 - 0.375 / 0.25)  # the worse of -1/3 and -1/2
    assert gated.loc["tie4", "gate_passed"] is True and gated.loc["tie4", "gate_margin"] == 0.0
    # a configuration without tiny rows is undecided even when its latent error passes
    rows = [r for r in rows if not r["cell_id"].startswith("t-int8-fp8")]
    gated = apply_gate(pd.DataFrame(rows)).set_index("cell_id")
    assert gated.loc["tie4", "gate_passed"] is None and gated.loc["tie4", "gate_margin"] == 0.0
    assert "tiny temporal_flickering: no rows for this configuration" in gated.loc["tie4", "gate_rule"]
    # a tiny metric outside the spread fails a configuration whose latent error passes
    rows = [r for r in _five_b() if r["cell_id"] != "fail4"] + _tiny("cudnn", "bf16", "none", [0.5, 0.75])
    rows += _tiny("cudnn", "fp8", "none", [0.25, 0.25]) + _tiny("cudnn-fp8", "fp8", "none", [0.625])
    rows += _tiny("int8-fp8", "fp8", "none", [0.625])
    gated = apply_gate(pd.DataFrame(rows)).set_index("cell_id")
    assert gated.loc["fp8gemm4", "gate_passed"] is False
    assert gated.loc["fp8gemm4", "gate_margin"] == pytest.approx(1 - 0.375 / 0.25)
    assert gated.loc["pass4", "gate_passed"] is True


def test_gate_ignores_failed_and_non_inference_rows_and_reads_attn():
    rows = _five_b()
    rows[2]["status"] = "failed"
    rows.append({**_row("probe", "cudnn-fp8", "bf16", "none", 4, None, 0.0), "workload": "attn_error",
                 "attn": "cudnn-fp8"})
    gated = apply_gate(pd.DataFrame(rows))
    assert "pass4" not in set(gated["cell_id"]) and "probe" not in set(gated["cell_id"])
    assert attn_of({"config": {"attn": "auto"}, "metrics_extra": {"attn_backend": "cudnn"}}) == "cudnn"
    assert attn_of({"attn": "int8-fp8", "config": {"attn": "cudnn"}}) == "int8-fp8"
    assert as_list("[0.1, Infinity]") == [0.1, math.inf] and as_list(None) is None
    table = gate_table(pd.DataFrame(_five_b()))
    assert list(table.columns[:5]) == ["model", "attn", "precision", "kv_quant", "steps"]
    assert {"denoise_fps", "gate_passed", "gate_margin", "gate_rule"} <= set(table.columns)
    assert apply_gate(pd.DataFrame([])).empty


def test_report_has_the_gate_section_and_the_chunk_plot(tmp_path):
    store = ResultsStore(tmp_path / "res")
    rows = _five_b() + _tiny("cudnn", "bf16", "none", [0.5, 0.75])
    probe = _row("probe", "cudnn-fp8", "bf16", "none", 4, None, 0.0)
    probe.update(workload="attn_error", attn="cudnn-fp8", attn_baseline="cudnn", attn_rel_err_mean=0.1,
                 attn_rel_err_max=0.2, attn_rel_err_per_layer=[0.05, 0.15, 0.1],
                 timing_definition={"attn_rel_err": "attn_rel_err_*: the probe's definition"})
    for r in [*rows, probe]:
        store.append(r)
    store.write_parquet()
    df = load_results([store.root])
    plots = {p.key: p for p in make_plots(df[df["status"] == "ok"], tmp_path / "plots")}
    assert plots["chunk_error"].file.read_bytes()[:8] == PNG_MAGIC
    md = (build_report([store.root], tmp_path / "report").parent / "index.md").read_text()
    section = md.split("## Fidelity gate")[1].split("\n## ")[0]
    assert "✗ fail" in section and "✓ pass" in section and "— undecided" in section
    assert "Attention error per layer (workload attn_error)" in section and "layer 1: 0.15" in section
    assert "1 fail (marked ✗)" in section
    # the Parquet snapshot keeps the lists as JSON text; the gate reads them the same
    snap = load_results([store.root / "results.parquet"])
    assert as_list(snap.set_index("cell_id").loc["pass4", "latent_rel_err_per_chunk"]) == [0.1, 0.25, 0.35]


# ---------------------------------------------------------------------------------------------------------------
# the presets


def test_attn_lowp_expands_with_references_and_skips_on_cpu(tmp_path):
    cells = expand("attn_lowp")
    infer = [c for c in cells if c.config["workload"]["name"] == "infer"]
    probes = [c for c in cells if c.config["workload"]["name"] == "attn_error"]
    combos = {(c.config["attn"], c.axes["precision"], c.axes["kv_quant"], c.axes["steps"]) for c in infer}
    assert len(infer) == len(combos) == 20 and len(probes) == 4
    assert {(a, p, "fp8") for a in ("cudnn-fp8", "int8-fp8") for p in ("bf16", "fp8")} == {
        (a, p, k) for a, p, k, _ in combos if k == "fp8"}
    assert {c.config["frames"] for c in cells} == {192} and {c.axes["model"] for c in cells} == {FIVE_B}
    assert all(c.config["random_weights"] and c.axes["decode"] == "none" for c in infer)
    assert {c.axes["compile"] for c in infer} == {"default"}
    ids = {c.cell_id for c in cells}
    for c in infer:
        ref = reference_cell(c)
        assert ref.cell_id in ids  # every reference is a cell of the matrix
        assert (ref.config["attn"], ref.axes["precision"], ref.axes["kv_quant"]) == ("cudnn", "bf16", "none")
        assert ref.axes["steps"] == c.axes["steps"] and ref.config["frames"] == c.config["frames"]
    assert all(reference_cell(c) is None for c in probes)
    assert {(c.config["attn"], c.config["kv_quant"]["name"]) for c in probes} == {
        (a, k) for a in ("cudnn-fp8", "int8-fp8") for k in ("none", "fp8")}
    # a longer rollout is one override
    assert {c.config["frames"] for c in expand("attn_lowp", ["frames=384", "attn=cudnn-fp8", "matrices=[]"])} == {384}
    store = ResultsStore(tmp_path)  # what the sweep does with each cell on this CPU machine
    rows = [run_cell(c, store) for c in cells]
    assert {r["status"] for r in rows} == {"skipped"} and not list(tmp_path.iterdir())  # nothing started
    assert {r["reason"] for r in rows} == {"hardware gpu needs a CUDA GPU; this machine has none"}


def test_attn_lowp_tiny_has_seeds_and_same_seed_references():
    cells = expand("attn_lowp_tiny", ["seed=0,1", "precision=bf16"])  # of 4 seeds x 10 configurations
    assert len(cells) == 2 * (3 + 2) and {c.axes["precision"] for c in cells} == {"bf16"}
    assert {c.axes["model"] for c in cells} == {"tiny"} and {c.config["seed"] for c in cells} == {0, 1}
    assert all(not c.config["random_weights"] and c.config["quality"]["metrics"] == ["temporal_flickering"]
               for c in cells)
    ids = {c.cell_id for c in cells}
    for c in cells:
        ref = reference_cell(c)
        assert ref.cell_id in ids and ref.config["seed"] == c.config["seed"]
        assert (ref.config["attn"], ref.axes["precision"], ref.axes["kv_quant"]) == ("cudnn", "bf16", "none")
