"""The report: last row per cell wins, tables/ratios/reasons land in index.md and index.html, figures are
valid PNGs or an explicit 'not enough data' note, and the HTML renders to a non-blank page in Chromium."""

from __future__ import annotations

import copy
import json
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


def _manifest(commit: str = "abc1234def5678") -> dict:
    return {"gpu": GPU, "gpu_count": 1, "compute_capability": "9.0", "driver": "580.159.04", "cuda": "13.0",
            "packages": {"torch": "2.11.0"}, "git_commit": commit, "date": "2026-11-21T10:00:00+00:00", "seed": 0,
            "config": {"attn": "cudnn"}}


def _ok(cell: str, precision: str, kv: str, decode: str, steps: int, fps: float, e2e_fps: float, *,
        video_s: float = 16.0, mem: float = 21.6, flicker: float | None = None, sp: int = 1, frames: int = 96) -> dict:
    axes = {"model": MODEL, "precision": precision, "kv_quant": kv, "sp": sp, "steps": steps, "decode": decode,
            "hardware": GPU_AXIS}
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
                       "sp": 1, "steps": 8, "decode": "batch", "hardware": GPU_AXIS}, frames=384, seed=0)
    failed.update(status="failed", reason="OOM")
    failed["manifest"] = _manifest()
    skipped = empty_row("c-sp2", "table3", "infer", {"model": MODEL, "precision": "bf16", "kv_quant": "none",
                        "sp": 2, "steps": 4, "decode": "streaming", "hardware": GPU_AXIS}, frames=96, seed=0)
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
    assert set(df["hardware"]) == {GPU_AXIS}
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
    assert any("ignoring a torn line" in str(x.message) for x in w)
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


def test_html_renders_in_chromium(report: tuple[Path, Path], chromium_screenshot) -> None:
    _, index = report
    shot = chromium_screenshot(index, (1280, 2000))
    with Image.open(shot) as im:
        assert im.size == (1280, 2000)
        gray = im.convert("L")
        top = im.convert("RGB").crop((0, 0, 1280, 700))
    assert ImageStat.Stat(gray).stddev[0] > 20  # not a blank page
    headline = sum(n for n, c in top.getcolors(1280 * 700) if c == (0xEE, 0xF4, 0xFF))  # the summary's answer box
    assert headline > 10000, f"only {headline} pixels of the summary's headline box in the first 700 px"
    page = index.read_text()
    assert page.index('id="headline"') < page.index("<table") < page.index("<img")
    # the summary table sits near the top: its borders and digits are dark pixels in that band
    band = gray.crop((0, 100, 1280, 700))
    dark = sum(band.histogram()[:160])
    assert dark > 2000, f"only {dark} dark pixels where the first table should be"



# --- training (workload train) and DMD (workload dmd) rows -----------------------------------------------------

TRAIN_DEF = "median wall time of one optimiser iteration after 1 warm-up iteration (synchronised)"
DMD_DEF = "iter_s: wall time of one DMD iteration, median; peak_allocated_gb: torch peak over the iterations"


def _train(cell: str, precision: str, sp: int, layout: str, iter_s: float, *, er: bool = False, frames: int = 96,
           mem: float | None = 44.7, rss: float | None = None, model: str = MODEL) -> dict:
    axes = {"model": model, "precision": precision, "sp": sp, "hardware": GPU_AXIS, "train_layout": layout,
            "error_recycling": er}  # kv_quant, exchange, steps, decode, dmd_quantised: None
    r = empty_row(cell, "table1_training", "train", axes, frames=frames, seed=0)
    r.update(status="ok", iter_s=iter_s, tokens_per_s=168960 / iter_s, mfu=None if mem is None else 0.233,
             peak_allocated_gb=mem, loss_first=1.25, loss_last=0.875)
    r["metrics_extra"] = {"rss_gb": rss} if rss is not None else {}
    r["timing_definition"] = {"iter_s": TRAIN_DEF}
    r["manifest"] = _manifest() if mem is not None else {}
    r["finished_at"] = "2026-11-21T11:00:00+00:00"
    return r


def _dmd(cell: str, rung: str, peak: float, *, precision: str = "bf16", frames: int = 96) -> dict:
    axes = {"model": MODEL, "precision": precision, "hardware": GPU_AXIS, "dmd_quantised": rung}
    r = empty_row(cell, "table2_dmd_memory", "dmd", axes, frames=frames, seed=0)
    r.update(status="ok", peak_allocated_gb=peak, resident_gb=peak / 2, iter_s=30.5, generator_loss=0.4375,
             critic_loss=0.3125)
    r["timing_definition"] = {"iter_s": DMD_DEF, "peak_allocated_gb": DMD_DEF}  # one text names both, like the runner's
    r["manifest"] = _manifest()
    return r


TRAIN_ROWS = [
    _train("t-bf16-nosp", "bf16", 1, "none", 54.4, mem=112.3),
    _train("t-bf16-trad", "bf16", 4, "traditional", 14.67),
    _train("t-bf16-bal", "bf16", 4, "balanced", 14.14),
    _train("t-bf16-bal-er", "bf16", 4, "balanced", 14.36, er=True),
    _train("t-fp8emu-bal", "fp8-emulated", 4, "balanced", 19.99),  # no Table 1 column: never compared
    _train("t-cpu-tiny", "fp32", 1, "none", 0.777, frames=12, mem=None, rss=3.21, model="tiny"),
]
DMD_ROWS = [
    _dmd("d-none", "none", 56.8),
    _dmd("d-gen", "generator", 50.8),
    _dmd("d-gen-real", "generator+real", 43.8),
    _dmd("d-gen-real-critic", "generator+real+critic", 39.3),
    _dmd("d-fp32-gen", "generator", 77.7, precision="fp32"),  # no unquantised rung of its own: no ratio
]


def _sections(md: str) -> dict[str, str]:
    """Level-2 sections of the Markdown report by title."""
    return {part.split("\n", 1)[0].strip(): part for part in md.split("\n## ")[1:]}


def _subsections(section: str) -> dict[str, str]:
    return {part.split("\n", 1)[0].strip(): part for part in section.split("\n### ")[1:]}


def _table_row(section: str, cell: str) -> list[str]:
    line = next(s for s in section.splitlines() if s.startswith(f"| {cell} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def _header(section: str, html_first: str = "| cell |") -> list[str]:
    line = next(s for s in section.splitlines() if s.startswith(html_first))
    return [c.strip() for c in line.strip("|").split("|")]


@pytest.fixture(scope="module")
def mixed_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, Path]:
    root = tmp_path_factory.mktemp("mixed")
    store = _write_store(root / "run")
    failed = empty_row("t-bf16-nosp-192", "table1_training", "train", {"model": MODEL, "precision": "bf16", "sp": 1,
                       "hardware": GPU_AXIS, "train_layout": "none", "error_recycling": False}, frames=192, seed=0)
    failed.update(status="failed", reason="OOM at 192 latents without SP")
    with store.open("a") as f:
        f.writelines(json.dumps(r) + "\n" for r in [*TRAIN_ROWS, *DMD_ROWS, failed])
    index = build_report([store], root / "out", title="Mixed")
    return (root / "out" / "index.md").read_text(), index.read_text(), root / "out"


def test_training_section(mixed_report: tuple[str, str, Path]) -> None:
    md, page, _ = mixed_report
    sec = _sections(md)
    train = sec["Training (teacher forcing)"]
    head = _header(train)
    assert head[:8] == ["cell", "experiment", "model", "precision", "sp", "dp", "train_layout", "error_recycling"] or \
        head[:7] == ["cell", "model", "precision", "sp", "dp", "train_layout", "error_recycling"]
    for col in ("hardware", "gpu_name", "frames", "iter_s", "tokens_per_s", "mfu", "peak_allocated_gb", "loss_first",
                "loss_last", "host RSS GB (CPU, no device peak)"):
        assert col in head
    for r in TRAIN_ROWS:
        assert f"| {r['cell_id']} |" in train
    for cell in ("c-bf16-4-str", "d-none", "d-gen"):
        assert cell not in train  # inference and dmd rows stay out
    row = dict(zip(head, _table_row(train, "t-bf16-bal"), strict=True))
    assert row["iter_s"] == "14.1" and row["sp"] == "4" and row["train_layout"] == "balanced"
    assert row["error_recycling"] == "no" and row["mfu"] == "23%" and row["gpu_name"] == GPU
    assert row["loss_first"] == "1.25" and row["loss_last"] == "0.875"
    assert row["host RSS GB (CPU, no device peak)"] == "—"
    assert dict(zip(head, _table_row(train, "t-bf16-bal-er"), strict=True))["error_recycling"] == "yes"
    cpu = dict(zip(head, _table_row(train, "t-cpu-tiny"), strict=True))
    assert cpu["peak_allocated_gb"] == "—" and cpu["host RSS GB (CPU, no device peak)"] == "3.21"
    assert cpu["mfu"] == "—" and cpu["iter_s"] == "0.777"
    assert f"iter_s: {TRAIN_DEF}" in train  # the timing definition, from the rows
    # ladder order: fp32 before bf16 before the emulated recipe; no SP before traditional before balanced
    order = [c for c in ("t-cpu-tiny", "t-bf16-nosp", "t-bf16-trad", "t-bf16-bal", "t-bf16-bal-er", "t-fp8emu-bal")]
    assert sorted(order, key=lambda c: train.index(f"| {c} |")) == [
        "t-bf16-nosp", "t-bf16-trad", "t-bf16-bal", "t-bf16-bal-er", "t-fp8emu-bal", "t-cpu-tiny"]  # experiment, gpu
    assert '<table id="train-table">' in page


def test_dmd_section(mixed_report: tuple[str, str, Path]) -> None:
    md, page, _ = mixed_report
    dmd = _sections(md)["DMD (distillation memory ladder)"]
    head = _header(dmd)
    for col in ("model", "precision", "dmd_quantised", "hardware", "frames", "peak_allocated_gb",
                "× of the unquantised rung", "resident_gb", "iter_s", "generator_loss", "critic_loss"):
        assert col in head
    assert head.index("× of the unquantised rung") == head.index("peak_allocated_gb") + 1
    for r in TRAIN_ROWS:
        assert r["cell_id"] not in dmd
    assert "c-bf16-4-str" not in dmd
    ratios = {c: dict(zip(head, _table_row(dmd, c), strict=True))["× of the unquantised rung"]
              for c in ("d-none", "d-gen", "d-gen-real", "d-gen-real-critic", "d-fp32-gen")}
    assert ratios == {"d-none": "1.00×", "d-gen": f"{50.8 / 56.8:.2f}×", "d-gen-real": f"{43.8 / 56.8:.2f}×",
                      "d-gen-real-critic": f"{39.3 / 56.8:.2f}×", "d-fp32-gen": "—"}
    row = dict(zip(head, _table_row(dmd, "d-gen-real"), strict=True))
    assert row["peak_allocated_gb"] == "43.8" and row["resident_gb"] == "21.9" and row["critic_loss"] == "0.312"
    # rung order
    assert dmd.index("| d-none |") < dmd.index("| d-gen |") < dmd.index("| d-gen-real |") \
        < dmd.index("| d-gen-real-critic |")
    assert dmd.count(DMD_DEF) == 1 and "iter_s: iter_s" not in dmd  # printed once, not prefixed twice
    assert '<table id="dmd-table">' in page


def test_main_table_holds_inference_only(mixed_report: tuple[str, str, Path]) -> None:
    md, page, _ = mixed_report
    main = _sections(md)["Results (ok cells)"]
    assert "| c-bf16-4-str |" in main
    for r in [*TRAIN_ROWS, *DMD_ROWS]:
        assert r["cell_id"] not in main
    head = _header(main)
    for axis in ("train_layout", "error_recycling", "dmd_quantised"):
        assert axis not in head
    bad = _sections(md)["Failed and skipped cells"]
    assert "| t-bf16-nosp-192 |" in bad and "OOM at 192 latents without SP" in bad
    assert "train 7" in md and "dmd 5" in md  # cells per workload in the summary


def test_table1_and_table2_comparisons(mixed_report: tuple[str, str, Path]) -> None:
    md, _, _ = mixed_report
    comp = _subsections(_sections(md)["Ours vs published numbers"])
    t1 = comp["Table 1 AR training (paper)"]
    head = _header(t1)
    assert {"gpu (ours)", "hardware (paper)", "s/iter ours", "s/iter paper", "s/iter ours/paper"} <= set(head)
    bal = dict(zip(head, _table_row(t1, "t-bf16-bal"), strict=True))
    assert bal["s/iter paper"] == "45.8" and bal["s/iter ours/paper"] == f"{14.14 / 45.8:.2f}×"
    assert bal["paper row"] == "BF16 Balanced SP, 16 s" and bal["gpu (ours)"] == GPU
    assert bal["hardware (paper)"] == "GPU type and SP degree not stated"
    assert dict(zip(head, _table_row(t1, "t-bf16-nosp"), strict=True))["s/iter paper"] == "75.3"
    assert dict(zip(head, _table_row(t1, "t-bf16-trad"), strict=True))["s/iter paper"] == "52.2"
    assert "error recycling" in dict(zip(head, _table_row(t1, "t-bf16-bal-er"), strict=True))["note"]
    assert "t-fp8emu-bal" not in t1 and "t-cpu-tiny" not in t1  # no Table 1 column / not the 5B model
    t2 = comp["Table 2 DMD peak memory (paper)"]
    head = _header(t2)
    row = dict(zip(head, _table_row(t2, "d-gen-real-critic"), strict=True))
    assert row["peak GB paper"] == "49" and row["peak GB ours/paper"] == f"{39.3 / 49.0:.2f}×"
    assert row["× unquantised ours"] == f"{39.3 / 56.8:.2f}×" and row["× unquantised paper"] == "0.69×"
    assert row["paper row"] == "+ NVFP4 critic with LoRA" and row["hardware (paper)"] == "GPU type not stated"
    assert dict(zip(head, _table_row(t2, "d-none"), strict=True))["peak GB paper"] == "70.5"
    assert "fp32" in dict(zip(head, _table_row(t2, "d-fp32-gen"), strict=True))["note"]
    for t in (t1, t2):
        assert "c-bf16-4-str" not in t


def test_training_plots(mixed_report: tuple[str, str, Path]) -> None:
    md, page, out = mixed_report
    plots = _subsections(_sections(md)["Plots"])
    srcs = [s.split('"')[0] for s in page.split('<img src="')[1:]]
    for stem in ("train-", "dmd-", "ladder-"):
        src = next(s for s in srcs if s.startswith(f"assets/{stem}"))
        assert (out / src).read_bytes()[:8] == PNG_MAGIC
    assert "Training: seconds per iteration per configuration" in plots
    assert "DMD: peak memory per quantisation rung" in plots


def test_plots_ignore_training_rows(tmp_path: Path) -> None:
    infer = [_ok("i1", "bf16", "none", "streaming", 4, 20.0, 10.0), _ok("i2", "fp8", "none", "streaming", 4, 23.0,
                                                                            12.0)]
    train = [_train("a", "bf16", 1, "none", 50.0, frames=96), _train("b", "bf16", 1, "none", 150.0, frames=192)]
    plots = {p.key: p for p in make_plots(pd.DataFrame([*infer, *train, *DMD_ROWS[:1]]), tmp_path / "mix")}
    assert plots["memory"].file is None  # train peaks at two lengths are not an inference memory curve
    assert plots["ladder"].file is not None and plots["train"].file is not None
    assert plots["dmd"].file is None and "not enough data" in (plots["dmd"].note or "")
    only = {p.key: p for p in make_plots(pd.DataFrame([*TRAIN_ROWS, *DMD_ROWS]), tmp_path / "only")}
    assert set(only) == {"inference", "train", "dmd"} and "no ok inference cells" in (only["inference"].note or "")
    assert only["train"].file is not None and only["dmd"].file is not None
    assert "train" not in {p.key for p in make_plots(pd.DataFrame(infer), tmp_path / "infer")}
    one = {p.key: p for p in make_plots(pd.DataFrame(train[:1]), tmp_path / "one")}
    assert one["train"].file is None and "not enough data" in (one["train"].note or "")


def test_sections_noted_without_training_rows(report: tuple[Path, Path]) -> None:
    _, index = report
    md = (index.parent / "index.md").read_text()
    sec = _sections(md)
    assert "no ok train cells" in sec["Training (teacher forcing)"]
    assert "no ok dmd cells" in sec["DMD (distillation memory ladder)"]
    comp = sec["Ours vs published numbers"]  # tables no cell matches: listed in one line, no empty section each
    empty = next(ln for ln in comp.splitlines() if ln.startswith("> no ok cell matches a row of"))
    for name in ("Table 1 AR training (paper)", "Table 2 DMD peak memory (paper)", "Table 4 VBench (paper)"):
        assert name in empty and name not in _subsections(comp)
    assert set(_subsections(comp)) == {"Table 3 (paper)", "The release measured on the same GPU kind (spec 05)"}
    assert "train" not in _subsections(sec["Plots"]) and "Training: seconds" not in md
    assert "train-table" not in index.read_text()


def test_training_only_report_and_false_flag_in_inference(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    inf = _ok("i-er-false", "bf16", "none", "streaming", 4, 20.0, 10.0)
    inf["error_recycling"] = False  # a default that leaked into an inference row: still no column there
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [*TRAIN_ROWS[:2], inf]))
    build_report([folder], tmp_path / "out")
    sec = _sections((tmp_path / "out" / "index.md").read_text())
    assert "error_recycling" not in _header(sec["Results (ok cells)"])
    assert "no ok dmd cells" in sec["DMD (distillation memory ladder)"]
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in DMD_ROWS))
    build_report([folder], tmp_path / "out2")
    md = (tmp_path / "out2" / "index.md").read_text()
    sec = _sections(md)
    assert "no ok inference cells" in sec["Results (ok cells)"] and "no ok train cells" in sec[
        "Training (teacher forcing)"]
    assert "| d-gen |" in sec["DMD (distillation memory ladder)"]
