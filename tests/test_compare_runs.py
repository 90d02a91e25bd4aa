"""`longlive compare`: cell matching across commits, verdicts from spreads or the noise band, exit codes, outputs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from longlive.cli import main
from longlive.report.regress import (
    IMPROVED,
    NO_DIRECTION,
    NOISE,
    REGRESSED,
    cell_labels,
    compare_sets,
    config_key,
    context,
    direction,
    judge,
    load_set,
    manifests,
    match,
    match_config,
    relative_change,
)
from longlive.report.trend import trend_table
from longlive.runner.store import ResultsStore

COMMIT_A = "aaaaaaaa11111111111111111111111111111111"
COMMIT_B = "bbbbbbbb22222222222222222222222222222222"
COMMIT_C = "cccccccc33333333333333333333333333333333"


def config(**over) -> dict:
    """A row's resolved config, shaped like the runner's (nested groups, plus the keys matching ignores)."""
    c = {"model": {"name": "tiny"}, "precision": {"name": "bf16", "dtype": "bf16"}, "kv_quant": {"name": "none"},
         "workload": {"name": "infer"}, "hardware": {"name": "gpu", "device": "cuda"}, "experiment": "smoke",
         "steps": 4, "frames": 8, "seed": 0, "sp": 1, "cell_timeout_s": 600, "results_dir": None}
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(c.get(k), dict):
            c[k] = {**c[k], **v}
        else:
            c[k] = v
    return c


def row(cell_id: str, cfg: dict, commit: str, status: str = "ok", gpu: str = "NVIDIA H100", **metrics) -> dict:
    return {"cell_id": cell_id, "experiment": cfg.get("experiment", "smoke"), "workload": "infer", "status": status,
            "precision": cfg["precision"]["name"], "steps": cfg["steps"], "config": cfg,
            "manifest": {"git_commit": commit, "gpu": gpu, "driver": "580.1", "cuda": "13.0", "host": "vm",
                         "date": "2026-01-01T00:00:00+00:00", "packages": {"torch": "2.11.0"}},
            **metrics}


def write_set(folder: Path, rows: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


BF16, FP8, NVFP4 = config(), config(precision={"name": "fp8", "dtype": "bf16"}), config(
    precision={"name": "nvfp4", "dtype": "bf16"})


@pytest.fixture
def sets(tmp_path: Path) -> tuple[Path, Path]:
    """A baseline and a candidate crafted so that every verdict occurs: bf16 regresses, fp8 improves, nvfp4 stays
    within noise (single runs); the repeated denoise_fps of fp8 / nvfp4 decides by its intervals."""
    a = write_set(tmp_path / "base", [
        row("c1", BF16, COMMIT_A, denoise_fps=20.0, e2e_s=10.0, frames_video=33),
        row("c2", FP8, COMMIT_A, denoise_fps=30.0, denoise_fps_lo=29.0, denoise_fps_hi=31.0, e2e_s=8.0),
        row("c3", NVFP4, COMMIT_A, denoise_fps=40.0, denoise_fps_lo=36.0, denoise_fps_hi=44.0, e2e_s=6.0),
    ])
    # the candidate's rows: another experiment name, hardware and repeats, a default-valued field more
    b = write_set(tmp_path / "cand", [
        row("d1", config(experiment="smoke_v2", hardware={"name": "h200"}, fuse_qkv=False), COMMIT_B,
            denoise_fps=16.0, e2e_s=12.5, frames_video=33),
        row("d2", config(precision={"name": "fp8", "dtype": "bf16"}, repeats=5), COMMIT_B,
            denoise_fps=33.0, denoise_fps_lo=32.0, denoise_fps_hi=34.0, e2e_s=6.0),
        row("d3", NVFP4, COMMIT_B, denoise_fps=44.0, denoise_fps_lo=41.0, denoise_fps_hi=47.0, e2e_s=6.1),
        row("d4", config(steps=2), COMMIT_B, status="failed"),
    ])
    return a, b


# ---------------------------------------------------------------- directions and the verdict rule


@pytest.mark.parametrize("metric, higher", [
    ("denoise_fps", True), ("decode_fps", True), ("tokens_per_s", True), ("mfu", True), ("fraction_of_ceiling", True),
    ("psnr_vs_ref", True), ("vbench_total", True), ("achieved_tflops", True), ("temporal_flickering", True),
    ("temporal_flickering_worst_window", True), ("shape_iou", True),
    ("e2e_s", False), ("iter_s", False), ("switch_latency_s", False), ("chunk_ms_median", False),
    ("peak_allocated_gb", False), ("latent_rel_err_vs_ref", False), ("attn_rel_err_max", False),
    ("stray_share", False),
    ("frames_video", None), ("loss_last", None), ("foreground_fraction", None),
    ("temporal_flickering_worst_window_index", None),
])
def test_direction_by_name_and_registry(metric, higher):
    assert direction(metric) is higher


@pytest.mark.parametrize("metric, a, b, verdict, beyond", [
    ("denoise_fps", 100.0, 102.0, NOISE, False),       # +2 % ≤ 3 % noise
    ("denoise_fps", 100.0, 97.0, NOISE, False),        # exactly the noise band
    ("denoise_fps", 100.0, 110.0, IMPROVED, False),
    ("denoise_fps", 100.0, 96.0, REGRESSED, False),    # outside the noise, inside the 5 % threshold
    ("denoise_fps", 100.0, 90.0, REGRESSED, True),
    ("e2e_s", 10.0, 11.0, REGRESSED, True),            # lower is better: slower is a regression
    ("e2e_s", 10.0, 9.0, IMPROVED, False),
    ("frames_video", 33.0, 66.0, NO_DIRECTION, False),
])
def test_single_runs_judged_by_the_noise_band(metric, a, b, verdict, beyond):
    got = judge(metric, a, b, None, None, noise=0.03, threshold=0.05)
    assert got[0] == verdict and got[4] is beyond
    assert got[1] == ("—" if verdict == NO_DIRECTION else "noise band")
    assert got[2] == pytest.approx(b / a)


def test_intervals_decide_when_both_sides_have_them():
    # a 10 % median change inside overlapping intervals is noise; disjoint intervals decide even for 2 %
    assert judge("denoise_fps", 100, 110, (90, 105), (100, 120), 0.03, 0.05)[:2] == (NOISE, "intervals")
    assert judge("denoise_fps", 100, 102, (99.5, 100.5), (101, 103), 0.03, 0.05)[:2] == (IMPROVED, "intervals")
    v = judge("denoise_fps", 100, 80, (99, 101), (79, 81), 0.03, 0.05)
    assert v[0] == REGRESSED and v[4] is True
    # an interval on one side only: the single-run rule
    assert judge("denoise_fps", 100, 110, (90, 105), None, 0.03, 0.05)[:2] == (IMPROVED, "noise band")


def test_relative_change_edges():
    assert relative_change(math.inf, math.inf) == (1.0, 0.0)   # PSNR of two identical videos
    assert relative_change(0.0, 0.0) == (1.0, 0.0)             # error of a reference cell against itself
    assert relative_change(0.0, 0.1) == (math.inf, math.inf)
    assert relative_change(-2.0, -1.0) == (0.5, 0.5)           # change relative to |A|: an increase
    assert relative_change(4.0, 5.0) == (1.25, 0.25)


# ---------------------------------------------------------------- matching


def test_matching_ignores_machine_bookkeeping_and_default_valued_extra_keys():
    base = config()
    later = config(experiment="renamed", hardware={"name": "h200", "device": "cuda"}, repeats=3, gates=[{"x": 1}],
                   cell_timeout_s=99, fuse_qkv=False, precision={"act_scale": "dynamic"}, decode_chunks=4)
    assert config_key({"config": base}) == config_key({"config": later})
    assert "hardware" not in match_config({"config": base}) and "experiment" not in match_config({"config": base})


@pytest.mark.parametrize("change", [{"steps": 2}, {"precision": {"name": "fp8"}}, {"fuse_qkv": True},
                                    {"precision": {"act_scale": "static"}}, {"prompts": ["another prompt"]}])
def test_a_configuration_difference_does_not_match(change):
    assert config_key({"config": config()}) != config_key({"config": config(**change)})


def test_rows_without_config_match_on_their_columns():
    a = {"config": {}, "model": "tiny", "precision": "bf16", "steps": 4, "hardware": "h100", "workload": "infer"}
    assert match_config(a) == {"row_columns": {"model": "tiny", "precision": "bf16", "steps": 4, "workload": "infer"}}
    assert config_key(a) == config_key({**a, "hardware": "h200"}) != config_key({**a, "steps": 2})


def test_match_pairs_cells_and_lists_the_unmatched(tmp_path):
    a = load_set(write_set(tmp_path / "a", [row("a1", BF16, COMMIT_A, denoise_fps=1.0),
                                            row("a2", config(steps=2, seed=1), COMMIT_A, denoise_fps=1.0)]))
    b = load_set(write_set(tmp_path / "b", [row("b1", config(fuse_qkv=False), COMMIT_B, denoise_fps=1.0),
                                            row("b2", config(steps=2), COMMIT_B, denoise_fps=1.0),
                                            row("b3", BF16, COMMIT_B, status="skipped")]))
    m = match(a, b)
    assert [(c.a["cell_id"], c.b["cell_id"], c.label) for c in m.cells] == [("a1", "b1", "steps=4 seed=0")]
    assert [(u.cell_id, u.label) for u in m.only_a] == [("a2", "steps=2 seed=1")]
    assert [(u.cell_id, u.label) for u in m.only_b] == [("b2", "steps=2 seed=0")]
    assert m.only_a[0].closest == "seed: 1 → 0"          # the nearest B configuration, A's value first
    assert m.only_b[0].closest == "seed: 1 → 0"
    assert b.other == {"skipped": 1} and len(b.rows) == 2


def test_cell_labels_name_only_what_tells_cells_apart():
    rows = [{"config": config(precision={"name": p, "dtype": d}, steps=s)}
            for p, d, s in (("bf16", "bf16", 4), ("fp32", "fp32", 4), ("bf16", "bf16", 2))]
    assert cell_labels(rows) == ["precision=bf16 steps=4", "precision=fp32 steps=4", "precision=bf16 steps=2"]
    assert cell_labels(rows[:1]) == ["the cell"]                      # nothing varies: the workload, else this
    assert cell_labels([{**rows[0], "workload": "infer"}]) == ["infer"]


# ---------------------------------------------------------------- whole comparisons


def test_every_verdict_from_crafted_sets(sets):
    a, b = (load_set(p) for p in sets)
    cmp = compare_sets(a, b)
    got = {(c.cell, c.metric): (c.verdict, c.basis, c.beyond) for c in cmp.changes}
    assert got == {
        ("precision=bf16", "denoise_fps"): (REGRESSED, "noise band", True),      # 20 → 16
        ("precision=fp8", "denoise_fps"): (IMPROVED, "intervals", False),         # [29, 31] → [32, 34]
        ("precision=nvfp4", "denoise_fps"): (NOISE, "intervals", False),          # +10 %, intervals overlap
        ("precision=bf16", "e2e_s"): (REGRESSED, "noise band", True),            # 10 → 12.5 s
        ("precision=fp8", "e2e_s"): (IMPROVED, "noise band", False),              # 8 → 6 s
        ("precision=nvfp4", "e2e_s"): (NOISE, "noise band", False),               # 6 → 6.1 s
        ("precision=bf16", "frames_video"): (NO_DIRECTION, "—", False),
    }
    assert cmp.exit_code == 1
    assert (cmp.worst.cell, cmp.worst.metric) == ("precision=bf16", "e2e_s")     # −25 % beats −20 %
    assert [c.metric for c in cmp.beyond] == ["e2e_s", "denoise_fps"]
    assert compare_sets(a, b, threshold=0.5).exit_code == 0                     # regressions inside the threshold
    assert compare_sets(a, b, metrics=["e2e_s"]).metrics == ["e2e_s"]


def test_unusable_input_is_a_clear_value_error(sets, tmp_path):
    a = load_set(sets[0])
    other = load_set(write_set(tmp_path / "other", [row("x", config(steps=1), COMMIT_B, denoise_fps=1.0)]))
    with pytest.raises(ValueError, match="no configuration of other@bbbbbbbb matches.*steps: 4 → 1"):
        compare_sets(a, other)
    with pytest.raises(ValueError, match="--metrics bogus: not a column"):
        compare_sets(a, load_set(sets[1]), metrics=["bogus"])
    no_numbers = load_set(write_set(tmp_path / "nonum", [row("y", BF16, COMMIT_B)]))
    with pytest.raises(ValueError, match="no metric .* has a number on both sides"):
        compare_sets(a, no_numbers)
    write_set(tmp_path / "failed", [row("z", BF16, COMMIT_B, status="failed")])
    with pytest.raises(ValueError, match="none of its 1 rows has status ok"):
        load_set(tmp_path / "failed")


def test_a_parquet_snapshot_compares_equal_to_its_jsonl(sets):
    snapshot = ResultsStore(sets[1]).write_parquet()
    cmp = compare_sets(load_set(sets[1] / "results.jsonl"), load_set(snapshot))
    assert len(cmp.matching.cells) == 3 and not cmp.matching.only_a and not cmp.matching.only_b
    assert {c.verdict for c in cmp.changes} == {NOISE, NO_DIRECTION} and cmp.exit_code == 0


def test_manifests_are_distinct_machines_with_counts(tmp_path):
    rs = load_set(write_set(tmp_path / "m", [row("1", BF16, COMMIT_A, denoise_fps=1.0),
                                             row("2", FP8, COMMIT_A, denoise_fps=1.0),
                                             row("3", NVFP4, COMMIT_A, gpu="NVIDIA H200", denoise_fps=1.0)]))
    got = [(m["gpu"], m["rows"], m["git_commit"], m["torch"]) for m in manifests(rs)]
    assert got == [("NVIDIA H100", 2, COMMIT_A, "2.11.0"), ("NVIDIA H200", 1, COMMIT_A, "2.11.0")]


# ---------------------------------------------------------------- the command


def test_cli_regression_exits_1_and_writes_markdown_and_html(sets, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", str(sets[0]), str(sets[1]), "--out", str(out)]) == 1
    stdout = capsys.readouterr().out
    assert stdout == (out / "compare.md").read_text()
    assert stdout.splitlines()[2].startswith("**REGRESSED: 2 value(s) regressed by more than 5 %")
    assert "Worst regression: e2e_s of precision=bf16: 10 → 12.5 (1.250×, +25.0 %)" in stdout
    assert "B only (0): none" in stdout
    assert "| B (candidate) | cand@bbbbbbbb | bbbbbbbb | 3 | 3 | 0 | 1 failed |" in stdout
    page = (out / "compare.html").read_text()
    assert COMMIT_A in page and COMMIT_B in page and 'class="headline regressed"' in page
    assert not (out / "trend.png").exists()


def test_cli_exit_0_within_threshold_or_for_chosen_metrics(sets, capsys):
    assert main(["compare", str(sets[0]), str(sets[1]), "--threshold", "0.3"]) == 0
    assert "No regression beyond 30 %" in capsys.readouterr().out
    assert main(["compare", str(sets[0]), str(sets[1]), "--metrics", "frames_video"]) == 0
    assert main(["compare", str(sets[0]), str(sets[0])]) == 0
    text = capsys.readouterr().out
    assert "**No regression (exit status 0)**" in text and "0 regressed" in text


def test_cli_unusable_input_exits_2(sets, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "results.jsonl").write_text("")
    nomatch = write_set(tmp_path / "nomatch", [row("x", config(seed=7), COMMIT_B, denoise_fps=1.0)])
    cases = [([str(sets[0]), str(empty)], "holds no rows"),
             ([str(sets[0]), str(nomatch)], "no configuration of nomatch@bbbbbbbb matches"),
             ([str(sets[0]), str(tmp_path / "missing")], "does not exist"),
             ([str(sets[0])], "give at least two result sets"),
             ([str(sets[0]), str(sets[1]), "--metrics", " , "], "--metrics: give metric names"),
             ([str(sets[0]), str(sets[1]), "--out", str(sets[0] / "results.jsonl")], "is not a folder")]
    for argv, message in cases:
        assert main(["compare", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("longlive compare: error:") and message in err, (argv, err)


@pytest.mark.parametrize("flag, value", [("--threshold", "5"), ("--noise", "-0.1"), ("--noise", "three")])
def test_cli_fractions_are_checked_before_loading(sets, capsys, flag, value):
    with pytest.raises(SystemExit) as exc:
        main(["compare", str(sets[0]), str(sets[1]), flag, value])
    assert exc.value.code == 2 and "0.05 = 5 %" in capsys.readouterr().err


def test_cli_trend_over_three_sets(sets, tmp_path, capsys):
    middle = write_set(tmp_path / "mid", [row("m1", BF16, COMMIT_C, denoise_fps=18.0, e2e_s=11.0)])  # bf16 only
    out = tmp_path / "trend"
    assert main(["compare", str(sets[0]), str(middle), str(sets[1]), "--out", str(out)]) == 1
    png = out / "trend.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![trend](trend.png)" in (out / "compare.md").read_text()
    assert '<img src="trend.png"' in (out / "compare.html").read_text()
    capsys.readouterr()


def test_trend_table_holds_every_sets_values_and_intervals(sets, tmp_path):
    middle = write_set(tmp_path / "mid", [row("m1", BF16, COMMIT_C, denoise_fps=18.0)])
    rs = [load_set(p) for p in (sets[0], middle, sets[1])]
    table, note = trend_table(rs, compare_sets(rs[0], rs[-1]), max_panels=1)
    assert note == ("1 more metric(s) not plotted (e2e_s): choose with --metrics; not plotted, no good direction: "
                    "frames_video")
    assert trend_table(rs, compare_sets(rs[0], rs[-1], metrics=["frames_video"]))[0]["metric"].unique() == [
        "frames_video"]                                                         # the only one asked for: drawn
    got = [(r.set, r.cell, r.value, r.lo, r.hi) for r in table.itertuples()]
    nan = None
    assert [(s, c, v, None if lo != lo else lo, None if hi != hi else hi) for s, c, v, lo, hi in got] == [
        (0, "precision=bf16", 20.0, nan, nan), (0, "precision=fp8", 30.0, 29.0, 31.0),
        (0, "precision=nvfp4", 40.0, 36.0, 44.0),
        (1, "precision=bf16", 18.0, nan, nan),                                    # fp8 / nvfp4 absent: a gap
        (2, "precision=bf16", 16.0, nan, nan), (2, "precision=fp8", 33.0, 32.0, 34.0),
        (2, "precision=nvfp4", 44.0, 41.0, 47.0)]
    assert [s.label for s in rs] == ["base@aaaaaaaa", "mid@cccccccc", "cand@bbbbbbbb"]


def test_context_headline_when_only_small_regressions(sets):
    cmp = compare_sets(load_set(sets[0]), load_set(sets[1]), threshold=0.3)
    ctx = context(cmp)
    assert ctx["status"] == "warn" and ctx["headline"].startswith("No regression beyond 30 % (2 smaller")
    assert [r["cell"] for r in ctx["regressions"]] == ["precision=bf16", "precision=bf16"]
