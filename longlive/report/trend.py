"""The trend view of `longlive compare A B C ...`: each metric over several result sets (e.g. one per commit).

One panel per metric, one line per configuration matched between the baseline (the first set) and the candidate
(the last), x = the sets in the order given (labelled folder@commit), error bars from `<m>_lo` / `<m>_hi` where the
rows were repeated. A configuration missing from a middle set leaves a gap in its line, not a fake point.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from longlive.measure.spread import row_interval
from longlive.output import atomic_path
from longlive.report.regress import Comparison, ResultSet, direction, number, rows_by_key

MAX_PANELS = 12
MAX_LEGEND = 12
TREND_COLUMNS = ("set", "set_label", "cell", "metric", "value", "lo", "hi")


def trend_table(sets: list[ResultSet], cmp: Comparison, max_panels: int = MAX_PANELS) -> tuple[pd.DataFrame, str]:
    """Long table (one row per set × matched configuration × metric with a number) and a note naming the metrics
    left out of the plot: at most `max_panels` metrics, only those with a good direction (unless none has one)."""
    directed = [m for m in cmp.metrics if direction(m) is not None]
    plain = [m for m in cmp.metrics if direction(m) is None] if directed else []
    ordered = directed or list(cmp.metrics)  # a metric without a direction only when nothing else was compared
    metrics, dropped = ordered[:max_panels], ordered[max_panels:]
    cells = [(c.key, c.label) for c in cmp.matching.cells]
    records = []
    for i, rs in enumerate(sets):
        by_key, _ = rows_by_key(rs)
        for key, label in cells:
            row = by_key.get(key)
            if row is None:
                continue
            for m in metrics:
                v = number(row.get(m))
                if v is None or math.isinf(v):
                    continue
                iv = row_interval(row, m)
                records.append((i, rs.label, label, m, v, iv[0] if iv else None, iv[1] if iv else None))
    table = pd.DataFrame.from_records(records, columns=list(TREND_COLUMNS))
    notes = [f"{len(dropped)} more metric(s) not plotted ({', '.join(dropped)}): choose with --metrics"
             ] if dropped else []
    if plain:
        notes.append(f"not plotted, no good direction: {', '.join(plain)}")
    if len(cells) > MAX_LEGEND:
        notes.append(f"{len(cells)} configurations: too many to label the lines; --metrics and fewer cells help")
    return table, "; ".join(notes)


def plot_trend(table: pd.DataFrame, labels: list[str], path: Path) -> Path:
    """Draw `table` (trend_table's) as one panel per metric and write a PNG through a temp file."""
    if table.empty:
        raise ValueError("no metric has a finite number in the matched configurations: nothing to plot")
    metrics = list(dict.fromkeys(table["metric"]))
    cells = list(dict.fromkeys(table["cell"]))
    ncols = min(3, len(metrics))
    nrows = math.ceil(len(metrics) / ncols)
    fig = Figure(figsize=(4.6 * ncols, 3.4 * nrows + 0.4 + 0.25 * min(len(cells), MAX_LEGEND)), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    colours = [f"C{i % 10}" for i in range(len(cells))]
    for ax, metric in zip(axes, metrics, strict=False):
        sub = table[table["metric"] == metric]
        for cell, colour in zip(cells, colours, strict=True):
            line = sub[sub["cell"] == cell].set_index("set").reindex(range(len(labels)))
            y = line["value"].astype("float64")
            lo = (y - line["lo"].astype("float64")).fillna(0).clip(lower=0)
            hi = (line["hi"].astype("float64") - y).fillna(0).clip(lower=0)
            ax.errorbar(range(len(labels)), y, yerr=[lo, hi], fmt="o-", color=colour, capsize=3, ms=4, lw=1.2,
                        label=cell)
        arrow = {True: " (higher is better ↑)", False: " (lower is better ↓)"}.get(direction(metric), "")
        ax.set_title(metric + arrow, fontsize=9)
        ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right", fontsize=7)
        ax.tick_params(axis="y", labelsize=7)
        ax.grid(alpha=0.3)
    for ax in axes[len(metrics):]:
        ax.set_visible(False)
    handles, names = axes[0].get_legend_handles_labels()
    if len(cells) <= MAX_LEGEND:
        fig.legend(handles, names, loc="outside lower center", ncols=min(3, len(cells)), fontsize=7, frameon=False)
    fig.suptitle("metrics over the result sets (first = baseline, last = candidate; bars: repeat intervals)",
                 fontsize=10)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png", metadata={"Software": None})
    return path
