"""The fidelity gate: which configurations may count toward a speed target (issue 20; spec 05, "The fidelity gate").

A configuration (attn, precision, kv_quant, steps) passes when
1. its latent error against its reference cell (BF16 attention, BF16 Linears, no KV quantisation, same steps:
   `latent_rel_err_vs_ref`) is at most `factor` × the error of the baseline path (FP8 GEMMs with BF16 attention,
   the `precision=fp8, attn=cudnn, kv_quant=none` cell of the same model and steps) — low-precision attention may
   cost at most half as much again as FP8 GEMMs already do; and
2. on the tiny preset (shipped weights, several seeds), the mean over seeds of each tiny metric lies within the
   seed-to-seed spread (max − min over seeds) of the tiny reference configuration's mean.

`gate_margin` is the smallest slack over the checks, as a fraction of each allowance (1 − value / limit): 0 on the
limit (a tie passes), negative when failing. The rule is data (`GateRule`); its checks are those of the general
quality gates (`report.gates`: max_ratio_of and within_spread), which attn_lowp and attn_lowp_tiny also declare in
their `gates` so every row carries its verdict. This module keeps the one judgement they cannot make alone: a 5B
configuration judged by the tiny rows of the same attn / precision / kv_quant (the report's "Fidelity gate").
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from longlive.names import INFERENCE_WORKLOADS
from longlive.report.compare import is_missing
from longlive.report.gates import (
    Check,
    attn_of,
    combine,
    judge_spread,
    judge_value,
    number,
    select,
    undecided,
    with_attn,
)

__all__ = ["CONFIG_KEYS", "GATE_COLUMNS", "GateRule", "apply_gate", "as_list", "attn_of", "gate_table",
           "tiny_reference_stats", "with_attn"]

CONFIG_KEYS = ("attn", "precision", "kv_quant", "steps")
"""What names a configuration in the gate's table (`attn` is read from the row's config when not a column)."""

GATE_COLUMNS = ("gate_baseline_err", "gate_threshold", "gate_passed", "gate_margin", "gate_rule")


@dataclass(frozen=True)
class GateRule:
    """The gate's knobs; the defaults are issue 20's rule."""

    factor: float = 1.5
    error: str = "latent_rel_err_vs_ref"
    baseline: dict[str, Any] = field(default_factory=lambda: {"attn": "cudnn", "precision": "fp8",
                                                              "kv_quant": "none"})
    match: tuple[str, ...] = ("experiment", "gpu_name", "model", "frames", "steps")
    """Columns a row and its baseline row share (those present in the table)."""
    tiny_model: str = "tiny"
    tiny_metrics: tuple[str, ...] = ("temporal_flickering",)
    tiny_reference: dict[str, Any] = field(default_factory=lambda: {"attn": "cudnn", "precision": "bf16",
                                                                    "kv_quant": "none"})
    tiny_keys: tuple[str, ...] = ("attn", "precision", "kv_quant")
    """What a 5B configuration and its tiny rows share (the tiny preset runs at its own steps)."""
    spread_factor: float = 1.0

    def describe(self) -> str:
        base = " ".join(f"{k}={v}" for k, v in self.baseline.items())
        ref = " ".join(f"{k}={v}" for k, v in self.tiny_reference.items())
        return (f"{self.error} ≤ {self.factor:g} × the {base} row's (same {', '.join(self.match)}); tiny preset: "
                f"|mean over seeds − reference mean| of {', '.join(self.tiny_metrics)} ≤ {self.spread_factor:g} × the "
                f"reference's seed-to-seed spread (max − min over seeds; reference {ref})")


def as_list(v: Any) -> list | None:
    """A list column's value: a list (JSONL), JSON text (the Parquet snapshot) or an array; None when absent."""
    if isinstance(v, str):
        try:
            v = json.loads(v)
        except json.JSONDecodeError:
            return None
    if hasattr(v, "tolist") and not isinstance(v, (str, bytes)):
        v = v.tolist()
    return list(v) if isinstance(v, (list, tuple)) else None


def _ok_rows(df: pd.DataFrame) -> pd.DataFrame:
    if df.empty:
        return df
    keep = df["status"].map(lambda s: str(s).lower() == "ok") if "status" in df.columns else True
    wl = df["workload"].map(lambda w: is_missing(w) or w in INFERENCE_WORKLOADS) if "workload" in df.columns else True
    return df[keep & wl]


def tiny_reference_stats(tiny: pd.DataFrame, rule: GateRule) -> dict[str, tuple[float, float, int]]:
    """metric -> (mean, spread = max − min, seeds) over the tiny reference configuration's rows."""
    ref = select(tiny, rule.tiny_reference)
    out = {}
    for m in rule.tiny_metrics:
        vals = pd.to_numeric(ref[m], errors="coerce").dropna() if m in ref.columns else pd.Series(dtype=float)
        if len(vals):
            out[m] = (float(vals.mean()), float(vals.max() - vals.min()), len(vals))
    return out


def _metric_values(rows: pd.DataFrame, metric: str) -> list[float]:
    return [float(v) for v in pd.to_numeric(rows[metric], errors="coerce").dropna()] if metric in rows.columns else []


def apply_gate(df: pd.DataFrame, rule: GateRule | None = None) -> pd.DataFrame:
    """The ok inference rows of models other than the tiny one, with an `attn` column and the gate's columns:
    gate_baseline_err, gate_threshold (factor × baseline), gate_passed (False when a check fails; None when one
    cannot be made: no error, no baseline row, no tiny rows for the configuration), gate_margin (the smallest slack)
    and gate_rule (each check with its numbers). The checks are `report.gates`' max_ratio_of (the latent half) and
    within_spread (the tiny half, judged on the tiny rows of the row's attn / precision / kv_quant)."""
    rule = rule or GateRule()
    ok = with_attn(_ok_rows(df))
    if ok.empty:
        return ok.assign(**{c: [] for c in GATE_COLUMNS})
    is_tiny = ok["model"].map(lambda m: m == rule.tiny_model)
    rows, tiny = ok[~is_tiny], ok[is_tiny]
    tiny_ref = select(tiny, rule.tiny_reference)
    match = [c for c in rule.match if c in ok.columns]
    baselines = select(rows, rule.baseline)
    latent = Check(rule.error, "max_ratio_of", rule.factor, dict(rule.baseline))
    out: dict[str, list] = {c: [] for c in GATE_COLUMNS}
    for _, r in rows.iterrows():
        outcomes, notes = [], []
        err = number(r.get(rule.error))
        base = select(baselines, {c: r[c] for c in match})
        b = number(base[rule.error].iloc[-1]) if not base.empty and rule.error in base.columns else math.nan
        if math.isnan(err):
            outcomes.append(undecided(latent, "no value"))
            notes.append(f"no {rule.error} (no reference cell, or non-finite latents)")
        elif math.isnan(b):
            outcomes.append(undecided(latent, "no baseline"))
            notes.append(f"no baseline {rule.error} ({' '.join(f'{k}={v}' for k, v in rule.baseline.items())}, "
                         f"same {', '.join(match)})")
        else:
            outcomes.append(judge_value(latent, err, b))
            notes.append(outcomes[-1].text)
        if rule.tiny_metrics and tiny.empty:
            notes.append("tiny half not checked: no tiny rows in these results")
        elif rule.tiny_metrics:
            mine = select(tiny, {k: r[k] for k in rule.tiny_keys if k in r.index})
            for m in rule.tiny_metrics:
                check = Check(m, "within_spread", rule.spread_factor)
                vals, refs = _metric_values(mine, m), _metric_values(tiny_ref, m)
                if not refs or not vals:
                    outcomes.append(undecided(check, "no rows"))
                    notes.append(f"tiny {m}: {'no rows for this configuration' if refs else 'no reference rows'}")
                    continue
                outcomes.append(judge_spread(check, vals, refs, min_seeds=1))  # one seed: a zero allowance
                notes.append(f"tiny {outcomes[-1].text}")
        passed, margin = combine(outcomes)
        out["gate_baseline_err"].append(b)
        out["gate_threshold"].append(rule.factor * b)
        out["gate_passed"].append(passed)
        out["gate_margin"].append(margin)
        out["gate_rule"].append("; ".join(notes))
    return rows.assign(**out)


def gate_table(df: pd.DataFrame, rule: GateRule | None = None) -> pd.DataFrame:
    """One row per gated configuration for the report: the configuration, speed next to fidelity, pass/fail."""
    gated = apply_gate(df, rule)
    cols = ["model", *CONFIG_KEYS, "denoise_fps", "latent_rel_err_vs_ref", "latent_rel_err_max_chunk",
            "psnr_vs_ref", *GATE_COLUMNS[1:]]
    present = [c for c in cols if c in gated.columns]
    return gated[present].reset_index(drop=True)
