"""The `attn_error` workload: how far a candidate attention kernel's output is from the BF16 kernel's, per layer, on
the windows of a real rollout (spec 03, "FP8 attention"; the fidelity gate of `longlive.report.gate`).

The cell's preset generates with the BF16 baseline kernel (what `attn=auto` picks: cuDNN on sm_90, math on the
CPU). At the probed chunks — the first whose window is full and the last — every self-attention call of every
forward also runs the cell's `attn` on the same q and K/V window, as the KV cache hands it over (compute-dtype
tensors, or FP8 windows with kv_quant=fp8), and records the relative error of its output against the baseline's; on
a few layers both are also compared with an FP32 reference (float64 on the CPU). The rollout continues with the
baseline's output, so each layer's number is the kernel's own error on the inputs the model really sees, not an
error compounded through earlier layers (that is what `latent_rel_err_per_chunk` of the infer rows measures).

The probe is `generate`'s `attn_probe` hook: it builds each forward's attention from the cache the way
`dit.cached_attention` does, so with kv_quant=none the rollout's latents equal a plain baseline run. The model's
`attn_backend` is set to the candidate after building, so `generate` allocates the KV cache the candidate reads in
deployment (kv_quant=fp8: FP8 windows as stored, `longlive.quant.kv`); cross-attention runs cuDNN BF16 either way
(`sdpa_backend`), and self-attention — the probe — runs the baseline kernel.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import torch

import longlive.quant.attention  # noqa: F401  (registers the low-precision backends by name)
from longlive.eval.fidelity import latent_rel_err
from longlive.experiments.spec import RunSpec
from longlive.infer.assemble import build
from longlive.infer.pipeline import generate
from longlive.infer.video import VideoRequest, validate
from longlive.model.attention import KV, FP8Window, resolve_backend, sdpa, unavailable_reason
from longlive.model.kv_cache import KVCache
from longlive.model.presets import ModelConfig
from longlive.names import ATTN_LOWP
from longlive.workloads import CellContext
from longlive.workloads.checks import cell_device, feature_reason, hardware_reason
from longlive.workloads.infer import video_request

FP32_LAYERS = 3
"""Layers (evenly spread, first and last included) whose calls are also compared with the FP32 reference."""

DEFINITION = (
    "attn_rel_err_*: ||o_attn − o_base||₂ / ||o_base||₂ (float64) of one self-attention call's output [B, Lq, H, D], "
    "o_attn from the cell's attn and o_base from the rollout's BF16 kernel (attn_baseline) on the same q and K/V "
    "window; per layer the mean over every forward (denoising steps and clean re-run) of the probed chunks "
    "(metrics_extra.probe_chunks: the first full-window chunk and the last); attn_rel_err_max is the largest single "
    "call. *_vs_fp32: against attention computed in FP32 (float64 on CPU) on metrics_extra.fp32_layers")


def baseline_attn(device: torch.device, dtype: torch.dtype) -> str:
    """The rollout's kernel: what attn=auto picks for this device and dtype (cuDNN BF16 on sm_90)."""
    return resolve_backend("auto", device, dtype)


def rollout_request(spec: RunSpec) -> VideoRequest:
    """The cell's generation with the baseline kernel and without a VAE (latents are not this workload's output)."""
    req = video_request(spec)
    dev = cell_device(spec)
    return dataclasses.replace(req, attn=baseline_attn(dev, req.torch_dtype), decode="none", vae_device=None,
                               save_latents=False)


def probe_chunks(cfg: ModelConfig, frames: int) -> list[int]:
    """The first chunk that attends a full window (its own slot included) and the last chunk of the rollout."""
    chunks = frames // cfg.chunk_frames
    full = min(cfg.window_frames // cfg.chunk_frames, chunks) - 1
    return sorted({full, chunks - 1})


def spread_layers(num_layers: int, count: int = FP32_LAYERS) -> list[int]:
    """`count` layer indices spread evenly from the first to the last."""
    if count <= 1 or num_layers == 1:
        return [0]
    return sorted({round(i * (num_layers - 1) / (count - 1)) for i in range(count)})


def reference_attention(q: torch.Tensor, k: KV, v: KV, dtype: torch.dtype = torch.float32,
                        max_scores: int = 1 << 28) -> torch.Tensor:
    """Non-causal attention [B, Lq, H, D] computed in `dtype` (scores, softmax and P·V; TF32 off), a few heads at
    a time so the score matrix stays under `max_scores` elements (the 5B window: one head, 0.8 GB in FP32)."""
    k = k.dequantize(torch.float32) if isinstance(k, FP8Window) else k
    v = v.dequantize(torch.float32) if isinstance(v, FP8Window) else v
    qh, kh, vh = (t.transpose(1, 2).to(dtype) for t in (q, k, v))  # [B, H, L, D]
    B, H, Lq, D = qh.shape
    group = max(1, max_scores // max(1, B * Lq * kh.shape[2]))
    out = torch.empty_like(qh)
    precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        for h in range(0, H, group):
            s = qh[:, h:h + group] @ kh[:, h:h + group].transpose(-1, -2) * (1.0 / math.sqrt(D))
            out[:, h:h + group] = torch.softmax(s, dim=-1) @ vh[:, h:h + group]
            del s
    finally:
        torch.set_float32_matmul_precision(precision)
    return out.transpose(1, 2)


class AttentionProbe:
    """`generate`'s attn_probe: attention over the cache with the rollout's kernel, plus the candidate (and the FP32
    reference on `fp32_layers`) on the same inputs at the probed chunks. Errors are kept per chunk, per forward."""

    def __init__(self, candidate: str, baseline: str, chunks: list[int], num_layers: int, fp32_layers: list[int],
                 ref_dtype: torch.dtype = torch.float32):
        self.candidate, self.baseline, self.chunks, self.num_layers = candidate, baseline, set(chunks), num_layers
        self.fp32_layers, self.ref_dtype = set(fp32_layers), ref_dtype
        # chunk -> one [num_layers] list per probed forward (NaN: a layer not reached)
        self.errors: dict[int, list[list[float]]] = {}
        self.fp32: dict[str, dict[int, list[float]]] = {"attn": {}, "baseline": {}}  # layer -> one value per call

    def __call__(self, cache: KVCache, model_backend: str):
        """attn_fn over `cache` with the baseline kernel (`model_backend`, the candidate, only shaped the cache)."""

        def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer: int) -> torch.Tensor:
            kw, vw = cache.update(layer, k, v)
            out = sdpa(q, kw, vw, self.baseline)
            chunk = cache.slot_chunk[cache.current_slot]
            if chunk in self.chunks:
                self._probe(chunk, layer, q, kw, vw, out)
            return out

        return attend

    @torch.no_grad()
    def _probe(self, chunk: int, layer: int, q: torch.Tensor, k: KV, v: KV, base: torch.Tensor) -> None:
        forwards = self.errors.setdefault(chunk, [])
        if layer == 0 or not forwards:
            forwards.append([math.nan] * self.num_layers)
        cand = sdpa(q, k, v, self.candidate)
        forwards[-1][layer] = latent_rel_err(cand, base)
        if layer in self.fp32_layers:
            ref = reference_attention(q, k, v, self.ref_dtype)
            self.fp32["attn"].setdefault(layer, []).append(latent_rel_err(cand, ref))
            self.fp32["baseline"].setdefault(layer, []).append(latent_rel_err(base, ref))

    def columns(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(row columns, metrics_extra): per-layer means over every probed forward, their mean and the largest call."""
        calls = torch.tensor([f for fs in self.errors.values() for f in fs], dtype=torch.float64)
        if calls.numel() == 0:
            raise RuntimeError(f"attn_error probed no attention call (chunks {sorted(self.chunks)} never ran)")
        per_layer = calls.mean(dim=0)  # NaN propagates: a broken kernel shows
        by_chunk = {str(c): torch.tensor(fs, dtype=torch.float64).mean(dim=0).tolist()
                    for c, fs in sorted(self.errors.items())}

        def mean(xs: list[float]) -> float:
            return float(torch.tensor(xs, dtype=torch.float64).mean()) if xs else math.nan

        fp32 = {kind: {str(layer): mean(v) for layer, v in sorted(d.items())} for kind, d in self.fp32.items()}
        cols = {"attn_rel_err_per_layer": per_layer.tolist(), "attn_rel_err_mean": float(per_layer.mean()),
                "attn_rel_err_max": float(calls.max()),
                "attn_rel_err_vs_fp32": mean([x for v in self.fp32["attn"].values() for x in v]),
                "attn_baseline_rel_err_vs_fp32": mean([x for v in self.fp32["baseline"].values() for x in v])}
        extra = {"probe_chunks": sorted(self.chunks), "probed_forwards": {str(c): len(fs) for c, fs in
                                                                          sorted(self.errors.items())},
                 "attn_rel_err_by_chunk": by_chunk, "fp32_layers": sorted(self.fp32_layers),
                 "attn_rel_err_vs_fp32_by_layer": fp32["attn"],
                 "attn_baseline_rel_err_vs_fp32_by_layer": fp32["baseline"]}
        return cols, extra


class AttnErrorWorkload:
    """Per-layer error of the cell's `attn` against the BF16 kernel on a rollout's windows."""

    name = "attn_error"

    def check(self, spec: RunSpec) -> str | None:
        if spec.attn == "auto":
            raise ValueError("workload=attn_error measures the cell's attn against the BF16 kernel attn=auto picks; "
                             f"attn=auto names no candidate: give attn={' or attn='.join(ATTN_LOWP)} (or a PyTorch "
                             "kernel)")
        if spec.sp != 1:
            raise ValueError(f"workload=attn_error probes attention on one device; got sp={spec.sp}: give sp=1")
        if spec.relative_rope:
            raise ValueError("workload=attn_error does not probe relative_rope=true (keys are rotated after the "
                             "window is read): give relative_rope=false")
        if spec.attn in ATTN_LOWP and spec.precision.dtype == "fp32":
            raise ValueError(f"attn={spec.attn} takes BF16/FP16 activations, but precision={spec.precision.name} "
                             "runs in fp32: give precision=bf16 (or fp8)")
        reason = hardware_reason(spec) or feature_reason(spec)
        if reason:
            return reason
        try:
            validate(rollout_request(spec), launched=False)
        except FileNotFoundError as exc:
            return f"missing weights: {exc}"
        reason = unavailable_reason(spec.attn, cell_device(spec))
        return f"attn={spec.attn}: {reason}" if reason else None

    def run(self, spec: RunSpec, ctx: CellContext) -> dict[str, Any]:
        req = rollout_request(spec)
        pipe = build(req)
        cfg, dev = pipe.config, cell_device(spec)
        probe = AttentionProbe(spec.attn, pipe.model.attn_backend, probe_chunks(cfg, req.frames), cfg.num_layers,
                               spread_layers(cfg.num_layers),
                               ref_dtype=torch.float64 if dev.type == "cpu" else torch.float32)
        pipe.model.attn_backend = spec.attn  # shapes the KV cache as the candidate reads it (module docstring)
        t0 = time.perf_counter()
        res = generate(pipe.model, pipe.spec, pipe.embeds, image_latent=pipe.image_latent, attn_probe=probe)
        wall = time.perf_counter() - t0
        cols, extra = probe.columns()
        extra.update({"windows": [res.windows[c] for c in sorted(probe.chunks)], "rollout_s": wall,
                      "linear_quant_source": pipe.linear_quant_source})
        return {**cols, "attn": spec.attn, "attn_baseline": probe.baseline,
                # attn_error is not an inference workload to the runner's axes: say what the rollout ran
                "kv_quant": spec.kv_quant.name, "steps": spec.steps, "compile": req.compile,
                "linear_quant": pipe.linear_quant, "linear_backend": pipe.linear_backend,
                "weight_rule": pipe.weight_rule, "timing_definition": {"attn_rel_err": DEFINITION},
                "metrics_extra": extra}
