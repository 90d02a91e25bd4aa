"""Report figures (PNG, matplotlib's Agg canvas through `Figure`, no pyplot global state).

Each figure is drawn only when the data varies along what the figure is about; otherwise it returns a
one-line "not enough data" note, because an empty or one-point chart reads like a result. Axis labels
and titles name the timing definition the plotted column follows (spec 05).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from longlive.report.compare import DECODE_ORDER, KV_ORDER, PRECISION_ORDER, is_missing, norm_kv, norm_precision

SPEED_DEFS = {
    "denoise_fps": "denoise loop: device events, warm-up chunks dropped; excl. text encode, load, VAE decode",
    "e2e_fps": "end to end: first chunk's noise to last decoded frame in host memory; decode included",
}
SPEED_SHORT = {"denoise_fps": "denoise FPS (chunk loop only)", "e2e_fps": "E2E FPS (noise → decoded frames)"}
LABEL_AXES = ("precision", "kv_quant", "exchange", "decode", "steps", "sp")
QUALITY = (
    ("vbench_total", True, "VBench total"),
    ("psnr_vs_ref", True, "PSNR vs reference run (dB)"),
    ("temporal_flickering", True, "temporal flickering score (higher = steadier)"),
    ("latent_rel_err_vs_ref", False, "latent relative error vs reference (lower = better)"),
)
MAX_PANELS = 6
MAX_CONFIGS = 24


@dataclass
class Plot:
    """A figure written to `file`, or a `note` saying why it was not drawn."""

    key: str
    title: str
    file: Path | None = None
    note: str | None = None
    caption: str = ""


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
        "frames": lambda v: f"{v} latent frames",
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
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight", format="png", metadata={"Software": None})
    return path


def plot_ladder(ok: pd.DataFrame, path: Path) -> Plot:
    """(a) Table 3 ladder: denoise and E2E FPS side by side per configuration, one panel per gpu/model."""
    title = "Inference ladder: denoise FPS and E2E FPS per configuration"
    d = ok[ok["denoise_fps"].notna() | ok["e2e_fps"].notna()]
    axes = varying(d, LABEL_AXES)
    panels = []
    for first, sub in groups(d, ["gpu", "model"]):
        cfgs = [(f, s["denoise_fps"].median(), s["e2e_fps"].median(), len(s)) for f, s in groups(sub, axes)]
        if len(cfgs) >= 2:
            panels.append((f"{text(first['gpu'])} · {text(first['model'])}", cfgs[:MAX_CONFIGS]))
    if not panels:
        return Plot("ladder", title, note="not enough data: needs ≥2 configurations (differing in precision, "
                    "kv_quant, decode, steps or sp) with denoise_fps or e2e_fps on one gpu/model")
    panels = panels[:MAX_PANELS]
    width = max(8.0, 1.0 * max(len(c) for _, c in panels) + 3)
    fig = Figure(figsize=(width, 4.2 * len(panels)))
    for i, (name, cfgs) in enumerate(panels):
        ax = fig.add_subplot(len(panels), 1, i + 1)
        xs = list(range(len(cfgs)))
        for off, col, idx in ((-0.2, "denoise_fps", 1), (0.2, "e2e_fps", 2)):
            vals = [c[idx] for c in cfgs]
            bars = ax.bar([x + off for x in xs], [0 if is_missing(v) else v for v in vals], width=0.4,
                          label=SPEED_SHORT[col])
            ax.bar_label(bars, labels=[num(v) for v in vals], fontsize=8, padding=2)
        ax.set_xticks(xs, [config_label(c[0], axes, "\n") + (f"\n(median of {c[3]})" if c[3] > 1 else "")
                           for c in cfgs], fontsize=8)
        ax.set_ylabel("frames per second")
        ax.set_title(name, fontsize=10)
        ax.margins(y=0.25)
        ax.legend(fontsize=8, loc="upper left", ncols=2)
    fig.suptitle("Table 3 ladder: denoise_fps (denoise loop only) and e2e_fps (noise → decoded frames on host)",
                 fontsize=11)
    return Plot("ladder", title, _save(fig, path),
                caption="denoise_fps: " + SPEED_DEFS["denoise_fps"] + ". e2e_fps: " + SPEED_DEFS["e2e_fps"] + ".")


def plot_memory(ok: pd.DataFrame, path: Path) -> Plot:
    """(b) Peak memory against video length, one line per configuration: what a longer video costs."""
    mem = next((c for c in ("peak_allocated_gb", "device_used_gb", "peak_reserved_gb") if ok[c].notna().any()), None)
    if mem is None:
        return Plot("memory", "Peak memory vs video length", note="not enough data: no ok cell records peak memory "
                    "(peak_allocated_gb, device_used_gb or peak_reserved_gb; CPU runs have none)")
    xcol = "video_seconds" if ok["video_seconds"].notna().any() else "frames"
    title = f"Peak memory ({mem}) vs video length"
    d = ok[ok[mem].notna() & ok[xcol].notna()]
    by = ["gpu", "model", *varying(d, LABEL_AXES)]
    lines = [(f, s) for f, s in groups(d, by) if s[xcol].nunique() >= 2]
    if not lines:
        return Plot("memory", title, note=f"not enough data: needs ≥2 video lengths ({xcol}) for one configuration "
                    f"with {mem}")
    label_axes = varying(pd.DataFrame([f for f, _ in lines]), by) or by[2:]
    fig = Figure(figsize=(8, 4.8))
    ax = fig.add_subplot()
    for f, s in lines[:MAX_CONFIGS]:
        pts = s.groupby(xcol)[mem].max().sort_index()
        ax.plot(pts.index.astype(float), pts.values, marker="o", label=config_label(f, label_axes))
    ax.set_xlabel("video length (s)" if xcol == "video_seconds" else "latent frames")
    ax.set_ylabel(f"{mem} (GB, {'torch allocator peak' if mem.startswith('peak') else 'NVML device used'})")
    ax.set_ylim(bottom=0)
    ax.set_title(title + " — max over cells at one length", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return Plot("memory", title, _save(fig, path), caption=f"{mem}: peak during the run, per cell (max over ranks).")


def plot_sp(ok: pd.DataFrame, path: Path) -> Plot:
    """(c) SP scaling of the denoise loop against ideal linear scaling, efficiency annotated."""
    title = "SP scaling: denoise_fps vs sp"
    d = ok[ok["denoise_fps"].notna() & ok["sp"].notna()]
    if d["sp"].nunique() < 2:
        return Plot("sp", title, note="not enough data: needs ≥2 values of sp with denoise_fps")
    by = ["gpu", "model", "frames", *varying(d, [a for a in LABEL_AXES if a != "sp"])]
    lines = [(f, s) for f, s in groups(d, by) if s["sp"].nunique() >= 2]
    if not lines:
        return Plot("sp", title, note="not enough data: needs ≥2 values of sp within one configuration")
    label_axes = varying(pd.DataFrame([f for f, _ in lines]), by) or by[2:]
    fig = Figure(figsize=(8, 4.8))
    ax = fig.add_subplot()
    all_sp: set[int] = set()
    for f, s in lines[:MAX_CONFIGS]:
        pts = s.groupby("sp")["denoise_fps"].median().sort_index()
        sp = [int(v) for v in pts.index]
        all_sp.update(sp)
        (line,) = ax.plot(sp, pts.values, marker="o", label=config_label(f, label_axes))
        ideal = [pts.values[0] * k / sp[0] for k in sp]
        ax.plot(sp, ideal, ls="--", color=line.get_color(), alpha=0.6)
        for k, v, ref in zip(sp[1:], pts.values[1:], ideal[1:], strict=True):
            ax.annotate(f"{v / ref:.0%}", (k, v), textcoords="offset points", xytext=(4, -12), fontsize=8)
    ax.set_xticks(sorted(all_sp))
    ax.set_xlabel("sp (GPUs in the sequence-parallel group)")
    ax.set_ylabel("denoise_fps (frames / s, chunk loop only)")
    ax.set_title(title + " — dashed: ideal linear scaling; % = efficiency", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return Plot("sp", title, _save(fig, path), caption="efficiency = denoise_fps ÷ (denoise_fps at the smallest sp × "
                "sp ratio). denoise_fps: " + SPEED_DEFS["denoise_fps"] + ".")


def pareto_mask(x: list[float], y: list[float], higher_is_better: bool) -> list[bool]:
    """Points no other point beats on both speed (higher) and quality."""
    sign = 1.0 if higher_is_better else -1.0
    order = sorted(range(len(x)), key=lambda i: (-x[i], -sign * y[i]))
    best, mask = -math.inf, [False] * len(x)
    for i in order:
        if sign * y[i] > best:
            mask[i], best = True, sign * y[i]
    return mask


def plot_pareto(ok: pd.DataFrame, out_dir: Path) -> list[Plot]:
    """(d) Speed against each recorded quality column, the Pareto front highlighted."""
    plots = []
    for q, higher, qlabel in QUALITY:
        finite = ok[q].map(lambda v: not is_missing(v) and math.isfinite(v))  # PSNR of the reference itself is inf
        speed = next((s for s in ("denoise_fps", "e2e_fps") if (ok[s].notna() & finite).sum() >= 2), None)
        if speed is None:
            continue
        d = ok[ok[speed].notna() & finite]
        left_out = int((ok[speed].notna() & ok[q].notna() & ~finite).sum())
        axes = varying(d, ["gpu", "model", *LABEL_AXES, "frames"])
        x, y = d[speed].astype(float).tolist(), d[q].astype(float).tolist()
        mask = pareto_mask(x, y, higher)
        fig = Figure(figsize=(8, 5))
        ax = fig.add_subplot()
        ax.scatter(x, y, color="0.6", label="cells")
        front = sorted((xi, yi) for xi, yi, m in zip(x, y, mask, strict=True) if m)
        ax.plot([p[0] for p in front], [p[1] for p in front], "-o", color="tab:red", label="Pareto front")
        rank = {i: k for k, i in enumerate(sorted(range(len(x)), key=lambda i: (x[i], y[i])))}
        for i, ((_, r), xi, yi, m) in enumerate(zip(d.iterrows(), x, y, mask, strict=True)):
            ax.annotate(config_label(r, axes), (xi, yi), textcoords="offset points", fontsize=7,  # alternate sides
                        xytext=(5, 4 if rank[i] % 2 == 0 else -11), color="black" if m else "0.45")
        ax.set_xlabel(f"{speed}: {SPEED_SHORT[speed]}, frames / s")
        ax.set_ylabel(qlabel)
        title = f"Speed–quality: {q} vs {speed}"
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        plots.append(Plot(f"pareto_{q}", title, _save(fig, out_dir / f"pareto_{q}.png"),
                          caption=f"{speed}: {SPEED_DEFS[speed]}. Front: no other cell is both faster and better."
                          + (f" {left_out} cell(s) with a non-finite {q} (e.g. the reference run itself) left out."
                             if left_out else "")))
    if not plots:
        plots.append(Plot("pareto", "Speed–quality Pareto", note="not enough data: needs ≥2 ok cells with both a "
                          "speed (denoise_fps or e2e_fps) and a quality column (" + ", ".join(q[0] for q in QUALITY)
                          + ")"))
    return plots


def plot_chunks(ok: pd.DataFrame, path: Path) -> Plot:
    """(e) Per-chunk denoise time: median with p10-p90 bars, every recorded chunk (incl. warm-up) as dots."""
    title = "Per-chunk denoise time (chunk_ms p10 / median / p90)"
    d = ok[ok["chunk_ms_median"].notna()]
    axes = varying(d, ["gpu", "model", *LABEL_AXES, "frames"])
    cfgs = groups(d, axes)[:MAX_CONFIGS]
    if len(cfgs) < 2:
        return Plot("chunks", title, note="not enough data: needs ≥2 configurations with per-chunk timings "
                    "(chunk_ms_median)")
    fig = Figure(figsize=(max(8.0, 0.9 * len(cfgs) + 3), 4.8))
    ax = fig.add_subplot()
    for i, (_, s) in enumerate(cfgs):
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
            ax.scatter([i + 0.15] * len(raw), raw, s=10, color="0.5",
                       label="every chunk incl. warm-up" if i == 0 else None)
    ax.set_xticks(range(len(cfgs)), [config_label(f, axes, "\n") for f, _ in cfgs], fontsize=8)
    ax.set_ylabel("ms per chunk (device events)")
    ax.set_ylim(bottom=0)
    ax.set_title(title + " — denoise loop timing", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    return Plot("chunks", title, _save(fig, path), caption="chunk_ms_*: device time of one chunk of the denoise loop "
                "(all steps, the clean re-run and KV update); percentiles over steady chunks.")


def make_plots(ok: pd.DataFrame, out_dir: Path) -> list[Plot]:
    """All figures for the ok rows, PNGs under `out_dir`, notes where the data does not vary enough.

    Precision and KV spellings are normalised first ('bfloat16' and 'bf16' are one configuration), and `gpu`
    is the device that ran the cell (manifest), not the hardware request of the axis.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    ok = ok.assign(precision=ok["precision"].map(norm_precision), kv_quant=ok["kv_quant"].map(norm_kv),
                   gpu=ok["gpu_name"] if "gpu_name" in ok.columns else ok["gpu"])  # the device, not the request
    return [plot_ladder(ok, out_dir / "ladder.png"), plot_memory(ok, out_dir / "memory.png"),
            plot_sp(ok, out_dir / "sp.png"), *plot_pareto(ok, out_dir), plot_chunks(ok, out_dir / "chunks.png")]
