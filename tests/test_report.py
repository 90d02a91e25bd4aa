"""The report: last row per cell wins, tables/ratios/reasons land in index.md and index.html, figures are
valid PNGs or an explicit 'not enough data' note, and the HTML renders to a non-blank page in Chromium."""

from __future__ import annotations

import copy
import json
import subprocess
import warnings
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image, ImageStat

from longlive.report import build_report, load_results
from longlive.report.cli import main as report_main
from longlive.report.plots import make_plots, pareto_mask
from longlive.runner.schema import empty_row

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MODEL = "wan2.2-ti2v-5b"
GPU = "NVIDIA H200"  # the device, from the manifest
GPU_AXIS = "gpu"  # the hardware request on the axis: "whatever CUDA GPU this machine has"
CHROMIUM = Path("/usr/bin/chromium")


def _manifest(commit: str = "abc1234def5678") -> dict:
    return {"gpu": GPU, "gpu_count": 1, "compute_capability": "9.0", "driver": "580.159.04", "cuda": "13.0",
            "packages": {"torch": "2.11.0"}, "git_commit": commit, "date": "2026-11-21T10:00:00+00:00", "seed": 0,
            "config": {"attn": "cudnn"}}


def _ok(cell: str, precision: str, kv: str, decode: str, steps: int, fps: float, e2e_fps: float, *,
        video_s: float = 16.0, mem: float = 21.6, flicker: float | None = None, sp: int = 1, frames: int = 96) -> dict:
    axes = {"model": MODEL, "precision": precision, "kv_quant": kv, "sp": sp, "steps": steps, "decode": decode,
            "gpu": GPU_AXIS}
    r = empty_row(cell, "table3", "infer", axes, frames=frames, seed=0)
    frames_video = int(video_s * 24)
    r.update(status="ok", denoise_fps=fps, e2e_fps=e2e_fps, e2e_s=frames_video / e2e_fps, video_seconds=video_s,
             frames_video=frames_video, first_chunk_latency_s=1.36, chunk_ms_p10=32e3 / fps * 0.98,
             chunk_ms_median=32e3 / fps, chunk_ms_p90=32e3 / fps * 1.03, peak_allocated_gb=mem,
             temporal_flickering=flicker)
    r["timing_definition"] = {"denoise_fps": "denoise_fps: video frames / device wall time of the chunk loop after "
                              "warm-up chunks", "e2e_fps": "first noise to last decoded frame in host memory"}
    r["manifest"] = _manifest()
    r["config"] = {"attn": "cudnn", "precision": precision}
    r["finished_at"] = "2026-11-21T10:05:00+00:00"
    return r


def _write_store(folder: Path) -> Path:
    """A results.jsonl like the runner's: ok cells, one failed, one skipped, one superseded row, a strip."""
    folder.mkdir(parents=True, exist_ok=True)
    first = _ok("c-bf16-4-str", "bf16", "none", "streaming", 4, 5.55, 3.21)  # superseded below
    first.update(status="failed", reason="transient: killed")
    rows = [
        first,
        _ok("c-bf16-4-str", "bf16", "none", "streaming", 4, 20.69, 11.26, flicker=0.962),
        _ok("c-bf16-2-str", "bf16", "none", "streaming", 2, 34.47, 15.31, flicker=0.951),
        _ok("c-bf16-4-async", "bfloat16", "none", "async", 4, 19.87, 16.02, flicker=0.962),
        _ok("c-fp8-4-str", "fp8", "none", "streaming", 4, 23.14, 12.05, mem=17.3, flicker=0.958),
        _ok("c-nvfp4-2-dev", "nvfp4", "nvfp4", "device", 2, 41.93, 30.37, mem=12.9, flicker=0.940),
    ]
    failed = empty_row("c-bf16-8", "table3", "infer", {"model": MODEL, "precision": "bf16", "kv_quant": "none",
                       "sp": 1, "steps": 8, "decode": "batch", "gpu": GPU_AXIS}, frames=384, seed=0)
    failed.update(status="failed", reason="OOM")
    failed["manifest"] = _manifest()
    skipped = empty_row("c-sp2", "table3", "infer", {"model": MODEL, "precision": "bf16", "kv_quant": "none",
                        "sp": 2, "steps": 4, "decode": "streaming", "gpu": GPU_AXIS}, frames=96, seed=0)
    skipped.update(status="skipped", reason="sp=2 needs 2 GPUs")
    rows += [failed, skipped]
    strip_rel = "cells/c-bf16-4-str/strip.png"
    (folder / strip_rel).parent.mkdir(parents=True)
    Image.new("RGB", (64, 16), (40, 120, 200)).save(folder / strip_rel)
    rows[1]["artifacts"] = {"video": "cells/c-bf16-4-str/video.mp4", "strip": strip_rel}
    path = folder / "results.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("report")
    store = _write_store(root / "run")
    index = build_report([store.parent], root / "out", title="Synthetic table 3")
    return store, index


def test_load_last_row_wins_and_sources(tmp_path: Path) -> None:
    store = _write_store(tmp_path / "run")
    df = load_results([store])
    assert len(df) == 7 and df["cell_id"].is_unique
    row = df.set_index("cell_id").loc["c-bf16-4-str"]
    assert row["status"] == "ok" and row["denoise_fps"] == pytest.approx(20.69)
    assert Path(row["source_dir"]) == store.parent.resolve()
    assert set(df["status"]) == {"ok", "failed", "skipped"}
    assert df["steps"].dtype == "Int64" and df["denoise_fps"].dtype == "float64"
    assert set(df["gpu"]) == {GPU_AXIS}
    assert set(df.loc[df["status"] == "ok", "gpu_name"]) == {GPU}  # the device comes from the manifest
    assert df.set_index("cell_id").loc["c-sp2", "gpu_name"] == GPU_AXIS  # skipped: no manifest, the request


def test_load_parquet_dir_and_torn_line(tmp_path: Path) -> None:
    store = _write_store(tmp_path / "run")
    rows = [json.loads(s) for s in store.read_text().splitlines()]
    flat = pd.DataFrame([{k: json.dumps(v) if isinstance(v, dict) else v for k, v in r.items()} for r in rows])
    pq = tmp_path / "pq" / "results.parquet"
    pq.parent.mkdir()
    flat.to_parquet(pq)
    df = load_results([pq.parent])  # a folder with only the parquet store, nested columns as JSON text
    assert len(df) == 7 and isinstance(df.loc[0, "manifest"], dict) and df.loc[0, "manifest"]["gpu"] == GPU
    for r in rows:
        r["metrics_extra"] = {"note": "x"}  # parquet cannot store a struct with no fields
    pd.DataFrame(rows).to_parquet(pq)  # nested columns as structs: None-filled unions on the way back
    df = load_results([pq]).set_index("cell_id")
    assert df.loc["c-sp2", "manifest"] == {} and df.loc["c-bf16-4-str", "artifacts"]["strip"].endswith("strip.png")
    with store.open("a") as f:
        f.write('{"cell_id": "torn", "sta')  # a writer killed mid-append
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        assert len(load_results([store])) == 7
    assert any("incomplete last line" in str(x.message) for x in w)
    with pytest.raises(FileNotFoundError):
        load_results([tmp_path / "nowhere"])


def test_report_contents(report: tuple[Path, Path]) -> None:
    store, index = report
    out = index.parent
    md, page = (out / "index.md").read_text(), index.read_text()
    for text in (md, page):
        assert "Synthetic table 3" in text
        assert "5 ok, 1 failed, 1 skipped" in text
        assert "20.7" in text and "34.5" in text and "11.3" in text  # denoise / e2e FPS, formatted
        assert "5.55" not in text  # superseded row is gone
        assert "OOM" in text and "sp=2 needs 2 GPUs" in text
        assert "FPS ours/paper" in text and "hardware (paper)" in text and "GB200" in text
        assert "0.83×" in text  # 20.69 / 24.8, Table 3 BF16
        assert "0.84×" in text and "FPS ours/release" in text  # 20.69 / 24.7, the release on the same H200 kind
        assert "0.92×" in text  # 41.93 / 45.7, Table 3 '2 steps' (decode on another device = paper's async)
        assert "not enough data: needs ≥2 values of sp" in text
        assert "not enough data: needs ≥2 video lengths" in text
        assert "denoise loop" in text and "Timing definitions" in text
        assert "commit abc1234def56" in text
        assert "1372.9" in text and "85.06" in text  # published numbers keep their printed digits
    assert page.count("<details>") == 1  # one distinct manifest
    assert '<table id="main-table">' in page


def test_report_images_are_pngs(report: tuple[Path, Path]) -> None:
    _, index = report
    out = index.parent
    page = index.read_text()
    srcs = [s.split('"')[0] for s in page.split('<img src="')[1:]]
    assert any(s.startswith("assets/ladder-") for s in srcs)
    assert any(s.startswith("assets/pareto_temporal_flickering-") for s in srcs)
    assert any(s.startswith("assets/chunks-") for s in srcs)
    assert any(s.startswith("assets/strip-c-bf16-4-str-") for s in srcs)
    for s in srcs:
        data = (out / s).read_bytes()
        assert data[:8] == PNG_MAGIC
        with Image.open(out / s) as im:
            im.verify()
        assert f"]({s})" in (out / "index.md").read_text()
    assert sorted(p.name for p in (out / "assets").iterdir()) == sorted(Path(s).name for s in srcs)


def test_rebuild_is_atomic_and_collects_old_assets(tmp_path: Path) -> None:
    store = _write_store(tmp_path / "run")
    out = tmp_path / "out"
    build_report([store], out)
    stale = out / "assets" / "ladder-0123456789ab.png"
    stale.write_bytes(PNG_MAGIC)
    mine = out / "assets" / "notes.txt"  # not ours: left alone
    mine.write_text("keep")
    rows = [json.loads(s) for s in store.read_text().splitlines()]
    extra = copy.deepcopy(rows[2])
    extra.update(denoise_fps=36.0)  # a re-run cell appended to the store
    with store.open("a") as f:
        f.write(json.dumps(extra) + "\n")
    assert report_main([str(store), "--out", str(out), "--title", "again"]) == 0
    assert "36.0" in (out / "index.md").read_text() and "34.5" not in (out / "index.md").read_text()
    assert not stale.exists() and mine.exists()
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]
    assert report_main([str(tmp_path / "missing.jsonl"), "--out", str(out)]) == 2


def test_subcommand_wiring(tmp_path: Path) -> None:
    import argparse

    from longlive.report import add_report_parser, cmd_report

    ap = argparse.ArgumentParser(prog="longlive")
    add_report_parser(ap.add_subparsers(dest="command", required=True))
    store = _write_store(tmp_path / "run")
    args = ap.parse_args(["report", str(store.parent), "--out", str(tmp_path / "r"), "--title", "T"])
    assert args.func is cmd_report and args.func(args) == 0
    assert (tmp_path / "r" / "index.html").read_text().count("<h1>T</h1>") == 1


def test_plots_with_variation(tmp_path: Path) -> None:
    rows = [_ok(f"m{i}-{s}", "bf16", "none", "streaming", 4, 20.0 * s * (0.9 if s > 1 else 1), 10.0,
                video_s=v, mem=20 + v / 8, sp=s, frames=int(v * 6)) for i, v in enumerate((16, 32, 64))
            for s in (1, 2)]
    plots = {p.key: p for p in make_plots(pd.DataFrame(rows), tmp_path)}
    assert plots["memory"].file is not None and plots["memory"].file.read_bytes()[:8] == PNG_MAGIC
    assert plots["sp"].file is not None and plots["sp"].file.read_bytes()[:8] == PNG_MAGIC
    assert plots["pareto"].note and "not enough data" in plots["pareto"].note
    assert "denoise" in plots["sp"].caption


def test_pareto_mask() -> None:
    assert pareto_mask([1, 2, 3, 2.5], [0.9, 0.8, 0.5, 0.4], True) == [True, True, True, False]
    assert pareto_mask([1, 2], [0.1, 0.2], False) == [True, True]


@pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium absent (CI: apt-get install -y chromium)")
def test_html_renders_in_chromium(report: tuple[Path, Path], tmp_path: Path) -> None:
    _, index = report
    shot = tmp_path / "shot.png"
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
           f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1280,2000",
           index.resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert shot.exists(), f"no screenshot; chromium rc={proc.returncode}: {proc.stderr[-2000:]}"
    with Image.open(shot) as im:
        assert im.size == (1280, 2000)
        gray = im.convert("L")
    assert ImageStat.Stat(gray).stddev[0] > 20  # not a blank page
    # the summary table sits near the top: its borders and digits are dark pixels in that band
    band = gray.crop((0, 100, 1280, 700))
    dark = sum(band.histogram()[:160])
    assert dark > 2000, f"only {dark} dark pixels where the first table should be"

