"""Run-to-run comparison: match the cells of two result sets and give each metric a verdict.

Why: the GPU machines are shared and noisy, so "B is 2 % slower than A" means nothing without a noise model. Each
(cell, metric) pair gets the ratio B / A and one of four verdicts:

- with an interval on both sides (rows of `repeats` > 1 carry `<m>_lo` / `<m>_hi`): *within noise* when the two
  intervals overlap, else *improved* or *regressed* by the metric's good direction;
- otherwise (a single run on either side): *within noise* when the relative change |B/A − 1| ≤ the assumed
  run-to-run noise of one run (`--noise`, default 3 %), else improved / regressed;
- *no direction* when the metric's good direction is unknown (the numbers are still shown).

A regression whose relative change exceeds `--threshold` (default 5 %) makes `longlive compare` exit 1, so a CI job
or a script can gate on it.

Cells are matched on the run spec minus the machine and the bookkeeping: the rows' `config` dicts with IGNORED_KEYS
dropped and every key whose value equals the RunSpec default dropped (recursively), so a field added in a later
commit (present, at its default, on one side only) does not break the match. Only `status == ok` rows take part.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from jinja2 import Environment, FileSystemLoader, StrictUndefined

from longlive.eval.drift import DRIFT, WORST
from longlive.eval.metrics import METRICS as QUALITY_METRICS
from longlive.experiments.spec import RunSpec
from longlive.measure.spread import row_interval
from longlive.report.compare import is_missing
from longlive.report.load import load_results, resolve_results_path
from longlive.runner.schema import AXES, METRICS

IGNORED_KEYS = ("hardware", "results_dir", "cell_timeout_s", "hydra", "matrices", "force", "gates", "repeats",
                "experiment")
"""Config keys that do not define what a cell measures, dropped before matching: the machine asked for (`hardware`;
the device that ran is the manifest's), where rows go and how long a cell may take, Hydra's own tree, the gates
(they judge rows, not produce them), the number of repeats (a 5-repeat run compares with a single one) and the
experiment's name (a renamed experiment still matches)."""
DEFAULT_NOISE = 0.03
DEFAULT_THRESHOLD = 0.05
EPS = 1e-9
"""Slack on the noise and threshold edges, so 97 vs 100 is a change of exactly 3 % (not 3.0000000000000027 %)."""
IMPROVED, REGRESSED, NOISE, NO_DIRECTION = "improved", "regressed", "within noise", "no direction"
HIGHER_BETTER = ("tokens_per_s", "mfu", "fraction_of_ceiling")
LOWER_BETTER = ("iter_s", "switch_latency_s")
FALLBACK_KEY_COLUMNS = (*AXES, "workload", "frames", "seed", "linear_quant", "linear_backend", "weight_rule")
"""A row without a `config` dict (a converted legacy row) is matched on these columns instead (minus hardware)."""
TEMPLATES = Path(__file__).parent / "templates"


def rule_text(noise: float, threshold: float) -> str:
    """The verdict rule as written into every output, with this run's numbers."""
    return (f"ratio = B / A, change = B / A − 1 (relative to |A|). With an interval on both sides (repeats > 1: "
            f"<metric>_lo … <metric>_hi): within noise if the intervals overlap, else improved or regressed by the "
            f"metric's good direction. Otherwise (a single run on either side): within noise if |change| ≤ "
            f"{noise:g} (--noise, the assumed run-to-run noise of one run), else improved or regressed. Exit status 1 "
            f"when some verdict is regressed with |change| > {threshold:g} (--threshold). Metrics without a known "
            f"good direction are shown without a verdict.")


# ---------------------------------------------------------------- directions


def direction(metric: str) -> bool | None:
    """True when higher is better, False when lower is, None when unknown. Quality metrics carry their own
    direction in the metric registry (`<m>_worst_window` and `<m>_drift` inherit it); the rest go by name."""
    base = metric.removesuffix(WORST).removesuffix(DRIFT)
    if base in QUALITY_METRICS and metric in (base, base + WORST, base + DRIFT):
        return QUALITY_METRICS[base].higher_is_better
    if metric in HIGHER_BETTER:
        return True
    if metric in LOWER_BETTER:
        return False
    if metric.endswith(("_fps", "_tflops")) or metric.startswith(("psnr", "vbench")):
        return True
    if "err" in metric or "_ms" in metric or metric.endswith(("_gb", "_s")):
        return False
    return None


def direction_text(higher: bool | None) -> str:
    return {True: "higher is better", False: "lower is better"}.get(higher, "no known direction")


# ---------------------------------------------------------------- result sets and matching


def _plain(v: Any) -> Any:
    """JSON-comparable form: tuples as lists, integral floats as ints (1.0 in one file, 1 in another)."""
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


def _reduce(config: dict, defaults: dict) -> dict:
    """`config` without the keys whose value equals `defaults` (recursively; a group left empty goes too)."""
    out = {}
    for k, v in config.items():
        if k in defaults:
            d = defaults[k]
            if isinstance(v, dict) and isinstance(d, dict):
                v = _reduce(v, d)
                if not v:
                    continue
            elif v == d:
                continue
        out[k] = v
    return out


@functools.cache
def run_defaults() -> dict:
    """The RunSpec defaults in the rows' JSON form, the ignored keys left out."""
    return {k: v for k, v in _plain(dataclasses.asdict(RunSpec())).items() if k not in IGNORED_KEYS}


def _scalar(v: Any) -> Any:
    """A table cell as a plain Python value (numpy and pandas scalars from Parquet or Int64 columns)."""
    if is_missing(v):
        return None
    return v.item() if hasattr(v, "item") else v


def match_config(row: pd.Series | dict) -> dict:
    """What identifies a row's configuration across commits and machines: its `config` without IGNORED_KEYS and
    without default-valued keys; a row without a config falls back to its axis and identity columns."""
    config = row.get("config")
    if isinstance(config, dict) and config:
        return _reduce({k: v for k, v in _plain(config).items() if k not in IGNORED_KEYS}, run_defaults())
    cols = {c: _plain(_scalar(row.get(c))) for c in FALLBACK_KEY_COLUMNS if c != "hardware"}
    return {"row_columns": {c: v for c, v in cols.items() if v is not None}}


def config_key(row: pd.Series | dict) -> str:
    """match_config as canonical text: equal keys, same configuration."""
    return json.dumps(match_config(row), sort_keys=True, default=str)


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """{"precision": {"name": "bf16"}} -> {"precision.name": "bf16"}; an empty group stays one key."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def short_commit(commit: Any) -> str:
    """874350ac53e1…+dirty -> 874350ac+dirty."""
    if not isinstance(commit, str) or not commit:
        return "no commit"
    head, _, rest = commit.partition("+")
    return head[:8] + (f"+{rest}" if rest else "")


@dataclass
class ResultSet:
    """One result set's ok rows (the last row per cell), each with its matching key."""

    path: Path
    label: str
    rows: pd.DataFrame
    other: Counter = field(default_factory=Counter)
    """statuses of the rows that take no part (failed, skipped)"""

    @property
    def keys(self) -> list[str]:
        return [config_key(r) for _, r in self.rows.iterrows()]

    @property
    def commit(self) -> str:
        """The git commit most rows were measured at (short), '+N more' when they differ."""
        commits = Counter(short_commit((m or {}).get("git_commit")) for m in self.rows["manifest"])
        top = commits.most_common(1)[0][0]
        return top + (f" (+{len(commits) - 1} more)" if len(commits) > 1 else "")


def load_set(path: Path) -> ResultSet:
    """A result set from a results folder, a results.jsonl / .parquet file or a report folder holding one.
    No ok row is a ValueError: nothing in it can be compared."""
    path = Path(path)
    file = resolve_results_path(path)
    df = load_results([file])
    if df.empty:
        raise ValueError(f"{path}: {file} holds no rows")
    ok = df[df["status"] == "ok"].reset_index(drop=True)
    other = Counter(s for s in df["status"] if s != "ok")
    if ok.empty:
        raise ValueError(f"{path}: none of its {len(df)} rows has status ok ({dict(other)}); only ok rows compare")
    folder = path if path.is_dir() else file.parent
    rs = ResultSet(path, "", ok, other)
    rs.label = f"{folder.resolve().name}@{rs.commit.split(' ')[0]}"
    return rs


def unique_labels(sets: list[ResultSet]) -> None:
    """Prefix the position when two sets would carry the same label (same folder name and commit)."""
    counts = Counter(s.label for s in sets)
    for i, s in enumerate(sets, 1):
        if counts[s.label] > 1:
            s.label = f"{i}:{s.label}"


@dataclass
class Cell:
    """A configuration present in both sets."""

    key: str
    label: str
    a: pd.Series
    b: pd.Series


@dataclass
class Unmatched:
    """A configuration of one side only, with how the nearest configuration of the other side differs."""

    side: str
    label: str
    cell_id: str
    closest: str


def _value_text(v: Any, width: int = 32) -> str:
    s = v if isinstance(v, str) else json.dumps(v, default=str)
    return s if len(s) <= width else s[: width - 1] + "…"


def _display_name(key: str) -> str:
    return key.removesuffix(".name").removesuffix(".mode")


def _label_keys(flat: list[dict[str, Any]]) -> list[str]:
    """The flattened config keys that tell the cells apart, leaving out any key determined by those already
    chosen (precision.dtype follows from precision.name). Axes first, a group's name before its other fields."""
    names = sorted({k for f in flat for k in f},
                   key=lambda k: (AXES.index(k.split(".")[0]) if k.split(".")[0] in AXES else len(AXES),
                                  not k.endswith((".name", ".mode")), k))
    chosen: list[str] = []
    for k in names:
        seen: dict[str, str] = {}
        determined = True
        for f in flat:
            ctx = json.dumps([f.get(c) for c in chosen], default=str)
            val = json.dumps(f.get(k), default=str)
            if seen.setdefault(ctx, val) != val:
                determined = False
                break
        if not determined:
            chosen.append(k)
    return chosen


def _filled(config: dict) -> dict[str, Any]:
    """Flattened config with the dropped default values put back (so labels and differences show values)."""
    return {**flatten(run_defaults()), **flatten(config)}


def cell_labels(rows: list[pd.Series]) -> list[str]:
    """Readable names of the given rows' configurations: the config keys that vary among them, as key=value."""
    flat = [_filled(match_config(r)) for r in rows]
    keys = _label_keys(flat)
    if not keys:
        return [str(_scalar(r.get("workload")) or "the cell") for r in rows]
    return [" ".join(f"{_display_name(k)}={_value_text(f.get(k))}" for k in keys) for f in flat]


def difference(x: dict, y: dict, limit: int = 3) -> str:
    """How configuration y differs from x, key by key: 'precision.name: bf16 → fp8'."""
    fx, fy = _filled(x), _filled(y)
    diff = [k for k in sorted(set(fx) | set(fy)) if fx.get(k, "—") != fy.get(k, "—")]
    parts = [f"{k}: {_value_text(fx.get(k, '—'), 20)} → {_value_text(fy.get(k, '—'), 20)}" for k in diff[:limit]]
    return "; ".join(parts) + (f"; +{len(diff) - limit} more" if len(diff) > limit else "")


def rows_by_key(rs: ResultSet) -> tuple[dict[str, pd.Series], int]:
    """key -> row, the last row winning when several rows of one set share a configuration (e.g. the same cell
    under two experiment names); the number of rows so shadowed."""
    out: dict[str, pd.Series] = {}
    for key, (_, row) in zip(rs.keys, rs.rows.iterrows(), strict=True):
        out[key] = row
    return out, len(rs.rows) - len(out)


@dataclass
class Matching:
    cells: list[Cell]
    only_a: list[Unmatched]
    only_b: list[Unmatched]
    shadowed: dict[str, int]


def match(a: ResultSet, b: ResultSet) -> Matching:
    """Pair the configurations of A and B; label every cell by what varies among all of them."""
    ka, sa = rows_by_key(a)
    kb, sb = rows_by_key(b)
    everything = list(ka.items()) + [(k, r) for k, r in kb.items() if k not in ka]
    labels = dict(zip([k for k, _ in everything], cell_labels([r for _, r in everything]), strict=True))
    cells = [Cell(k, labels[k], ka[k], kb[k]) for k in ka if k in kb]

    def unmatched(side: str, mine: dict[str, pd.Series], theirs: dict[str, pd.Series]) -> list[Unmatched]:
        out = []
        for k, row in mine.items():
            if k in theirs:
                continue
            cfg = json.loads(k)
            # the likely counterpart is a configuration of the other side that found no partner either
            pool = [t for t in theirs if t not in mine] or list(theirs)
            if pool:
                near = min(pool, key=lambda t: _distance(cfg, json.loads(t)))
                closest = difference(cfg, json.loads(near)) if side == "A" else difference(json.loads(near), cfg)
            else:
                closest = "—"
            out.append(Unmatched(side, labels[k], str(_scalar(row.get("cell_id"))), closest))
        return out

    return Matching(cells, unmatched("A", ka, kb), unmatched("B", kb, ka), {"A": sa, "B": sb})


def _distance(x: dict, y: dict) -> int:
    fx, fy = _filled(x), _filled(y)
    return sum(fx.get(k, "—") != fy.get(k, "—") for k in set(fx) | set(fy))


# ---------------------------------------------------------------- verdicts


def number(v: Any) -> float | None:
    """A metric cell as a float (±inf kept: PSNR of identical videos), None when absent or not a number."""
    v = _scalar(v)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return None if math.isnan(v) else float(v)


def relative_change(a: float, b: float) -> tuple[float, float]:
    """(ratio B / A, change relative to |A|); equal values are (1, 0) even at 0 or infinity."""
    if a == b:
        return 1.0, 0.0
    if a == 0:
        return math.copysign(math.inf, b), math.copysign(math.inf, b)
    ratio = b / a
    change = ratio - 1 if a > 0 else (b - a) / abs(a)
    return ratio, change


@dataclass
class Change:
    """One (cell, metric) pair: the two values, their ratio and the verdict."""

    cell: str
    metric: str
    a: float
    b: float
    ratio: float
    change: float
    verdict: str
    basis: str
    beyond: bool
    a_iv: tuple[float, float] | None = None
    b_iv: tuple[float, float] | None = None

    @property
    def badness(self) -> float:
        """Larger = worse for the metric's direction (sort key: worst first)."""
        higher = direction(self.metric)
        c = 0.0 if math.isnan(self.change) else self.change
        return -c if higher in (True, None) else c


def judge(metric: str, a: float, b: float, a_iv: tuple[float, float] | None, b_iv: tuple[float, float] | None,
          noise: float, threshold: float) -> tuple[str, str, float, float, bool]:
    """(verdict, basis, ratio, change, regressed beyond the threshold) for one pair, by the rule of rule_text."""
    ratio, change = relative_change(a, b)
    higher = direction(metric)
    if higher is None or math.isnan(change):
        return NO_DIRECTION, "—", ratio, change, False
    if a_iv is not None and b_iv is not None:
        basis = "intervals"
        same = max(a_iv[0], b_iv[0]) <= min(a_iv[1], b_iv[1]) or change == 0
    else:
        basis = "noise band"
        same = abs(change) <= noise + EPS
    if same:
        return NOISE, basis, ratio, change, False
    verdict = IMPROVED if (change > 0) == higher else REGRESSED
    return verdict, basis, ratio, change, verdict == REGRESSED and abs(change) > threshold + EPS


def default_metrics() -> list[str]:
    """The row schema's metrics, then the registered quality metrics the schema does not list (tiny metrics)."""
    return list(dict.fromkeys([*METRICS, *QUALITY_METRICS]))


@dataclass
class Comparison:
    """Everything `longlive compare` reports about baseline A and candidate B."""

    a: ResultSet
    b: ResultSet
    matching: Matching
    changes: list[Change]
    metrics: list[str]
    noise: float
    threshold: float

    @property
    def counts(self) -> Counter:
        return Counter(c.verdict for c in self.changes)

    @property
    def beyond(self) -> list[Change]:
        """Regressions past the threshold, worst first: what fails the exit status."""
        return sorted((c for c in self.changes if c.beyond), key=lambda c: -c.badness)

    @property
    def worst(self) -> Change | None:
        regressed = [c for c in self.changes if c.verdict == REGRESSED]
        return max(regressed, key=lambda c: c.badness) if regressed else None

    @property
    def exit_code(self) -> int:
        return 1 if self.beyond else 0


def compare_sets(a: ResultSet, b: ResultSet, metrics: Iterable[str] | None = None, noise: float = DEFAULT_NOISE,
                 threshold: float = DEFAULT_THRESHOLD) -> Comparison:
    """Match A and B and judge every metric both rows of a matched cell hold. No match, or no metric in common, is
    a ValueError saying why (unusable input)."""
    if noise < 0 or threshold < 0:
        raise ValueError(f"--noise {noise:g} / --threshold {threshold:g}: both must be ≥ 0 (fractions: 0.03 = 3 %)")
    asked = list(metrics) if metrics is not None else None
    if asked is not None:
        known = set(a.rows.columns) | set(b.rows.columns)
        unknown = [m for m in asked if m not in known]
        if unknown:
            raise ValueError(f"--metrics {','.join(unknown)}: not a column of either result set; metrics of the "
                             f"schema: {', '.join(METRICS)}")
    m = match(a, b)
    if not m.cells:
        hint = f" (first A cell vs its nearest B cell: {m.only_a[0].closest})" if m.only_a else ""
        raise ValueError(f"no configuration of {b.label} matches one of {a.label}: {len(a.rows)} ok rows vs "
                         f"{len(b.rows)}{hint}")
    names = asked if asked is not None else default_metrics()
    changes: list[Change] = []
    for metric in names:
        for cell in m.cells:
            va, vb = number(cell.a.get(metric)), number(cell.b.get(metric))
            if va is None or vb is None:
                continue
            ia, ib = row_interval(cell.a, metric), row_interval(cell.b, metric)
            verdict, basis, ratio, change, beyond = judge(metric, va, vb, ia, ib, noise, threshold)
            changes.append(Change(cell.label, metric, va, vb, ratio, change, verdict, basis, beyond, ia, ib))
    if not changes:
        raise ValueError(f"{len(m.cells)} configurations match, but no metric ({', '.join(names[:8])}"
                         f"{', …' if len(names) > 8 else ''}) has a number on both sides")
    compared = [x for x in names if any(c.metric == x for c in changes)]
    return Comparison(a, b, m, changes, compared, noise, threshold)


# ---------------------------------------------------------------- output


def fmt(v: float | None) -> str:
    """Four significant digits; ∞ for infinity; — for missing."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    if math.isinf(v):
        return "∞" if v > 0 else "−∞"
    return f"{v:.4g}"


def value_text(v: float, iv: tuple[float, float] | None) -> str:
    return fmt(v) + (f" [{fmt(iv[0])}, {fmt(iv[1])}]" if iv else "")


def change_text(c: Change) -> str:
    if math.isnan(c.change):
        return "—"
    if math.isinf(c.change):
        return "+∞" if c.change > 0 else "−∞"
    return f"{c.change * 100:+.1f} %".replace("-", "−")


def ratio_text(c: Change) -> str:
    """B / A to three decimals (1.000× = unchanged)."""
    return fmt(c.ratio) if math.isinf(c.ratio) or math.isnan(c.ratio) else f"{c.ratio:.3f}×"


MANIFEST_FIELDS = ("git_commit", "gpu", "driver", "cuda", "torch", "host")


def manifests(rs: ResultSet) -> list[dict[str, Any]]:
    """The distinct machines / software of a set's rows: one entry per distinct (commit, gpu, driver, cuda, torch,
    host), with its row count and date range."""
    groups: dict[tuple, dict[str, Any]] = {}
    for man in rs.rows["manifest"]:
        man = man or {}
        fields = {"git_commit": man.get("git_commit") or "—", "gpu": man.get("gpu") or "—",
                  "driver": man.get("driver") or "—", "cuda": man.get("cuda") or "—",
                  "torch": (man.get("packages") or {}).get("torch") or "—", "host": man.get("host") or "—"}
        entry = groups.setdefault(tuple(fields.values()), {**fields, "rows": 0, "dates": []})
        entry["rows"] += 1
        if man.get("date"):
            entry["dates"].append(str(man["date"]))
    for e in groups.values():
        dates = sorted(e.pop("dates"))
        e["date"] = "—" if not dates else dates[0] if dates[0] == dates[-1] else f"{dates[0]} … {dates[-1]}"
    return list(groups.values())


def context(cmp: Comparison, trend: str | None = None, trend_note: str | None = None) -> dict[str, Any]:
    """What both the Markdown and the HTML show, as plain values (the template does no arithmetic)."""
    counts = cmp.counts
    worst = cmp.worst
    beyond = cmp.beyond
    pct = f"{cmp.threshold * 100:g} %"
    if beyond:
        status, headline = "regressed", (f"REGRESSED: {len(beyond)} value(s) regressed by more than {pct} "
                                          f"(exit status 1)")
    elif counts[REGRESSED]:
        status, headline = "warn", (f"No regression beyond {pct} ({counts[REGRESSED]} smaller regression(s) "
                                    f"outside the noise; exit status 0)")
    else:
        status, headline = "ok", "No regression (exit status 0)"

    def row(c: Change) -> dict[str, str]:
        return {"cell": c.cell, "metric": c.metric, "a": value_text(c.a, c.a_iv), "b": value_text(c.b, c.b_iv),
                "ratio": ratio_text(c), "change": change_text(c), "verdict": c.verdict, "basis": c.basis,
                "beyond": c.beyond}

    tables = []
    for metric in cmp.metrics:
        rows = sorted((c for c in cmp.changes if c.metric == metric), key=lambda c: -c.badness)
        tables.append({"metric": metric, "direction": direction_text(direction(metric)),
                       "counts": Counter(c.verdict for c in rows), "rows": [row(c) for c in rows]})
    m = cmp.matching
    sides = []
    for role, rs, only in (("A (baseline)", cmp.a, m.only_a), ("B (candidate)", cmp.b, m.only_b)):
        sides.append({"role": role, "label": rs.label, "path": str(rs.path), "commit": rs.commit,
                      "ok": len(rs.rows), "other": ", ".join(f"{n} {s}" for s, n in sorted(rs.other.items())) or "none",
                      "matched": len(m.cells), "unmatched": len(only), "shadowed": m.shadowed[role[0]],
                      "manifests": manifests(rs)})
    return {
        "title": f"{cmp.a.label} → {cmp.b.label}", "status": status, "headline": headline,
        "summary": (f"{len(m.cells)} matched configuration(s), {len(cmp.metrics)} metric(s), {len(cmp.changes)} "
                    f"values: {counts[REGRESSED]} regressed ({len(beyond)} beyond {pct}) · {counts[IMPROVED]} "
                    f"improved · {counts[NOISE]} within noise · {counts[NO_DIRECTION]} without a direction"),
        "worst": None if worst is None else (f"{worst.metric} of {worst.cell}: {value_text(worst.a, worst.a_iv)} → "
                                             f"{value_text(worst.b, worst.b_iv)} ({ratio_text(worst)}, "
                                             f"{change_text(worst)})"),
        "regressions": [row(c) for c in sorted((c for c in cmp.changes if c.verdict == REGRESSED),
                                               key=lambda c: -c.badness)],
        "improvements": [row(c) for c in sorted((c for c in cmp.changes if c.verdict == IMPROVED),
                                                key=lambda c: c.badness)],
        "rule": rule_text(cmp.noise, cmp.threshold), "tables": tables, "sides": sides,
        "only_a": [dataclasses.asdict(u) for u in m.only_a], "only_b": [dataclasses.asdict(u) for u in m.only_b],
        "ignored": ", ".join(IGNORED_KEYS), "trend": trend, "trend_note": trend_note,
    }


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    esc = [[str(c).replace("|", "\\|") for c in r] for r in rows]
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *["| " + " | ".join(r) + " |" for r in esc]]


def markdown(ctx: dict[str, Any]) -> str:
    """The comparison as Markdown: verdict first, then what regressed, then every metric, unmatched cells and the
    manifests."""
    out = [f"# longlive compare: {ctx['title']}", "", f"**{ctx['headline']}**", "", ctx["summary"] + "."]
    if ctx["worst"]:
        out += ["", f"Worst regression: {ctx['worst']}."]
    out += [""] + _md_table(["side", "result set", "commit", "ok rows", "matched", "unmatched", "not ok"],
                            [[s["role"], s["label"], s["commit"], str(s["ok"]), str(s["matched"]), str(s["unmatched"]),
                              s["other"]] for s in ctx["sides"]])
    cols = ["metric", "cell", "A", "B", "B/A", "change", "basis"]
    for title, key in (("Regressions", "regressions"), ("Improvements", "improvements")):
        out += ["", f"## {title}", ""]
        rows = [[r["metric"] + (" **(beyond threshold)**" if r["beyond"] else ""), r["cell"], r["a"], r["b"],
                 r["ratio"], r["change"], r["basis"]] for r in ctx[key]]
        out += _md_table(cols, rows) if rows else ["none"]
    out += ["", "## Rule", "", ctx["rule"], "", f"Cells match on the run spec's config without: {ctx['ignored']}; "
            "and without keys at their RunSpec default. Values with an interval show it as [lo, hi]."]
    out += ["", "## Per metric (worst first)"]
    for t in ctx["tables"]:
        out += ["", f"### {t['metric']} ({t['direction']})", ""]
        out += _md_table(["cell", "A", "B", "B/A", "change", "verdict"],
                         [[r["cell"], r["a"], r["b"], r["ratio"], r["change"], r["verdict"]] for r in t["rows"]])
    out += ["", "## Unmatched configurations", ""]
    for side, key in (("A only", "only_a"), ("B only", "only_b")):
        items = ctx[key]
        out.append(f"{side} ({len(items)}):" + ("" if items else " none"))
        out += [f"- {u['label']} (cell {u['cell_id']}); nearest on the other side differs in {u['closest']}"
                for u in items]
        out.append("")
    out += ["## Manifests", ""]
    rows = [[s["role"], m["git_commit"], m["gpu"], m["driver"], m["cuda"], m["torch"], m["host"], m["date"],
             str(m["rows"])] for s in ctx["sides"] for m in s["manifests"]]
    out += _md_table(["side", "git commit", "gpu", "driver", "cuda", "torch", "host", "date", "rows"], rows)
    if ctx["trend"] or ctx["trend_note"]:
        out += ["", "## Trend", ""]
        out += [f"![trend]({ctx['trend']})"] if ctx["trend"] else []
        out += [ctx["trend_note"]] if ctx["trend_note"] else []
    return "\n".join(out) + "\n"


def html(ctx: dict[str, Any]) -> str:
    """The comparison as a self-contained HTML page (templates/compare.html.j2)."""
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=True, undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True)
    return env.get_template("compare.html.j2").render(**ctx)
