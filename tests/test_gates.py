"""Quality gates declared per experiment (report/gates.py, experiments/rules.check_gates): every check kind passing,
failing and tying on crafted rows, undecided verdicts, margin arithmetic, two gates on one row, the config checks at
composition (a bad gate stops `longlive sweep --list`), the attn_lowp presets' gates against report/gate.py, and the
summary the report's Gates section renders."""

from __future__ import annotations

import math
import shutil

import pandas as pd
import pytest
import yaml

from longlive.cli import main
from longlive.experiments import EXPERIMENTS_DIR
from longlive.experiments.rules import GATE_KINDS, check_gates
from longlive.report.gate import apply_gate
from longlive.report.gates import (
    GATES_COLUMNS,
    Check,
    Gate,
    apply_gates,
    describe_gate,
    gates_summary,
    judge_spread,
    judge_value,
    slack_at_least,
    slack_at_most,
    summary_table,
)
from longlive.report.load import load_results
from longlive.runner.matrix import cell_hash, expand
from longlive.runner.schema import empty_row
from longlive.runner.store import ResultsStore

FIVE_B = "wan2.2-ti2v-5b"


def _row(cell: str, precision: str, *, gates: list, kv: str = "none", steps: int = 4, seed: int = 0,
         experiment: str = "exp", status: str = "ok", workload: str = "infer", model: str = "tiny", attn: str = "auto",
         **metrics) -> dict:
    axes = {"model": model, "precision": precision, "attn": attn, "kv_quant": kv, "sp": 1, "steps": steps,
            "decode": "streaming", "hardware": "cpu"}
    r = empty_row(cell, experiment, workload, axes, frames=16, seed=seed)
    r.update(status=status, config={"experiment": experiment, "gates": gates}, **metrics)
    return r


def _gate(kind: str, metric: str, value: float, name: str = "g", **extra) -> dict:
    check = {"metric": metric, "kind": kind, "value": value}
    if "baseline" in extra:
        check["baseline"] = extra.pop("baseline")
    return {"name": name, "family": {"workload": "infer"}, "checks": [check], **extra}


def _judged(rows: list[dict]) -> pd.DataFrame:
    return apply_gates(pd.DataFrame(rows)).set_index("cell_id")


def _verdicts(out: pd.DataFrame) -> dict[str, tuple]:
    return {c: (out.loc[c, "gate_passed"], round(float(out.loc[c, "gate_margin"]), 12)) for c in out.index
            if out.loc[c, "gate_name"] is not None}


# ---------------------------------------------------------------------------------------------------------------
# each kind: pass, tie, fail


def test_max_and_min_are_absolute_limits():
    g = [_gate("max", "latent_rel_err_vs_ref", 0.25)]
    out = _judged([_row("pass", "bf16", gates=g, latent_rel_err_vs_ref=0.125),
                   _row("tie", "fp8", gates=g, latent_rel_err_vs_ref=0.25),
                   _row("fail", "nvfp4", gates=g, latent_rel_err_vs_ref=0.5)])
    assert _verdicts(out) == {"pass": (True, 0.5), "tie": (True, 0.0), "fail": (False, -1.0)}
    assert out.loc["fail", "gate_reason"] == "g: latent_rel_err_vs_ref 0.5 > 0.25"
    assert out.loc["tie", "gate_reason"] == "g: latent_rel_err_vs_ref 0.25 ≤ 0.25"
    g = [_gate("min", "psnr_vs_ref", 32)]
    out = _judged([_row("pass", "bf16", gates=g, psnr_vs_ref=40.0), _row("tie", "fp8", gates=g, psnr_vs_ref=32.0),
                   _row("fail", "nvfp4", gates=g, psnr_vs_ref=24.0), _row("inf", "fp32", gates=g,
                                                                           psnr_vs_ref=math.inf)])
    assert _verdicts(out) == {"pass": (True, 0.25), "tie": (True, 0.0), "fail": (False, -0.25), "inf": (True, math.inf)}
    assert out.loc["fail", "gate_reason"] == "g: psnr_vs_ref 24 < 32"


def test_ratio_min_against_the_reference_row():
    g = [_gate("ratio_min", "vbench_total", 0.5, reference={"precision": "bf16"})]
    out = _judged([_row("ref", "bf16", gates=g, vbench_total=0.8), _row("pass", "fp8", gates=g, vbench_total=0.6),
                   _row("tie", "nvfp4", gates=g, vbench_total=0.4), _row("fail", "fp32", gates=g, vbench_total=0.2)])
    assert _verdicts(out) == {"ref": (True, 1.0), "pass": (True, 0.5), "tie": (True, 0.0), "fail": (False, -0.5)}
    assert out.loc["ref", "gate_reason"].startswith("g: reference row; vbench_total 0.8 ≥ 0.5 × 0.8 = 0.4")
    assert out.loc["fail", "gate_reason"] == "g: vbench_total 0.2 < 0.5 × 0.8 = 0.4"
    # MLPerf's rule: ≥ 99 % of the BF16 reference
    g = [_gate("ratio_min", "vbench_total", 0.99, reference={"precision": "bf16"})]
    out = _judged([_row("ref", "bf16", gates=g, vbench_total=0.8), _row("a", "fp8", gates=g, vbench_total=0.793),
                   _row("b", "nvfp4", gates=g, vbench_total=0.791)])
    assert out.loc["a", "gate_passed"] is True and out.loc["b", "gate_passed"] is False


def test_within_is_symmetric_around_the_reference():
    g = [_gate("within", "temporal_flickering", 0.25, reference={"precision": "fp32"})]
    out = _judged([_row("ref", "fp32", gates=g, temporal_flickering=0.5),
                   _row("pass", "bf16", gates=g, temporal_flickering=0.625),
                   _row("tie_up", "fp8", gates=g, temporal_flickering=0.75),
                   _row("tie_down", "fp8-emulated", gates=g, temporal_flickering=0.25),
                   _row("fail", "nvfp4", gates=g, temporal_flickering=0.875)])
    assert _verdicts(out) == {"ref": (True, 1.0), "pass": (True, 0.5), "tie_up": (True, 0.0),
                              "tie_down": (True, 0.0), "fail": (False, -0.5)}
    assert out.loc["fail", "gate_reason"] == "g: temporal_flickering |0.875 − 0.5| = 0.375 > 0.25"


def test_within_spread_compares_means_over_seeds():
    g = [_gate("within_spread", "temporal_flickering", 1, reference={"precision": "bf16"})]
    rows = [_row(f"ref{s}", "bf16", gates=g, seed=s, temporal_flickering=v) for s, v in enumerate([0.5, 0.75, 0.625])]
    rows += [_row(f"pass{s}", "fp8", gates=g, seed=s, temporal_flickering=0.625) for s in range(2)]
    rows += [_row(f"tie{s}", "nvfp4", gates=g, seed=s, temporal_flickering=v) for s, v in enumerate([1.0, 0.75])]
    rows += [_row(f"fail{s}", "fp32", gates=g, seed=s, temporal_flickering=1.0) for s in range(2)]
    v = _verdicts(_judged(rows))
    assert {c: v[c] for c in ("ref0", "pass0", "pass1", "tie0", "tie1", "fail0")} == {
        "ref0": (True, 1.0), "pass0": (True, 1.0), "pass1": (True, 1.0), "tie0": (True, 0.0), "tie1": (True, 0.0),
        "fail0": (False, -0.5)}  # |0.875 − 0.625| = 0.25 = spread; |1 − 0.625| = 0.375 = 1.5 × spread
    out = _judged(rows)
    assert "temporal_flickering |Δ| 0.375 > 1 × spread 0.25 (2 vs 3 seeds)" in out.loc["fail1", "gate_reason"]
    # a configuration of another frames count is another configuration (and has no reference of its frames)
    rows.append({**_row("long", "fp8", gates=g, temporal_flickering=0.9), "frames": 60})
    out = _judged(rows)
    assert out.loc["pass0", "gate_passed"] is True and out.loc["long", "gate_passed"] is None


def test_max_ratio_of_a_baseline_row():
    g = [_gate("max_ratio_of", "latent_rel_err_vs_ref", 1.5, baseline={"precision": "fp8", "attn": "cudnn"})]
    rows = [_row("base", "fp8", attn="cudnn", gates=g, latent_rel_err_vs_ref=0.25),
            _row("pass", "fp8", attn="cudnn-fp8", gates=g, latent_rel_err_vs_ref=0.3),
            _row("tie", "fp8", attn="int8-fp8", gates=g, latent_rel_err_vs_ref=0.375),
            _row("fail", "bf16", attn="int8-fp8", gates=g, latent_rel_err_vs_ref=0.5),
            _row("two_steps", "bf16", attn="int8-fp8", steps=2, gates=g, latent_rel_err_vs_ref=0.1)]
    out = _judged(rows)
    v = _verdicts(out)
    assert v["pass"] == (True, round(1 - 0.3 / 0.375, 12)) and v["tie"] == (True, 0.0)
    assert v["fail"] == (False, round(1 - 0.5 / 0.375, 12)) and v["base"] == (True, round(1 - 1 / 1.5, 12))
    assert out.loc["fail", "gate_reason"] == "g: latent_rel_err_vs_ref 0.5 > 1.5 × 0.25 = 0.375"
    assert v["two_steps"][0] is None  # no baseline at 2 steps (match: model, frames, steps)
    assert "no baseline latent_rel_err_vs_ref (precision=fp8, attn=cudnn; same model, frames, steps)" in out.loc[
        "two_steps", "gate_reason"]


def test_check_arithmetic_at_the_edges():
    assert slack_at_most(0.0, 0.0) == 0.0 and slack_at_most(0.1, 0.0) == -math.inf
    assert slack_at_most(math.nan, 1.0) == -math.inf and slack_at_least(-3.0, -2.0) == -0.5
    assert slack_at_least(0.0, 0.0) == 0.0 and slack_at_least(-1.0, 0.0) == -math.inf
    c = Check("m", "ratio_min", 0.99)
    assert judge_value(c, 1.0, 0.0).passed is None and "not positive" in judge_value(c, 1.0, 0.0).text
    assert judge_value(c, math.nan, 1.0).passed is None and judge_value(c, 1.0).passed is None
    within = Check("m", "within", 0.0)
    assert judge_value(within, 2.0, 2.0).passed is True and judge_value(within, 2.0, 2.5).passed is False
    spread = Check("m", "within_spread", 1.0)
    one = judge_spread(spread, [1.0], [1.0])
    assert one.passed is None and "the reference has 1 value: no seed-to-seed spread" in one.text
    assert judge_spread(spread, [1.0], [1.0], min_seeds=1).margin == 0.0  # report.gate's rule: a zero allowance
    assert judge_spread(spread, [], [1.0, 2.0]).passed is None
    with pytest.raises(ValueError, match="within_spread: judge_spread"):
        judge_value(spread, 1.0, 1.0)


# ---------------------------------------------------------------------------------------------------------------
# undecided, margins, several gates, which rows


def test_undecided_when_the_reference_or_the_metric_is_missing():
    g = [_gate("ratio_min", "vbench_total", 0.99, reference={"precision": "bf16", "steps": None})]
    out = _judged([_row("ref4", "bf16", gates=g, vbench_total=0.8), _row("a4", "fp8", gates=g, vbench_total=0.8),
                   _row("a2", "fp8", steps=2, gates=g, vbench_total=0.8),  # no bf16 row at 2 steps
                   _row("nometric", "nvfp4", gates=g)])
    assert out.loc["a4", "gate_passed"] is True
    assert out.loc["a2", "gate_passed"] is None and math.isnan(out.loc["a2", "gate_margin"])
    assert out.loc["a2", "gate_reason"] == ("g: vbench_total: no reference row (precision=bf16, steps=the row's own; "
                                            "same model, frames, steps)")
    assert out.loc["nometric", "gate_passed"] is None
    assert out.loc["nometric", "gate_reason"] == "g: vbench_total: no value in this row"
    # a metric no row has, and a family column the table lacks
    out = _judged([_row("x", "bf16", gates=[_gate("max", "no_such_metric", 1.0)], vbench_total=0.8)])
    assert out.loc["x", "gate_passed"] is None and "no such column in these results" in out.loc["x", "gate_reason"]
    bad = [{"name": "g", "family": {"workload": "infer"}, "reference": {"colour": "red"},
            "checks": [{"metric": "vbench_total", "kind": "within", "value": 1}]}]
    out = _judged([_row("x", "bf16", gates=bad, vbench_total=0.8)])
    assert out.loc["x", "gate_passed"] is None and "no column 'colour' in these results" in out.loc["x", "gate_reason"]


def test_margin_is_the_smallest_slack_and_a_failure_beats_undecided():
    g = [{"name": "g", "family": {}, "reference": {"precision": "fp32"},
          "checks": [{"metric": "latent_rel_err_vs_ref", "kind": "max", "value": 0.5},
                     {"metric": "psnr_vs_ref", "kind": "min", "value": 20},
                     {"metric": "temporal_flickering", "kind": "within", "value": 0.5}]}]
    out = _judged([_row("ref", "fp32", gates=g, latent_rel_err_vs_ref=0.0, psnr_vs_ref=math.inf,
                        temporal_flickering=0.5),
                   _row("a", "bf16", gates=g, latent_rel_err_vs_ref=0.25, psnr_vs_ref=30.0, temporal_flickering=0.75),
                   _row("b", "fp8", gates=g, latent_rel_err_vs_ref=0.75, psnr_vs_ref=30.0),  # fails; flicker absent
                   _row("c", "nvfp4", gates=g, latent_rel_err_vs_ref=0.25, psnr_vs_ref=30.0)])  # passes; flicker absent
    v = _verdicts(out)
    assert v["a"] == (True, 0.5)  # min of 0.5, 0.5, 0.5
    assert v["ref"] == (True, 1.0)
    assert v["b"] == (False, -0.5)  # a failing check decides; the undecided one does not hide it
    assert v["c"] == (None, 0.5)  # the decided checks' margin stays visible
    assert out.loc["b", "gate_reason"] == ("g: latent_rel_err_vs_ref 0.75 > 0.5; psnr_vs_ref 30 ≥ 20; "
                                           "temporal_flickering: no value in this row")


def test_two_gates_on_one_row():
    g = [_gate("max", "latent_rel_err_vs_ref", 0.5, name="fidelity"), _gate("min", "denoise_fps", 10, name="speed")]
    out = _judged([_row("both", "bf16", gates=g, latent_rel_err_vs_ref=0.25, denoise_fps=20.0),
                   _row("one_fails", "fp8", gates=g, latent_rel_err_vs_ref=0.25, denoise_fps=5.0),
                   _row("one_undecided", "nvfp4", gates=g, latent_rel_err_vs_ref=0.375)])
    assert out.loc["both", "gate_name"] == "fidelity, speed"
    assert _verdicts(out) == {"both": (True, 0.5), "one_fails": (False, -0.5), "one_undecided": (None, 0.25)}
    assert out.loc["one_fails", "gate_reason"] == ("fidelity: latent_rel_err_vs_ref 0.25 ≤ 0.5 | speed: denoise_fps "
                                                   "5 < 10")


def test_which_rows_are_judged_and_where_references_come_from():
    g1 = [_gate("within", "temporal_flickering", 0.125, reference={"precision": "fp32"})]
    g2 = [_gate("within", "temporal_flickering", 0.125, reference={"precision": "fp32"}, name="other")]
    rows = [_row("ref1", "fp32", gates=g1, experiment="e1", temporal_flickering=0.5),
            _row("a1", "bf16", gates=g1, experiment="e1", temporal_flickering=0.625),
            _row("failed1", "fp8", gates=g1, experiment="e1", status="failed", temporal_flickering=9.0),
            _row("train1", "bf16", gates=g1, experiment="e1", workload="train", temporal_flickering=9.0),
            _row("ref2", "fp32", gates=g2, experiment="e2", temporal_flickering=0.0),
            _row("a2", "bf16", gates=g2, experiment="e2", temporal_flickering=0.625),
            _row("ungated", "bf16", gates=[], experiment="e3", temporal_flickering=0.625)]
    out = _judged(rows)
    assert set(GATES_COLUMNS) <= set(out.columns) and list(out.index) == [r["cell_id"] for r in rows]
    assert _verdicts(out) == {"ref1": (True, 1.0), "a1": (True, 0.0), "ref2": (True, 1.0), "a2": (False, -4.0)}
    for c in ("failed1", "train1", "ungated"):  # not ok, not in the family, no gate
        assert out.loc[c, "gate_name"] is None and out.loc[c, "gate_passed"] is None
        assert math.isnan(out.loc[c, "gate_margin"]) and out.loc[c, "gate_reason"] is None
    # the same gate declared by two experiments judges each against its own reference
    rows[4]["config"]["gates"] = g1
    rows[5]["config"]["gates"] = g1
    assert _verdicts(_judged(rows))["a2"] == (False, -4.0)
    # a family naming the experiment widens the reference pool
    wide = [_gate("within", "temporal_flickering", 0.125, reference={"precision": "fp32", "experiment": "e1"},
                  family={"experiment": ["e1", "e2"]})]
    rows = [_row("ref1", "fp32", gates=wide, experiment="e1", temporal_flickering=0.5),
            _row("a2", "bf16", gates=wide, experiment="e2", temporal_flickering=0.625)]
    assert _verdicts(_judged(rows)) == {"ref1": (True, 1.0), "a2": (True, 0.0)}
    # explicit gates replace those the rows carry (rows reused from a sweep before the gate was declared)
    rows = [_row("ref", "fp32", gates=[], temporal_flickering=0.5), _row("a", "bf16", gates=[],
                                                                         temporal_flickering=1.0)]
    out = apply_gates(pd.DataFrame(rows), {"exp": g1}).set_index("cell_id")
    assert _verdicts(out) == {"ref": (True, 1.0), "a": (False, -3.0)}
    assert apply_gates(pd.DataFrame([])).empty


def test_rows_read_back_from_a_store_keep_their_gates(tmp_path):
    g = [_gate("max", "latent_rel_err_vs_ref", 0.25)]
    store = ResultsStore(tmp_path / "res")
    for r in (_row("a", "bf16", gates=g, latent_rel_err_vs_ref=0.125), _row("b", "fp8", gates=g,
                                                                            latent_rel_err_vs_ref=0.5)):
        store.append(r)
    store.write_parquet()
    for source in (store.root, store.root / "results.parquet"):
        out = apply_gates(load_results([source])).set_index("cell_id")
        assert _verdicts(out) == {"a": (True, 0.5), "b": (False, -1.0)}


# ---------------------------------------------------------------------------------------------------------------
# the config: checked at composition


def _good() -> dict:
    return {"name": "q", "family": {"workload": "infer", "precision": ["fp8", "nvfp4"]},
            "reference": {"precision": "bf16", "steps": None}, "match": ["model", "steps"],
            "checks": [{"metric": "vbench_total", "kind": "ratio_min", "value": 0.99},
                       {"metric": "latent_rel_err_vs_ref", "kind": "max_ratio_of", "value": 1.5,
                        "baseline": {"precision": "fp8"}}]}


@pytest.mark.parametrize(("change", "message"), [
    (lambda g: g["checks"][0].update(kind="nope"),
     "gate 'q' (gates[0]): checks[0] (vbench_total): kind='nope' is not a check kind; choose one of ratio_min, max, "
     "min, within, within_spread, max_ratio_of"),
    (lambda g: g["checks"][0].pop("metric"), "gate 'q' (gates[0]): checks[0] has no metric (got metric=None): give"),
    (lambda g: g["checks"][0].update(value="high"),
     "gate 'q' (gates[0]): checks[0] (vbench_total): value='high' must be a finite number (the ratio_min limit"),
    (lambda g: g["checks"][0].update(value=True), "value=True must be a finite number"),
    (lambda g: g["checks"][0].update(value=float("nan")), "value=nan must be a finite number"),
    (lambda g: g.update(refrence={}), "gate 'q' (gates[0]): unknown key 'refrence'; a gate has name, family, "
                                      "reference, match, checks"),
    (lambda g: g["checks"][0].update(limit=1), "gate 'q' (gates[0]): checks[0] (vbench_total): unknown key 'limit'"),
    (lambda g: g.pop("name"), "gates[0] has no name (got name=None): give each gate a name"),
    (lambda g: g.pop("reference"), "kind ratio_min compares with the gate's reference row, and the gate has none: "
                                   "add reference:"),
    (lambda g: g["checks"][1].pop("baseline"), "checks[1] (latent_rel_err_vs_ref): kind max_ratio_of needs baseline"),
    (lambda g: g["checks"][0].update(baseline={"precision": "fp8"}),
     "baseline is read only by kind max_ratio_of (this check is ratio_min): drop it"),
    (lambda g: g["checks"][0].update(kind="within", value=-1), "value=-1 is an allowance of within: give a number ≥ 0"),
    (lambda g: g["checks"][0].update(value=0), "value=0 is a factor of ratio_min: give a number > 0"),
    (lambda g: g.update(family=["infer"]), "gate 'q' (gates[0]): family=['infer'] must be a mapping of column"),
    (lambda g: g.update(family={"precision": {"a": 1}}), "gate 'q' (gates[0]): family.precision={'a': 1} must be a "
                                                         "value or a list of values"),
    (lambda g: g["reference"].update(precision=["bf16"]), "reference.precision=['bf16'] must be a value or null"),
    (lambda g: g.update(match="model"), "match='model' must be a list of columns"),
    (lambda g: g.update(checks=[]), "checks=[] must be a non-empty list"),
])
def test_bad_gates_are_refused_naming_the_gate_and_the_key(change, message):
    gate = _good()
    check_gates([gate])
    change(gate)
    with pytest.raises(ValueError) as info:
        check_gates([gate])
    assert message in str(info.value)


def test_gate_list_shape_and_unique_names():
    with pytest.raises(ValueError, match=r"gates=\{'name': 'q'\} must be a list of gates"):
        check_gates({"name": "q"})
    with pytest.raises(ValueError, match=r"gate 'q' \(gates\[1\]\): another gate has the name 'q'"):
        check_gates([_good(), _good()])
    with pytest.raises(ValueError, match=r"gates\[0\]='q' must be a mapping"):
        check_gates(["q"])
    check_gates([]) and check_gates(None)
    assert set(GATE_KINDS) == {"ratio_min", "max", "min", "within", "within_spread", "max_ratio_of"}


BAD_GATE = {"name": "bad", "family": {"workload": "infer"},
            "checks": [{"metric": "psnr_vs_ref", "kind": "at_least", "value": 30}]}


def test_a_bad_gate_in_an_experiment_yaml_stops_the_sweep_before_any_cell(tmp_path):
    conf = tmp_path / "experiments"
    shutil.copytree(EXPERIMENTS_DIR, conf, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    preset = {"experiment": "gated", "frames": 16, "prompts": ["A red circle bounces on a grey background."],
              "gates": [{"name": "fine", "checks": [{"metric": "psnr_vs_ref", "kind": "min", "value": 30}]}]}
    path = conf / "experiment" / "gated.yaml"
    path.write_text("# @package _global_\n" + yaml.safe_dump(preset))
    cells = expand("gated", [], conf)
    assert len(cells) == 1 and cells[0].config["gates"] == preset["gates"]
    assert cells[0].cell_id == cell_hash({**cells[0].config, "gates": []})  # gates are not part of a cell's id
    preset["gates"].append(BAD_GATE)
    path.write_text("# @package _global_\n" + yaml.safe_dump(preset))
    with pytest.raises(ValueError) as info:
        expand("gated", [], conf)
    assert "1 of 1 cells are invalid; nothing ran" in str(info.value)
    assert ("gate 'bad' (gates[1]): checks[0] (psnr_vs_ref): kind='at_least' is not a check kind; choose one of"
            in str(info.value))


def test_sweep_list_refuses_a_bad_gate_override(tmp_path, capsys):
    bad = "gates=[{name:bad,checks:[{metric:psnr_vs_ref,kind:min,value:high}]}]"
    assert main(["sweep", bad, "--list", "--results", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "gate 'bad' (gates[0]): checks[0] (psnr_vs_ref): value='high' must be a finite number" in err
    good = "gates=[{name:ok,checks:[{metric:psnr_vs_ref,kind:min,value:30}]}]"
    assert main(["sweep", good, "--list", "--results", str(tmp_path / "r")]) == 0


# ---------------------------------------------------------------------------------------------------------------
# issue 20's gate in the new syntax


def _preset_gates(name: str) -> list[dict]:
    return yaml.safe_load((EXPERIMENTS_DIR / "experiment" / f"{name}.yaml").read_text())["gates"]


def test_attn_lowp_gates_agree_with_the_fidelity_gate():
    five_b, tiny = _preset_gates("attn_lowp"), _preset_gates("attn_lowp_tiny")
    check_gates(five_b) and check_gates(tiny)

    def row(cell, attn, precision, kv, steps, err):
        r = _row(cell, precision, attn=attn, kv=kv, steps=steps, gates=five_b, experiment="attn_lowp", model=FIVE_B,
                 latent_rel_err_vs_ref=err, denoise_fps=30.0)
        r["config"]["attn"] = attn
        return r

    def tiny_rows(attn, precision, kv, values):
        out = []
        for s, v in enumerate(values):
            r = _row(f"t-{attn}-{precision}-{kv}-{s}", precision, attn=attn, kv=kv, seed=s, gates=tiny,
                     experiment="attn_lowp_tiny", temporal_flickering=v, latent_rel_err_vs_ref=0.0)
            r["config"]["attn"] = attn
            out.append(r)
        return out

    rows = [row("ref4", "cudnn", "bf16", "none", 4, 0.0), row("fp8gemm4", "cudnn", "fp8", "none", 4, 0.25),
            row("pass4", "cudnn-fp8", "fp8", "none", 4, 0.3), row("tie4", "int8-fp8", "fp8", "none", 4, 0.375),
            row("fail4", "cudnn-fp8", "fp8", "fp8", 4, 0.5), row("nobase2", "cudnn-fp8", "fp8", "none", 2, 0.1)]
    rows += tiny_rows("cudnn", "bf16", "none", [0.5, 0.75, 0.625]) + tiny_rows("cudnn", "fp8", "none", [0.625, 0.625])
    rows += tiny_rows("cudnn-fp8", "fp8", "none", [0.875, 0.875]) + tiny_rows("cudnn-fp8", "fp8", "fp8", [0.25, 0.25])
    new = apply_gates(pd.DataFrame(rows)).set_index("cell_id")
    five = [{**r, "config": {k: v for k, v in r["config"].items() if k != "gates"}} for r in rows]
    latent_only = apply_gate(pd.DataFrame([r for r in five if r["model"] == FIVE_B])).set_index("cell_id")
    # the latent half: report/gate.py's verdicts, margins and words, row by row
    assert new.loc[latent_only.index, "gate_name"].eq("fidelity").all()
    for c in latent_only.index:
        assert new.loc[c, "gate_passed"] is latent_only.loc[c, "gate_passed"]
        assert new.loc[c, "gate_margin"] == pytest.approx(latent_only.loc[c, "gate_margin"], nan_ok=True)
        first = latent_only.loc[c, "gate_rule"].split("; ")[0]
        assert (c == "nobase2") == first.startswith("no baseline")
        if c != "nobase2":
            assert new.loc[c, "gate_reason"] == f"fidelity: {first}"
    assert new.loc["fail4", "gate_margin"] == pytest.approx(1 - 0.5 / 0.375)
    # the tiny half: each tiny configuration against the reference's seed spread, in gate.py's numbers
    joined = apply_gate(pd.DataFrame(five)).set_index("cell_id")
    for five_b, tiny_cell in (("fp8gemm4", "t-cudnn-fp8-none-0"), ("pass4", "t-cudnn-fp8-fp8-none-1"),
                              ("fail4", "t-cudnn-fp8-fp8-fp8-0")):
        tiny_note = joined.loc[five_b, "gate_rule"].split("; tiny ")[1]
        assert new.loc[tiny_cell, "gate_reason"] == f"fidelity-tiny: {tiny_note}"
    assert new.loc["t-cudnn-fp8-none-0", "gate_margin"] == 1.0
    assert new.loc["t-cudnn-fp8-fp8-none-0", "gate_passed"] is True
    assert new.loc["t-cudnn-fp8-fp8-none-0", "gate_margin"] == 0.0
    assert new.loc["t-cudnn-fp8-fp8-fp8-1", "gate_passed"] is False
    assert new.loc["t-cudnn-fp8-fp8-fp8-1", "gate_margin"] == pytest.approx(1 - 0.375 / 0.25)
    assert new.loc["t-cudnn-bf16-none-2", "gate_reason"].startswith("fidelity-tiny: reference row; ")
    # both presets compose with their gates (one cell each here)
    cells = expand("attn_lowp_tiny", ["seed=0", "precision=bf16", "attn=cudnn", "matrices=[]"])
    assert [c.config["gates"] for c in cells] == [tiny]


# ---------------------------------------------------------------------------------------------------------------
# what the report renders


def test_summary_and_description_for_the_gates_section():
    g = [{"name": "fidelity", "family": {"workload": "infer"}, "reference": {"precision": "fp32", "steps": None},
          "checks": [{"metric": "latent_rel_err_vs_ref", "kind": "max", "value": 0.25},
                     {"metric": "temporal_flickering", "kind": "within", "value": 0.125}]}]
    rows = [_row("ref", "fp32", gates=g, latent_rel_err_vs_ref=0.0, temporal_flickering=0.5),
            _row("a", "bf16", gates=g, latent_rel_err_vs_ref=0.125, temporal_flickering=0.5),
            _row("b", "nvfp4", gates=g, latent_rel_err_vs_ref=0.5, temporal_flickering=0.5),
            _row("c", "fp8", steps=2, gates=g, latent_rel_err_vs_ref=0.125, temporal_flickering=0.5),
            _row("other", "fp8", gates=[_gate("min", "denoise_fps", 1, name="speed")], experiment="x")]
    text = describe_gate(g[0])
    assert text == ("fidelity: judges rows with workload=infer; reference: the row with precision=fp32, steps=the "
                    "row's own (same model, frames, gpu_name, steps); passes when latent_rel_err_vs_ref ≤ 0.25 and "
                    "|temporal_flickering − the reference's| ≤ 0.125")
    assert describe_gate(Gate.parse(g[0])) == text
    entries = {e["name"]: e for e in gates_summary(pd.DataFrame(rows))}
    assert set(entries) == {"fidelity", "speed"}
    e = entries["fidelity"]
    assert e["experiments"] == ["exp"] and e["problem"] is None and e["description"] == text
    assert e["counts"] == {"passed": 2, "failed": 1, "undecided": 1}
    assert e["label_columns"] == ["precision", "steps"]  # what varies among the judged rows
    assert [c["label"] for c in e["checks"]] == ["latent_rel_err_vs_ref ≤ 0.25", "temporal_flickering ±0.125 of ref"]
    by_cell = {r["cell_id"]: r for r in e["rows"]}
    assert by_cell["ref"]["reference"] is True and by_cell["a"]["reference"] is False
    assert by_cell["b"]["results"][0] == {"value": 0.5, "op": "≤", "limit": 0.25, "passed": False, "margin": -1.0,
                                          "text": "latent_rel_err_vs_ref 0.5 > 0.25"}
    assert by_cell["c"]["passed"] is None and by_cell["c"]["margin"] == 0.5
    table = summary_table(e)
    assert list(table.columns) == ["cell_id", "precision", "steps", "latent_rel_err_vs_ref ≤ 0.25",
                                   "latent_rel_err_vs_ref ≤ 0.25 limit", "temporal_flickering ±0.125 of ref",
                                   "temporal_flickering ±0.125 of ref limit", "gate_passed", "gate_margin",
                                   "gate_reason"]
    assert table.set_index("cell_id").loc["a", "gate_margin"] == 0.5
    # an invalid gate in rows (hand-edited results) is reported, not raised
    rows = [_row("x", "bf16", gates=[{"name": "broken", "checks": [{"metric": "m", "kind": "nope", "value": 1}]}])]
    (e,) = gates_summary(pd.DataFrame(rows))
    assert e["name"] == "broken" and "invalid gate: gate 'broken'" in e["problem"] and e["rows"] == []
    assert apply_gates(pd.DataFrame(rows))["gate_name"].tolist() == [None]


SMOKE_YAML = EXPERIMENTS_DIR / "experiment" / "smoke.yaml"
"""The smoke matrix's own gates are what this test holds to real values (no copy to drift)."""


def test_the_smoke_gates_on_rows_of_a_real_smoke_run():
    gates = yaml.safe_load(SMOKE_YAML.read_text())["gates"]
    check_gates(gates)

    def row(cell, precision, kv, steps, err, psnr, flicker, frames=16, **extra):
        r = _row(cell, precision, kv=kv, steps=steps, gates=gates, experiment="smoke", latent_rel_err_vs_ref=err,
                 psnr_vs_ref=psnr, temporal_flickering=flicker, **extra)
        r["frames"] = frames
        return r

    # values of a CPU smoke sweep (sp 1, streaming): the 4-step reference, the worst cells, 2-step cells
    rows = [row("ref4", "fp32", "none", 4, 0.0, math.inf, 0.987889), row("bf16", "bf16", "none", 4, 0.0152, 41.34,
                                                                          0.987895),
            row("nvfp4x2", "nvfp4", "nvfp4", 4, 0.3393, 29.09, 0.986281),
            row("ref2", "fp32", "none", 2, 0.7195, 23.25, 0.983327),
            row("nvfp4x2_2", "nvfp4", "nvfp4", 2, 0.8082, 22.07, 0.981299),
            row("long", "bf16", "none", 2, None, None, 0.9857, frames=60, stray_share=0.0139,
                prompt_colour_match=0.9299, shape_iou=0.6586, palette_match=0.7601),
            row("long_kv", "bf16", "nvfp4", 2, None, None, 0.9858, frames=60, stray_share=0.0156,
                prompt_colour_match=0.9224, shape_iou=0.6278, palette_match=0.7615),
            {**row("train", "fp32", "none", 4, None, None, None), "workload": "train"}]
    out = _judged(rows)
    assert out.loc["train", "gate_name"] is None
    assert out.loc["ref4", "gate_name"] == "fidelity, tiny-metrics" and out.loc["ref2", "gate_name"] == "tiny-metrics"
    assert out.loc["long", "gate_name"] == "long-video"
    judged = out[out["gate_name"].notna()].drop(index="nvfp4x2")
    assert judged["gate_passed"].map(lambda v: v is True).all()
    # NVFP4 weights and KV: 34 % latent error and 29.09 dB fail the 25 % / 30 dB fidelity gate; the error binds
    assert out.loc["nvfp4x2", "gate_passed"] is False
    assert out.loc["nvfp4x2", "gate_margin"] == pytest.approx((0.25 - 0.3393) / 0.25)
    # a broken cell fails: a model whose NVFP4 path drifts (error 0.6, 25 dB, flicker off by 0.01)
    rows.append(row("broken", "nvfp4", "none", 4, 0.6, 25.0, 0.977889))
    out = _judged(rows)
    assert out.loc["broken", "gate_passed"] is False
    assert out.loc["broken", "gate_margin"] == pytest.approx((0.25 - 0.6) / 0.25)  # the error binds (flicker: −1)


def test_a_report_judges_with_the_presets_gates_of_today(tmp_path):
    """`gates` is not part of a cell's id, so rows reused by a later sweep keep the gates of the sweep that wrote them;
    the report takes each experiment's gates from its preset as it is now (preset_gates), else the rows' own."""
    from longlive.report.gates import preset_gates

    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "strict.yaml").write_text(
        "gates:\n  - name: g\n    checks:\n      - {metric: psnr_vs_ref, kind: min, value: 30}\n")
    (tmp_path / "experiment" / "plain.yaml").write_text("frames: 16\n")
    assert preset_gates(["strict", "plain", "adhoc", None], tmp_path) == {
        "strict": [{"name": "g", "checks": [{"metric": "psnr_vs_ref", "kind": "min", "value": 30}]}]}
    old = [{"name": "g", "checks": [{"metric": "psnr_vs_ref", "kind": "min", "value": 27}]}]
    rows = pd.DataFrame([_row("a", "nvfp4", gates=old, experiment="strict", psnr_vs_ref=29.0),
                         _row("b", "nvfp4", gates=old, experiment="adhoc", psnr_vs_ref=29.0)])
    stored = apply_gates(rows).set_index("cell_id")
    assert stored.loc["a", "gate_passed"] is True and stored.loc["b", "gate_passed"] is True
    today = apply_gates(rows, preset_gates(rows["experiment"], tmp_path)).set_index("cell_id")
    assert today.loc["a", "gate_passed"] is False  # the preset now asks for 30 dB
    assert today.loc["b", "gate_passed"] is True  # no preset: the row's own gate
    assert set(preset_gates(["smoke"])) == {"smoke"}  # the shipped smoke preset declares its gates
