"""longlive.eval: VBench scoring, weight-free metrics (flicker, fidelity), VBench-Long clips, the VBench adapter.

Importing this package registers the built-in metrics in `METRICS`; the real `vbench` package is imported only by
`vbench_adapter.run_vbench` and the flicker check helpers.
"""

from .clips import clip_ranges, score_long_video
from .fidelity import latent_rel_err, psnr
from .flicker import temporal_flickering
from .metrics import METRICS, Metric, Needs, compute_metrics, get_metric, register_metric
from .scoring import (
    PAPER_TABLE4,
    PAPER_TABLE5,
    quality_score,
    semantic_score,
    total_score,
    vbench_scores,
)
from .vbench_adapter import MissingWeightsError, VBenchUnavailableError, check_weights, run_vbench

__all__ = [
    "METRICS",
    "PAPER_TABLE4",
    "PAPER_TABLE5",
    "Metric",
    "MissingWeightsError",
    "Needs",
    "VBenchUnavailableError",
    "check_weights",
    "clip_ranges",
    "compute_metrics",
    "get_metric",
    "latent_rel_err",
    "psnr",
    "quality_score",
    "register_metric",
    "run_vbench",
    "score_long_video",
    "semantic_score",
    "temporal_flickering",
    "total_score",
    "vbench_scores",
]
