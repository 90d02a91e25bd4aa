"""Reference MXFP4 (OCP Microscaling v1.0): E2M1 elements, 32-element blocks along the last dim, one E8M0
power-of-two scale per block, no tensor scale (4.25 bits/element).

Reference arithmetic per block (OCP MX §6.3 "conversion" rule, emax(E2M1) = 2):
  bm = max|x| (fp32, NaN propagates)
  e  = floor(log2(bm)) − 2, taken exactly from the fp32 exponent field (frexp), clamped to [−127, 127];
       bm == 0 → e = −127 (all codes are 0 anyway)
  scale byte = e + 127 (uint8, E8M0 bias 127); bm NaN/Inf → byte 255 (E8M0 NaN)
  y = x · 2^(−e)   (exact power-of-two multiply, 2^(−e) ∈ [2^−127, 2^127] is representable in fp32)
  code = round_to_e2m1(y): RNE on the E2M1 grid, saturating at ±6 (|y| < 8 always, so [6, 8) → 6); NaN → 0.
  x̂ = e2m1(code) · 2^e  (fp32, exact), cast to the output dtype; scale byte 255 → NaN.
"""

from __future__ import annotations

import torch

from .formats import e2m1_to_float, pack_nibbles, round_to_e2m1, unpack_nibbles
from .tensors import MXFP4Tensor

MX_BLOCK = 32
E8M0_BIAS = 127
E8M0_NAN = 255
E2M1_EMAX = 2


def _pow2(e: torch.Tensor) -> torch.Tensor:
    """Exact 2^e in fp32 for integer e in [−127, 127] (fp64 ldexp, then an exact cast)."""
    return torch.ldexp(torch.ones_like(e, dtype=torch.float64), e.to(torch.int64)).to(torch.float32)


def quantize_mxfp4(x: torch.Tensor) -> MXFP4Tensor:
    """Quantise `x` (last dim a multiple of 32) to MXFP4; values [rows, cols/2] packed, scales uint8 [rows, cols/32]."""
    if x.ndim == 0 or x.shape[-1] % MX_BLOCK:
        raise ValueError(f"MXFP4 needs a last dimension that is a multiple of {MX_BLOCK}, got shape {tuple(x.shape)}")
    shape = tuple(x.shape)
    xf = x.reshape(-1, x.shape[-1]).to(torch.float32)
    rows, cols = xf.shape
    xb = xf.reshape(rows, cols // MX_BLOCK, MX_BLOCK)
    bm = xb.abs().amax(dim=-1)
    _, ex = torch.frexp(bm)  # bm = m · 2^ex, m ∈ [0.5, 1) → floor(log2 bm) = ex − 1 (exact, subnormals included)
    e = torch.clamp(ex.to(torch.int32) - 1 - E2M1_EMAX, min=-E8M0_BIAS, max=E8M0_BIAS)
    e = torch.where(bm == 0, torch.full_like(e, -E8M0_BIAS), e)
    finite = torch.isfinite(bm)
    e = torch.where(finite, e, torch.zeros_like(e))
    y = xb * _pow2(-e)[..., None]
    y = torch.where(finite[..., None], y, torch.full_like(y, float("nan")))
    codes = round_to_e2m1(y).reshape(rows, cols)
    scales = torch.where(finite, (e + E8M0_BIAS).to(torch.int32), torch.full_like(e, E8M0_NAN)).to(torch.uint8)
    return MXFP4Tensor(values=pack_nibbles(codes), scales=scales, shape=shape)


def mxfp4_scale_float(scales: torch.Tensor) -> torch.Tensor:
    """E8M0 bytes → fp32 2^(byte − 127); byte 255 → NaN."""
    b = scales.to(torch.int32)
    out = _pow2(torch.where(b == E8M0_NAN, torch.zeros_like(b), b - E8M0_BIAS))
    return torch.where(b == E8M0_NAN, torch.full_like(out, float("nan")), out)


def dequantize_mxfp4(q: MXFP4Tensor, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """x̂ = e2m1(code) · 2^(scale − 127) in fp32 (exact), cast to `dtype`, original shape."""
    v = e2m1_to_float(unpack_nibbles(q.values))
    s = mxfp4_scale_float(q.scales).repeat_interleave(MX_BLOCK, dim=1)
    return (v * s).to(dtype).reshape(q.shape)


__all__ = ["MX_BLOCK", "dequantize_mxfp4", "mxfp4_scale_float", "quantize_mxfp4"]
