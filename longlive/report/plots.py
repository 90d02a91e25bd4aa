"""Report figures (PNG, matplotlib's Agg canvas through `Figure`, no pyplot global state).

Each figure is drawn only when the data varies along what the figure is about; otherwise it returns a
one-line "not enough data" note, because an empty or one-point chart reads like a result. Axis labels
and titles name the timing definition the plotted column follows (spec 05). A figure never crowds one axes:
configurations are split into small multiples by what varies (`facet`: at most MAX_LINES lines or MAX_BARS
configurations per panel), Pareto plots label only their front, timed numbers carry their interval over repeats as
error bars, and a row that fails its quality gate is drawn hollow red wherever its speed is plotted.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from longlive.eval.drift import PER_WINDOW, WINDOW_CENTRES, WORST_INDEX
from longlive.eval.metrics import METRICS
from longlive.measure.spread import row_interval
from longlive.output import atomic_path
from longlive.report.compare import (
    DECODE_ORDER,
    DMD_RUNGS,
    KV_ORDER,
    LAYOUT_ORDER,
    PRECISION_ORDER,
    RECIPE_ORDER,
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
from longlive.report.gate import as_list, attn_of

SPEED_DEFS = {
    "denoise_fps": "denoise loop: device events, warm-up chunks dropped; excl. text encode, load, VAE decode",
    "e2e_fps": "end to end: first chunk's noise to last decoded frame in host memory; decode included",
}
SPEED_SHORT = {"denoise_fps": "denoise FPS (chunk loop only)", "e2e_fps": "E2E FPS (noise → decoded frames)"}
LABEL_AXES = ("precision", "kv_quant", "exchange", "decode", "steps", "sp")
TRAIN_LABEL_AXES = ("precision", "sp", "dp", "train_layout", "error_recycling", "frames")
ITER_DEF = "median seconds per optimiser iteration after warm-up"
QUALITY = (
    ("vbench_total", True, "VBench total"),
    ("psnr_vs_ref", True, "PSNR vs reference run (dB)"),
    ("temporal_flickering", True, "temporal flickering score (higher = steadier)"),
    ("latent_rel_err_vs_ref", False, "latent relative error vs reference (lower = better)"),
)
MAX_PANELS = 6
"""Full-width panels stacked in one figure (the training and DMD bar ladders: one per device and model)."""
MAX_FACETS = 8
"""Small multiples of one figure, in a grid of two columns; more are left out and the caption says so."""
MAX_LINES = 6
"""Lines (or point groups) per axes: more configurations are split over facets."""
MAX_BARS = 16
"""Configurations per full-width bar or per-configuration panel (ladder, per-chunk timings)."""
MAX_CONFIGS = 24
"""Bars of one training-ladder panel."""
GATE_FAIL_LABEL = "fails its gate"
GATE_FAIL_STYLE = {"marker": "o", "s": 90, "facecolors": "none", "edgecolors": "tab:red", "linewidths": 1.6}
"""Hollow red ring over a point whose row fails its quality gate (legend: GATE_FAIL_LABEL)."""


@dataclass
class Plot:
    """A figure written to `file`, or a `note` saying why it was not drawn. `series`: lines, point groups or
    configurations drawn in each axes; `labels`: point labels written; `front`: Pareto-front points."""

    key: str
    title: str
    file: Path | None = None
    note: str | None = None
    caption: str = ""
    series: list[int] = field(default_factory=list)
    labels: int = 0
    front: int = 0


def text(v: object) -> str:
    """A cell value as short text; missing values as an em dash."""
    if is_missing(v):
        return "—"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def num(v: float) -> str:
    """About three significant digits without scientific notation for everyday magnitudes."""
    if is_missing(v):
        return ""
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3g}"


def varying(df: pd.DataFrame, cols: tuple[str, ...] | list[str]) -> list[str]:
    """Columns that take more than one value in `df` (missing counts as a value)."""
    return [c for c in cols if c in df.columns and df[c].map(text).nunique() > 1]


def config_label(row: pd.Series | dict, axes: list[str], sep: str = " · ") -> str:
    """A readable configuration name from the axes that matter for this figure."""
    fmt: dict[str, Callable[[str], str]] = {
        "kv_quant": lambda v: f"kv {v}", "steps": lambda v: f"{v} steps", "sp": lambda v: f"sp {v}",
        "frames": lambda v: f"{v} latent frames", "train_layout": lambda v: f"{v} layout",
        "error_recycling": lambda v: {"True": "error recycling", "False": "no error recycling"}.get(v, f"ER {v}"),
        "dmd_quantised": lambda v: "unquantised" if v == "none" else f"NVFP4 {v}",
    }
    parts = [fmt.get(a, lambda v: v)(text(row[a])) for a in axes]
    return sep.join(parts) if parts else "all cells"


def _index(order: tuple[str, ...], v: str | None) -> int:
    return order.index(v) if v in order else len(order)


def ladder_key(row: pd.Series | dict) -> tuple:
    """Sort like the paper's Table 3: precision, then KV quantisation, decode overlap, fewer steps last."""
    steps = row.get("steps")
    sp = row.get("sp")
    return (_index(PRECISION_ORDER, norm_precision(row.get("precision"))),
            _index(KV_ORDER, norm_kv(row.get("kv_quant"))),
            _index(DECODE_ORDER, None if is_missing(row.get("decode")) else str(row.get("decode"))),
            -(int(steps) if not is_missing(steps) else 0), int(sp) if not is_missing(sp) else 0)


def groups(df: pd.DataFrame, by: list[str]) -> list[tuple[pd.Series, pd.DataFrame]]:
    """(first row, rows) per distinct combination of `by`, missing values grouped together, ladder order."""
    if df.empty:
        return []
    if not by:
        return [(df.iloc[0], df)]
    keys = df[by].map(text)
    out = [(sub.iloc[0], sub) for _, sub in df.groupby([keys[c] for c in by], sort=False)]
    return sorted(out, key=lambda g: ladder_key(g[0]))


def _save(fig: Figure, path: Path) -> Path:
    """Write the figure through a temp file: a full disk leaves no half PNG and fails with the file's name."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, bbox_inches="tight", format="png", metadata={"Software": None})
    return path


def gate_failed(row: pd.Series | dict) -> bool:
    """Whether the row's quality gate (report.gates.apply_gates' gate_passed) says it fails: fast but not usable."""
    v = row.get("gate_passed")
    return not is_missing(v) and not bool(v)


def _span(rows: pd.DataFrame, metric: str) -> tuple[float, float] | None:
    """The interval of a configuration's rows: the median of their interval ends (one row: its own)."""
    spans = [s for s in (row_interval(r, metric) for _, r in rows.iterrows()) if s is not None]
    if not spans:
        return None
    return float(pd.Series([s[0] for s in spans]).median()), float(pd.Series([s[1] for s in spans]).median())


def _yerr(value: float, span: tuple[float, float] | None) -> list[float]:
    """Error-bar lengths below and above `value` (0 where there is no interval)."""
    if span is None or is_missing(value):
        return [0.0, 0.0]
    return [max(value - span[0], 0.0), max(span[1] - value, 0.0)]


@dataclass
class Facet:
    """One panel of a faceted figure: its title, its series (first row, rows) in ladder order, and the axes that
    name a series within it."""

    title: str
    series: list[tuple[pd.Series, pd.DataFrame]]
    axes: list[str]


def facet(d: pd.DataFrame, base: list[str], axes: list[str], per_panel: int) -> list[Facet]:
    """Split configurations into panels by what varies: `base` columns always split panels; within each base group,
    the axes of `axes` that vary there move, in order, from naming a series to splitting panels until no panel
    holds more than `per_panel` series (a small group stays one panel). Panels come in ladder order."""
    out = []
    for first, group in groups(d, base):
        panel_axes, series_axes = [], varying(group, axes)
        while series_axes and max(len(groups(sub, series_axes)) for _, sub in groups(group, panel_axes)) > per_panel:
            panel_axes.append(series_axes.pop(0))
        head = config_label(first, base) if base else ""
        for f, sub in groups(group, panel_axes):
            title = " · ".join(t for t in (head, config_label(f, panel_axes) if panel_axes else "") if t)
            out.append(Facet(title or "all cells", groups(sub, series_axes), series_axes))
    return out


def _grid(fig: Figure, n: int, height: float = 3.6, cols: int = 2, width: float | None = None) -> list:
    """n axes in a grid of up to `cols` columns (one for a single panel); sets the figure's size (`width` in inches,
    by default 8 for one column and 14 for two)."""
    cols = 1 if n == 1 else cols
    rows = math.ceil(n / cols)
    fig.set_size_inches(width or (8.0 if cols == 1 else 14.0), height * rows + 0.8)
    return [fig.add_subplot(rows, cols, i + 1) for i in range(n)]


def _left_out(panels: list) -> str:
    """The caption's note when a figure holds more panels than it draws."""
    extra = len(panels) - MAX_FACETS
    return f" {extra} more panels not drawn (at most {MAX_FACETS} per figure)." if extra > 0 else ""


def _mark_failing(ax, xs: list[float], ys: list[float], failing: list[bool], labelled: bool) -> bool:
    """Hollow red rings over the points of rows that fail their gate; True when any was drawn."""
    pts = [(x, y) for x, y, f in zip(xs, ys, failing, strict=True) if f]
    if pts:
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], zorder=5, **GATE_FAIL_STYLE,
                   label=None if labelled else GATE_FAIL_LABEL)
    return bool(pts)


def plot_ladder(ok: pd.DataFrame, path: Path) -> Plot:
    """(a) Table 3 ladder: denoise and E2E FPS side by side per configuration, in panels by device, model, video
    length and, where many configurations vary, the leading axes (at most MAX_BARS configurations a panel)."""
    title = "Inference ladder: denoise FPS and E2E FPS per configuration"
    d = ok[ok["denoise_fps"].notna() | ok["e2e_fps"].notna()]
    axes = varying(d, LABEL_AXES)
    enough = [sub for _, sub in groups(d, ["gpu_name", "model"]) if len(groups(sub, axes)) >= 2]
    if not enough:
        return Plot("ladder", title, note="not enough data: needs ≥2 configurations (differing in precision, "
                    "kv_quant, decode, steps or sp) with denoise_fps or e2e_fps on one gpu/model")
    d = pd.concat(enough)
    panels = facet(d, ["gpu_name", "model", *varying(d, ["frames"])], axes, MAX_BARS)
    drawn = panels[:MAX_FACETS]
    fig = Figure()
    fail_any = False
    for ax, p in zip(_grid(fig, len(drawn), 3.8, cols=1, width=max(8.0, 0.8 * max(len(p.series) for p in drawn) + 2)),
                     drawn, strict=True):
        xs = list(range(len(p.series)))
        for off, col in ((-0.2, "denoise_fps"), (0.2, "e2e_fps")):
            vals = [s[col].median() for _, s in p.series]
            heights = [0 if is_missing(v) else v for v in vals]
            errs = [_yerr(v, _span(s, col)) for v, (_, s) in zip(vals, p.series, strict=True)]
            bars = ax.bar([x + off for x in xs], heights, width=0.4, label=SPEED_SHORT[col],
                          yerr=[[e[0] for e in errs], [e[1] for e in errs]] if any(any(e) for e in errs) else None,
                          capsize=3)
            ax.bar_label(bars, labels=[num(v) for v in vals], fontsize=7, padding=2)
            failing = [gate_failed(s.iloc[0]) for _, s in p.series]
            if col == "denoise_fps":
                fail_any |= _mark_failing(ax, [x + off for x in xs], heights, failing, fail_any)
        ax.set_xticks(xs, [config_label(f, p.axes, "\n") + (f"\n(median of {len(s)})" if len(s) > 1 else "")
                           for f, s in p.series], fontsize=7)
        ax.set_ylabel("frames per second", fontsize=8)
        ax.set_title(p.title, fontsize=9)
        ax.margins(y=0.25)
        ax.legend(fontsize=7, loc="upper left", ncols=2)
    fig.suptitle("Table 3 ladder: denoise_fps (denoise loop only) and e2e_fps (noise → decoded frames on host)",
                 fontsize=11)
    fig.set_layout_engine("constrained")
    return Plot("ladder", title, _save(fig, path), series=[len(p.series) for p in drawn],
                caption="denoise_fps: " + SPEED_DEFS["denoise_fps"] + ". e2e_fps: " + SPEED_DEFS["e2e_fps"] + "."
                + (" Error bars: the interval over repeats." if _has_intervals(d, ("denoise_fps", "e2e_fps")) else "")
                + (f" Red ring: {GATE_FAIL_LABEL}." if fail_any else "") + _left_out(panels))


def _has_intervals(d: pd.DataFrame, metrics: tuple[str, ...] | list[str]) -> bool:
    return any(f"{m}_lo" in d.columns and d[f"{m}_lo"].notna().any() for m in metrics)


def _labelled_lines(ax) -> int:
    return sum(1 for line in ax.get_lines() if not str(line.get_label()).startswith("_"))


def plot_memory(ok: pd.DataFrame, path: Path) -> Plot:
    """(b) Peak memory against video length, one line per configuration: what a longer video costs."""
    mem = next((c for c in ("peak_allocated_gb", "device_used_gb", "peak_reserved_gb") if ok[c].notna().any()), None)
    if mem is None:
        return Plot("memory", "Peak memory vs video length", note="not enough data: no ok cell records peak memory "
                    "(peak_allocated_gb, device_used_gb or peak_reserved_gb; CPU runs have none)")
    xcol = "video_seconds" if ok["video_seconds"].notna().any() else "frames"
    title = f"Peak memory ({mem}) vs video length"
    d = ok[ok[mem].notna() & ok[xcol].notna()]
    axes = varying(d, LABEL_AXES)
    lines = [s for _, s in groups(d, ["gpu_name", "model", *axes]) if s[xcol].nunique() >= 2]
    if not lines:
        return Plot("memory", title, note=f"not enough data: needs ≥2 video lengths ({xcol}) for one configuration "
                    f"with {mem}")
    d = pd.concat(lines)
    panels = facet(d, ["gpu_name", "model"], axes, MAX_LINES)
    drawn = panels[:MAX_FACETS]
    fig = Figure()
    for ax, p in zip(_grid(fig, len(drawn)), drawn, strict=True):
        for f, s in p.series:
            pts = s.groupby(xcol)[mem].max().sort_index()
            ax.plot(pts.index.astype(float), pts.values, marker="o", label=config_label(f, p.axes))
        ax.set_xlabel("video length (s)" if xcol == "video_seconds" else "latent frames", fontsize=8)
        ax.set_ylabel(f"{mem} (GB, {'torch allocator peak' if mem.startswith('peak') else 'NVML device used'})",
                      fontsize=8)
        ax.set_ylim(bottom=0)
        ax.set_title(p.title, fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle(title + " — max over cells at one length", fontsize=11)
    fig.set_layout_engine("constrained")
    return Plot("memory", title, _save(fig, path), series=[_labelled_lines(ax) for ax in fig.axes],
                caption=f"{mem}: peak during the run, per cell (max over ranks)." + _left_out(panels))


def plot_sp(ok: pd.DataFrame, path: Path) -> Plot:
    """(c) SP scaling of the denoise loop against ideal linear scaling, efficiency annotated; one panel per
    device, model and video length, split further by the leading axes until each holds at most MAX_LINES lines."""
    title = "SP scaling: denoise_fps vs sp"
    d = ok[ok["denoise_fps"].notna() & ok["sp"].notna()]
    if d["sp"].nunique() < 2:
        return Plot("sp", title, note="not enough data: needs ≥2 values of sp with denoise_fps")
    axes = varying(d, [a for a in LABEL_AXES if a != "sp"])
    lines = [s for _, s in groups(d, ["gpu_name", "model", "frames", *axes]) if s["sp"].nunique() >= 2]
    if not lines:
        return Plot("sp", title, note="not enough data: needs ≥2 values of sp within one configuration")
    d = pd.concat(lines)
    panels = facet(d, ["gpu_name", "model", *varying(d, ["frames"])], axes, MAX_LINES)
    drawn = panels[:MAX_FACETS]
    fig = Figure()
    fail_any = False
    for ax, p in zip(_grid(fig, len(drawn)), drawn, strict=True):
        all_sp: set[int] = set()
        for f, s in p.series:
            by_sp = [(int(k), g) for k, g in s.groupby("sp")]
            sp = [k for k, _ in by_sp]
            vals = [float(g["denoise_fps"].median()) for _, g in by_sp]
            errs = [_yerr(v, _span(g, "denoise_fps")) for v, (_, g) in zip(vals, by_sp, strict=True)]
            all_sp.update(sp)
            ideal = [vals[0] * k / sp[0] for k in sp]
            eff = ", ".join(f"{v / ref:.0%} at sp {k}" for k, v, ref in zip(sp[1:], vals[1:], ideal[1:], strict=True))
            (line,) = ax.plot(sp, vals, marker="o", label=f"{config_label(f, p.axes)}: {eff}")
            if any(any(e) for e in errs):
                ax.errorbar(sp, vals, yerr=[[e[0] for e in errs], [e[1] for e in errs]], fmt="none",
                            ecolor=line.get_color(), capsize=3)
            ax.plot(sp, ideal, ls="--", color=line.get_color(), alpha=0.35)
            fail_any |= _mark_failing(ax, sp, vals, [any(gate_failed(r) for _, r in g.iterrows()) for _, g in by_sp],
                                      fail_any)
        ax.set_xticks(sorted(all_sp))
        ax.set_xlabel("sp (ranks in the sequence-parallel group)", fontsize=8)
        ax.set_ylabel("denoise_fps (frames / s)", fontsize=8)
        ax.set_title(p.title, fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle(title + " — dashed: ideal linear scaling; legend: efficiency at each larger sp", fontsize=11)
    fig.set_layout_engine("constrained")
    return Plot("sp", title, _save(fig, path), series=[_labelled_lines(ax) for ax in fig.axes],
                caption="efficiency = denoise_fps ÷ (denoise_fps at the smallest sp × sp ratio). denoise_fps: "
                + SPEED_DEFS["denoise_fps"] + "." + (f" Red ring: {GATE_FAIL_LABEL}." if fail_any else "")
                + _left_out(panels))


def pareto_mask(x: list[float], y: list[float], higher_is_better: bool) -> list[bool]:
    """Points no other point beats on both speed (higher) and quality."""
    sign = 1.0 if higher_is_better else -1.0
    order = sorted(range(len(x)), key=lambda i: (-x[i], -sign * y[i]))
    best, mask = -math.inf, [False] * len(x)
    for i in order:
        if sign * y[i] > best:
            mask[i], best = True, sign * y[i]
    return mask


def _colour_axis(d: pd.DataFrame, axes: list[str]) -> str | None:
    """The axis that colours a scatter: the first varying one with at most MAX_LINES values."""
    return next((a for a in axes if 2 <= d[a].map(text).nunique() <= MAX_LINES), None)


LABEL_OFFSETS = ((6, 8), (6, -14), (6, 22), (6, -28), (6, 36), (6, -42), (6, 50), (6, -56))
"""Candidate label positions (points right of and above/below the point), tried in order."""


def _label_offsets(ax, points: list[tuple[float, float]], texts: list[str], size: float = 7.0) -> list[tuple]:
    """An offset per label (LABEL_OFFSETS) whose box, estimated from the text length in points, overlaps no label
    placed before it; the first candidate where all overlap."""
    fig = ax.figure
    scale = 72.0 / fig.dpi  # display pixels to points
    placed: list[tuple[float, float, float, float]] = []
    out = []
    for (px, py), s in zip(points, texts, strict=True):
        x0, y0 = ax.transData.transform((px, py)) * scale
        w, h = 0.6 * size * len(s), 1.3 * size
        choice = LABEL_OFFSETS[0]
        for dx, dy in LABEL_OFFSETS:
            box = (x0 + dx, y0 + dy, x0 + dx + w, y0 + dy + h)
            if not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in placed):
                choice = (dx, dy)
                break
        placed.append((x0 + choice[0], y0 + choice[1], x0 + choice[0] + w, y0 + choice[1] + h))
        out.append(choice)
    return out


def plot_pareto(ok: pd.DataFrame, out_dir: Path) -> list[Plot]:
    """(d) Speed against each recorded quality column: every cell a point coloured by its leading axis, the Pareto
    front drawn and only its points labelled, rows failing their gate ringed red, speed intervals as error bars."""
    plots = []
    for q, higher, qlabel in QUALITY:
        finite = ok[q].map(lambda v: not is_missing(v) and math.isfinite(v))  # PSNR of the reference itself is inf
        speed = next((s for s in ("denoise_fps", "e2e_fps") if (ok[s].notna() & finite).sum() >= 2), None)
        if speed is None:
            continue
        d = ok[ok[speed].notna() & finite]
        left_out = int((ok[speed].notna() & ok[q].notna() & ~finite).sum())
        axes = varying(d, ["gpu_name", "model", *LABEL_AXES, "frames"])
        x, y = d[speed].astype(float).tolist(), d[q].astype(float).tolist()
        mask = pareto_mask(x, y, higher)
        fig = Figure(figsize=(9, 5.5))
        ax = fig.add_subplot()
        colour = _colour_axis(d, axes)
        keys = d[colour].map(text).tolist() if colour else ["cells"] * len(d)
        for k in dict.fromkeys(keys):
            idx = [i for i, kk in enumerate(keys) if kk == k]
            ax.scatter([x[i] for i in idx], [y[i] for i in idx], s=22, alpha=0.75,
                       label=config_label(d.iloc[idx[0]], [colour]) if colour else "cells")
        spans = [row_interval(r, speed) for _, r in d.iterrows()]
        if any(s is not None for s in spans):
            errs = [_yerr(xi, s) for xi, s in zip(x, spans, strict=True)]
            ax.errorbar(x, y, xerr=[[e[0] for e in errs], [e[1] for e in errs]], fmt="none", ecolor="0.55",
                        elinewidth=0.8, capsize=2)
        front_idx = sorted((i for i, m in enumerate(mask) if m), key=lambda i: (x[i], y[i]))
        ax.plot([x[i] for i in front_idx], [y[i] for i in front_idx], "-", color="tab:red", lw=1.2, zorder=4,
                label="Pareto front (labelled)")
        failing = [gate_failed(r) for _, r in d.iterrows()]
        fail_any = _mark_failing(ax, x, y, failing, False)
        label_axes = [a for a in axes if a != colour] if colour else axes
        ax.margins(x=0.12, y=0.12)
        ax.autoscale_view()
        texts = [config_label(d.iloc[i], [colour, *label_axes] if colour else label_axes, " · ") for i in front_idx]
        for i, s, off in zip(front_idx, texts, _label_offsets(ax, [(x[i], y[i]) for i in front_idx], texts),
                             strict=True):  # only the front is labelled, each label clear of the others
            ax.annotate(s, (x[i], y[i]), textcoords="offset points", fontsize=7, xytext=off,
                        arrowprops={"arrowstyle": "-", "color": "0.6", "lw": 0.6})
        ax.set_xlabel(f"{speed}: {SPEED_SHORT[speed]}, frames / s")
        ax.set_ylabel(qlabel)
        title = f"Speed–quality: {q} vs {speed}"
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7, loc="best")
        ax.grid(alpha=0.3)
        n_groups = len(dict.fromkeys(keys))
        plots.append(Plot(f"pareto_{q}", title, _save(fig, out_dir / f"pareto_{q}.png"), series=[n_groups],
                          labels=len(ax.texts), front=len(front_idx),
                          caption=f"{speed}: {SPEED_DEFS[speed]}. Front: no other cell is both faster and better; "
                          f"only its {len(front_idx)} point(s) are labelled"
                          + (f", the {len(d)} cells coloured by {colour}" if colour else "") + "."
                          + (f" Red ring: {GATE_FAIL_LABEL}." if fail_any else "")
                          + (f" {left_out} cell(s) with a non-finite {q} (e.g. the reference run itself) left out."
                             if left_out else "")))
    if not plots:
        plots.append(Plot("pareto", "Speed–quality Pareto", note="not enough data: needs ≥2 ok cells with both a "
                          "speed (denoise_fps or e2e_fps) and a quality column (" + ", ".join(q[0] for q in QUALITY)
                          + ")"))
    return plots


def plot_chunks(ok: pd.DataFrame, path: Path) -> Plot:
    """(e) Per-chunk denoise time: median with p10-p90 bars, every recorded chunk (incl. warm-up) as dots; panels
    of at most MAX_BARS configurations."""
    title = "Per-chunk denoise time (chunk_ms p10 / median / p90)"
    d = ok[ok["chunk_ms_median"].notna()]
    axes = varying(d, LABEL_AXES)
    panels = facet(d, ["gpu_name", "model", *varying(d, ["frames"])], axes, MAX_BARS)
    if sum(len(p.series) for p in panels) < 2:
        return Plot("chunks", title, note="not enough data: needs ≥2 configurations with per-chunk timings "
                    "(chunk_ms_median)")
    drawn = panels[:MAX_FACETS]
    fig = Figure()
    for n, (ax, p) in enumerate(zip(_grid(fig, len(drawn), cols=1, width=max(8.0, 0.6 * max(len(p.series)
                                                                                            for p in drawn) + 3)),
                                    drawn, strict=True)):
        for i, (_, s) in enumerate(p.series):
            r = s.iloc[-1]
            med, lo, hi = r["chunk_ms_median"], r["chunk_ms_p10"], r["chunk_ms_p90"]
            yerr = [[med - lo if not is_missing(lo) else 0], [hi - med if not is_missing(hi) else 0]]
            ax.errorbar([i], [med], yerr=yerr, fmt="o", color="tab:blue", capsize=4,
                        label="median, p10–p90 (after warm-up)" if i == 0 else None)
            raw = r.get("chunk_ms")
            if not isinstance(raw, list) and isinstance(r["metrics_extra"], dict):
                raw = r["metrics_extra"].get("chunk_ms")
            raw = raw.tolist() if hasattr(raw, "tolist") else raw
            if isinstance(raw, list) and raw:
                ax.scatter([i + 0.15] * len(raw), raw, s=8, color="0.5",
                           label="every chunk incl. warm-up" if i == 0 else None)
        ax.set_xticks(range(len(p.series)), [config_label(f, p.axes, "\n") for f, _ in p.series], fontsize=7)
        ax.set_ylabel("ms per chunk (device events)", fontsize=8)
        ax.set_ylim(bottom=0)
        ax.set_title(p.title, fontsize=9)
        if n == 0:
            ax.legend(fontsize=7)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(title + " — denoise loop timing", fontsize=11)
    fig.set_layout_engine("constrained")
    return Plot("chunks", title, _save(fig, path), series=[len(p.series) for p in drawn],
                caption="chunk_ms_*: device time of one chunk of the denoise loop (all steps, the clean re-run and KV "
                "update); percentiles over steady chunks." + _left_out(panels))


CHUNK_ERROR_IDENTITY = ("gpu_name", "model", "frames", "attn", "precision", "kv_quant", "steps")
"""What makes a latent-error curve its own line; cells differing only in other axes (decode, sp, seed) are pooled."""


def plot_chunk_error(infer: pd.DataFrame, path: Path) -> Plot:
    """Latent error against the reference cell per chunk of the rollout, one line per configuration (the per-chunk
    median over its cells): where a low-precision configuration drifts (the fidelity gate's long-rollout view);
    panels of at most MAX_LINES lines."""
    title = "Latent error vs reference per chunk"
    keep = []
    for i, r in infer.iterrows():
        errs = as_list(r.get("latent_rel_err_per_chunk"))
        if errs and any(not is_missing(e) and e > 0 for e in errs):  # the reference itself: all zero, not drawn
            keep.append(i)
    if not keep:
        return Plot("chunk_error", title, note="not enough data: needs a cell with latent_rel_err_per_chunk against "
                    "a reference (quality.reference) other than the reference itself")
    d = infer.loc[keep].assign(attn=[attn_of(r) for _, r in infer.loc[keep].iterrows()])
    pooled_axes = varying(d, [c for c in ("decode", "sp", "exchange", "seed") if c in d.columns])
    panels = facet(d, ["model"], [c for c in CHUNK_ERROR_IDENTITY if c != "model"], MAX_LINES)
    drawn = panels[:MAX_FACETS]
    fig = Figure()
    for ax, p in zip(_grid(fig, len(drawn), 4.0), drawn, strict=True):
        for f, s in p.series:
            curves = [[math.nan if is_missing(e) else float(e) for e in as_list(r.get("latent_rel_err_per_chunk"))]
                      for _, r in s.iterrows()]
            n = max(len(c) for c in curves)
            med = [float(pd.Series([c[k] for c in curves if k < len(c)]).median()) for k in range(n)]
            label = config_label(f, p.axes) + (f" (median of {len(curves)})" if len(curves) > 1 else "")
            ax.plot(range(n), med, marker=".", label=label)
        ax.set_xlabel("chunk index", fontsize=8)
        ax.set_ylabel("latent relative error of the chunk vs reference", fontsize=8)
        ax.set_yscale("log")
        ax.set_title(p.title, fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=11)
    fig.set_layout_engine("constrained")
    return Plot("chunk_error", title, _save(fig, path), series=[_labelled_lines(ax) for ax in fig.axes],
                caption="||x − ref|| / ||ref|| over each chunk's latents, against the cell's reference "
                "(quality.reference); one line per configuration"
                + (f", the per-chunk median over its cells differing only in {', '.join(pooled_axes)}"
                   if pooled_axes else "") + "." + _left_out(panels))


OVER_TIME_LEGEND = ("precision", "kv_quant", "steps")
OVER_TIME_EXTRA = ("attn", "gpu_name", "model", "decode", "sp", "frames", "seed")
"""The legend of the quality-over-time plot: always precision, KV format and steps; attn and the rest where they
vary among the plotted cells (so two lines never share a label)."""


def windowed_metric_names(df: pd.DataFrame) -> list[str]:
    """Metrics with a per-window column (`<metric>_per_window`, longlive.eval.drift) in any row, sorted."""
    return sorted(c.removesuffix(PER_WINDOW) for c in df.columns
                  if c.endswith(PER_WINDOW) and df[c].map(lambda v: bool(as_list(v))).any())


def long_cells(df: pd.DataFrame, metric: str) -> list[tuple[pd.Series, list[float], list[float]]]:
    """(row, window centres in s, values) of the rows whose video holds at least two windows for `metric` (its
    worst window is recorded: the drift numbers exist), in ladder order."""
    idx_col = metric + WORST_INDEX
    if idx_col not in df.columns:
        return []
    out = []
    for _, r in df.iterrows():
        vals, t = as_list(r.get(metric + PER_WINDOW)), as_list(r.get(WINDOW_CENTRES))
        if vals and t and len(vals) == len(t) >= 2 and not is_missing(r.get(idx_col)):
            out.append((r, [float(x) for x in t], [math.nan if is_missing(v) else float(v) for v in vals]))
    return sorted(out, key=lambda c: ladder_key(c[0]))


def over_time_labels(rows: list[pd.Series]) -> dict[str, str]:
    """Legend label per cell_id: precision, KV format and steps, then attn (and the other OVER_TIME_EXTRA axes)
    where they vary among these rows."""
    unique = list({r["cell_id"]: r for r in rows}.values())
    d = pd.DataFrame(unique).assign(attn=[attn_of(r) for r in unique])
    extra = varying(d, OVER_TIME_EXTRA)
    named = [*OVER_TIME_LEGEND, *(a for a in extra if a not in ("attn", "seed"))]
    out = {}
    for _, r in d.iterrows():
        tail = [f"{a} {text(r[a])}" for a in ("attn", "seed") if a in extra]
        out[r["cell_id"]] = " · ".join([config_label(r, named), *tail])
    return out


def plot_quality_over_time(infer: pd.DataFrame, path: Path) -> Plot:
    """Each windowed metric against time (window centres), one line per long cell, one panel per metric (more than
    MAX_LINES cells: several panels of one metric): whether NVFP4 KV or fewer steps drift sooner than BF16."""
    title = "Quality over time: metric per window against time"
    panels = [(m, cells) for m in windowed_metric_names(infer) if (cells := long_cells(infer, m))]
    if not panels:
        return Plot("quality_over_time", title, note="no long cells: none of these cells' videos holds two quality "
                    "windows (quality.window_seconds, 2 s by default), so there is no drift to plot")
    labels = over_time_labels([r for _, cells in panels for r, _, _ in cells])
    # Every windowed metric gets its panel (no MAX_PANELS cap): the metrics are the ones a run asked to window, and a
    # dropped panel would leave a metric of the drift table without its curve.
    split = [(m, cells[i:i + MAX_LINES], i // MAX_LINES, math.ceil(len(cells) / MAX_LINES))
             for m, cells in panels for i in range(0, len(cells), MAX_LINES)]
    fig = Figure(figsize=(9.0, 3.8 * len(split)), layout="constrained")
    for i, (m, cells, part, parts) in enumerate(split):
        ax = fig.add_subplot(len(split), 1, i + 1)
        better = getattr(METRICS.get(m), "higher_is_better", None)
        for r, t, vals in cells:
            (line,) = ax.plot(t, vals, marker="o", ms=4, label=labels[r["cell_id"]])
            w = int(r[m + WORST_INDEX])
            ax.plot([t[w]], [vals[w]], marker="o", ms=10, mfc="none", color=line.get_color())
        ax.set_xlabel("time (s, window centre)")
        ax.set_ylabel(m + {True: " (higher = better)", False: " (lower = better)"}.get(better, ""), fontsize=9)
        n = sum(len(c) for mm, c, _, _ in split if mm == m)
        ax.set_title(f"{m} per window ({n} long cell{'s' if n > 1 else ''})"
                     + (f", part {part + 1} of {parts}" if parts > 1 else ""), fontsize=10)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    return Plot("quality_over_time", title, _save(fig, path), series=[_labelled_lines(ax) for ax in fig.axes],
                caption="One line per cell whose video holds at least two quality windows; each point is the metric "
                "on one window (VBench-Long's clips of quality.window_seconds, the last ending at the last frame), "
                "at the window's centre; the ringed point is the cell's worst window.")


def _bar_panels(panels: list[tuple[str, list[tuple[str, float, str]]]], ylabel: str, suptitle: str) -> Figure:
    """One bar subplot per panel: (panel name, [(x label, value, bar label)])."""
    width = max(8.0, 1.1 * max(len(b) for _, b in panels) + 3)
    fig = Figure(figsize=(width, 4.2 * len(panels)))
    for i, (name, bars) in enumerate(panels):
        ax = fig.add_subplot(len(panels), 1, i + 1)
        xs = list(range(len(bars)))
        drawn = ax.bar(xs, [b[1] for b in bars], width=0.6, color="tab:blue")
        ax.bar_label(drawn, labels=[b[2] for b in bars], fontsize=8, padding=2)
        ax.set_xticks(xs, [b[0] for b in bars], fontsize=8)
        ax.set_ylabel(ylabel, fontsize=9)
        ax.set_ylim(bottom=0)
        ax.margins(y=0.25)
        ax.set_title(name, fontsize=10)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(suptitle, fontsize=11)
    fig.set_layout_engine("constrained")  # the suptitle, panel titles and bar labels never overlap
    return fig


def _sorted_groups(df: pd.DataFrame, by: list[str], key: Callable[[pd.Series], tuple]) -> list:
    return sorted(groups(df, by), key=lambda g: key(g[0])) if by else groups(df, by)


def _train_key(r: pd.Series) -> tuple:
    er = r.get("error_recycling")
    return (RECIPE_ORDER.index(r["precision"]) if r["precision"] in RECIPE_ORDER else len(RECIPE_ORDER),
            0 if is_missing(r["sp"]) else int(r["sp"]),
            LAYOUT_ORDER.index(r["train_layout"]) if r["train_layout"] in LAYOUT_ORDER else len(LAYOUT_ORDER),
            -1 if is_missing(er) else int(bool(er)), 0 if is_missing(r["frames"]) else int(r["frames"]))


def plot_train(train: pd.DataFrame, path: Path) -> Plot:
    """Teacher-forcing iter_s per training configuration (precision, sp, layout, error recycling), one panel
    per gpu/model: which recipe and SP layout buys time."""
    title = "Training: seconds per iteration per configuration"
    d = train[train["iter_s"].notna()]
    panels = []
    for first, sub in groups(d, ["gpu_name", "model"]):
        axes = varying(sub, TRAIN_LABEL_AXES)  # what differs on this device/model names the bars
        cfgs = _sorted_groups(sub, axes, _train_key)
        if len(cfgs) >= 2:
            bars = [(config_label(f, axes, "\n") + (f"\n(median of {len(s)})" if len(s) > 1 else ""),
                     float(s["iter_s"].median()), num(float(s["iter_s"].median())) + " s") for f, s in cfgs]
            panels.append((f"{text(first['gpu_name'])} · {text(first['model'])}", bars[:MAX_CONFIGS]))
    if not panels:
        return Plot("train", title, note="not enough data: needs ≥2 train configurations (differing in precision, "
                    "sp, train_layout, error_recycling or frames) with iter_s on one gpu/model")
    fig = _bar_panels(panels[:MAX_PANELS], "iter_s (s / iteration, lower is faster)",
                      f"Stage-1 teacher forcing: iter_s = {ITER_DEF}")
    return Plot("train", title, _save(fig, path), series=[len(b) for _, b in panels[:MAX_PANELS]],
                caption=f"iter_s: {ITER_DEF}, per cell (median across cells "
                "of one configuration). Bars compare configurations on one device and model only.")


def plot_dmd(dmd: pd.DataFrame, path: Path) -> Plot:
    """Table 2's ladder: peak memory per dmd_quantised rung, one panel per gpu/model/frames/precision, each
    bar labelled with its ratio to the unquantised rung."""
    title = "DMD: peak memory per quantisation rung"
    mem = [memory_gb(r) for _, r in dmd.iterrows()]
    measure = "peak_allocated_gb" if any(m and m[1] == "peak_allocated_gb" for m in mem) else "rss_gb"
    d = dmd.assign(_mem=[m[0] if m and m[1] == measure else math.nan for m in mem])
    d = d[d["_mem"].notna()]
    panels = []
    for first, sub in groups(d, ["gpu_name", "model", "frames", "precision"]):
        rungs = sorted(groups(sub, ["dmd_quantised"]), key=lambda g: DMD_RUNGS.index(g[0]["dmd_quantised"])
                       if g[0]["dmd_quantised"] in DMD_RUNGS else len(DMD_RUNGS))
        if len(rungs) < 2:
            continue
        vals = [(f["dmd_quantised"], float(s["_mem"].median())) for f, s in rungs]
        base = next((v for r, v in vals if r == "none"), None)
        bars = [(config_label({"dmd_quantised": r}, ["dmd_quantised"]).replace("+", "\n+"), v,
                 f"{num(v)} GB" + (f"\n{v / base:.2f}×" if base else "")) for r, v in vals]
        panels.append((f"{text(first['gpu_name'])} · {text(first['model'])} · {text(first['frames'])} latent frames · "
                       f"{text(first['precision'])}", bars))
    if not panels:
        return Plot("dmd", title, note="not enough data: needs ≥2 dmd_quantised rungs with peak memory on one "
                    "gpu/model/frames/precision")
    label = ("peak_allocated_gb (GB, torch allocator peak)" if measure == "peak_allocated_gb"
             else "host RSS (GB, CPU run: no device peak)")
    fig = _bar_panels(panels[:MAX_PANELS], label, "DMD memory ladder: frozen networks moved to NVFP4 one by one "
                      "(× = ratio to the unquantised rung)")
    return Plot("dmd", title, _save(fig, path), series=[len(b) for _, b in panels[:MAX_PANELS]],
                caption=f"{label}, per cell (median across cells of one rung); "
                "rungs: " + " → ".join(DMD_RUNGS) + ".")


def make_plots(ok: pd.DataFrame, out_dir: Path) -> list[Plot]:
    """All figures for the ok rows, PNGs under `out_dir`, notes where the data does not vary enough.

    Inference figures see only inference rows; train and dmd rows get their own bar charts (only when there are
    such rows). Precision and KV spellings are normalised first ('bfloat16' and 'bf16' are one configuration;
    training recipes keep 'fp8-emulated' apart from 'fp8'), and `gpu_name` is the device that ran the cell
    (manifest), not the hardware request of the axis.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    ok = ok.assign(gpu_name=ok["gpu_name"] if "gpu_name" in ok.columns else ok["hardware"])  # the device
    infer, train, dmd = split_workloads(ok)
    plots = []
    if infer.empty and not (train.empty and dmd.empty):
        plots.append(Plot("inference", "Inference figures", note="no ok inference cells: the ladder, memory, SP, "
                          "speed–quality and per-chunk figures need them"))
    else:
        infer = infer.assign(precision=infer["precision"].map(norm_precision), kv_quant=infer["kv_quant"].map(norm_kv))
        plots += [plot_ladder(infer, out_dir / "ladder.png"), plot_memory(infer, out_dir / "memory.png"),
                  plot_sp(infer, out_dir / "sp.png"), *plot_pareto(infer, out_dir),
                  plot_chunks(infer, out_dir / "chunks.png")]
        if "latent_rel_err_per_chunk" in infer.columns and infer["latent_rel_err_per_chunk"].notna().any():
            plots.append(plot_chunk_error(infer, out_dir / "chunk_error.png"))
    if not train.empty:
        train = train.assign(precision=train["precision"].map(norm_recipe),
                             train_layout=train["train_layout"].map(norm_layout),
                             error_recycling=train["error_recycling"].map(flag))
        plots.append(plot_train(train, out_dir / "train.png"))
    if not dmd.empty:
        dmd = dmd.assign(precision=dmd["precision"].map(norm_recipe), dmd_quantised=dmd["dmd_quantised"].map(norm_rung))
        plots.append(plot_dmd(dmd, out_dir / "dmd.png"))
    return plots
