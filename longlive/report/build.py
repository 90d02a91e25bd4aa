"""Build the Markdown + HTML report of one or more result stores.

The report is read by people deciding whether a number is real, so it shows the timing definition and
the machine next to every figure, the paper's hardware next to ours, and every failed or skipped cell
with its reason. Files are replaced atomically (assets first under content-hashed names, then the two
index files by rename), so a killed build leaves the previous report or the new one, never half of one.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import html
import json
import numbers
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from longlive.eval.drift import DRIFT, WORST, WORST_INDEX
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
    is_missing,
    memory_gb,
    norm_kv,
    norm_layout,
    norm_precision,
    norm_recipe,
    norm_rung,
    split_workloads,
)
from longlive.report.gate import GateRule, as_list, attn_of, gate_table
from longlive.report.load import artifact_path, load_results
from longlive.report.paper import PAPER, TABLE3_HARDWARE, PaperTable, all_tables, table1, table2
from longlive.report.plots import (
    SPEED_DEFS,
    config_label,
    ladder_key,
    long_cells,
    make_plots,
    num,
    plot_quality_over_time,
    text,
    varying,
    windowed_metric_names,
)
from longlive.runner.schema import AXES

KEY_METRICS = (
    "denoise_fps", "e2e_fps", "e2e_s", "video_seconds", "first_chunk_latency_s", "chunk_ms_median", "ceiling_fps",
    "fraction_of_ceiling", "iter_s", "tokens_per_s", "mfu", "peak_allocated_gb", "device_used_gb", "kv_cache_gb",
    "temporal_flickering", "psnr_vs_ref", "latent_rel_err_vs_ref", "vbench_total",
)
PERCENT_COLUMNS = ("fraction_of_ceiling", "mfu")
TRAINING_AXES = ("dp", "train_layout", "error_recycling", "dmd_quantised")
"""Axes only the train / dmd workloads read: never columns of the inference table (a default False there would
otherwise show as a column of 'no')."""
INFER_AXES = tuple(a for a in AXES if a not in TRAINING_AXES)
TRAIN_METRICS = ("iter_s", "tokens_per_s", "mfu", "peak_allocated_gb", "loss_first", "loss_last")
DMD_METRICS = ("peak_allocated_gb", "resident_gb", "iter_s", "generator_loss", "critic_loss")
RSS_COLUMN = "host RSS GB (CPU, no device peak)"
RATIO_COLUMN = "× of the unquantised rung"
INT_COLUMNS = ("sp", "dp", "steps", "frames", "seed", "latents", "video_s", "cells", "ok", "failed", "skipped", "total")
WRAP_COLUMNS = ("reason", "note", "definition", "release run", "paper row", "setting")
MAX_STRIPS = 12
MAX_REASON = 400
ASSET_RE = re.compile(r"^[\w.-]+-[0-9a-f]{12}\.png$")
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
CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d2330;margin:0;background:#fff}
main{max-width:1240px;margin:0 auto;padding:20px 24px 48px}
h1{font-size:24px;margin:0 0 6px}h2{font-size:19px;border-bottom:1px solid #d5d9e0;padding-bottom:4px;margin-top:34px}
h3{font-size:15px;margin:22px 0 6px}p{margin:6px 0}
nav ul{columns:3;font-size:13px;padding-left:18px}
.table-wrap{overflow-x:auto;margin:8px 0 14px}
table{border-collapse:collapse;font-size:12.5px}
th,td{border:1px solid #d5d9e0;padding:3px 7px;text-align:left;white-space:nowrap;vertical-align:top}
th{background:#e9edf4;font-weight:600}
tbody tr:nth-child(even){background:#f6f7f9}
td.num{text-align:right;font-variant-numeric:tabular-nums}
td.wrap{white-space:normal;min-width:220px;max-width:520px}
.note{background:#fff7e0;border-left:4px solid #e3a800;padding:5px 10px;margin:8px 0}
.meta{color:#4a5468;font-size:13px}
figure{margin:14px 0}figure img{max-width:100%;border:1px solid #e1e4ea}
figcaption{font-size:12px;color:#4a5468;margin-top:4px}
details{margin:6px 0;border:1px solid #d5d9e0;border-radius:4px;padding:4px 10px}
summary{cursor:pointer;font-weight:600}
pre{font-size:12px;overflow-x:auto;background:#f6f7f9;padding:8px}
.ok{color:#1b7f3b}.failed{color:#b00020}.skipped{color:#8a6d00}
.pass{color:#1b7f3b}.fail{color:#b00020;font-weight:600}
"""


def _slug(s: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", s.lower()).strip("-") or "section"


def fmt_cell(col: str, v: Any, exact: bool = False) -> str:
    """Numbers readable at a glance: ratios as '0.83×', fractions as percent, ~3 significant digits.

    Published numbers (`exact`, or a '... paper' / '... release' column) keep the digits they were printed with.
    """
    if is_missing(v):
        return "—"
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, numbers.Real):
        if "ours/" in col or col.startswith("×"):
            return f"{v:.2f}×"
        if col in PERCENT_COLUMNS:
            return f"{v:.0%}"
        if isinstance(v, numbers.Integral) or (col in INT_COLUMNS and float(v).is_integer()):
            return f"{int(v):,}" if abs(v) >= 10000 else str(int(v))
        if exact or col.endswith((" paper", " release")):
            return f"{float(v):.6g}"
        return num(float(v))
    s = text(v)
    return s if len(s) <= MAX_REASON else s[: MAX_REASON - 1] + "…"


def _numeric(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)


class Doc:
    """Builds the Markdown and HTML bodies in step, so both always say the same thing."""

    def __init__(self) -> None:
        self.md: list[str] = []
        self.html: list[str] = []
        self.toc: list[tuple[str, str]] = []
        self.assets: set[str] = set()

    def heading(self, level: int, title: str) -> None:
        anchor = _slug(title)
        if level == 2:
            self.toc.append((anchor, title))
        self.md.append(f"{'#' * level} {title}\n")
        self.html.append(f'<h{level} id="{anchor}">{html.escape(title)}</h{level}>')

    def para(self, s: str, cls: str | None = None) -> None:
        self.md.append(s + "\n")
        attr = f' class="{cls}"' if cls else ""
        self.html.append(f"<p{attr}>{html.escape(s)}</p>")

    def note(self, s: str) -> None:
        self.md.append(f"> {s}\n")
        self.html.append(f'<p class="note">{html.escape(s)}</p>')

    def bullets(self, items: list[str]) -> None:
        self.md.append("\n".join(f"- {i}" for i in items) + "\n")
        self.html.append("<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in items) + "</ul>")

    def table(self, df: pd.DataFrame, html_id: str | None = None, status_col: str | None = None,
              exact: bool = False) -> None:
        """A formatted table; numbers right-aligned in HTML, pipes escaped in Markdown."""
        cols = [str(c) for c in df.columns]
        numeric = {c: _numeric(df[c]) for c in df.columns}
        cells = [[fmt_cell(str(c), v, exact) for c, v in zip(df.columns, row, strict=True)]
                 for row in df.itertuples(index=False, name=None)]

        def md_cell(s: str) -> str:
            return s.replace("|", "\\|").replace("\n", " ")

        self.md.append("| " + " | ".join(md_cell(c) for c in cols) + " |")
        self.md.append("|" + "|".join("---:" if numeric[c] else "---" for c in df.columns) + "|")
        self.md.extend("| " + " | ".join(md_cell(v) for v in row) + " |" for row in cells)
        self.md.append("")
        id_attr = f' id="{html_id}"' if html_id else ""
        h = [f'<div class="table-wrap"><table{id_attr}>', "<thead><tr>"]
        h += [f"<th>{html.escape(c)}</th>" for c in cols]
        h.append("</tr></thead><tbody>")
        for row in cells:
            h.append("<tr>")
            for c, v in zip(df.columns, row, strict=True):
                cls = "num" if numeric[c] else "wrap" if str(c) in WRAP_COLUMNS else ""
                if status_col and c == status_col:
                    cls = v
                h.append(f'<td class="{cls}">{html.escape(v)}</td>' if cls else f"<td>{html.escape(v)}</td>")
            h.append("</tr>")
        h.append("</tbody></table></div>")
        self.html.append("".join(h))

    def image(self, src: str, alt: str, caption: str = "") -> None:
        self.assets.add(Path(src).name)
        self.md.append(f"![{alt}]({src})\n" + (f"\n*{caption}*\n" if caption else ""))
        cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
        self.html.append(f'<figure><img src="{html.escape(src)}" alt="{html.escape(alt)}">{cap}</figure>')

    def details(self, summary: str, body: str) -> None:
        self.md.append(f"<details><summary>{html.escape(summary)}</summary>\n\n```json\n{body}\n```\n\n</details>\n")
        self.html.append(f"<details><summary>{html.escape(summary)}</summary><pre>{html.escape(body)}</pre></details>")

    def render(self, title: str) -> tuple[str, str]:
        toc_md = "\n".join(f"- [{t}](#{a})" for a, t in self.toc)
        md = f"# {title}\n\n{toc_md}\n\n" + "\n".join(self.md) + "\n"
        toc_html = "<nav><ul>" + "".join(f'<li><a href="#{a}">{html.escape(t)}</a></li>' for a, t in self.toc)
        body = "\n".join(self.html)
        page = (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
                f'<meta name="viewport" content="width=device-width, initial-scale=1">'
                f"<title>{html.escape(title)}</title><style>{CSS}</style></head>\n<body><main>\n"
                f"<h1>{html.escape(title)}</h1>\n{toc_html}</ul></nav>\n{body}\n</main></body></html>\n")
        return md, page


def _publish(src: Path, assets: Path, stem: str) -> str:
    """Copy a PNG into assets/ under a content-hashed name (never overwriting what an old index shows)."""
    digest = hashlib.sha256(src.read_bytes()).hexdigest()[:12]
    name = f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', stem)[:60]}-{digest}.png"
    dest = assets / name
    if not dest.exists():
        with atomic_path(dest) as tmp:  # a failed copy (full disk) leaves no temp file behind
            shutil.copyfile(src, tmp)
    return f"assets/{name}"


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


def _summary(doc: Doc, df: pd.DataFrame, sources: list[str]) -> None:
    doc.heading(2, "Summary")
    counts = df["status"].value_counts()
    doc.para(f"{len(df)} cells: {counts.get('ok', 0)} ok, {counts.get('failed', 0)} failed, "
             f"{counts.get('skipped', 0)} skipped (the last row of each cell_id counts).")
    if not df.empty:
        per = pd.crosstab(df["experiment"].map(text), df["status"])
        for s in ("ok", "failed", "skipped"):
            if s not in per.columns:
                per[s] = 0
        per = per[["ok", "failed", "skipped", *[c for c in per.columns if c not in ("ok", "failed", "skipped")]]]
        per["total"] = per.sum(axis=1)
        per.columns.name = None
        doc.table(per.reset_index(), html_id="summary-table")
    gpus = sorted({text(g) for g in df.loc[df["status"] == "ok", "gpu_name"]}) if not df.empty else []
    finished = [t for t in df["finished_at"] if isinstance(t, str)] if not df.empty else []
    items = [f"results: {', '.join(sources)}", f"GPUs (ours): {', '.join(gpus) or '—'}"]
    if not df.empty and df["workload"].map(text).nunique() > 1:
        per_workload = df["workload"].map(text).value_counts()
        items.append("cells per workload: " + ", ".join(f"{w} {n}" for w, n in per_workload.items()))
    if finished:
        items.append(f"cells finished between {min(finished)} and {max(finished)}")
    items.append(f"report generated {_dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds')}")
    doc.bullets(items)


def _device_cols(df: pd.DataFrame) -> list[str]:
    """['gpu_name'] when the device that ran a cell differs from its gpu axis (the hardware request)."""
    return ["gpu_name"] if (df["gpu_name"].map(text) != df["hardware"].map(text)).any() else []


def _main_table(doc: Doc, ok: pd.DataFrame, others: int = 0) -> None:
    """Inference (and quality) cells; `others` = how many ok train/dmd cells have their own sections."""
    doc.heading(2, "Results (ok cells)")
    if ok.empty:
        doc.note("no ok inference cells" + (" (training and DMD cells: see their sections)" if others else ""))
        return
    cols = [*_identity_cols(ok), *_present(ok, INFER_AXES), *_device_cols(ok), *_present(ok, ["frames"]),
            *_present(ok, KEY_METRICS)]
    t = ok[cols].copy()
    t.insert(0, "cell", ok["cell_id"].map(_short_id))
    doc.para("Inference cells (workload infer / quality)"
             + ("; training and DMD cells have their own sections below" if others else "")
             + ". Metric columns follow the timing definitions listed at the end; memory in GB (1e9 bytes).",
             cls="meta")
    doc.table(t, html_id="main-table")


GATE_MARK = {True: "✓ pass", False: "✗ fail", None: "— undecided"}
ATTN_ERROR_COLUMNS = ("attn_rel_err_mean", "attn_rel_err_max", "attn_rel_err_vs_fp32", "attn_baseline_rel_err_vs_fp32")


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
        table.insert(0, "gate", table.pop("gate_passed").map(lambda v: GATE_MARK[None if is_missing(v) else bool(v)]))
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
    and `peak_ratio` (as RATIO_COLUMN) right after peak_allocated_gb."""
    t = pd.DataFrame({"cell": rows["cell_id"].map(_short_id)}, index=rows.index)
    for c in [*_identity_cols(rows), *axes]:
        t[c] = rows[c].map(flag) if c == "error_recycling" else rows[c]
    for c in ["hardware", *_device_cols(rows), "frames"]:
        t[c] = rows[c]
    shown = [m for m in metrics if m in always or rows[m].notna().any()]
    for m in metrics:
        if m in shown:
            t[m] = rows[m]
        if m == "peak_allocated_gb":
            if peak_ratio is not None:
                t[RATIO_COLUMN] = peak_ratio
            _with_memory(t, rows)
    doc.table(t, html_id=html_id)
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
    with tempfile.TemporaryDirectory(prefix="longlive-report-") as tmp:
        for p in make_plots(ok, Path(tmp)):
            doc.heading(3, p.title)
            if p.file is None:
                doc.note(p.note or "not drawn")
            else:
                doc.image(_publish(p.file, assets, p.key), p.title, p.caption)


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
        doc.image(_publish(p.file, assets, p.key), p.title, p.caption)
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
    doc.heading(2, "Ours vs published numbers")
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
    for name, t, how in sections:
        doc.heading(3, name)
        doc.para(how, cls="meta")
        if t.empty:
            doc.note("no ok cell matches a row of this table")
        else:
            doc.table(t)


def _paper_tables(doc: Doc) -> None:
    doc.heading(2, "Published numbers (reference)")
    doc.para(f"From {PAPER} and docs/spec/05-benchmarks.md; each with the hardware and timing definition as stated.")
    for pt in all_tables():
        _paper_table(doc, pt)


def _paper_table(doc: Doc, pt: PaperTable) -> None:
    doc.heading(3, pt.title)
    doc.para(f"Hardware: {pt.hardware}. Timing: {pt.timing}.", cls="meta")
    doc.table(pt.data, exact=True)
    if pt.note:
        doc.para(pt.note, cls="meta")


def _strips(doc: Doc, ok: pd.DataFrame, assets: Path) -> None:
    doc.heading(2, "Frame strips")
    rows = [(r, artifact_path(r, "strip")) for _, r in ok.iterrows()]
    have = [(r, p) for r, p in rows if p is not None]
    missing = [r for r, p in rows if p is None and isinstance(r["artifacts"], dict) and r["artifacts"].get("strip")]
    if not have:
        doc.note("no frame strips among the ok cells' artifacts")
    axes = varying(ok, ["gpu_name", "model", "precision", "kv_quant", "decode", "steps", "sp", "frames"])
    for r, p in have[:MAX_STRIPS]:
        doc.image(_publish(p, assets, f"strip-{r['cell_id']}"), f"strip {r['cell_id']}",
                  f"{r['cell_id']}: {config_label(r, axes)}")
    if len(have) > MAX_STRIPS:
        doc.para(f"{len(have) - MAX_STRIPS} more strips not shown.", cls="meta")
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


def build_report(results: list[Path], out: Path, title: str | None = None) -> Path:
    """Write out/index.md and out/index.html (+ out/assets/*.png) for the given stores; returns index.html."""
    paths = [Path(p) for p in results]
    if not paths:
        raise ValueError("no results given")
    out = check_out_dir(out)
    df = load_results(paths)
    assets = out / "assets"
    assets.mkdir(parents=True, exist_ok=True)
    sources = [str(p) for p in paths]
    title = title or f"LongLive benchmark report — {', '.join(p.name or str(p) for p in paths)}"

    ok = _sorted(df[df["status"] == "ok"])
    bad = _sorted(df[df["status"] != "ok"])
    infer, train, dmd = split_workloads(ok)
    doc = Doc()
    _summary(doc, df, sources)
    _main_table(doc, infer, others=len(train) + len(dmd))
    _gate_section(doc, infer)
    _train_section(doc, train)
    _dmd_section(doc, dmd)
    _not_ok(doc, bad)
    _plots(doc, ok, assets)
    _quality_over_time(doc, infer, assets)
    _comparisons(doc, ok)
    _strips(doc, ok, assets)
    _paper_tables(doc)
    _manifests(doc, df)
    _timing(doc, df)
    md, page = doc.render(title)
    write_text_atomic(out / "index.md", md)
    write_text_atomic(out / "index.html", page)
    _gc_assets(assets, doc.assets)
    return out / "index.html"
