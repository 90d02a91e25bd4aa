"""Fidelity of a low-precision configuration: the same seed through a reference and a candidate configuration,
compared on final latents (relative error) and decoded video (PSNR).

Precision names are the runner's (`longlive/experiments/precision/*.yaml`), so `nvfp4` here means exactly what it
means in a sweep (weights, activations, backend, rule).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from longlive.eval.metrics import compute_metrics
from longlive.experiments import precision_config, request_fields
from longlive.infer.assemble import make_video
from longlive.infer.video import VideoRequest


def precision_fields(name: str) -> dict[str, Any]:
    """VideoRequest fields of a named precision config (longlive.experiments.request_fields)."""
    return request_fields(precision_config(name))


def compare(base: VideoRequest, ref: tuple[str, str], cand: tuple[str, str], out: Path) -> dict[str, Any]:
    """Run base with (precision, kv_quant) = ref and = cand; return both runs' key numbers and the fidelity."""
    runs = {}
    for tag, (prec, kv) in (("reference", ref), ("candidate", cand)):
        req = dataclasses.replace(base, kv_quant=kv, save_latents=True, **precision_fields(prec))
        res = make_video(req, out / tag)
        runs[tag] = {"precision": prec, "kv_quant": kv, "notes": res.notes, **{k: res.metrics.get(k) for k in (
            "denoise_fps", "chunk_ms_median", "weights_gb", "kv_cache_gb", "peak_allocated_gb")}}
    fid = compute_metrics(["latent_rel_err_vs_ref", "psnr_vs_ref"],
                          latents=out / "candidate" / "latents.safetensors",
                          ref_latents=out / "reference" / "latents.safetensors",
                          frames=out / "candidate" / "video.mp4", ref_frames=out / "reference" / "video.mp4")
    return {"reference": runs["reference"], "candidate": runs["candidate"], **fid,
            "timing_definition": "denoise_fps / chunk_ms_median as in spec 05; fidelity: ||x−ref||/||ref|| of the "
                                 "final latents and PSNR (dB, 255 peak) of the decoded uint8 videos"}
