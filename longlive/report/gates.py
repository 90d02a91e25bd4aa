"""Quality gates declared per experiment (issue 22, item 3): which rows may count as fast.

An experiment's `gates` (config key; checked at composition by `experiments.rules.check_gates`) is a list of gates,
each {name, family, reference, match, checks}. A gate judges the ok rows of its `family` (column → value or list of
values; {} = every ok row) among the rows that carry it in their config — rows of one experiment carry the same list,
so gates of several experiments coexist in one table. Reference and baseline rows are looked up among the family's ok
rows of the same experiment(s) (a family that names `experiment` widens that): the rows matching every listed value
(null: the judged row's own) and equal to the judged row on the `match` columns (default model, frames, gpu_name,
steps; those in the table). Several such rows (seeds, say) count by their mean.

Check kinds (`experiments.rules.GATE_KINDS`): ratio_min (value ≥ f × the reference's, MLPerf's "99 % of the BF16
reference"), max and min (absolute), within (|value − the reference's| ≤ a), within_spread (|mean over the
configuration's seeds − the reference's mean| ≤ f × the reference's max − min over its seeds: issue 20's tiny rule),
max_ratio_of (value ≤ f × a named baseline row's: issue 20's "≤ 1.5 × the FP8-GEMM path's error").

Every check gives a margin, its slack as a fraction of its allowance: 0 on the limit (a tie passes), negative when it
fails (as `report.gate`). A gate passes when every check passes; it is undecided (None) when a check cannot be made —
the reference row, the baseline row or the metric is missing — and `gate_reason` says which. A row judged by several
gates passes when all pass; its margin is the smallest and the names are joined.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from longlive.experiments import EXPERIMENTS_DIR
from longlive.experiments.rules import DEFAULT_GATE_MATCH, GATE_KINDS, REFERENCE_KINDS, check_gates
from longlive.report.compare import is_missing
from longlive.runner.schema import AXES, IDENTITY

GATES_COLUMNS = ("gate_name", "gate_passed", "gate_margin", "gate_reason")
"""What `apply_gates` adds to every row (None / NaN on rows no gate judges)."""
NOT_CONFIGURATION = ("cell_id", "status", "reason", "seed")
"""Identity columns along which rows of one configuration differ (within_spread pools a configuration's seeds)."""


# ---------------------------------------------------------------------------------------------------------------
# the gate as data


@dataclass(frozen=True)
class Check:
    """One check of a gate: `metric` (a result column) judged by `kind` against `value`."""

    metric: str
    kind: str
    value: float
    baseline: dict[str, Any] | None = None
    """max_ratio_of: the baseline row's values (null: the judged row's own)."""


@dataclass(frozen=True)
class Gate:
    """A gate as declared in an experiment's `gates` (see the module doc)."""

    name: str
    checks: tuple[Check, ...]
    family: dict[str, Any] = field(default_factory=dict)
    reference: dict[str, Any] | None = None
    match: tuple[str, ...] = DEFAULT_GATE_MATCH

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> Gate:
        """A gate from its config mapping; a ValueError naming the gate and the fix when it is malformed."""
        check_gates([raw])
        checks = tuple(Check(str(c["metric"]), str(c["kind"]), float(c["value"]),
                             dict(c["baseline"]) if c.get("baseline") else None) for c in raw["checks"])
        family = {k: list(v) if isinstance(v, Sequence) and not isinstance(v, str) else v
                  for k, v in (raw.get("family") or {}).items()}
        reference = dict(raw["reference"]) if raw.get("reference") is not None else None
        match = tuple(raw["match"]) if raw.get("match") is not None else DEFAULT_GATE_MATCH
        return cls(str(raw["name"]), checks, family, reference, match)


def _pairs(sel: Mapping[str, Any], own: str = "the row's own") -> str:
    return ", ".join(f"{k}={'/'.join(map(str, v)) if isinstance(v, list) else own if v is None else v}"
                     for k, v in sel.items())


def describe_check(check: Check) -> str:
    """What the check asks, in words (no numbers of a row)."""
    m, v = check.metric, check.value
    return {
        "ratio_min": f"{m} ≥ {v:g} × the reference's",
        "max": f"{m} ≤ {v:g}",
        "min": f"{m} ≥ {v:g}",
        "within": f"|{m} − the reference's| ≤ {v:g}",
        "within_spread": f"|mean of {m} over the configuration's seeds − the reference's mean| ≤ {v:g} × the "
                         f"reference's seed-to-seed spread (max − min)",
        "max_ratio_of": f"{m} ≤ {v:g} × the {_pairs(check.baseline or {})} row's",
    }[check.kind]


def describe_gate(gate: Gate | Mapping[str, Any]) -> str:
    """The gate in one sentence for the report: which rows, against which reference, and each check."""
    g = gate if isinstance(gate, Gate) else Gate.parse(gate)
    rows = f"rows with {_pairs(g.family)}" if g.family else "every ok row"
    text = f"{g.name}: judges {rows}"
    same = f" (same {', '.join(g.match)})" if g.match else ""
    if g.reference is not None:
        text += (f"; reference: the row with {_pairs(g.reference)}" if g.reference else "; reference: the row") + same
    elif any(c.kind == "max_ratio_of" for c in g.checks):
        text += f"; the baseline row shares {', '.join(g.match)} with the judged row" if g.match else ""
    return text + "; passes when " + " and ".join(describe_check(c) for c in g.checks)


# ---------------------------------------------------------------------------------------------------------------
# arithmetic of one check


@dataclass(frozen=True)
class Outcome:
    """One check on one row: `value op limit` (op ≤ or ≥), passed (None: undecided), margin (NaN when undecided)."""

    metric: str
    kind: str
    passed: bool | None
    margin: float
    value: float = math.nan
    op: str = "≤"
    limit: float = math.nan
    text: str = ""


def number(v: Any) -> float:
    """A float, NaN for what is missing or not a number."""
    try:
        return math.nan if is_missing(v) else float(v)
    except (TypeError, ValueError):
        return math.nan


def slack_at_most(value: float, limit: float) -> float:
    """How far `value` stays under `limit`, as a fraction of it: 1 − value / limit (0 on the limit, negative beyond
    it); NaN counts as beyond; a zero limit admits only zero (margin 0)."""
    if math.isnan(value):
        return -math.inf
    if limit == 0:
        return 0.0 if value == 0 else -math.copysign(math.inf, value)
    return (limit - value) / abs(limit)


def slack_at_least(value: float, limit: float) -> float:
    """How far `value` stays above `limit`, as a fraction of it: (value − limit) / |limit| (0 on the limit)."""
    if math.isnan(value):
        return -math.inf
    if limit == 0:
        return 0.0 if value == 0 else math.copysign(math.inf, value)
    return (value - limit) / abs(limit)


def undecided(check: Check, why: str) -> Outcome:
    return Outcome(check.metric, check.kind, None, math.nan, text=f"{check.metric}: {why}")


def _decided(check: Check, value: float, op: str, limit: float, margin: float, text: str) -> Outcome:
    return Outcome(check.metric, check.kind, margin >= 0, margin, value, op, limit, text)


def judge_value(check: Check, value: float, ref: float = math.nan) -> Outcome:
    """A check of every kind but within_spread: `value` is the row's, `ref` the reference's (ratio_min, within) or
    the baseline's (max_ratio_of) value."""
    m, f = check.metric, check.value
    if math.isnan(value):
        return undecided(check, "no value in this row")
    if check.kind == "max":
        margin = slack_at_most(value, f)
        return _decided(check, value, "≤", f, margin, f"{m} {value:.4g} {'≤' if margin >= 0 else '>'} {f:g}")
    if check.kind == "min":
        margin = slack_at_least(value, f)
        return _decided(check, value, "≥", f, margin, f"{m} {value:.4g} {'≥' if margin >= 0 else '<'} {f:g}")
    if math.isnan(ref):
        return undecided(check, f"no {'baseline' if check.kind == 'max_ratio_of' else 'reference'} value")
    if check.kind == "ratio_min":
        if ref <= 0:
            return undecided(check, f"the reference's value {ref:.4g} is not positive: no ratio")
        limit = f * ref
        margin = slack_at_least(value, limit)
        return _decided(check, value, "≥", limit, margin, f"{m} {value:.4g} {'≥' if margin >= 0 else '<'} {f:g} × "
                                                          f"{ref:.4g} = {limit:.4g}")
    if check.kind == "within":
        dev = abs(value - ref)
        margin = slack_at_most(dev, f)
        return _decided(check, dev, "≤", f, margin, f"{m} |{value:.4g} − {ref:.4g}| = {dev:.3g} "
                                                    f"{'≤' if margin >= 0 else '>'} {f:g}")
    if check.kind == "max_ratio_of":
        limit = f * ref
        margin = slack_at_most(value, limit)
        return _decided(check, value, "≤", limit, margin, f"{m} {value:.4g} {'≤' if margin >= 0 else '>'} {f:g} × "
                                                          f"{ref:.4g} = {limit:.4g}")
    raise ValueError(f"judge_value does not judge kind {check.kind!r} (within_spread: judge_spread)")


def judge_spread(check: Check, values: Iterable[float], ref_values: Iterable[float], min_seeds: int = 2) -> Outcome:
    """within_spread: |mean(values) − mean(ref_values)| ≤ f × (max − min of ref_values). A reference of fewer than
    `min_seeds` values has no seed-to-seed spread: undecided."""
    vals = [v for v in map(number, values) if not math.isnan(v)]
    refs = [v for v in map(number, ref_values) if not math.isnan(v)]
    if not vals:
        return undecided(check, "no value for this configuration")
    if len(refs) < max(min_seeds, 1):
        return undecided(check, f"the reference has {len(refs)} value{'s' * (len(refs) != 1)}: no seed-to-seed "
                                "spread (run it with more seeds)")
    spread = max(refs) - min(refs)
    dev, limit = abs(sum(vals) / len(vals) - sum(refs) / len(refs)), check.value * spread
    margin = slack_at_most(dev, limit)
    return _decided(check, dev, "≤", limit, margin, f"{check.metric} |Δ| {dev:.3g} {'≤' if margin >= 0 else '>'} "
                                                    f"{check.value:g} × spread {spread:.3g} ({len(vals)} vs "
                                                    f"{len(refs)} seeds)")


def combine(outcomes: Sequence[Outcome]) -> tuple[bool | None, float]:
    """(passed, margin) of several checks or gates: False if any fails, None if any is undecided, else True; the
    margin is the smallest one known (NaN when none is: an undecided gate may still carry its decided checks')."""
    margins = [o.margin for o in outcomes if not math.isnan(o.margin)]
    passed = (False if any(o.passed is False for o in outcomes)
              else None if any(o.passed is None for o in outcomes) or not outcomes else True)
    return passed, (min(margins) if margins else math.nan)


# ---------------------------------------------------------------------------------------------------------------
# rows


def attn_of(row: pd.Series | dict) -> Any:
    """The row's `attn`: its column if present, else the cell's config (`auto` as the backend it resolved to)."""
    v = row.get("attn")
    if not is_missing(v):
        return v
    config = row.get("config") if isinstance(row.get("config"), dict) else {}
    v = config.get("attn")
    extra = row.get("metrics_extra") if isinstance(row.get("metrics_extra"), dict) else {}
    if v in (None, "auto") and extra.get("attn_backend"):
        return extra["attn_backend"]
    return v


def with_attn(df: pd.DataFrame) -> pd.DataFrame:
    """The table with an `attn` column (see `attn_of`)."""
    return df.assign(attn=[attn_of(r) for _, r in df.iterrows()] if len(df) else [])


def value_key(v: Any) -> Any:
    """The key two row values are compared by: None when missing, a float when it reads as a number (4 == 4.0 ==
    "4"), else the text."""
    if is_missing(v):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    return None if math.isnan(f) else f


def same(a: Any, b: Any) -> bool:
    """Equal as row values (`value_key`)."""
    return value_key(a) == value_key(b)


def select(df: pd.DataFrame, values: Mapping[str, Any]) -> pd.DataFrame:
    """The rows equal to every given value (a list: any of its values); a column the table lacks selects none."""
    mask = pd.Series(True, index=df.index)
    for k, v in values.items():
        if k not in df.columns:
            return df.iloc[0:0]
        options = {value_key(x) for x in (v if isinstance(v, list) else [v])}
        mask &= pd.Series([value_key(x) in options for x in df[k]], index=df.index, dtype=bool)
    return df[mask]


def ok_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Rows whose status is ok (every row when the table has no status)."""
    if df.empty or "status" not in df.columns:
        return df
    return df[df["status"].map(lambda s: str(s).lower() == "ok")]


def gates_of(row: pd.Series | dict) -> list:
    """The gates a row's config declares ([] when none)."""
    config = row.get("config")
    if isinstance(config, str):
        try:
            config = json.loads(config)
        except json.JSONDecodeError:
            return []
    gates = config.get("gates") if isinstance(config, dict) else None
    return list(gates) if isinstance(gates, list | tuple) else []


@dataclass
class Judged:
    """One gate of one experiment over its rows: the outcomes per judged row (by position in the table), the
    positions of its reference rows, and `problem`: why rows could not be judged (an invalid gate, a column the
    table lacks), else None."""

    name: str
    gate: Gate | None
    experiments: list[str]
    outcomes: dict[int, list[Outcome]] = field(default_factory=dict)
    references: set[int] = field(default_factory=set)
    problem: str | None = None


def _configuration_columns(df: pd.DataFrame) -> list[str]:
    cols = [c for c in (*IDENTITY, *AXES, "gpu_name") if c in df.columns and c not in NOT_CONFIGURATION]
    return list(dict.fromkeys(cols))


class _Columns:
    """The table's values as comparison keys and numbers, column by column, computed once: a gate looks rows up by
    key (a dict per set of columns) instead of scanning the table for every judged row."""

    def __init__(self, table: pd.DataFrame) -> None:
        self.table = table
        self._keys: dict[str, list] = {}
        self._numbers: dict[str, list[float]] = {}

    def keys(self, col: str) -> list:
        if col not in self._keys:
            self._keys[col] = [value_key(v) for v in self.table[col]]
        return self._keys[col]

    def numbers(self, col: str) -> list[float]:
        if col not in self._numbers:
            self._numbers[col] = [number(v) for v in self.table[col]]
        return self._numbers[col]

    def index(self, positions: Iterable[int], cols: Sequence[str]) -> dict[tuple, list[int]]:
        keys = [self.keys(c) for c in cols]
        out: dict[tuple, list[int]] = {}
        for p in positions:
            out.setdefault(tuple(k[p] for k in keys), []).append(p)
        return out

    def key_of(self, pos: int, cols: Sequence[str], given: Mapping[str, Any]) -> tuple:
        """Row `pos`'s lookup key on `cols`, a given non-null value replacing the row's own."""
        return tuple(value_key(given[c]) if given.get(c) is not None else self.keys(c)[pos] for c in cols)

    def values(self, positions: Iterable[int], metric: str) -> list[float]:
        nums = self.numbers(metric)
        return [nums[p] for p in positions if not math.isnan(nums[p])]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


class _GateRows:
    """One gate over its pool (the family's ok rows of the experiment): the lookups its checks need."""

    def __init__(self, gate: Gate, cols: _Columns, pool: list[int], config_cols: list[str]) -> None:
        self.gate, self.cols = gate, cols
        self.match = [c for c in gate.match if c in cols.table.columns]
        self.shared = f"same {', '.join(self.match)}" if self.match else "no shared columns"
        ref = gate.reference or {}
        self.ref_cols = list(dict.fromkeys([*self.match, *ref]))
        self.refs = cols.index(pool, self.ref_cols) if gate.reference is not None else {}
        self.config_cols = config_cols
        self.configs = cols.index(pool, config_cols) if any(c.kind == "within_spread" for c in gate.checks) else {}
        self.baselines: dict[int, tuple[list[str], dict[tuple, list[int]]]] = {}
        for i, c in enumerate(gate.checks):
            if c.kind == "max_ratio_of":
                base_cols = list(dict.fromkeys([*self.match, *(c.baseline or {})]))
                self.baselines[i] = (base_cols, cols.index(pool, base_cols))

    def judge(self, pos: int) -> tuple[list[Outcome], bool]:
        gate, cols = self.gate, self.cols
        ref_rows = (self.refs.get(cols.key_of(pos, self.ref_cols, gate.reference), [])
                    if gate.reference is not None else None)
        outcomes = []
        for i, check in enumerate(gate.checks):
            if check.metric not in cols.table.columns:
                outcomes.append(undecided(check, "no such column in these results"))
                continue
            if check.kind in REFERENCE_KINDS and not ref_rows:
                outcomes.append(undecided(check, f"no reference row ({_pairs(gate.reference or {})}; {self.shared})"))
                continue
            if check.kind == "within_spread":
                mine = self.configs.get(cols.key_of(pos, self.config_cols, {}), [])
                outcomes.append(judge_spread(check, cols.values(mine, check.metric),
                                             cols.values(ref_rows, check.metric)))
                continue
            value = cols.numbers(check.metric)[pos]
            if check.kind in ("max", "min"):
                outcomes.append(judge_value(check, value))
            elif check.kind == "max_ratio_of":
                base_cols, index = self.baselines[i]
                b = _mean(cols.values(index.get(cols.key_of(pos, base_cols, check.baseline or {}), []),
                                      check.metric))
                outcomes.append(judge_value(check, value, b) if not math.isnan(b) else
                                undecided(check, f"no baseline {check.metric} ({_pairs(check.baseline or {})}; "
                                                 f"{self.shared})"))
            else:
                ref = _mean(cols.values(ref_rows, check.metric))
                outcomes.append(judge_value(check, value, ref) if not math.isnan(ref) else
                                undecided(check, f"no reference value ({len(ref_rows)} reference row"
                                                 f"{'s' * (len(ref_rows) != 1)}, none with {check.metric})"))
        return outcomes, ref_rows is not None and pos in ref_rows


def judge(df: pd.DataFrame, gates: Mapping[str, list] | None = None) -> list[Judged]:
    """Every gate of the table judged over its ok rows, one `Judged` per gate and experiment. The gates are each
    row's config's, or for an experiment named in `gates` (experiment → its gates) those."""
    if df.empty:
        return []
    table = with_attn(df).reset_index(drop=True)
    cols = _Columns(table)
    ok = set(ok_rows(table).index)
    exp = [str(e) for e in table["experiment"]] if "experiment" in table.columns else [""] * len(table)
    carried: dict[tuple[str, str], tuple[Any, list[int]]] = {}  # (experiment, gate as JSON) → gate, rows carrying it
    configs = table["config"] if "config" in table.columns else [None] * len(table)
    for pos, config in enumerate(configs):
        declared = gates.get(exp[pos]) if gates is not None else None
        for raw in declared if declared is not None else gates_of({"config": config}):
            key = (exp[pos], json.dumps(raw, sort_keys=True, default=str))
            carried.setdefault(key, (raw, []))[1].append(pos)
    config_cols = _configuration_columns(table)
    out = []
    for (experiment, _), (raw, positions) in carried.items():
        try:
            gate = Gate.parse(raw)
        except ValueError as exc:
            name = raw.get("name") if isinstance(raw, Mapping) else None
            out.append(Judged(str(name or "?"), None, [experiment], problem=f"invalid gate: {exc}"))
            continue
        judged = Judged(gate.name, gate, [experiment])
        out.append(judged)
        named = [*gate.family, *(gate.reference or {}), *(k for c in gate.checks for k in (c.baseline or {}))]
        missing = [k for k in dict.fromkeys(named) if k not in table.columns]
        if missing:
            judged.problem = f"no column {', '.join(map(repr, missing))} in these results"
        pool = [p for p in sorted(ok) if "experiment" in gate.family or exp[p] == experiment]
        for k, v in gate.family.items():
            if k not in table.columns:
                pool = []
                break
            options, keys = {value_key(x) for x in (v if isinstance(v, list) else [v])}, cols.keys(k)
            pool = [p for p in pool if keys[p] in options]
        in_pool = set(pool)
        judged_rows = [p for p in positions if p in in_pool]
        if judged.problem:
            judged.outcomes = {p: [undecided(c, judged.problem) for c in gate.checks] for p in judged_rows}
            continue
        lookups = _GateRows(gate, cols, pool, config_cols)
        for p in judged_rows:
            judged.outcomes[p], is_ref = lookups.judge(p)
            if is_ref:
                judged.references.add(p)
    return out


def preset_gates(experiments: Iterable[Any], config_dir: Path = EXPERIMENTS_DIR) -> dict[str, list]:
    """experiment → the gates its preset (`experiment/<name>.yaml`) declares today. A report judges with these rather
    than with the gates stored in the rows: `gates` is not part of a cell's id, so a row reused by a later sweep keeps
    the gates of the sweep that wrote it, and a gate tightened in the preset would otherwise never apply. Experiments
    without a preset file, or whose preset declares no `gates`, are left out (their rows keep their own)."""
    out: dict[str, list] = {}
    for name in {e for e in experiments if isinstance(e, str)}:
        path = config_dir / "experiment" / f"{name}.yaml"
        if not path.is_file():
            continue
        declared = (yaml.safe_load(path.read_text()) or {}).get("gates")
        if declared:
            out[name] = list(declared)
    return out


def apply_gates(df: pd.DataFrame, gates: Mapping[str, list] | None = None) -> pd.DataFrame:
    """The table with gate_name, gate_passed (True / False / None: undecided or not judged), gate_margin (the
    smallest slack as a fraction of its allowance; NaN when none) and gate_reason (each check with its numbers) on
    every row; rows no gate judges have gate_name None. `gates`: experiment → gates, replacing the rows' own (rows
    reused from an earlier sweep carry the gates of the run that wrote them)."""
    names: dict[int, list[str]] = {}
    verdicts: dict[int, list[Outcome]] = {}
    reasons: dict[int, list[str]] = {}
    for j in judge(df, gates):
        for pos, outcomes in j.outcomes.items():
            passed, margin = combine(outcomes)
            names.setdefault(pos, []).append(j.name)
            verdicts.setdefault(pos, []).append(Outcome(j.name, "gate", passed, margin))
            ref = "reference row; " if pos in j.references else ""
            reasons.setdefault(pos, []).append(f"{j.name}: {ref}{'; '.join(o.text for o in outcomes)}")
    cols: dict[str, list] = {c: [] for c in GATES_COLUMNS}
    for pos in range(len(df)):
        passed, margin = combine(verdicts[pos]) if pos in verdicts else (None, math.nan)
        cols["gate_name"].append(", ".join(names[pos]) if pos in names else None)
        cols["gate_passed"].append(passed)
        cols["gate_margin"].append(margin)
        cols["gate_reason"].append(" | ".join(reasons[pos]) if pos in reasons else None)
    return df.assign(**{c: pd.Series(v, index=df.index, dtype="float64" if c == "gate_margin" else "object")
                        for c, v in cols.items()})


LABEL_COLUMNS = ("experiment", *AXES, "frames", "seed")
"""Candidates for a judged row's label in the summary (those that vary among the gate's rows are kept)."""


def _plain(v: Any) -> Any:
    """A numpy or pandas scalar as the Python value (labels are rendered and compared as plain values)."""
    if is_missing(v):
        return None
    return v.item() if hasattr(v, "item") else v


def check_label(check: Check) -> str:
    """A short column label for a check: the metric and its rule (`psnr_vs_ref ≥ 30`)."""
    return {"ratio_min": f"{check.metric} ≥ {check.value:g}×ref", "max": f"{check.metric} ≤ {check.value:g}",
            "min": f"{check.metric} ≥ {check.value:g}", "within": f"{check.metric} ±{check.value:g} of ref",
            "within_spread": f"{check.metric} ±{check.value:g}×spread",
            "max_ratio_of": f"{check.metric} ≤ {check.value:g}×baseline"}[check.kind]


def gates_summary(df: pd.DataFrame, gates: Mapping[str, list] | None = None) -> list[dict[str, Any]]:
    """One entry per gate for the report's Gates section:
    name, description (`describe_gate`), experiments, problem (why nothing could be judged, else None),
    checks (per check: label, metric, kind, value = the declared limit, rule = GATE_KINDS' words),
    label_columns (the configuration columns that vary among the judged rows), counts (passed / failed / undecided),
    rows (per judged row: cell_id, labels {column: value}, reference (bool), passed, margin, reason, and results:
    per check value, op, limit, passed, margin, text)."""
    entries = []
    table = df.reset_index(drop=True)
    for j in judge(df, gates):
        if j.gate is None:
            entries.append({"name": j.name, "description": j.problem, "experiments": j.experiments,
                            "problem": j.problem, "checks": [], "label_columns": [], "rows": [],
                            "counts": {"passed": 0, "failed": 0, "undecided": 0}})
            continue
        idxs = list(j.outcomes)
        sub = table.loc[idxs]
        labels = [c for c in LABEL_COLUMNS if c in sub.columns
                  and len({json.dumps(v, default=str) for v in sub[c]}) > 1]
        rows = []
        for idx in idxs:
            passed, margin = combine(j.outcomes[idx])
            rows.append({
                "cell_id": table.at[idx, "cell_id"] if "cell_id" in table.columns else idx,
                "labels": {c: _plain(table.at[idx, c]) for c in labels}, "reference": idx in j.references,
                "passed": passed, "margin": margin, "reason": "; ".join(o.text for o in j.outcomes[idx]),
                "results": [{"value": o.value, "op": o.op, "limit": o.limit, "passed": o.passed, "margin": o.margin,
                             "text": o.text} for o in j.outcomes[idx]],
            })
        counts = {"passed": sum(r["passed"] is True for r in rows), "failed": sum(r["passed"] is False for r in rows),
                  "undecided": sum(r["passed"] is None for r in rows)}
        entries.append({
            "name": j.gate.name, "description": describe_gate(j.gate), "experiments": j.experiments,
            "problem": j.problem if j.problem else (None if rows else "no ok row of its family in these results"),
            "checks": [{"label": check_label(c), "metric": c.metric, "kind": c.kind, "value": c.value,
                        "rule": GATE_KINDS[c.kind]} for c in j.gate.checks],
            "label_columns": labels, "counts": counts, "rows": rows,
        })
    return entries


def summary_table(entry: Mapping[str, Any]) -> pd.DataFrame:
    """A `gates_summary` entry as one flat table: the label columns, each check's value and limit (columns named
    by `check_label`, and `… limit`), gate_passed, gate_margin, gate_reason."""
    records = []
    for r in entry["rows"]:
        rec = {"cell_id": r["cell_id"], **r["labels"]}
        for c, res in zip(entry["checks"], r["results"], strict=True):
            rec[c["label"]] = res["value"]
            rec[f"{c['label']} limit"] = res["limit"]
        rec.update(gate_passed=r["passed"], gate_margin=r["margin"], gate_reason=r["reason"])
        records.append(rec)
    return pd.DataFrame.from_records(records)
