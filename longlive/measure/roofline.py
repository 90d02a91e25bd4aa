"""FLOP counting and measured ceilings for the denoise loop (spec 05, "The physical limit").

Per forward pass of one chunk (Lq query tokens, Lkv keys in the window):
  GEMM FLOP  = 2 · (4d² self q,k,v,o + 2d² cross q,o + 2·d·ffn) · Lq · layers   (text K/V: once per prompt)
  attn FLOP  = 4 · Lq · Lkv · d · layers     (QKᵀ and PV)
  cross FLOP = 4 · Lq · Ltext · d · layers
A chunk costs steps + 1 passes. Ceilings come from GEMM and attention rates measured in the same run on
the same device at the model's own shapes; MFU is achieved FLOP/s over the measured dense GEMM rate.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch

from longlive.model.attention import sdpa
from longlive.model.presets import ModelConfig


@dataclass(frozen=True)
class PassFlops:
    gemm: float
    attn: float
    cross: float

    @property
    def total(self) -> float:
        return self.gemm + self.attn + self.cross


def linear_macs_per_token_layer(cfg: ModelConfig) -> int:
    d = cfg.dim
    return 4 * d * d + 2 * d * d + 2 * d * cfg.ffn_dim


def pass_flops(cfg: ModelConfig, kv_tokens: int | None = None) -> PassFlops:
    """FLOPs of one forward pass of one chunk; kv_tokens defaults to the full window."""
    lq = cfg.chunk_frames * cfg.tokens_per_frame
    lkv = cfg.window_frames * cfg.tokens_per_frame if kv_tokens is None else kv_tokens
    L = cfg.num_layers
    return PassFlops(
        gemm=2.0 * linear_macs_per_token_layer(cfg) * lq * L,
        attn=4.0 * lq * lkv * cfg.dim * L,
        cross=4.0 * lq * cfg.text_len * cfg.dim * L,
    )


def chunk_flops(cfg: ModelConfig, steps: int, kv_tokens: int | None = None) -> float:
    return (steps + 1) * pass_flops(cfg, kv_tokens).total


def frames_per_chunk(cfg: ModelConfig) -> int:
    return cfg.vae_stride[0] * cfg.chunk_frames


def _time_ms(fn, device: torch.device, repeats: int) -> float:
    """Median device milliseconds of fn() after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
        else:
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


@torch.no_grad()
def measure_gemm_tflops(cfg: ModelConfig, device: torch.device | str, dtype: torch.dtype, repeats: int = 5) -> float:
    """Dense GEMM rate at the model's FFN up-projection shape [Lq, d] × [d, ffn]."""
    device = torch.device(device)
    lq = cfg.chunk_frames * cfg.tokens_per_frame
    a = torch.randn(lq, cfg.dim, device=device, dtype=dtype)
    b = torch.randn(cfg.dim, cfg.ffn_dim, device=device, dtype=dtype)
    ms = _time_ms(lambda: a @ b, device, repeats)
    return 2.0 * lq * cfg.dim * cfg.ffn_dim / (ms * 1e-3) / 1e12


@torch.no_grad()
def measure_fp8_gemm_tflops(cfg: ModelConfig, device: torch.device | str, repeats: int = 5) -> float | None:
    """FP8 `_scaled_mm` rate (row-wise scales, BF16 out) at the FFN up-projection shape; None off sm ≥ 8.9 CUDA."""
    device = torch.device(device)
    if device.type != "cuda" or torch.cuda.get_device_capability(device) < (8, 9):
        return None
    lq = cfg.chunk_frames * cfg.tokens_per_frame
    a = torch.randn(lq, cfg.dim, device=device).to(torch.float8_e4m3fn)
    b = torch.randn(cfg.ffn_dim, cfg.dim, device=device).to(torch.float8_e4m3fn)
    sa = torch.ones(lq, 1, device=device)
    sb = torch.ones(1, cfg.ffn_dim, device=device)
    ms = _time_ms(lambda: torch._scaled_mm(a, b.t(), scale_a=sa, scale_b=sb, out_dtype=torch.bfloat16), device,
                  repeats)
    return 2.0 * lq * cfg.dim * cfg.ffn_dim / (ms * 1e-3) / 1e12


@torch.no_grad()
def measure_attention_tflops(cfg: ModelConfig, device: torch.device | str, dtype: torch.dtype, backend: str,
                             repeats: int = 5) -> float:
    """Self-attention rate at the steady-state shape: chunk queries against the full window, non-causal."""
    device = torch.device(device)
    lq = cfg.chunk_frames * cfg.tokens_per_frame
    lkv = cfg.window_frames * cfg.tokens_per_frame
    q = torch.randn(1, lq, cfg.num_heads, cfg.head_dim, device=device, dtype=dtype)
    k = torch.randn(1, lkv, cfg.num_heads, cfg.head_dim, device=device, dtype=dtype)
    ms = _time_ms(lambda: sdpa(q, k, k, backend), device, repeats)
    return 4.0 * lq * lkv * cfg.dim / (ms * 1e-3) / 1e12


def ceiling_fps(cfg: ModelConfig, steps: int, gemm_tflops: float, attn_tflops: float) -> float:
    """Frames per second if every GEMM and attention FLOP ran at the measured rates, nothing else costing time."""
    f = pass_flops(cfg)
    seconds = (steps + 1) * ((f.gemm + f.cross) / (gemm_tflops * 1e12) + f.attn / (attn_tflops * 1e12))
    return frames_per_chunk(cfg) / seconds


def roofline_metrics(cfg: ModelConfig, steps: int, denoise_fps: float, device: torch.device | str,
                     dtype: torch.dtype, backend: str, fp8_gemm: bool = False) -> dict[str, float]:
    """Measured ceilings and how close a measured denoise_fps comes to them (same run, same device). With
    `fp8_gemm` (the Linears run real FP8 GEMMs) the GEMM rate, the ceiling and MFU use the FP8 `_scaled_mm` rate."""
    gemm = measure_fp8_gemm_tflops(cfg, device) if fp8_gemm else None
    gemm = gemm if gemm is not None else measure_gemm_tflops(cfg, device, dtype)
    attn = measure_attention_tflops(cfg, device, dtype, backend)
    per_frame = chunk_flops(cfg, steps) / frames_per_chunk(cfg)
    ceiling = ceiling_fps(cfg, steps, gemm, attn)
    achieved = denoise_fps * per_frame / 1e12
    return {"gemm_tflops": gemm, "attn_tflops": attn, "flop_per_frame": per_frame, "ceiling_fps": ceiling,
            "achieved_tflops": achieved, "mfu": achieved / gemm, "fraction_of_ceiling": denoise_fps / ceiling}


def training_metrics(step_seconds: list[float], tokens_per_step: int, flops_per_step: float, peak_tflops: float,
                     warmup: int = 1) -> dict[str, float]:
    """iter_s (median after warm-up), tokens/s and MFU for training (one precision per MFU, stated by caller)."""
    if len(step_seconds) <= warmup:
        raise ValueError(f"need more than {warmup} steps to drop the warm-up, got {len(step_seconds)}")
    it = statistics.median(step_seconds[warmup:])
    return {"iter_s": it, "tokens_per_s": tokens_per_step / it, "mfu": flops_per_step / it / (peak_tflops * 1e12)}
