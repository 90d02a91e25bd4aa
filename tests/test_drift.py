"""Quality over time: the windows, per-window metrics equal to the metric on each slice, drift and worst-window numbers
on crafted videos, the row columns of a cell, the report's section with and without long cells, the smoke preset's
long cells."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from longlive.eval import flicker
from longlive.eval.clips import (
    clip_ranges,
    quality_window_centres_s,
    quality_window_frames,
    quality_window_ranges,
    score_long_video,
)
from longlive.eval.drift import (
    DEFINITION_KEY,
    WINDOW_CENTRES,
    check_window_quality,
    drift_numbers,
    resolve_window_metrics,
    window_columns,
    windowed_metrics,
    windows_of,
)
from longlive.eval.metrics import METRICS, Needs, register_metric
from longlive.experiments.spec import QualitySpec, RunSpec
from longlive.model.presets import get_preset
from longlive.report import build_report
from longlive.report.load import load_results
from longlive.report.plots import long_cells, over_time_labels, windowed_metric_names
from longlive.runner.matrix import expand
from longlive.runner.schema import LIST_METRICS, empty_row
from longlive.runner.schema import METRICS as ROW_METRICS
from longlive.workloads import CellContext
from longlive.workloads.infer import quality_metrics

FLICKER = "temporal_flickering"
TINY_WINDOWED = ["prompt_colour_match", "shape_iou", "palette_match"]
"""The tiny evaluation's metrics the smoke preset's long cells window beside flickering and stray share."""


def _video(t: int, seed: int = 0, hw: int = 6) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (t, hw, hw, 3), generator=g, dtype=torch.uint8)


def _flicker_by_hand(x: torch.Tensor) -> float:
    """VBench's formula in float64 numpy: (255 − mean over pairs of mean |f[i+1] − f[i]|) / 255."""
    a = x.numpy().astype(np.float64)
    return float((255.0 - np.abs(a[1:] - a[:-1]).mean(axis=(1, 2, 3)).mean()) / 255.0)


@pytest.fixture
def red_mean():
    """A lower-is-better frames-only metric registered for one test (mean red channel), then removed."""
    name = "test_red_mean"

    @register_metric(name, needs=Needs(frames=True), higher_is_better=False)
    def _red(frames):
        return float(torch.as_tensor(frames)[..., 0].double().mean())

    yield name
    del METRICS[name]


# ---------------------------------------------------------------------------------------------------------------
# windows


@pytest.mark.parametrize(("n", "expected"), [
    (96, [(0, 48), (48, 96)]),                                        # whole windows
    (237, [(0, 48), (48, 96), (96, 144), (144, 192), (189, 237)]),   # 60 tiny latents: the last reaches back
    (61, [(0, 48), (13, 61)]),                                        # 16 tiny latents: two overlapping windows
    (48, [(0, 48)]),
    (30, [(0, 30)]),                                                  # shorter than one window: kept whole
    (1, [(0, 1)]),
])
def test_windows_of_synthetic_lengths(n, expected):
    assert quality_window_ranges(n, 24.0, 2.0) == expected
    for a, b in expected:  # every window but a short video's has the window's length and lies in the video
        assert 0 <= a < b <= n and (b - a == 48 or (n < 48 and b - a == n))
    assert expected[-1][1] == n and set().union(*(range(a, b) for a, b in expected)) == set(range(n))


def test_whole_second_windows_are_vbench_long_clips():
    for fps in (16.0, 24.0, 23.976, 30.0):
        for secs in (1, 2, 3):
            for n in range(1, 260, 7):
                assert quality_window_ranges(n, fps, float(secs)) == clip_ranges(n, fps, secs)


def test_sub_second_windows_and_centres():
    assert quality_window_frames(24.0, 0.5) == 12 and quality_window_frames(16.0, 2.0) == 32
    assert quality_window_frames(23.976, 2.0) == 46  # int(fps) as VBench-Long
    assert quality_window_ranges(30, 24.0, 0.5) == [(0, 12), (12, 24), (18, 30)]
    assert quality_window_centres_s([(0, 48), (48, 96), (189, 237)], 24.0) == [1.0, 3.0, 8.875]


@pytest.mark.parametrize("bad", [0, -1.0, math.nan, math.inf, True])
def test_bad_window_seconds_name_the_key(bad):
    with pytest.raises(ValueError, match=r"quality\.window_seconds"):
        quality_window_frames(24.0, bad)
    with pytest.raises(ValueError, match=r"quality\.window_seconds"):
        check_window_quality(None, [FLICKER], bad)


def test_window_shorter_than_a_frame_and_empty_video():
    with pytest.raises(ValueError, match=r"less than one frame.*at least 0\.0417 s"):
        quality_window_frames(24.0, 0.01)
    with pytest.raises(ValueError, match="no frames"):
        quality_window_ranges(0, 24.0)


def test_drift_needs_two_whole_windows():
    assert windows_of(95, 24.0).no_drift_reason == ("no drift or worst window: the video's 95 frames are fewer than "
                                                     "two windows (96 frames)")
    assert windows_of(96, 24.0).no_drift_reason is None


# ---------------------------------------------------------------------------------------------------------------
# per-window values


def test_per_window_values_are_the_metric_on_each_slice():
    x = _video(237, seed=3)
    cols, definition = windowed_metrics([FLICKER], x, 24.0)
    slices = [(0, 48), (48, 96), (96, 144), (144, 192), (189, 237)]  # by hand
    assert cols[FLICKER + "_per_window"] == pytest.approx([_flicker_by_hand(x[a:b]) for a, b in slices], abs=1e-12)
    assert cols[WINDOW_CENTRES] == [1.0, 3.0, 5.0, 7.0, 8.875]
    assert "5 windows of a 237-frame video" in definition and "48 frames (2 s at 24 fps)" in definition


def test_any_registered_frame_metric_windows_by_name_with_its_inputs(red_mean):
    x = _video(100, seed=4)
    cols, _ = windowed_metrics([red_mean, "temporal_flickering_long"], x, 16.0, window_seconds=1.0,
                               prompts=["ignored by both"])  # an input the registry does not know is dropped
    slices = [(0, 16), (16, 32), (32, 48), (48, 64), (64, 80), (80, 96), (84, 100)]
    assert cols[red_mean + "_per_window"] == pytest.approx([x[a:b, ..., 0].double().mean().item() for a, b in slices])
    # fps reaches the metric that needs it: VBench-Long's own 2-s clips inside each 1-s window = the whole window
    assert cols["temporal_flickering_long_per_window"] == pytest.approx(
        [score_long_video(x[a:b], 16.0, flicker.temporal_flickering) for a, b in slices], abs=1e-12)


# ---------------------------------------------------------------------------------------------------------------
# drift and worst window


def _degrading(windows: int = 5, jump: int = 10) -> torch.Tensor:
    """Static grey for all but the last 2-s window, whose frames alternate between 100 and 100 + jump."""
    x = torch.full((48 * windows, 4, 4, 3), 100, dtype=torch.uint8)
    x[48 * (windows - 1) + 1 :: 2] += jump
    return x


def test_a_clip_degrading_in_its_last_window_drifts_by_the_right_amount():
    cols, definition = windowed_metrics([FLICKER], _degrading(jump=10), 24.0)
    per, drift, worst, worst_i = window_columns(FLICKER)
    assert cols[per] == [1.0, 1.0, 1.0, 1.0, pytest.approx(245 / 255, abs=1e-15)]
    assert cols[drift] == pytest.approx(-10 / 255, abs=1e-15)  # every pair of the last window differs by 10
    assert cols[worst] == pytest.approx(245 / 255, abs=1e-15) and cols[worst_i] == 4
    assert "no drift" not in definition


def test_worst_follows_the_metrics_direction(red_mean):
    x = torch.zeros((48 * 3, 2, 2, 3), dtype=torch.uint8)
    x[48:96, ..., 0] = 200  # the middle window is the reddest: the worst of a lower-is-better metric
    x[96:, ..., 0] = 50
    cols, _ = windowed_metrics([red_mean], x, 24.0)
    per, drift, worst, worst_i = window_columns(red_mean)
    assert cols[per] == [0.0, 200.0, 50.0] and cols[drift] == 50.0
    assert (cols[worst], cols[worst_i]) == (200.0, 1)


def test_drift_numbers_ties_nans_and_short_lists():
    assert drift_numbers([0.5, 0.2, 0.2, 0.9], True) == (pytest.approx(0.4), 0.2, 1)  # earliest of ties
    assert drift_numbers([0.5, 0.2, 0.2, 0.9], False) == (pytest.approx(0.4), 0.9, 3)
    assert drift_numbers([math.nan, 0.3, 0.1], True) == (None, 0.1, 2)  # an end missing: no drift, worst still
    assert drift_numbers([None, None], True) == (None, None, None)
    assert drift_numbers([0.7], True) == (None, None, None)


def test_a_short_video_gets_windows_but_no_drift():
    cols, definition = windowed_metrics([FLICKER], _video(61), 24.0)  # 16 tiny latents: 2.5 s
    per, drift, worst, worst_i = window_columns(FLICKER)
    assert len(cols[per]) == 2 and cols[drift] is cols[worst] is cols[worst_i] is None
    assert definition.endswith("no drift or worst window: the video's 61 frames are fewer than two windows "
                               "(96 frames)")


def test_window_metric_settings_are_checked(red_mean):
    assert resolve_window_metrics(None, ["psnr_vs_ref", FLICKER, "not_registered"]) == [FLICKER]
    assert resolve_window_metrics([], [FLICKER]) == []
    with pytest.raises(ValueError, match=r"quality\.window_metrics: unknown metric 'nope'; registered: .*psnr"):
        check_window_quality(["nope"], [], 2.0)
    with pytest.raises(ValueError, match=r"'psnr_vs_ref' needs frames, ref_frames; windows take metrics of the frames "
                                         r"only \(.*temporal_flickering"):
        check_window_quality(["psnr_vs_ref"], [], 2.0)
    METRICS[red_mean] = dataclasses.replace(METRICS[red_mean], higher_is_better=None)
    with pytest.raises(ValueError, match="declares no direction.*higher_is_better=True or False"):
        check_window_quality([red_mean], [], 2.0)


def test_a_cells_row_columns_and_definition(tmp_path):
    spec = dataclasses.replace(RunSpec(), quality=QualitySpec(metrics=[FLICKER, "psnr_vs_ref"], window_seconds=1.0))
    fps = get_preset(spec.model.name).fps
    x = _video(3 * fps + 5, seed=5)
    ctx = CellContext(out=tmp_path, reference_dir=None)
    out = quality_metrics(spec, x, ctx)
    assert out[FLICKER] == pytest.approx(_flicker_by_hand(x), abs=1e-12) and out["psnr_vs_ref"] is None
    assert len(out[FLICKER + "_per_window"]) == 4 and out[FLICKER + "_worst_window_index"] in range(4)
    assert set(out["timing_definition"]) == {DEFINITION_KEY}
    assert {k for k, v in out.items() if isinstance(v, list)} <= set(LIST_METRICS)
    assert {k for k in out if k.startswith(FLICKER) and not isinstance(out[k], list)} <= set(ROW_METRICS)
    off = dataclasses.replace(spec, quality=QualitySpec(metrics=[FLICKER], window_metrics=[]))
    assert not any(k.endswith("_per_window") for k in quality_metrics(off, x, ctx))
    assert quality_metrics(spec, None, ctx) == {}  # decode=none: no frames, no windows


def test_the_cells_prompt_reaches_the_tiny_tasks_stray_share(tmp_path):
    """A blue square on grey, and in the last 2-s window a red block of 8 × 16 pixels: the row's stray share per
    window is 0 until it, then 128 / 32²; drift = that share, worst = the last window."""
    x = torch.full((48 * 3, 32, 32, 3), 128, dtype=torch.uint8)
    x[:, 4:12, 4:12] = torch.tensor([40, 80, 220], dtype=torch.uint8)  # the prompted object (palette blue)
    x[96:, 20:28, 8:24] = torch.tensor([220, 40, 40], dtype=torch.uint8)  # a stray red block
    spec = dataclasses.replace(RunSpec(), prompts=["A blue square bounces on a grey background."],
                               quality=QualitySpec(metrics=["stray_share"]))
    out = quality_metrics(spec, x, CellContext(out=tmp_path, reference_dir=None))
    share = 8 * 16 / 32**2
    assert out["stray_share_per_window"] == [0.0, 0.0, pytest.approx(share)]
    assert out["stray_share_drift"] == pytest.approx(share) and out["stray_share_worst_window_index"] == 2
    assert out["stray_share"] == pytest.approx(share / 3)


# ---------------------------------------------------------------------------------------------------------------
# the report


def _row(cell: str, precision: str, kv: str, steps: int, frames: int, values: list[float] | None, *,
         attn: str = "auto", extra: dict | None = None) -> dict:
    axes = {"model": "tiny", "precision": precision, "kv_quant": kv, "sp": 1, "steps": steps, "decode": "streaming",
            "hardware": "cpu", "attn": attn}
    r = empty_row(cell, "smoke", "infer", axes, frames=frames, seed=0)
    r.update(status="ok", denoise_fps=10.0, e2e_fps=5.0, finished_at="2026-12-07T10:00:00+00:00",
             manifest={"gpu": None, "git_commit": "abc"})
    if values is not None:
        n_frames = 1 + 4 * (frames - 1)
        w = windows_of(n_frames, 24.0)
        dr, worst, wi = drift_numbers(values, True) if w.no_drift_reason is None else (None, None, None)
        r.update({WINDOW_CENTRES: w.centres_s, FLICKER + "_per_window": values, FLICKER + "_drift": dr,
                  FLICKER + "_worst_window": worst, FLICKER + "_worst_window_index": wi,
                  FLICKER: float(np.mean(values))})
        r["timing_definition"] = {DEFINITION_KEY: w.definition([FLICKER])}
    r.update(extra or {})
    return r


def _store(folder: Path, rows: list[dict]) -> Path:
    folder.mkdir(parents=True)
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_report_with_long_cells(tmp_path):
    rows = [
        _row("long-bf16-none", "bf16", "none", 2, 60, [0.985, 0.986, 0.986, 0.985, 0.987]),
        _row("long-bf16-nvfp4", "bf16", "nvfp4", 2, 60, [0.985, 0.984, 0.980, 0.975, 0.970],
             extra={"stray_share_per_window": [0.0, 0.0, 0.02, 0.01, 0.0], "stray_share_drift": 0.0,
                    "stray_share_worst_window": 0.02, "stray_share_worst_window_index": 2}),
        _row("long-fp32-none-4", "fp32", "none", 4, 60, [0.99, 0.99, 0.99, 0.99, 0.99]),
        _row("short-cell", "bf16", "none", 4, 16, [0.95, 0.96]),  # two overlapping windows: no drift, not plotted
        _row("no-windows", "nvfp4", "none", 4, 16, None),
    ]
    df = load_results([_store(tmp_path / "run", rows)])
    ok = df[df["status"] == "ok"]
    assert windowed_metric_names(ok) == ["stray_share", FLICKER]
    assert [r["cell_id"] for r, _, _ in long_cells(ok, FLICKER)] == ["long-fp32-none-4", "long-bf16-none",
                                                                      "long-bf16-nvfp4"]
    (r, t, vals), = long_cells(ok, "stray_share")
    assert r["cell_id"] == "long-bf16-nvfp4" and t == [1.0, 3.0, 5.0, 7.0, 8.875] and vals[2] == 0.02
    labels = over_time_labels([c[0] for c in long_cells(ok, FLICKER)])
    assert labels == {"long-fp32-none-4": "fp32 · kv none · 4 steps", "long-bf16-none": "bf16 · kv none · 2 steps",
                      "long-bf16-nvfp4": "bf16 · kv nvfp4 · 2 steps"}
    index = build_report([tmp_path / "run"], tmp_path / "out", title="drift")
    md = (tmp_path / "out" / "index.md").read_text()
    section = md[md.index("## Quality over time"):md.index("## Ours vs published numbers")]
    img = next(ln for ln in section.splitlines() if ln.startswith("![Quality over time"))
    png = tmp_path / "out" / img[img.index("(") + 1 : -1]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "long-bf16-nvfp4" in section and "short-cell" not in section and "no-windows" not in section
    nvfp4 = next(ln for ln in section.splitlines() if ln.startswith("| long-bf16-nvfp4") and FLICKER in ln)
    assert "| -0.015 |" in nvfp4 and "| 0.97 |" in nvfp4  # drift (last − first), worst window value
    assert "Quality over time" in index.read_text()


def _windowed(metric: str, values: list[float | None], better: bool) -> dict:
    """A row's window columns of `metric` (drift numbers as the runner computes them)."""
    drift, worst, wi = drift_numbers(values, better)
    return {metric + "_per_window": values, metric + "_drift": drift, metric + "_worst_window": worst,
            metric + "_worst_window_index": wi}


def test_report_of_the_smoke_long_cells_metrics(tmp_path, monkeypatch):
    """`longlive report` on long cells that window the tiny task's metrics beside flickering and stray share (more
    metrics than MAX_PANELS): one panel per metric, a drift-table row per cell and metric, a window with nothing
    drawn (None) and a whole-video NaN handled."""
    from longlive.cli import main
    from longlive.report import plots

    tiny = {"stray_share": ([0.0, 0.0, 0.01, 0.0, 0.02], False),
            "prompt_colour_match": ([None, 0.9, 0.8, 0.85, 0.7], True),
            "shape_iou": ([0.6, 0.6, 0.5, 0.55, 0.4], True), "shape_match": ([1.0, 1.0, 0.9, 1.0, 0.8], True),
            "palette_match": ([0.99, 0.98, 0.97, 0.98, 0.95], True),
            "temporal_flickering_long": ([0.99, 0.99, 0.98, 0.99, 0.97], True)}
    rows = []
    for cell, kv, shift in (("long-none", "none", 0.0), ("long-nvfp4", "nvfp4", -0.05)):
        extra = {"prompt_colour_match": math.nan if kv == "none" else 0.8}
        for m, (vals, better) in tiny.items():
            extra.update(_windowed(m, [None if v is None else v + shift * better for v in vals], better))
        rows.append(_row(cell, "bf16", kv, 2, 60, [0.985, 0.984, 0.98, 0.975, 0.97], extra=extra))
    run = _store(tmp_path / "run", rows)
    figures = []
    save = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or save(fig, path))
    assert main(["report", str(run), "--out", str(tmp_path / "out")]) == 0
    names = sorted([FLICKER, *tiny])
    assert len(names) > plots.MAX_PANELS
    (fig,) = [f for f in figures if f.axes and "per window" in f.axes[0].get_title()]
    assert [ax.get_title().split(" per window")[0] for ax in fig.axes] == names
    md = (tmp_path / "out" / "index.md").read_text()
    section = md[md.index("## Quality over time"):md.index("## Ours vs published numbers")]
    table = [ln for ln in section.splitlines() if ln.startswith("| long-")]
    assert len(table) == 2 * len(names)
    for m in names:
        assert sum(f"| {m} |" in ln for ln in table) == 2, m
    pcm = next(ln for ln in table if ln.startswith("| long-nvfp4") and "| prompt_colour_match |" in ln)
    assert "| 0.65 |" in pcm  # the last window; the first (nothing drawn) has no value and the drift none
    cells = [c.strip() for c in pcm.strip("|").split("|")]
    header = next(ln for ln in section.splitlines() if ln.startswith("| cell"))
    col = dict(zip([c.strip() for c in header.strip("|").split("|")], cells, strict=True))
    assert col["first window"] == col["drift"] == "—"
    assert (col["worst window"], col["worst index"]) == ("0.65", "4")


def test_report_without_long_cells_says_so(tmp_path):
    rows = [_row("short-cell", "bf16", "none", 4, 16, [0.95, 0.96]), _row("no-windows", "fp32", "none", 4, 16, None)]
    build_report([_store(tmp_path / "run", rows)], tmp_path / "out")
    md = (tmp_path / "out" / "index.md").read_text()
    section = md[md.index("## Quality over time"):md.index("## Ours vs published numbers")]
    assert "> no long cells: none of these cells' videos holds two quality windows" in section
    assert "![" not in section
    train = empty_row("t", "smoke", "train", {"model": "tiny", "precision": "bf16", "sp": 1}, frames=4, seed=0)
    train.update(status="ok", iter_s=1.0)
    build_report([_store(tmp_path / "train", [train])], tmp_path / "out2")  # no inference rows at all
    assert "> no long cells" in (tmp_path / "out2" / "index.md").read_text()


# ---------------------------------------------------------------------------------------------------------------
# the smoke preset


def test_smoke_preset_has_a_long_cell_per_kv_format():
    # the long sub-matrix's own settings as fixed overrides: the expansion stays small, the long cells keep theirs
    cells = expand("smoke", ["steps=2", "decode=streaming", "precision=bf16", "sp=1"])
    infer = [c for c in cells if c.config["workload"]["name"] == "infer"]
    long = [c for c in infer if c.config["frames"] >= 60]
    kv_formats = {c.axes["kv_quant"] for c in infer if c.config["frames"] < 60}
    assert sorted(c.axes["kv_quant"] for c in long) == sorted(kv_formats) == ["none", "nvfp4"]
    (entry,) = [m for m in long[0].config["matrices"] if "frames=60" in m["overrides"]]
    assert {"steps=2", "decode=streaming", "precision=bf16", "sp=1"} <= set(entry["overrides"])
    assert entry["params"] == {"kv_quant": "none,nvfp4"}
    for c in long:
        assert c.config["model"]["name"] == "tiny" and len(c.config["prompts"]) == 1
        cfg = get_preset("tiny")
        w = windows_of(1 + cfg.vae_stride[0] * (c.config["frames"] - 1), cfg.fps, c.config["quality"]["window_seconds"])
        assert w.no_drift_reason is None and len(w.ranges) == 5  # 237 frames: drift over five 2-s windows
        q = c.config["quality"]  # the tiny task's metrics window beside flickering (its prompt is in the row)
        assert resolve_window_metrics(q["window_metrics"], q["metrics"]) == [FLICKER, "stray_share", *TINY_WINDOWED]
