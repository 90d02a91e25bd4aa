"""Repeats (issue 22 item 1): a cell's timed run repeated `repeats` times, each timed metric the median with an
interval and its per-run values; the bookkeeping of `aggregate_repeats`, the cell process repeating a workload, and
the infer / vae_decode workloads repeating their timed part after one build."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import pytest

from longlive.experiments.spec import RunSpec, from_config
from longlive.measure.spread import REPEATS_RULE, TIMED_METRICS, aggregate_repeats, spread
from longlive.runner import schema
from longlive.runner.cell import build_row, main
from longlive.runner.matrix import make_cell
from longlive.workloads import _LOADED, REGISTRY, CellContext, get_workload

TIMED = ("denoise_fps", "e2e_s")


def test_the_timed_set_is_the_schemas():
    assert schema.TIMED_METRICS == TIMED_METRICS  # one set: the runner's columns and what workloads aggregate
    assert set(TIMED_METRICS) <= set(schema.METRICS)


def test_timed_metrics_get_median_interval_and_runs_and_the_rest_is_the_first_runs():
    runs = [{"denoise_fps": fps, "e2e_s": 1.0 / fps, "peak_allocated_gb": gb, "psnr_per_chunk": [k, k],
             "artifacts": {"video": f"video{k}.mp4"}, "timing_definition": {"denoise_fps": "steady chunks"}}
            for k, (fps, gb) in enumerate([(20.0, 1.5), (10.0, 2.5), (30.0, 3.5)])]
    before = json.dumps(runs)
    out = aggregate_repeats(runs, TIMED)
    assert (out["denoise_fps"], out["denoise_fps_lo"], out["denoise_fps_hi"]) == (20.0, 10.0, 30.0)
    assert out["denoise_fps_repeats"] == [20.0, 10.0, 30.0]  # in run order
    assert out["e2e_s"] == statistics.median([1 / 20, 1 / 10, 1 / 30]) and out["e2e_s_repeats"] == [0.05, 0.1, 1 / 30]
    assert out["peak_allocated_gb"] == 1.5 and out["psnr_per_chunk"] == [0, 0]  # lists and others: the first run's
    assert out["artifacts"] == {"video": "video0.mp4"}
    assert out["timing_definition"] == {"denoise_fps": "steady chunks", "repeats": REPEATS_RULE}
    assert json.dumps(runs) == before  # the runs' dicts are not changed


def test_five_runs_carry_the_bootstrap_interval_of_spread():
    fps = [11.0, 12.5, 10.0, 13.0, 12.0, 9.5]
    out = aggregate_repeats([{"denoise_fps": v} for v in fps], TIMED)
    s = spread(fps, name="denoise_fps")
    assert (out["denoise_fps"], out["denoise_fps_lo"], out["denoise_fps_hi"]) == (s.median, s.lo, s.hi)
    assert "e2e_s" not in out and "e2e_s_lo" not in out  # a metric no run measured stays absent


@pytest.mark.parametrize("gap", [None, "missing", float("nan")])
def test_a_metric_missing_in_one_run_keeps_the_first_value_without_interval(gap):
    second = {"e2e_s": 2.0} if gap == "missing" else {"denoise_fps": gap, "e2e_s": 2.0}
    out = aggregate_repeats([{"denoise_fps": 20.0, "e2e_s": 1.0}, second, {"denoise_fps": 30.0, "e2e_s": 3.0}], TIMED)
    assert out["denoise_fps"] == 20.0 and not any(k.startswith("denoise_fps_") for k in out)
    assert (out["e2e_s"], out["e2e_s_lo"], out["e2e_s_hi"]) == (2.0, 1.0, 3.0)  # the others still aggregate
    assert out["timing_definition"] == {"repeats": REPEATS_RULE}


def test_one_run_is_unchanged_and_none_is_an_error():
    run = {"denoise_fps": 20.0, "timing_definition": {"denoise_fps": "x"}}
    assert aggregate_repeats([run], TIMED) == run  # repeats = 1: no _lo/_hi, no rule
    assert aggregate_repeats([{}, {}], TIMED) == {}  # an SP rank other than the first reports nothing
    with pytest.raises(ValueError, match="no runs to aggregate"):
        aggregate_repeats([], TIMED)


class CountingWorkload:
    """A fake workload: each run returns the next of a fixed list of speeds and writes a file where it was told."""

    name = "counting"
    fps = (12.0, 10.0, 14.0)
    calls: list[Path] = []

    def check(self, spec: RunSpec) -> str | None:
        return None

    def run(self, spec: RunSpec, ctx: CellContext) -> dict[str, Any]:
        k = len(self.calls)
        self.calls.append(ctx.out)
        ctx.out.mkdir(parents=True, exist_ok=True)
        (ctx.out / "run.txt").write_text(str(k))
        return {"denoise_fps": self.fps[k], "chunk_ms_median": 100.0 + k, "peak_allocated_gb": float(k),
                "latent_rel_err_per_chunk": [float(k)], "artifacts": {"run": "run.txt"},
                "timing_definition": {"denoise_fps": "fake"}}


class InsideWorkload(CountingWorkload):
    """Declares that it repeats its own timed part: the cell calls it once."""

    name = "inside"
    repeats_inside = True


def run_cell(tmp_path: Path, cls: type, repeats: int, monkeypatch) -> dict[str, Any]:
    """Write cell.json as the executor does and run the cell's main in this process (the fake workload is
    registered here, not in a child process)."""
    monkeypatch.setitem(REGISTRY, cls.name, f"{__name__}:{cls.__name__}")
    monkeypatch.delitem(_LOADED, cls.name, raising=False)
    wl = get_workload(cls.name)
    monkeypatch.setattr(wl, "calls", [])
    cell = make_cell([f"repeats={repeats}", "frames=4"])
    config = {**cell.config, "workload": {"name": cls.name}}
    out = tmp_path / "cells" / cell.cell_id
    out.mkdir(parents=True)
    spec = {"cell_id": cell.cell_id, "config": config, "axes": cell.axes, "overrides": cell.overrides,
            "out": str(out), "reference_dir": None}
    (out / "cell.json").write_text(json.dumps(spec))
    assert main([str(out / "cell.json"), str(out / "row.json")]) == 0
    return json.loads((out / "row.json").read_text()) | {"_calls": wl.calls, "_out": out}


def test_the_cell_runs_a_workload_repeats_times_and_aggregates(tmp_path, monkeypatch):
    row = run_cell(tmp_path, CountingWorkload, 3, monkeypatch)
    out = row["_out"]
    assert row["status"] == "ok" and row["repeats"] == 3
    assert row["_calls"] == [out, out / "repeat2", out / "repeat3"]  # no run overwrites another's files
    assert [(p / "run.txt").read_text() for p in row["_calls"]] == ["0", "1", "2"]
    assert (row["denoise_fps"], row["denoise_fps_lo"], row["denoise_fps_hi"]) == (12.0, 10.0, 14.0)
    assert row["denoise_fps_repeats"] == [12.0, 10.0, 14.0]
    assert (row["chunk_ms_median"], row["chunk_ms_median_repeats"]) == (101.0, [100.0, 101.0, 102.0])
    assert row["peak_allocated_gb"] == 0.0 and row["latent_rel_err_per_chunk"] == [0.0]  # the first run's
    assert row["artifacts"] == {"run": "run.txt"}
    assert row["timing_definition"] == {"denoise_fps": "fake", "repeats": REPEATS_RULE}


def test_one_repeat_is_a_plain_row(tmp_path, monkeypatch):
    row = run_cell(tmp_path, CountingWorkload, 1, monkeypatch)
    assert row["repeats"] == 1 and row["denoise_fps"] == 12.0 and row["_calls"] == [row["_out"]]
    assert not [k for k in row if k.endswith(("_lo", "_hi", "_repeats"))]
    assert row["timing_definition"] == {"denoise_fps": "fake"}


def test_a_workload_that_repeats_inside_is_called_once(tmp_path, monkeypatch):
    row = run_cell(tmp_path, InsideWorkload, 3, monkeypatch)
    assert row["_calls"] == [row["_out"]] and row["repeats"] == 3 and "denoise_fps_lo" not in row


def test_every_row_says_how_many_runs_were_asked():
    cell = make_cell(["repeats=4", "frames=4"])
    spec = {"cell_id": cell.cell_id, "config": cell.config, "axes": cell.axes}
    assert build_row(spec, "skipped", "needs a CUDA GPU", None, "2026-01-01T00:00:00+00:00", 0.0)["repeats"] == 4
    old = {**spec, "config": {k: v for k, v in cell.config.items() if k != "repeats"}}  # a config before repeats
    assert build_row(old, "failed", "x", None, "2026-01-01T00:00:00+00:00", 0.0)["repeats"] == 1
    with pytest.raises(ValueError, match="repeats"):
        from_config({**cell.config, "repeats": 0})


@pytest.mark.parametrize("workload", ["tiny_default", "attn_error"])
def test_a_workload_without_timed_metrics_refuses_repeats(workload):
    with pytest.raises(ValueError, match=rf"repeats=3: workload {workload} has no timed metric.*give repeats=1"):
        from_config({**make_cell([f"workload={workload}", "frames=4"]).config, "repeats": 3})


def test_a_tiny_infer_cell_repeats_its_generation_after_one_build(tmp_path, monkeypatch):
    """The real infer workload on CPU: two timed generations of one built pipeline, the first run's files kept."""
    import longlive.workloads.infer as infer_workload

    builds = []
    real_build = infer_workload.build
    monkeypatch.setattr(infer_workload, "build", lambda req: builds.append(req) or real_build(req))
    cell = make_cell(["frames=4", "steps=1", "repeats=2", "decode=streaming", "compile=none",
                      "quality.metrics=[temporal_flickering]"])
    out = tmp_path / "cell"
    out.mkdir()
    (out / "cell.json").write_text(json.dumps({"cell_id": cell.cell_id, "config": cell.config, "axes": cell.axes,
                                               "out": str(out), "reference_dir": None}))
    assert main([str(out / "cell.json"), str(out / "row.json")]) == 0
    row = json.loads((out / "row.json").read_text())
    assert row["status"] == "ok" and row["repeats"] == 2 and len(builds) == 1
    for m in ("denoise_fps", "e2e_fps", "e2e_s", "first_chunk_latency_s", "chunk_ms_median"):
        assert row[f"{m}_lo"] <= row[m] <= row[f"{m}_hi"], m
        assert len(row[f"{m}_repeats"]) == 2 and row[m] == statistics.median(row[f"{m}_repeats"]), m
    assert row["timing_definition"]["repeats"].startswith(REPEATS_RULE)
    assert "built, compiled and warmed once" in row["timing_definition"]["repeats"]
    assert row["timing_definition"]["denoise_fps"]  # the workload's own definitions stay
    assert row["temporal_flickering"] is not None and "temporal_flickering_lo" not in row  # quality: first run's
    assert (out / row["artifacts"]["video"]).exists() and not (out / "repeat2").exists()
    assert row["mfu"] > 0  # the roofline from the median speed


def test_vae_decode_repeats_whole_decode_passes():
    cell = make_cell(["workload=vae_decode", "repeats=3", "decode_chunks=2"])
    spec = from_config(cell.config)
    row = get_workload("vae_decode").run(spec, CellContext(out=Path("/nonexistent"), reference_dir=None))
    for m in ("decode_fps", "decode_ms_median"):
        assert row[f"{m}_lo"] <= row[m] <= row[f"{m}_hi"] and len(row[f"{m}_repeats"]) == 3, m
    assert row["timing_definition"]["repeats"].startswith(REPEATS_RULE) and row["timing_definition"]["decode_fps"]
    assert len(row["metrics_extra"]["decode_ms"]) == 2  # per chunk of the first pass

