"""The result row: one per matrix cell, flat columns for pandas plus nested provenance.

Every row, whatever its status, has the axis columns, `status` and `reason`; finished rows add metric
columns (None where a metric does not apply), `timing_definition`, `artifacts` and the `manifest`.
"""

from __future__ import annotations

from longlive.measure.spread import TIMED_METRICS

__all__ = ["AXES", "IDENTITY", "LIST_METRICS", "METRICS", "NESTED", "STATUSES", "TIMED_METRICS", "TIMES", "empty_row"]

AXES = ("model", "precision", "attn", "kv_quant", "sp", "exchange", "steps", "decode", "hardware", "compile",
        "dp", "train_layout", "error_recycling", "dmd_quantised")
"""Matrix axes: config key = CLI override = result column (docs/architecture.md). An axis a workload does not
read is None in its rows: inference rows have no train_layout, training rows no decode or kv_quant."""

IDENTITY = ("cell_id", "experiment", "workload", "status", "reason", "frames", "seed", "repeats", "linear_quant",
            "linear_backend", "weight_rule")
"""status: ok | failed | skipped; reason: why a cell failed or was skipped (OOM, unsupported, missing extra);
repeats: timed runs behind the row's timed metrics; linear_quant / linear_backend / weight_rule: what the block
Linears really ran as (a packed NVFP4 checkpoint shows as nvfp4 whatever the precision's dtype), how, and the NVFP4
weight rule (None without them)."""

METRICS = (
    # inference speed (spec 05 timing definitions)
    "denoise_fps", "e2e_fps", "e2e_s", "first_chunk_latency_s",
    "chunk_ms_p10", "chunk_ms_median", "chunk_ms_p90", "load_s", "text_encode_s", "compile_s",
    "frames_video", "video_seconds",
    # interactivity: a prompt switch submitted at a chunk boundary → the new shot's first decoded frame in host memory
    "switch_latency_s",
    # VAE decode (workload vae_decode)
    "decode_fps", "decode_ms_median",
    # roofline: ceilings measured in the same run
    "gemm_tflops", "attn_tflops", "flop_per_frame", "ceiling_fps", "achieved_tflops", "mfu", "fraction_of_ceiling",
    # training (train: teacher-forcing iterations; dmd: DMD iterations, generator + critic then critic only)
    "iter_s", "tokens_per_s", "loss_first", "loss_last", "generator_loss", "critic_loss", "resident_gb",
    # memory
    "peak_allocated_gb", "peak_reserved_gb", "device_used_gb", "kv_cache_gb", "kv_packed_gb", "weights_gb",
    "kv_saturated_share",
    # quality
    "temporal_flickering", "latent_rel_err_vs_ref", "psnr_vs_ref", "vbench_quality", "vbench_semantic", "vbench_total",
    # fidelity gate: the worst chunk of a rollout vs its reference; attention error per call (workload attn_error)
    "latent_rel_err_max_chunk", "attn_rel_err_mean", "attn_rel_err_max", "attn_rel_err_vs_fp32",
    "attn_baseline_rel_err_vs_fp32",
    # quality over time (longlive.eval.drift) of the default windowed metric; any other windowed metric `m` adds
    # m_drift, m_worst_window, m_worst_window_index (and the list m_per_window) to the rows that measure it
    "temporal_flickering_drift", "temporal_flickering_worst_window", "temporal_flickering_worst_window_index",
)
# TIMED_METRICS (imported above): metrics that vary run to run. With `repeats` > 1 each is the median over repeats,
# and the row adds `<m>_lo`, `<m>_hi` (the interval, rule in timing_definition["repeats"]) and the list `<m>_repeats`.
LIST_METRICS = ("switch_latency_s_per_switch", "latent_rel_err_per_chunk", "psnr_per_chunk", "attn_rel_err_per_layer",
                "quality_window_centres_s", "temporal_flickering_per_window")
"""Columns holding a list (per chunk, per layer, per quality window), present only in rows that measure them; the
Parquet snapshot stores them as JSON text (`longlive.report.gate.as_list` reads either)."""
NESTED = ("timing_definition", "artifacts", "manifest", "config", "metrics_extra")
TIMES = ("started_at", "finished_at", "duration_s")
STATUSES = ("ok", "failed", "skipped")


def empty_row(cell_id: str, experiment: str, workload: str, axes: dict, frames: int | None, seed: int | None) -> dict:
    """A row with every column present (metrics None) so rows of any status stack into one table."""
    row = {"cell_id": cell_id, "experiment": experiment, "workload": workload, "status": "skipped", "reason": None,
           "frames": frames, "seed": seed, "repeats": None, "linear_quant": None, "linear_backend": None,
           "weight_rule": None}
    row.update({a: axes.get(a) for a in AXES})
    row.update({m: None for m in METRICS})
    row.update({n: {} for n in NESTED})
    row.update({t: None for t in TIMES})
    return row
