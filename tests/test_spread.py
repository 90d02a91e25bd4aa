"""Interval arithmetic of repeated runs (longlive.measure.spread): the median and its interval against float64
references computed independently, on fresh random values; ties, refusals and determinism."""

from __future__ import annotations

import math
import secrets
import statistics

import numpy as np
import pytest

from longlive.measure.spread import BOOTSTRAP_MIN_RUNS, REPEATS_RULE, Spread, spread


def fresh(n: int) -> tuple[list[float], int]:
    """n new random positive values (a different draw each test run) and the seed that made them, for messages."""
    seed = secrets.randbits(32)
    return list(np.random.default_rng(seed).lognormal(mean=3.0, sigma=0.3, size=n)), seed


def percentile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default definition), written out in plain Python."""
    pos = (len(sorted_values) - 1) * q / 100.0
    lo, frac = int(math.floor(pos)), pos - math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * frac


def reference_bootstrap(values: list[float], confidence: float, resamples: int, seed: int) -> tuple[float, float]:
    """The same resample indices into the sorted runs, medians by `statistics.median` row by row, percentiles by
    hand."""
    values = sorted(values)
    idx = np.random.default_rng(seed).integers(0, len(values), size=(resamples, len(values)))
    medians = sorted(statistics.median(values[i] for i in row) for row in idx.tolist())
    tail = 100.0 * (1.0 - confidence) / 2.0
    return percentile(medians, tail), percentile(medians, 100.0 - tail)


def test_one_run_has_no_width():
    values, seed = fresh(1)
    s = spread(values)
    assert s == Spread(values[0], values[0], values[0], 1, "single run"), seed


@pytest.mark.parametrize("n", [2, 3, 4])
def test_few_runs_give_the_min_max_range(n):
    values, seed = fresh(n)
    s = spread(values)
    assert (s.median, s.lo, s.hi, s.n) == (statistics.median(values), min(values), max(values), n), seed
    assert s.rule == f"min–max of {n} runs"


@pytest.mark.parametrize("n", [5, 6, 50])
def test_five_runs_or_more_give_the_bootstrap_ci_of_the_median(n):
    values, seed = fresh(n)
    s = spread(values)
    lo, hi = reference_bootstrap(values, 0.95, 2000, 0)
    assert s.median == statistics.median(values), seed
    assert s.lo == pytest.approx(lo, rel=1e-12) and s.hi == pytest.approx(hi, rel=1e-12), seed
    assert min(values) <= s.lo <= s.median <= s.hi <= max(values), seed
    assert s.n == n and "bootstrap" in s.rule and "2000 resamples" in s.rule
    other = spread(values, confidence=0.5, resamples=300, seed=7)  # the knobs are used as given
    lo50, hi50 = reference_bootstrap(values, 0.5, 300, 7)
    assert (other.lo, other.hi) == (pytest.approx(lo50, rel=1e-12), pytest.approx(hi50, rel=1e-12)), seed


def test_bootstrap_is_deterministic_for_a_seed_and_independent_of_order():
    values, seed = fresh(20)
    assert spread(values) == spread(list(values)) == spread(values, seed=0), seed
    assert spread(values) == spread(sorted(values)) == spread(values[::-1]), seed  # medians of multisets
    assert spread(values, seed=1).median == spread(values).median


def test_median_stays_inside_its_interval_on_skewed_runs():
    for _ in range(20):  # one slow outlier among fast runs, the shape of a noisy neighbour on a shared GPU
        values, seed = fresh(BOOTSTRAP_MIN_RUNS)
        values[0] *= 10
        s = spread(values)
        assert s.lo <= s.median <= s.hi, seed


@pytest.mark.parametrize("n", [1, 2, 4, 5, 50])
def test_ties_give_a_zero_width_interval(n):
    s = spread([12.5] * n)
    assert (s.median, s.lo, s.hi, s.n) == (12.5, 12.5, 12.5, n)


def test_integers_and_numpy_scalars_are_numbers():
    assert spread([np.float32(2.0), 4, np.float64(3.0)]) == Spread(3.0, 2.0, 4.0, 3, "min–max of 3 runs")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), None, True, "3.0"])
def test_a_run_without_a_finite_number_is_refused_by_name(bad):
    with pytest.raises(ValueError, match=r"denoise_fps: runs \[1\] are not finite numbers"):
        spread([1.0, bad, 2.0], name="denoise_fps")


def test_empty_and_bad_knobs_are_refused():
    with pytest.raises(ValueError, match="e2e_s: no values: a median and interval need at least one run"):
        spread([], name="e2e_s")
    with pytest.raises(ValueError, match="confidence=1.0 must lie strictly between 0 and 1"):
        spread([1.0, 2.0], confidence=1.0)
    with pytest.raises(ValueError, match="resamples=0 must be an integer ≥ 1"):
        spread([1.0, 2.0], resamples=0)


def test_the_rule_text_states_each_case():
    for phrase in ("median", "n = 1", "n = 2 to 4", "min and max", f"n >= {BOOTSTRAP_MIN_RUNS}", "95 %",
                   "2000 resamples", "default_rng(0)", "2.5th and 97.5th", "first run's"):
        assert phrase in REPEATS_RULE, phrase
