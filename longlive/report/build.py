"""Build the Markdown + HTML report of one or more result stores.

The report is read by people deciding whether a number is real, so it leads with what they ask first (the Summary,
summary.py), shows the spread next to every timed number, the timing definition and the machine next to every
figure, the paper's hardware next to ours, and every failed or skipped cell with its reason. This module holds the
report's other sections and puts them in order (`build_doc`) into a `Doc` (document.py: the blocks, rendered to
Markdown and, through the Jinja2 templates, to HTML, so both always say the same thing). Files are replaced
atomically (assets first under content-hashed names, then the two index files by rename), so a killed build leaves
the previous report or the new one, never half of one.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from longlive.eval.drift import DRIFT, WORST, WORST_INDEX
from longlive.measure.spread import row_interval
from longlive.names import ATTN_LOWP
from longlive.output import atomic_path, check_out_dir, write_text_atomic
from longlive.report.compare import (
    DMD_RUNGS,
    LAYOUT_ORDER,
    RECIPE_ORDER,
    compare_release,
    compare_table1,
    compare_table2,
    compare_table3,
    compare_table4,
    dmd_ratio_to_none,
    flag,
    is_5b,
    is_missing,
    memory_gb,
    norm_kv,
    norm_layout,
    norm_precision,
    norm_recipe,
    norm_rung,
    split_workloads,
)
from longlive.report.document import INTERVAL_MARK, Doc, _slug
from longlive.report.gate import GateRule, as_list, attn_of, gate_table
from longlive.report.gates import apply_gates, gates_summary, preset_gates, summary_table
from longlive.report.load import artifact_path, load_results
from longlive.report.paper import PAPER, TABLE3_HARDWARE, PaperTable, all_tables, table1, table2
from longlive.report.plots import (
    GATE_FAIL_LABEL,
    SPEED_DEFS,
    config_label,
    gate_failed,
    ladder_key,
    long_cells,
    make_plots,
    num,
    plot_quality_over_time,
    text,
    varying,
    windowed_metric_names,
)
from longlive.report.summary import (
    INFER_AXES,
    SPEED_METRICS,
    _gated,
    _overrides,
    _summary,
    repeats_rule,
)
from longlive.runner.schema import AXES, TIMED_METRICS

KEY_METRICS = (
    "denoise_fps", "e2e_fps", "switch_latency_s", "e2e_s", "video_seconds", "first_chunk_latency_s", "chunk_ms_median",
    "ceiling_fps", "fraction_of_ceiling", "iter_s", "tokens_per_s", "mfu", "peak_allocated_gb", "device_used_gb",
    "kv_cache_gb", "temporal_flickering", "psnr_vs_ref", "latent_rel_err_vs_ref", "vbench_total",
)
"""The main table's metric columns, speed first; switch_latency_s (a prompt switch on screen) right after the FPS."""
TRAIN_METRICS = ("iter_s", "tokens_per_s", "mfu", "peak_allocated_gb", "loss_first", "loss_last")
DMD_METRICS = ("peak_allocated_gb", "resident_gb", "iter_s", "generator_loss", "critic_loss")
RSS_COLUMN = "host RSS GB (CPU, no device peak)"
RATIO_COLUMN = "× of the unquantised rung"
MAX_STRIPS = 12
ASSET_RE = re.compile(r"^[\w.-]+-[0-9a-f]{12}\.png$")
GATE_COLUMN = "gate"
"""The column beside a speed column that says whether the row passes its gate (helper columns gate_passed etc.)."""
GATE_MARK = {True: "✓ pass", False: "✗ fail", None: "— undecided"}
MAX_GATE_ROWS = 12
"""A gate judging more cells shows its failing and undecided ones, the full table folded away."""
SPEC_DEFINITIONS = {
    "denoise_fps": "video frames ÷ wall time of the chunk loop (all denoising steps, the clean re-run, KV updates), "
                   "device events, warm-up chunks dropped; excludes text encoding, load/compile and VAE decode",
    "e2e_fps": "video frames ÷ wall time from the first chunk's noise to the last decoded frame in host memory "
               "(decode included, overlapped or not); excludes load/compile and text encoding",
    "e2e_s": "that same end-to-end wall time in seconds, per video length",
    "first_chunk_latency_s": "device time of the first chunk (no warm-up)",
    "chunk_ms_p10/median/p90": "per-chunk device time percentiles over the steady (post warm-up) chunks",
    "iter_s": "training: median seconds per iteration after warm-up",
    "peak_allocated_gb / peak_reserved_gb": "torch allocator peaks; device_used_gb from NVML; max over ranks",
}


# --- helpers over the rows ------------------------------------------------------------------------------------------

def _publish(src: Path, assets: Path, stem: str) -> str:
    """Copy a PNG into assets/ under a content-hashed name (never overwriting what an old index shows)."""
    digest = hashlib.sha256(src.read_bytes()).hexdigest()[:12]
    name = f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', stem)[:60]}-{digest}.png"
    dest = assets / name
    if not dest.exists():
        with atomic_path(dest) as tmp:  # a failed copy (full disk) leaves no temp file behind
            shutil.copyfile(src, tmp)
    return f"assets/{name}"


def intervals_of(rows: pd.DataFrame, cols: list[str]) -> dict[str, list[tuple[float, float] | None]]:
    """Per timed column of `cols` whose rows carry `<m>_lo` / `<m>_hi` (repeats > 1): each row's interval or None."""
    out = {}
    for c in cols:
        if c in TIMED_METRICS:
            spans = [row_interval(r, c) for _, r in rows.iterrows()]
            if any(s is not None for s in spans):
                out[c] = spans
    return out


def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    if df.empty:
        return df
    keys = [(text(r["experiment"]), text(r["gpu_name"]), text(r["model"]), ladder_key(r),
             -1 if is_missing(r["frames"]) else int(r["frames"])) for _, r in df.iterrows()]
    order = sorted(range(len(df)), key=lambda i: keys[i])
    return df.iloc[order]


def _short_id(v: Any) -> str:
    s = text(v)
    return s if len(s) <= 20 else s[:18] + "…"


def _identity_cols(df: pd.DataFrame) -> list[str]:
    return [c for c in ("experiment", "workload") if df[c].map(text).nunique() > 1]


def _present(df: pd.DataFrame, cols: tuple[str, ...] | list[str]) -> list[str]:
    return [c for c in cols if c in df.columns and df[c].notna().any()]


def _repeats_cols(df: pd.DataFrame) -> list[str]:
    """['repeats'] when any row ran its timed metrics more than once."""
    reps = pd.to_numeric(df["repeats"], errors="coerce") if "repeats" in df.columns else pd.Series(dtype=float)
    return ["repeats"] if (reps > 1).any() else []


def _gate_mark(v: Any) -> str:
    return GATE_MARK[None if is_missing(v) else bool(v)]


def _with_gate_column(t: pd.DataFrame, rows: pd.DataFrame) -> dict[str, list[str]]:
    """Put the `gate` verdict right after the first speed column of `t` (where any row has a gate) and return the
    CSS classes that mark the speed cells of rows failing their gate."""
    if not _gated(rows):
        return {}
    speed = [c for c in t.columns if c in (*SPEED_METRICS, "iter_s")]
    marks = [_gate_mark(v) if not (is_missing(v) and is_missing(n)) else "—"
             for v, n in zip(rows.get("gate_passed", pd.Series(None, index=rows.index)),
                             rows.get("gate_name", pd.Series(None, index=rows.index)), strict=True)]
    at = t.columns.get_loc(speed[0]) + 1 if speed else len(t.columns)
    t.insert(at, GATE_COLUMN, marks)
    failing = ["fail" if gate_failed(r) else "" for _, r in rows.iterrows()]
    return {c: failing for c in speed}


# --- the sections after the Summary (summary.py), in build_doc's order ------------------------------------------------

def _device_cols(df: pd.DataFrame) -> list[str]:
    """['gpu_name'] when the device that ran a cell differs from its gpu axis (the hardware request)."""
    return ["gpu_name"] if (df["gpu_name"].map(text) != df["hardware"].map(text)).any() else []


def _main_table(doc: Doc, ok: pd.DataFrame, others: int = 0) -> None:
    """Inference (and quality) cells; `others` = how many ok train/dmd cells have their own sections."""
    doc.heading(2, "Results (ok cells)")
    if ok.empty:
        doc.note("no ok inference cells" + (" (training and DMD cells: see their sections)" if others else ""))
        return
    axes = _present(ok, INFER_AXES)
    same = [a for a in axes if a not in varying(ok, axes)] if len(ok) > 1 else []
    cols = [*_identity_cols(ok), *[a for a in axes if a not in same], *_device_cols(ok), *_present(ok, ["frames"]),
            *_repeats_cols(ok), *_present(ok, KEY_METRICS)]
    t = ok[cols].copy()
    t.insert(0, "cell", ok["cell_id"].map(_short_id))
    spans = intervals_of(ok, cols)
    cls = _with_gate_column(t, ok)
    rule = repeats_rule(ok)
    doc.para("Inference cells (workload infer / quality)"
             + ("; training and DMD cells have their own sections below" if others else "")
             + ". Metric columns follow the timing definitions listed at the end; memory in GB (1e9 bytes)."
             + (" gate: the row's verdict (✗ = fails its gate; its speed in red)." if cls else ""), cls="meta")
    if same:
        doc.para("Same in every row: " + _overrides(ok.iloc[0], same) + ".", cls="meta")
    if spans:
        doc.para(f"Columns marked {INTERVAL_MARK}: median over the cell's repeats, then the interval — {rule}",
                 cls="meta")
    doc.table(t, html_id="main-table", intervals=spans, cell_cls=cls, rule=rule)


ATTN_ERROR_COLUMNS = ("attn_rel_err_mean", "attn_rel_err_max", "attn_rel_err_vs_fp32", "attn_baseline_rel_err_vs_fp32")


def _gates(doc: Doc, df: pd.DataFrame, gates: Mapping[str, list] | None = None) -> None:
    """The declared gates (config key `gates`, longlive.report.gates): per gate its rule, its verdict counts and one
    row per judged cell; one line where no experiment declares a gate."""
    doc.heading(2, "Gates")
    entries = gates_summary(df, gates)
    if not entries:
        doc.para("No gate declared for these cells (an experiment declares them under the config key `gates`); "
                 "speeds are compared without a quality condition.", cls="meta")
        return
    doc.para("A configuration counts toward a speed target only if it passes its gate(s); gate_margin is the "
             "smallest slack as a fraction of each allowance (≥ 0 passes, 0 on the limit); undecided = a check could "
             "not be made (gate_reason says why). Rows that fail are marked ✗ wherever their speed is shown "
             "(tables, Pareto plots).", cls="meta")
    for e in entries:
        doc.heading(3, f"Gate {e['name']}")
        doc.para(text(e["description"]), cls="meta")
        if e.get("problem"):
            doc.note(text(e["problem"]))
        c = e["counts"]
        if not e["rows"]:
            continue
        doc.para(f"{len(e['rows'])} cells judged ({', '.join(map(text, e['experiments']))}): {c['passed']} pass, "
                 f"{c['failed']} fail{' (marked ✗)' if c['failed'] else ''}, {c['undecided']} undecided.", cls="meta")
        t = summary_table(e)
        verdict = t["gate_passed"].map(lambda v: 1 if is_missing(v) else 2 if bool(v) else 0)
        t.insert(0, GATE_COLUMN, t.pop("gate_passed").map(_gate_mark))
        t["cell_id"] = t["cell_id"].map(_short_id)
        t = t.rename(columns={"cell_id": "cell"})
        refs = {_short_id(r["cell_id"]) for r in e["rows"] if r["reference"]}
        if refs:
            t.insert(2, "role", t["cell"].map(lambda x, refs=refs: "reference" if x in refs else ""))
        t = t.loc[verdict.sort_values(kind="stable").index]  # failing, then undecided, then passing cells
        slug = _slug(str(e["name"]))
        if len(t) <= MAX_GATE_ROWS:
            doc.table(t, html_id=f"gate-{slug}", status_col=GATE_COLUMN)
            continue
        shown = t[verdict.loc[t.index] < 2]
        if not shown.empty:
            doc.table(shown, html_id=f"gate-{slug}-not-passing", status_col=GATE_COLUMN)
        doc.heading(4, f"All {len(t)} cells judged by {e['name']}",
                    collapsed=f"{len(t)} rows, failing and undecided first")
        doc.table(t, html_id=f"gate-{slug}", status_col=GATE_COLUMN)


def _gate_section(doc: Doc, ok: pd.DataFrame) -> None:
    """The fidelity gate (report/gate.py) over the ok inference rows, and the attn_error rows' per-layer errors;
    only for results that hold a low-precision attention cell."""
    attn = [attn_of(r) for _, r in ok.iterrows()]
    probes = ok[ok["workload"].map(lambda w: w == "attn_error")]
    if not any(a in ATTN_LOWP for a in attn) and probes.empty:
        return
    doc.heading(2, "Fidelity gate")
    rule = GateRule()
    doc.para(f"A configuration counts toward a speed target only if it passes: {rule.describe()}. gate_margin is "
             "the smallest slack as a fraction of each allowance (0 on the limit, negative = fails); undecided = a "
             "check could not be made (the reason is in gate_rule).", cls="meta")
    table = gate_table(ok[ok["workload"].map(lambda w: w != "attn_error")], rule)
    if table.empty:
        doc.note("no ok inference rows to gate")
    else:
        table.insert(0, "gate", table.pop("gate_passed").map(_gate_mark))
        failing = int(table["gate"].eq(GATE_MARK[False]).sum())
        doc.para(f"{len(table)} configurations: {int(table['gate'].eq(GATE_MARK[True]).sum())} pass, {failing} "
                 f"fail{' (marked ✗)' if failing else ''}. denoise_fps is the speed the gate admits.", cls="meta")
        doc.table(table, html_id="gate-table", status_col="gate")
    if not probes.empty:
        doc.heading(3, "Attention error per layer (workload attn_error)")
        t = pd.DataFrame({"cell": probes["cell_id"].map(_short_id)}, index=probes.index)
        for c in ("model", "attn", "attn_baseline", "kv_quant", "precision"):
            t[c] = [attn_of(r) for _, r in probes.iterrows()] if c == "attn" else probes.get(c)
        for c in ATTN_ERROR_COLUMNS:
            if c in probes.columns:
                t[c] = probes[c]

        def worst(v: object) -> str:
            errs = as_list(v)
            if not errs:
                return "—"
            i = max(range(len(errs)), key=lambda j: -1.0 if is_missing(errs[j]) else errs[j])
            return f"layer {i}: {num(float(errs[i]))}"

        t["worst layer (mean over probed calls)"] = probes["attn_rel_err_per_layer"].map(worst) \
            if "attn_rel_err_per_layer" in probes.columns else "—"
        doc.table(t, html_id="attn-error-table")
        defs = _recorded_definitions(probes, ("attn_rel_err",))
        if defs:
            doc.para("Definition — " + "; ".join(defs) + ".", cls="meta")


def _recorded_definitions(rows: pd.DataFrame, metrics: tuple[str, ...]) -> list[str]:
    """'metric: definition' for each of `metrics` that the rows' timing_definition records (distinct texts,
    with a cell count where they disagree); iter_s falls back to spec 05, marked as such."""
    by_text: dict[str, list[str]] = {}  # one definition often covers several metrics: print it once
    for m in metrics:
        seen: dict[str, int] = {}
        for td in rows["timing_definition"]:
            if isinstance(td, dict) and not is_missing(td.get(m)) and str(td.get(m)).strip():
                seen[text(td[m])] = seen.get(text(td[m]), 0) + 1
        if len(seen) == 1:
            by_text.setdefault(next(iter(seen)), []).append(m)
        elif seen:
            by_text.setdefault(" | ".join(f"{d} ({n} cells)" for d, n in seen.items()), []).append(m)
        elif m == "iter_s":
            by_text.setdefault(f"not recorded in these rows; spec 05 says {SPEC_DEFINITIONS['iter_s']}", []).append(m)
    return [d if d.startswith(f"{ms[0]}:") else f"{', '.join(ms)}: {d}" for d, ms in by_text.items()]


def _with_memory(t: pd.DataFrame, rows: pd.DataFrame) -> None:
    """Host RSS (metrics_extra.rss_gb) for rows without a device peak: CPU runs, labelled so."""
    rss = [m[0] if m is not None and m[1] == "rss_gb" else np.nan for m in (memory_gb(r) for _, r in rows.iterrows())]
    if any(not is_missing(v) for v in rss):
        t[RSS_COLUMN] = pd.Series(rss, index=rows.index, dtype="float64")


def _order(df: pd.DataFrame, key) -> pd.DataFrame:
    if df.empty:
        return df
    keys = {i: key(r) for i, r in df.iterrows()}
    return df.loc[sorted(df.index, key=lambda i: keys[i])]


def _idx(order: tuple[str, ...], v: str | None) -> int:
    return order.index(v) if v in order else len(order)


def _base_key(r: pd.Series) -> tuple:
    return (text(r["experiment"]), text(r["gpu_name"]), text(r["model"]),
            -1 if is_missing(r["frames"]) else int(r["frames"]))


def _train_key(r: pd.Series) -> tuple:
    er = flag(r["error_recycling"])
    return (*_base_key(r), _idx(RECIPE_ORDER, norm_recipe(r["precision"])), text(r["precision"]),
            0 if is_missing(r["sp"]) else int(r["sp"]), _idx(LAYOUT_ORDER, norm_layout(r["train_layout"])),
            -1 if er is None else int(er))


def _dmd_key(r: pd.Series) -> tuple:
    return (*_base_key(r), _idx(RECIPE_ORDER, norm_recipe(r["precision"])), text(r["precision"]),
            _idx(DMD_RUNGS, norm_rung(r["dmd_quantised"])))


def _section_table(doc: Doc, rows: pd.DataFrame, axes: list[str], metrics: tuple[str, ...], always: tuple[str, ...],
                   html_id: str, peak_ratio: pd.Series | None = None) -> None:
    """Cell id, axes, device, frames, then the metrics recorded in any row (`always` shown regardless); host RSS
    and `peak_ratio` (as RATIO_COLUMN) right after peak_allocated_gb; timed metrics with their interval."""
    t = pd.DataFrame({"cell": rows["cell_id"].map(_short_id)}, index=rows.index)
    for c in [*_identity_cols(rows), *axes]:
        t[c] = rows[c].map(flag) if c == "error_recycling" else rows[c]
    for c in ["hardware", *_device_cols(rows), "frames", *_repeats_cols(rows)]:
        t[c] = rows[c]
    shown = [m for m in metrics if m in always or rows[m].notna().any()]
    for m in metrics:
        if m in shown:
            t[m] = rows[m]
        if m == "peak_allocated_gb":
            if peak_ratio is not None:
                t[RATIO_COLUMN] = peak_ratio
            _with_memory(t, rows)
    cls = _with_gate_column(t, rows)
    rule = repeats_rule(rows)
    doc.table(t, html_id=html_id, intervals=intervals_of(rows, list(t.columns)), cell_cls=cls, rule=rule)
    absent = [m for m in metrics if m not in shown]
    if absent:
        doc.para(f"Not recorded in any of these rows: {', '.join(absent)}.", cls="meta")


def _train_section(doc: Doc, train: pd.DataFrame) -> None:
    doc.heading(2, "Training (teacher forcing)")
    if train.empty:
        doc.note("no ok train cells (workload train) in these results")
        return
    train = _order(train, _train_key)
    doc.para("Stage-1 AR teacher forcing, one row per ok train cell. precision is the training recipe; frames are "
             "latent frames per sample; mfu, peak_allocated_gb (torch allocator peak, max over ranks) are blank on "
             "CPU, where host RSS is shown instead.", cls="meta")
    doc.para("Timing — " + "; ".join(_recorded_definitions(train, ("iter_s", "tokens_per_s", "mfu"))) + ".")
    _section_table(doc, train, ["model", "precision", "sp", "dp", "train_layout", "error_recycling"], TRAIN_METRICS,
                   ("iter_s",), "train-table")


def _dmd_section(doc: Doc, dmd: pd.DataFrame) -> None:
    doc.heading(2, "DMD (distillation memory ladder)")
    if dmd.empty:
        doc.note("no ok dmd cells (workload dmd) in these results")
        return
    dmd = _order(dmd, _dmd_key)
    doc.para("Stage-2 DMD with LoRA, one row per ok dmd cell. dmd_quantised names the frozen networks that hold "
             f"NVFP4 weights ({' → '.join(DMD_RUNGS)}). '{RATIO_COLUMN}' = peak_allocated_gb ÷ that of the row with "
             "dmd_quantised none and the same model, device, frames and precision (— where there is none).",
             cls="meta")
    doc.para("Timing — " + "; ".join(_recorded_definitions(dmd, ("iter_s", "peak_allocated_gb", "resident_gb")))
             + ".")
    _section_table(doc, dmd, ["model", "precision", "dmd_quantised"], DMD_METRICS, ("peak_allocated_gb",),
                   "dmd-table", peak_ratio=dmd_ratio_to_none(dmd))


def _not_ok(doc: Doc, bad: pd.DataFrame) -> None:
    doc.heading(2, "Failed and skipped cells")
    if bad.empty:
        doc.para("None: every cell ran.")
        return
    cols = [*_identity_cols(bad), *_present(bad, AXES)]
    t = bad[["status", *cols, "reason"]].copy()
    t.insert(0, "cell", bad["cell_id"].map(_short_id))
    t["reason"] = t["reason"].map(lambda r: "(no reason recorded)" if is_missing(r) or not str(r).strip() else r)
    doc.table(t, status_col="status")


def _plots(doc: Doc, ok: pd.DataFrame, assets: Path) -> None:
    doc.heading(2, "Plots")
    doc.para("Each figure splits its configurations into panels by what varies (a few lines per panel); error bars "
             "are the interval over repeats where a cell has one; a hollow red ring marks a cell that "
             f"{GATE_FAIL_LABEL}.", cls="meta")
    with tempfile.TemporaryDirectory(prefix="longlive-report-") as tmp:
        for p in make_plots(ok, Path(tmp)):
            doc.heading(3, p.title)
            if p.file is None:
                doc.note(p.note or "not drawn")
            else:
                doc.image(_publish(p.file, assets, p.key), p.title, p.caption, key=p.key, series=p.series,
                          labels=p.labels, front=p.front)


DRIFT_DOC = ("drift = last window − first window (negative: worse for a higher-is-better metric); worst = the lowest "
             "window of a higher-is-better metric, the highest of a lower-is-better one. Cells whose video is shorter "
             "than two windows have no drift and are left out.")


def _quality_over_time(doc: Doc, infer: pd.DataFrame, assets: Path) -> None:
    """The windowed metrics of long cells against time (plot) and their drift numbers (table); a one-line note
    where no cell's video holds two quality windows."""
    doc.heading(2, "Quality over time")
    infer = infer.assign(precision=infer["precision"].map(norm_precision), kv_quant=infer["kv_quant"].map(norm_kv))
    with tempfile.TemporaryDirectory(prefix="longlive-report-") as tmp:
        p = plot_quality_over_time(infer, Path(tmp) / "quality_over_time.png")
        if p.file is None:
            doc.note(p.note or "not drawn")
            return
        doc.para(f"Each metric of quality.window_metrics on every quality window of the video; {DRIFT_DOC}",
                 cls="meta")
        doc.image(_publish(p.file, assets, p.key), p.title, p.caption, key=p.key, series=p.series)
    recs = []
    for m in windowed_metric_names(infer):
        for r, t, vals in long_cells(infer, m):
            w = int(r[m + WORST_INDEX])
            recs.append({"cell": _short_id(r["cell_id"]), "precision": r["precision"], "kv_quant": r["kv_quant"],
                         "steps": r["steps"], "attn": attn_of(r), "frames": r["frames"], "metric": m,
                         "windows": len(vals), "first window": vals[0], "last window": vals[-1],
                         "drift": r.get(m + DRIFT), "worst window": r.get(m + WORST),
                         "worst at (s)": t[w], "worst index": w})
    t = pd.DataFrame(recs)
    doc.table(t.drop(columns=[c for c in ("attn", "frames") if t[c].map(text).nunique() < 2]),
              html_id="drift-table")


def _comparisons(doc: Doc, ok: pd.DataFrame) -> None:
    """Ours next to the published numbers; one line where no ok cell is of the model the paper measured, and the
    tables no cell matches listed in one line rather than one empty section each."""
    doc.heading(2, "Ours vs published numbers")
    if ok.empty or not ok["model"].map(is_5b).any():
        models = sorted({text(m) for m in ok["model"]}) if not ok.empty else []
        devices = sorted({text(g) for g in ok["gpu_name"]}) if not ok.empty else []
        doc.para("Ours vs published: the paper measured the 5B preset (wan2.2-ti2v-5b) on GPUs; this report holds "
                 + (f"only {', '.join(models)} cells on {', '.join(devices)}" if models else "no ok cells")
                 + ", so no row of Tables 1–4 or of the release's measurements applies. The published numbers "
                 "themselves are listed under 'Published numbers (reference)'.")
        return
    doc.para("Ratios are ours ÷ theirs: above 1 is faster for FPS, but slower or larger for seconds, ms and memory. "
             "The hardware of each side is a column; different machines are never the same row of evidence.")
    sections = [
        ("Table 3 (paper)", compare_table3(ok), f"{PAPER}, hardware {TABLE3_HARDWARE}; FPS is the denoising loop, "
         "E2E seconds per 16/32/64 s video. Matched on precision, kv_quant, decode (sync/async), steps; 5B, sp 1."),
        ("The release measured on the same GPU kind (spec 05)", compare_release(ok),
         "Release code at 1280×704, 12 chunks, first 4 dropped; matched on GPU kind, precision, steps, attention "
         "(cuDNN unless ours used flash); KV unquantised, 5B, sp 1. Memory converted to GiB on both sides."),
        ("Table 4 VBench (paper)", compare_table4(ok), "Matched on precision and steps, 5B model."),
        ("Table 1 AR training (paper)", compare_table1(ok), f"{PAPER}; the paper's hardware: {table1().hardware}. "
         "s/iter: ours is the median seconds per optimiser iteration after warm-up, the paper's averaging is not "
         "stated. Train cells matched on the 5B model, 96/192/384 latents (16/32/64 s), precision bf16 (nvfp4 for "
         "the NVFP4 column) and SP: sp 1 → no SP, traditional layout → SP, balanced layout → Balanced SP."),
        ("Table 2 DMD peak memory (paper)", compare_table2(ok), f"{PAPER}; the paper's hardware: {table2().hardware}. "
         "Peak memory per GPU in GB (the paper's allocator measure is not stated; ours is the torch allocator peak, "
         "max over ranks). DMD cells matched on the 5B model and the dmd_quantised rung; '× unquantised' is each "
         "side's ratio to its own all-BF16 rung."),
    ]
    empty = [name for name, t, _ in sections if t.empty]
    if empty:
        doc.note(f"no ok cell matches a row of {', '.join(empty)} (a row needs a 5B cell with the same settings: "
                 "inference for Tables 3–4 and the release, workload train for Table 1, workload dmd for Table 2)")
    for name, t, how in sections:
        if t.empty:
            continue
        doc.heading(3, name)
        doc.para(how, cls="meta")
        doc.table(t)


def _paper_tables(doc: Doc, ok: pd.DataFrame) -> None:
    doc.heading(2, "Published numbers (reference)")
    if ok.empty or not ok["model"].map(is_5b).any():
        doc.sections[-1].collapsed = (f"{len(all_tables())} tables of the 5B preset on GPUs, for reference only: no "
                                      "cell of this report is comparable.")
    doc.para(f"From {PAPER} and docs/spec/05-benchmarks.md; each with the hardware and timing definition as stated.")
    for pt in all_tables():
        _paper_table(doc, pt)


def _paper_table(doc: Doc, pt: PaperTable) -> None:
    doc.heading(3, pt.title)
    doc.para(f"Hardware: {pt.hardware}. Timing: {pt.timing}.", cls="meta")
    doc.table(pt.data, exact=True)
    if pt.note:
        doc.para(pt.note, cls="meta")


def _spread_out(items: list[list[tuple[pd.Series, Path]]], keys: list[str]) -> list[list[tuple[pd.Series, Path]]]:
    """Items reordered round-robin over the combinations of `keys` (of each item's first row), order kept within
    one combination: the first strips shown cover every precision and KV format before repeating one."""
    seen: dict[tuple, int] = {}
    ranked = []
    for pos, cells in enumerate(items):
        k = tuple(text(cells[0][0].get(c)) for c in keys)
        ranked.append((seen.get(k, 0), pos, cells))
        seen[k] = seen.get(k, 0) + 1
    return [cells for _, _, cells in sorted(ranked, key=lambda t: (t[0], t[1]))]


def _strips(doc: Doc, ok: pd.DataFrame, assets: Path) -> None:
    """Frame strips of the ok cells, one per distinct image: cells whose frames are identical (decode modes, SP
    degrees that change no pixel) share one strip, its caption naming them all."""
    doc.heading(2, "Frame strips")
    rows = [(r, artifact_path(r, "strip")) for _, r in ok.iterrows()]
    have = [(r, p) for r, p in rows if p is not None]
    missing = [r for r, p in rows if p is None and isinstance(r["artifacts"], dict) and r["artifacts"].get("strip")]
    if not have:
        doc.note("no frame strips among the ok cells' artifacts")
    axes = varying(ok, ["gpu_name", "model", "precision", "kv_quant", "decode", "steps", "sp", "frames"])
    same: dict[str, list[tuple[pd.Series, Path]]] = {}
    for r, p in have:
        same.setdefault(hashlib.sha256(p.read_bytes()).hexdigest(), []).append((r, p))
    distinct = _spread_out(list(same.values()), ["model", "precision", "kv_quant", "frames"])
    if len(distinct) < len(have):
        doc.para(f"{len(have)} strips, {len(distinct)} distinct: cells with identical frames share one strip.",
                 cls="meta")
    for cells in distinct[:MAX_STRIPS]:
        r, p = cells[0]
        names = "; ".join(f"{_short_id(c['cell_id'])}: {config_label(c, axes)}" for c, _ in cells[:8])
        more = f"; and {len(cells) - 8} more" if len(cells) > 8 else ""
        doc.image(_publish(p, assets, f"strip-{r['cell_id']}"), f"strip {r['cell_id']}",
                  (f"{len(cells)} cells, identical frames — " if len(cells) > 1 else "") + names + more, key="strip")
    if len(distinct) > MAX_STRIPS:
        doc.para(f"{len(distinct) - MAX_STRIPS} more distinct strips not shown.", cls="meta")
    if missing:
        doc.note(f"strip recorded but not found on disk for {len(missing)} cell(s): "
                 + ", ".join(text(r["cell_id"]) for r in missing[:10]))


MANIFEST_KEY = ("git_commit", "gpu", "gpu_count", "compute_capability", "driver", "cuda")
MANIFEST_DROP = ("date", "seed", "config")


def _manifests(doc: Doc, df: pd.DataFrame) -> None:
    doc.heading(2, "Environment manifests")
    groups: dict[str, dict] = {}
    for _, r in df.iterrows():
        m = r["manifest"] if isinstance(r["manifest"], dict) else {}
        if not m:
            continue
        env = {k: v for k, v in m.items() if k not in MANIFEST_DROP}
        key = json.dumps(env, sort_keys=True, default=str)
        g = groups.setdefault(key, {"env": env, "cells": [], "dates": []})
        g["cells"].append(text(r["cell_id"]))
        if m.get("date"):
            g["dates"].append(str(m["date"]))
    if not groups:
        doc.note("no manifest recorded in these rows")
        return
    doc.para(f"{len(groups)} distinct environment(s); per-cell config and seed are in the results rows.", cls="meta")
    for g in groups.values():
        env = g["env"]
        commit = str(env.get("git_commit", "unknown"))
        summary = (f"commit {commit[:12]}{'+dirty' if commit.endswith('+dirty') else ''} · {env.get('gpu', '?')} "
                   f"×{env.get('gpu_count', '?')} · torch {(env.get('packages') or {}).get('torch', '?')} · "
                   f"{len(g['cells'])} cell(s)")
        body = dict(env)
        if g["dates"]:
            body["dates"] = f"{min(g['dates'])} … {max(g['dates'])}"
        body["cells"] = g["cells"]
        doc.details(summary, json.dumps(body, indent=2, sort_keys=True, default=str))


def _timing(doc: Doc, df: pd.DataFrame) -> None:
    doc.heading(2, "Timing definitions")
    seen: dict[tuple[str, str], int] = {}
    for td in df["timing_definition"]:
        items = td.items() if isinstance(td, dict) else []
        for k, v in items:
            seen[(str(k), text(v))] = seen.get((str(k), text(v)), 0) + 1
    if seen:
        doc.para("As recorded in the rows (metric, definition, number of cells):", cls="meta")
        doc.table(pd.DataFrame([(k, d, n) for (k, d), n in sorted(seen.items())],
                               columns=["metric", "definition", "cells"]))
    else:
        doc.note("no row records a timing definition")
    doc.para("Spec 05 definitions (the contract the runner's timers implement):", cls="meta")
    doc.bullets([f"{k}: {v}" for k, v in SPEC_DEFINITIONS.items()])
    doc.para("Plots: " + "; ".join(f"{k} = {v}" for k, v in SPEED_DEFS.items()) + ".", cls="meta")


def _gc_assets(assets: Path, keep: set[str]) -> None:
    """Drop PNGs of earlier builds that the new index no longer shows (only our own hashed names)."""
    for f in assets.iterdir():
        if f.is_file() and ASSET_RE.match(f.name) and f.name not in keep:
            f.unlink(missing_ok=True)


def build_doc(df: pd.DataFrame, sources: list[str], assets: Path, gates: Mapping[str, list] | None = None) -> Doc:
    """Every section of the report for the loaded (and gated) rows, figures published into `assets`."""
    ok = _sorted(df[df["status"] == "ok"])
    bad = _sorted(df[df["status"] != "ok"])
    infer, train, dmd = split_workloads(ok)
    doc = Doc()
    _summary(doc, df, sources, infer, train)
    _gates(doc, df, gates)
    _gate_section(doc, infer)
    _plots(doc, ok, assets)
    _main_table(doc, infer, others=len(train) + len(dmd))
    _train_section(doc, train)
    _dmd_section(doc, dmd)
    _not_ok(doc, bad)
    _quality_over_time(doc, infer, assets)
    _comparisons(doc, ok)
    _strips(doc, ok, assets)
    _paper_tables(doc, ok)
    _manifests(doc, df)
    _timing(doc, df)
    return doc


def build_report(results: list[Path], out: Path, title: str | None = None) -> Path:
    """Write out/index.md and out/index.html (+ out/assets/*.png) for the given stores; returns index.html."""
    paths = [Path(p) for p in results]
    if not paths:
        raise ValueError("no results given")
    out = check_out_dir(out)
    df = load_results(paths)
    gates = preset_gates(df["experiment"].unique()) if "experiment" in df else {}  # today's, not the rows' own
    df = apply_gates(df, gates)  # gate_name / gate_passed / gate_margin / gate_reason; None where undeclared
    assets = out / "assets"
    assets.mkdir(parents=True, exist_ok=True)
    sources = [str(p) for p in paths]
    title = title or f"LongLive benchmark report — {', '.join(p.name or str(p) for p in paths)}"
    doc = build_doc(df, sources, assets, gates)
    md, page = doc.render(title)
    write_text_atomic(out / "index.md", md)
    write_text_atomic(out / "index.html", page)
    _gc_assets(assets, doc.assets)
    return out / "index.html"
