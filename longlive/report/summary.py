"""The report's Summary: what a reader asks first.

Per device and model, the fastest configuration that passes its gate (and a faster one that fails it), then how each
axis moves speed, memory and quality (`axis_effects`: median ratios over pairs of cells that differ in that axis
alone), then the cell counts and where the rows come from. Kept apart from build.py's other sections because it is
the one part of the report that ranks and compares configurations rather than listing them.
"""

from __future__ import annotations

import datetime as _dt
import math
from typing import Any

import numpy as np
import pandas as pd

from longlive.measure.spread import row_interval
from longlive.report.compare import (
    DECODE_ORDER,
    DMD_RUNGS,
    KV_ORDER,
    LAYOUT_ORDER,
    RECIPE_ORDER,
    flag,
    is_missing,
    memory_gb,
    norm_kv,
    norm_layout,
    norm_recipe,
    norm_rung,
)
from longlive.report.document import INTERVAL_MARK, Doc, HeadItem
from longlive.report.plots import QUALITY, gate_failed, num, text, varying
from longlive.report.regress import direction, direction_text
from longlive.runner.schema import AXES

SPEED_METRICS = ("denoise_fps", "e2e_fps")
"""Inference speed, higher is faster: the first one a row set records is what the summary ranks by."""
TRAINING_AXES = ("dp", "train_layout", "error_recycling", "dmd_quantised")
"""Axes only the train / dmd workloads read: never columns of the inference table (a default False there would
otherwise show as a column of 'no')."""
INFER_AXES = tuple(a for a in AXES if a not in TRAINING_AXES)
TRAIN_EFFECT_AXES = tuple(a for a in AXES if a != "dmd_quantised")
PAIR_KEYS = (*AXES, "frames", "seed", "gpu_name", "workload", "experiment")
"""Two rows pair for an axis's effect when they agree on every one of these but that axis."""


# --- over the rows; build.py's tables use these too -------------------------------------------------------------------

def repeats_rule(rows: pd.DataFrame) -> str | None:
    """The interval rule the rows record (timing_definition['repeats']), distinct texts joined; None without one."""
    seen = dict.fromkeys(text(td["repeats"]) for td in rows["timing_definition"]
                         if isinstance(td, dict) and not is_missing(td.get("repeats")))
    return " | ".join(seen) or None


def _gated(df: pd.DataFrame) -> bool:
    """Whether any row carries a gate verdict or a declared gate (helper columns of `apply_gates`)."""
    return any(c in df.columns and df[c].notna().any() for c in ("gate_passed", "gate_name"))


# --- the summary: the fastest configuration that passes its gate, and what each axis does ---------------------------

def _overrides(r: pd.Series, axes: list[str]) -> str:
    """A configuration as the overrides that select it ('precision=bf16 kv_quant=nvfp4 steps=2')."""
    parts = [f"{a}={text(flag(r[a]) if a == 'error_recycling' else r[a])}" for a in axes]
    return " ".join(parts) if parts else "the only configuration"


def _with_spread(r: pd.Series, m: str) -> str:
    span = row_interval(r, m)
    return f"{num(float(r[m]))}" + (f" [{num(span[0])}–{num(span[1])}]" if span else "")


def _facts(r: pd.Series, speed: str, memory: str | None, quality: str | None) -> str:
    """The speed (with its interval), the interactivity, memory and quality of one row, as one line."""
    parts = [f"{speed} {_with_spread(r, speed)}"]
    for m in ("e2e_fps", "switch_latency_s") if speed == "denoise_fps" else ("switch_latency_s",):
        if m in r.index and not is_missing(r[m]):
            parts.append(f"{m} {_with_spread(r, m)}")
    if memory and not is_missing(_memory_value(r, memory)):
        parts.append(f"{memory} {num(_memory_value(r, memory))}")
    if quality and not is_missing(r.get(quality)) and math.isfinite(float(r[quality])):
        parts.append(f"{quality} {num(float(r[quality]))}")
    return " · ".join(parts)


def _memory_metric(rows: pd.DataFrame) -> str | None:
    """The peak-memory measure the rows record: the torch allocator peak, NVML's device use, else host RSS."""
    for c in ("peak_allocated_gb", "device_used_gb"):
        if c in rows.columns and rows[c].notna().any():
            return c
    return "rss_gb" if any(m is not None and m[1] == "rss_gb" for m in (memory_gb(r) for _, r in rows.iterrows())) \
        else None


def _memory_value(r: pd.Series, metric: str) -> float:
    if metric == "rss_gb":
        m = memory_gb(r)
        return m[0] if m is not None and m[1] == "rss_gb" else math.nan
    v = r.get(metric)
    return math.nan if is_missing(v) else float(v)


def _quality_metric(rows: pd.DataFrame) -> str | None:
    """The main quality column: of the report's quality metrics, the one finite in the most rows (VBench first)."""
    best, count = None, 1
    for q, _, _ in QUALITY:
        if q in rows.columns:
            n = int(pd.to_numeric(rows[q], errors="coerce").map(lambda v: math.isfinite(v) if v == v else False).sum())
            if n > count:
                best, count = q, n
    return best


def _axis_order(axis: str, values: list[Any]) -> list[Any]:
    """An axis's values, its baseline first: the unquantised / widest / smallest-parallel setting, as in the
    paper's ladders (steps: most first), else the order the rows list them."""
    orders = {"precision": lambda v: (RECIPE_ORDER.index(norm_recipe(v)) if norm_recipe(v) in RECIPE_ORDER
                                      else len(RECIPE_ORDER)),
              "kv_quant": lambda v: KV_ORDER.index(norm_kv(v)) if norm_kv(v) in KV_ORDER else len(KV_ORDER),
              "exchange": lambda v: KV_ORDER.index(text(v)) if text(v) in KV_ORDER else len(KV_ORDER),
              "decode": lambda v: DECODE_ORDER.index(text(v)) if text(v) in DECODE_ORDER else len(DECODE_ORDER),
              "train_layout": lambda v: LAYOUT_ORDER.index(norm_layout(v)) if norm_layout(v) in LAYOUT_ORDER else 9,
              "dmd_quantised": lambda v: DMD_RUNGS.index(norm_rung(v)) if norm_rung(v) in DMD_RUNGS else 9,
              "error_recycling": lambda v: int(bool(flag(v))),
              "steps": lambda v: -float(v), "sp": float, "dp": float}
    first = {text(v): i for i, v in enumerate(values)}
    key = orders.get(axis)

    def rank(v: Any) -> tuple:
        if is_missing(v):  # a row that does not set the axis: after every value that does
            return (2, 0, first[text(v)])
        if key is None:
            return (0, text(v) != "none", first[text(v)])
        try:
            return (0, key(v), first[text(v)])
        except (TypeError, ValueError):
            return (1, 0, first[text(v)])

    return sorted(values, key=rank)


def axis_effects(rows: pd.DataFrame, axes: tuple[str, ...] | list[str], metrics: dict[str, str]) -> pd.DataFrame:
    """How each varying axis moves each metric: for every value of the axis other than its baseline (the first in
    `_axis_order`), the median over pairs of rows that differ only in that axis (PAIR_KEYS) of value ÷ baseline.
    `metrics` maps a column label to a metric ('rss_gb' is host RSS); one row per axis value, with `pairs`."""
    keys = [c for c in PAIR_KEYS if c in rows.columns]
    values = pd.DataFrame({label: [_memory_value(r, m) for _, r in rows.iterrows()] if m == "rss_gb"
                           else pd.to_numeric(rows[m], errors="coerce") if m in rows.columns else math.nan
                           for label, m in metrics.items()}, index=rows.index, dtype="float64")
    as_text = rows[keys].map(text) if keys else pd.DataFrame(index=rows.index)
    recs = []
    for axis in varying(rows, list(axes)):
        others = [c for c in keys if c != axis]
        ordered = _axis_order(axis, list(dict.fromkeys(rows[axis].tolist())))
        labels = [v for v in dict.fromkeys(text(v) for v in ordered) if v != "—"]  # unset: not a value to compare
        if len(labels) < 2:
            continue
        base = labels[0]
        cells: dict[tuple, dict[str, list]] = {}  # the other axes' values -> this axis's value -> row labels
        for i, k, v in zip(rows.index, as_text[others].itertuples(index=False, name=None), as_text[axis],
                           strict=True):
            cells.setdefault(k, {}).setdefault(v, []).append(i)
        for v in labels[1:]:
            pairs = [(per[base], per[v]) for per in cells.values() if base in per and v in per]
            if not pairs:
                continue
            rec = {"axis": axis, "value": v, "vs": base, "pairs": len(pairs)}
            for label in metrics:
                ratios = []
                for a_idx, b_idx in pairs:
                    a, b = float(values.loc[a_idx, label].median()), float(values.loc[b_idx, label].median())
                    if math.isfinite(a) and math.isfinite(b) and a != 0:
                        ratios.append(b / a)
                rec[label] = float(np.median(ratios)) if ratios else math.nan
            recs.append(rec)
    return pd.DataFrame(recs, columns=["axis", "value", "vs", "pairs", *metrics])


def _ratio_text(v: float) -> str:
    """'1.84×', or three decimals near 1 where two would round a real change to '1.00×'."""
    if is_missing(v) or not math.isfinite(v):
        return "—"
    return f"{v:.3f}×" if abs(v - 1) < 0.05 else f"{v:.2f}×"


def _fastest_items(rows: pd.DataFrame, what: str, speed: str, higher: bool) -> list[HeadItem]:
    """Per device and model: the fastest configuration that passes its gate (or the fastest, where no gate is
    declared), and the fastest overall when that one fails its gate."""
    items = []
    rows = rows[rows[speed].notna()]
    memory, quality = _memory_metric(rows), _quality_metric(rows)
    axes = varying(rows, [*(INFER_AXES if what == "inference" else TRAIN_EFFECT_AXES), "frames"])
    groups = list(rows.groupby([rows["gpu_name"].map(text), rows["model"].map(text)], sort=True))
    for (gpu, model), g in groups:
        where = f" ({model} on {gpu})"
        order = g.sort_values(speed, ascending=not higher, kind="stable")
        best = order.iloc[0]
        if _gated(g):
            passing = order[order["gate_passed"].map(lambda v: not is_missing(v) and bool(v))] \
                if "gate_passed" in order.columns else order.iloc[:0]
            if passing.empty:
                items.append(HeadItem(f"Fastest {what} passing its gate{where}", "none passes: see Gates", "fail"))
            else:
                p = passing.iloc[0]
                items.append(HeadItem(f"Fastest {what} passing its gate{where}",
                                      f"{_overrides(p, axes)} — {_facts(p, speed, memory, quality)}"
                                      f" (gate {text(p.get('gate_name'))}: pass)", "pass"))
            if gate_failed(best):
                items.append(HeadItem(f"Faster, but fails its gate{where}",
                                      f"{_overrides(best, axes)} — {_facts(best, speed, memory, quality)} ✗ "
                                      f"({text(best.get('gate_reason'))})", "fail"))
            elif is_missing(best.get("gate_passed")):
                judged = not is_missing(best.get("gate_name"))
                label = "Faster, gate undecided" if judged else "Faster, outside every gate's family"
                why = text(best.get("gate_reason")) if judged else "no gate judges it"
                items.append(HeadItem(f"{label}{where}", f"{_overrides(best, axes)} — "
                                      f"{_facts(best, speed, memory, quality)} ({why})", "undecided"))
        else:
            items.append(HeadItem(f"Fastest {what}{where}", f"{_overrides(best, axes)} — "
                                  f"{_facts(best, speed, memory, quality)} (no gate declared: speed alone)"))
    return items


def _effects_table(doc: Doc, rows: pd.DataFrame, axes: tuple[str, ...], speed: str, html_id: str, what: str) -> None:
    memory, quality = _memory_metric(rows), _quality_metric(rows)
    metrics = {f"× {speed}": speed}
    if memory:
        metrics[f"× {memory}"] = memory
    if quality:
        metrics[f"× {quality}"] = quality
    eff = axis_effects(rows, axes, metrics)
    if eff.empty:
        return
    doc.para(f"How each axis moves {what} speed, memory and quality: for each value of an axis, the median over pairs "
             f"of {what} cells that differ only in that axis of value ÷ the axis's first value ('vs'). "
             f"{speed} {'below' if speed == 'iter_s' else 'above'} 1× is faster"
             + (f"; {memory} above 1× is more memory" if memory else "")
             + (f"; {quality}: {direction_text(direction(quality))}" if quality else "")
             + ".", cls="meta")
    t = eff.copy()
    for label in metrics:
        t[label] = t[label].map(_ratio_text)
    doc.table(t, html_id=html_id)


def _summary(doc: Doc, df: pd.DataFrame, sources: list[str], infer: pd.DataFrame, train: pd.DataFrame) -> None:
    """What a reader asks first, then the counts and where the rows come from."""
    doc.heading(2, "Summary")
    items: list[HeadItem] = []
    speed = next((s for s in SPEED_METRICS if s in infer.columns and infer[s].notna().any()), None)
    if speed:
        items += _fastest_items(infer, "inference", speed, True)
    if "iter_s" in train.columns and train["iter_s"].notna().any():
        items += _fastest_items(train, "training", "iter_s", False)
    counts = df["status"].value_counts()
    bad = int(counts.get("failed", 0) + counts.get("skipped", 0))
    items.append(HeadItem("Cells", f"{len(df)}: {counts.get('ok', 0)} ok" + (
        f", {counts.get('failed', 0)} failed, {counts.get('skipped', 0)} skipped (see Failed and skipped cells)"
        if bad else ", none failed or skipped"), "fail" if counts.get("failed", 0) else ""))
    if _gated(df):
        judged = df[df["gate_name"].notna()] if "gate_name" in df.columns else df.iloc[:0]
        verdicts = [None if is_missing(v) else bool(v) for v in judged.get("gate_passed", [])]
        items.append(HeadItem("Gates", f"{len(judged)} cells judged: {verdicts.count(True)} pass, "
                              f"{verdicts.count(False)} fail, {verdicts.count(None)} undecided (see Gates)",
                              "fail" if False in verdicts else ""))
    if repeats_rule(df):
        reps = pd.to_numeric(df["repeats"], errors="coerce") if "repeats" in df.columns else pd.Series(dtype=float)
        items.append(HeadItem("Spread", f"timed numbers read 'median {INTERVAL_MARK}' over the cell's repeats "
                              f"({int((reps > 1).sum())} cells ran more than once); the interval's rule is stated "
                              "above the results table and under Timing definitions (repeats)"))
    doc.headline(items)
    if speed:
        _effects_table(doc, infer, INFER_AXES, speed, "effects-table", "inference")
    if "iter_s" in train.columns and train["iter_s"].notna().any():
        _effects_table(doc, train, TRAIN_EFFECT_AXES, "iter_s", "train-effects-table", "training")
    _summary_counts(doc, df, sources)


def _summary_counts(doc: Doc, df: pd.DataFrame, sources: list[str]) -> None:
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
