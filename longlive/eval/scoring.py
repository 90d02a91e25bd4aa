"""The official VBench scoring (spec 05 "VBench scoring constants") as data, plus the paper's VBench tables.

Units, precisely:

- **Inputs** are raw VBench dimension scores as VBench itself writes them to `*_eval_results.json`: fractions
  in [0, 1] (e.g. subject consistency 0.9748; imaging quality is already divided by 100 by VBench). A value
  above 1 is rejected, because a percent slipped in by mistake would otherwise score silently wrong.
- **Normalised** values are `(raw − min) / (max − min)` per dimension, *not* clipped (the official script
  does not clip: a flickering score below its min 0.6293 normalises below 0), then multiplied by the
  dimension weight (1, dynamic degree 0.5).
- **Outputs** of `quality_score`, `semantic_score` and `total_score` are percent, i.e. 100 × the official
  script's fractions: the numbers papers print (LongLive-2.0 BF16: 86.67 quality / 78.63 semantic / 85.06).
  Quality = Σ weighted normalised / Σ weights = / 6.5; semantic = / 9; total = (4·q + s)/5 in whatever unit
  q and s are given.
- Per-dimension numbers in papers (Table 5) are raw × 100, *not* normalised: see `dimension_percent`.

Dimension names are VBench's module names (`subject_consistency`); the leaderboard's spelling with spaces
("subject consistency", any case) is accepted too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

QUALITY_DIMENSIONS: tuple[str, ...] = (
    "subject_consistency",
    "background_consistency",
    "temporal_flickering",
    "motion_smoothness",
    "dynamic_degree",
    "aesthetic_quality",
    "imaging_quality",
)
SEMANTIC_DIMENSIONS: tuple[str, ...] = (
    "object_class",
    "multiple_objects",
    "human_action",
    "color",
    "spatial_relationship",
    "scene",
    "appearance_style",
    "temporal_style",
    "overall_consistency",
)
DIMENSIONS: tuple[str, ...] = QUALITY_DIMENSIONS + SEMANTIC_DIMENSIONS
"""All 16 VBench dimensions, quality first."""

NORMALIZATION: dict[str, tuple[float, float]] = {
    "subject_consistency": (0.1462, 1.0),
    "background_consistency": (0.2615, 1.0),
    "temporal_flickering": (0.6293, 1.0),
    "motion_smoothness": (0.706, 0.9975),
    "dynamic_degree": (0.0, 1.0),
    "aesthetic_quality": (0.0, 1.0),
    "imaging_quality": (0.0, 1.0),
    "object_class": (0.0, 1.0),
    "multiple_objects": (0.0, 1.0),
    "human_action": (0.0, 1.0),
    "color": (0.0, 1.0),
    "spatial_relationship": (0.0, 1.0),
    "scene": (0.0, 0.8222),
    "appearance_style": (0.0009, 0.2855),
    "temporal_style": (0.0, 0.364),
    "overall_consistency": (0.0, 0.364),
}
"""(min, max) of each dimension's raw score, from VBench's official scoring constants."""

WEIGHTS: dict[str, float] = {d: (0.5 if d == "dynamic_degree" else 1.0) for d in DIMENSIONS}
QUALITY_WEIGHT = 4.0
SEMANTIC_WEIGHT = 1.0


def canonical_dimension(name: str) -> str:
    """`"Subject Consistency"` / `"subject consistency"` / `"subject_consistency"` → `"subject_consistency"`."""
    key = name.strip().lower().replace(" ", "_").replace("-", "_")
    if key not in NORMALIZATION:
        raise KeyError(f"unknown VBench dimension {name!r}; known: {', '.join(DIMENSIONS)}")
    return key


def _checked_raw(dim: str, raw: float) -> float:
    value = float(raw)
    if not math.isfinite(value) or value < 0.0 or value > 1.0:
        hint = " (looks like percent: pass VBench's raw fraction, i.e. divide by 100)" if 1.0 < value <= 100.0 else ""
        raise ValueError(f"raw VBench score for {dim} must be a fraction in [0, 1], got {raw!r}{hint}")
    return value


def normalize(dim: str, raw: float) -> float:
    """(raw − min)/(max − min) for one dimension, unweighted and unclipped (fraction, not percent)."""
    dim = canonical_dimension(dim)
    lo, hi = NORMALIZATION[dim]
    return (_checked_raw(dim, raw) - lo) / (hi - lo)


def weighted_normalized(dims: Mapping[str, float]) -> dict[str, float]:
    """Every given dimension normalised and weighted (fractions); names are canonicalised, unknown ones rejected."""
    out: dict[str, float] = {}
    for name, raw in dims.items():
        dim = canonical_dimension(name)
        if dim in out:
            raise ValueError(f"dimension {dim} given twice (as {name!r} and another spelling)")
        out[dim] = normalize(dim, raw) * WEIGHTS[dim]
    return out


def _group_score(dims: Mapping[str, float], group: tuple[str, ...], label: str) -> float:
    norm = weighted_normalized(dims)
    missing = [d for d in group if d not in norm]
    if missing:
        raise KeyError(f"{label} score needs all of {', '.join(group)}; missing: {', '.join(missing)}")
    return 100.0 * sum(norm[d] for d in group) / sum(WEIGHTS[d] for d in group)


def quality_score(dims: Mapping[str, float]) -> float:
    """VBench quality score in percent from raw fractions of the 7 quality dimensions (others are ignored)."""
    return _group_score(dims, QUALITY_DIMENSIONS, "quality")


def semantic_score(dims: Mapping[str, float]) -> float:
    """VBench semantic score in percent from raw fractions of the 9 semantic dimensions (others are ignored)."""
    return _group_score(dims, SEMANTIC_DIMENSIONS, "semantic")


def total_score(quality: float, semantic: float) -> float:
    """(4·quality + semantic)/5, in the unit of its inputs (percent in, percent out)."""
    return (QUALITY_WEIGHT * quality + SEMANTIC_WEIGHT * semantic) / (QUALITY_WEIGHT + SEMANTIC_WEIGHT)


def dimension_percent(dims: Mapping[str, float]) -> dict[str, float]:
    """Raw fractions → raw × 100, how papers print single dimensions (Table 5); no normalisation."""
    return {canonical_dimension(k): 100.0 * _checked_raw(canonical_dimension(k), v) for k, v in dims.items()}


def vbench_scores(dims: Mapping[str, float]) -> dict[str, float | None]:
    """The result-row columns `vbench_quality`, `vbench_semantic`, `vbench_total` (percent) from raw fractions.

    A group with none of its dimensions present gives None (e.g. a custom-prompt run, where VBench cannot score
    the semantic dimensions); a group with some but not all present is an error, since a partial average is not
    the official score. `vbench_total` needs both groups.
    """
    have = {canonical_dimension(k) for k in dims}
    out: dict[str, float | None] = {"vbench_quality": None, "vbench_semantic": None, "vbench_total": None}
    for col, group, fn in (
        ("vbench_quality", QUALITY_DIMENSIONS, quality_score),
        ("vbench_semantic", SEMANTIC_DIMENSIONS, semantic_score),
    ):
        if have & set(group):
            out[col] = fn(dims)  # raises, naming what is missing, on a partial group
    if out["vbench_quality"] is not None and out["vbench_semantic"] is not None:
        out["vbench_total"] = total_score(out["vbench_quality"], out["vbench_semantic"])
    return out


# ---------------------------------------------------------------------------------------------------------------
# The paper's numbers (LongLive-2.0, arXiv 2605.18739; spec 05), in percent as printed.


def _t4(
    model: str, precision: str | None, steps: int | None, total: float, quality: float | None, semantic: float | None
) -> dict[str, str | int | float | None]:
    return {
        "model": model,
        "precision": precision,
        "steps": steps,
        "total": total,
        "quality": quality,
        "semantic": semantic,
    }


PAPER_TABLE4: dict[str, dict[str, str | int | float | None]] = {
    "LongLive-2.0 5B BF16 4-step": _t4("LongLive-2.0 5B", "bf16", 4, 85.06, 86.67, 78.63),
    "LongLive-2.0 5B NVFP4 4-step": _t4("LongLive-2.0 5B", "nvfp4", 4, 84.51, 86.43, 76.81),
    "LongLive-2.0 5B NVFP4 2-step": _t4("LongLive-2.0 5B", "nvfp4", 2, 83.14, 85.40, 74.12),
    "LongLive 1.3B": _t4("LongLive 1.3B", None, None, 84.87, 86.97, 76.47),
    "Self-Forcing": _t4("Self-Forcing", None, None, 84.31, 85.07, 81.28),
    "Wan2.2-TI2V-5B 50-step": _t4("Wan2.2-TI2V-5B", None, 50, 83.32, None, None),
}
"""Table 4, VBench (short): total / quality / semantic in percent; None where the spec gives no number.
Total = (4·quality + semantic)/5 reproduces every row that has both (tested)."""

PAPER_TABLE5: dict[str, dict[str, str | int | float | None]] = {
    "LongLive-2.0": {
        "model": "LongLive-2.0 5B",
        "precision": "bf16",
        "video_seconds": 60,
        "subject_consistency": 97.48,
        "background_consistency": 97.00,
        "motion_smoothness": 98.86,
        "dynamic_degree": 60.62,
        "aesthetic_quality": 53.68,
        "imaging_quality": 65.51,
    },
    "LongLive-2.0 NVFP4": {
        "model": "LongLive-2.0 5B",
        "precision": "nvfp4",
        "video_seconds": 60,
        "subject_consistency": 97.62,
        "background_consistency": 96.97,
        "motion_smoothness": 98.94,
        "dynamic_degree": 45.88,
        "aesthetic_quality": 53.72,
        "imaging_quality": 66.24,
    },
}
"""Table 5, VBench-Long on 60 s videos: per-dimension raw scores × 100 (not normalised). The spec names only the
second row's precision (NVFP4); the first row is taken to be the BF16 default."""
