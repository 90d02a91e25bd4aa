"""Run-to-run spread of a timed metric: the median over repeats and an interval around it.

A single timing on a shared, noisy GPU cannot tell a 1 % change from noise, so a cell may repeat its timed run
(`repeats`); every timed metric then reports the median of the runs and an interval. Few runs give the min–max range
(a bootstrap over 2–4 values says nothing more), five or more a percentile-bootstrap confidence interval of the
median. Verdicts that compare two spreads live with the comparison (report/), not here: this module is arithmetic.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

TIMED_METRICS = ("denoise_fps", "e2e_fps", "e2e_s", "first_chunk_latency_s", "chunk_ms_p10", "chunk_ms_median",
                 "chunk_ms_p90", "decode_fps", "decode_ms_median", "iter_s", "tokens_per_s", "switch_latency_s")
"""Row columns that vary run to run (the runner's schema re-exports them). Kept here, on the ground floor, so a
workload that repeats its own timed run (infer, vae_decode) aggregates the same set as the cell's process."""

BOOTSTRAP_MIN_RUNS = 5
"""From this many runs on, the interval is a bootstrap CI of the median; below, the min–max range."""
CONFIDENCE, RESAMPLES, SEED = 0.95, 2000, 0
"""The bootstrap's defaults, which every row's interval uses (REPEATS_RULE states them)."""

REPEATS_RULE = (
    "repeats = n timed runs of the cell in one process, after the same warm-up. Each timed metric m is the median of "
    "the n runs, m_repeats lists the runs in order and [m_lo, m_hi] is its interval: n = 1, no interval (a single "
    f"run); n = 2 to {BOOTSTRAP_MIN_RUNS - 1}, the min and max of the runs; n >= {BOOTSTRAP_MIN_RUNS}, the "
    f"{100 * CONFIDENCE:g} % percentile-bootstrap confidence interval of the median ({RESAMPLES} resamples of the n "
    f"sorted runs drawn with replacement by numpy's default_rng({SEED}); the {50 * (1 - CONFIDENCE):g}th and "
    f"{100 - 50 * (1 - CONFIDENCE):g}th percentiles of the resampled medians, never excluding the median). A metric "
    "missing or not finite in any run keeps the first run's value and has no interval. Every other column (memory, "
    "quality, fidelity, artifacts) is the first run's.")
"""timing_definition["repeats"] of a row whose cell ran more than once."""


@dataclass(frozen=True)
class Spread:
    """A median with its interval over n runs; `rule` says how the interval was made."""

    median: float
    lo: float
    hi: float
    n: int
    rule: str


def spread(values: Sequence[float], *, name: str = "value", confidence: float = CONFIDENCE,
           resamples: int = RESAMPLES, seed: int = SEED) -> Spread:
    """Median and interval of `values` (module docstring: min–max below 5 runs, bootstrap CI from 5). The bootstrap
    draws from a seeded Generator over the sorted values, so the same values in any order give the same interval.
    `name` (the metric) is only for error messages: NaN, inf or a missing value is refused rather than dropped,
    since a run that produced no number is a failure to report, not a sample."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"{name}: confidence={confidence} must lie strictly between 0 and 1 (e.g. 0.95)")
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 1:
        raise ValueError(f"{name}: resamples={resamples!r} must be an integer ≥ 1 (e.g. 2000)")
    values = list(values)
    if not values:
        raise ValueError(f"{name}: no values: a median and interval need at least one run")
    bad = [i for i, v in enumerate(values) if not is_finite_number(v)]
    if bad:
        raise ValueError(f"{name}: runs {bad} are not finite numbers ({[values[i] for i in bad]!r} in {values!r}); "
                         "a median and interval need a finite value from every run")
    x = np.asarray(values, dtype=np.float64)
    n, med = len(x), float(np.median(x))
    if n == 1:
        return Spread(med, med, med, 1, "single run")
    if n < BOOTSTRAP_MIN_RUNS:
        return Spread(med, float(x.min()), float(x.max()), n, f"min–max of {n} runs")
    rng = np.random.default_rng(seed)  # resampling the sorted runs: the same runs in any order, the same interval
    medians = np.median(np.sort(x)[rng.integers(0, n, size=(resamples, n))], axis=1)
    tail = 100.0 * (1.0 - confidence) / 2.0
    lo, hi = np.percentile(medians, [tail, 100.0 - tail])
    rule = f"{100 * confidence:g} % bootstrap CI of the median of {n} runs ({resamples} resamples, seed {seed})"
    return Spread(med, min(float(lo), med), max(float(hi), med), n, rule)


def is_finite_number(v: Any) -> bool:
    """A real, finite number (bools and None are not)."""
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def aggregate_repeats(per_repeat: list[dict[str, Any]], timed: Iterable[str]) -> dict[str, Any]:
    """One row's metrics from the metrics of n runs: each timed key m becomes the median with m_lo, m_hi and the list
    m_repeats; every other key (lists, memory, quality, artifacts, timing_definition) is the first run's, and
    timing_definition["repeats"] states the rule. A timed key missing, None or not finite in any run stays the first
    run's value without interval (a workload that times a metric only sometimes must not fail the cell). One run:
    the first dict, unchanged."""
    if not per_repeat:
        raise ValueError("aggregate_repeats: no runs to aggregate (per_repeat is empty)")
    first = per_repeat[0]
    out = dict(first)
    if len(per_repeat) == 1 or not first:  # a single run, or an SP rank other than the first (it reports nothing)
        return out
    for m in timed:
        values = [r.get(m) for r in per_repeat]
        if not all(is_finite_number(v) for v in values):
            continue
        s = spread(values, name=m)
        out[m], out[f"{m}_lo"], out[f"{m}_hi"] = s.median, s.lo, s.hi
        out[f"{m}_repeats"] = [float(v) for v in values]
    definition = first.get("timing_definition")
    out["timing_definition"] = {**(definition if isinstance(definition, dict) else {}), "repeats": REPEATS_RULE}
    return out


def row_interval(row: Any, metric: str) -> tuple[float, float] | None:
    """A result row's interval of a repeated metric (`<metric>_lo`, `<metric>_hi`, as `aggregate_repeats` writes
    them), or None for a single run or a missing, non-finite or inverted pair. `row`: a dict or a pandas row."""
    try:
        lo, hi = float(row.get(f"{metric}_lo")), float(row.get(f"{metric}_hi"))
    except (TypeError, ValueError):
        return None
    return (lo, hi) if math.isfinite(lo) and math.isfinite(hi) and lo <= hi else None
