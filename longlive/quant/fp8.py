"""Reference FP8 (E4M3) quantiser with tensor / row / 1×128 / 128×128 scaling (the torch._scaled_mm layouts).

Reference arithmetic (fp32 IEEE, correctly rounded division), on the 2-D view x [rows, cols] converted to fp32:
  amax_grp = max|x| over the group (NaN propagates)
  scale    = amax_grp / 448                 (fp32 division); scale == 0 (all-zero group or underflow) → 1.0
  data     = e4m3(clamp(x / scale, ±448))   (fp32 division, RNE cast, NaN → 0x7F)
  x̂        = float(data) · scale            (fp32), cast to the requested dtype.
Groups: "tensor" one group; "row" each row; "block1x128" each 128 consecutive elements of a row; "block128x128"
each 128×128 tile (rows need not be a multiple of 128: the last row tile is partial). Block granularities need
cols % 128 == 0. A NaN/Inf in a group makes that group's scale NaN/Inf, so the group dequantises to NaN.
"""

from __future__ import annotations

import torch

from longlive.model.attention import FP8Window

from .e4m3 import abs_max, scale_for, write_e4m3
from .formats import E4M3_MAX, to_e4m3
from .tensors import FP8Tensor

GRANULARITIES = ("tensor", "row", "block1x128", "block128x128")
TILE = 128


def _group_amax(xf: torch.Tensor, granularity: str) -> torch.Tensor:
    rows, cols = xf.shape
    a = xf.abs()
    if granularity == "tensor":
        return a.amax().reshape(1) if a.numel() else torch.zeros(1, device=a.device)
    if granularity == "row":
        return a.amax(dim=1, keepdim=True)
    if granularity == "block1x128":
        return a.reshape(rows, cols // TILE, TILE).amax(dim=-1)
    prow = (rows + TILE - 1) // TILE * TILE
    if prow != rows:
        a = torch.cat((a, a.new_zeros(prow - rows, cols)), 0)
    return a.reshape(prow // TILE, TILE, cols // TILE, TILE).amax(dim=(1, 3))


def _expand(scale: torch.Tensor, rows: int, cols: int, granularity: str) -> torch.Tensor:
    """Broadcast a group scale tensor to [rows, cols]."""
    if granularity == "tensor":
        return scale.reshape(1, 1).expand(rows, cols)
    if granularity == "row":
        return scale.expand(rows, cols)
    if granularity == "block1x128":
        return scale.repeat_interleave(TILE, dim=1)
    return scale.repeat_interleave(TILE, dim=0)[:rows].repeat_interleave(TILE, dim=1)


def quantize_fp8(x: torch.Tensor, granularity: str = "row") -> FP8Tensor:
    """Quantise to float8_e4m3fn with fp32 scales per group (see module docstring); data is the 2-D view."""
    if granularity not in GRANULARITIES:
        raise ValueError(f"unknown FP8 granularity {granularity!r}; expected one of {GRANULARITIES}")
    if x.ndim == 0:
        raise ValueError("quantize_fp8 needs at least a 1-D tensor")
    shape = tuple(x.shape)
    xf = x.reshape(-1, x.shape[-1]).to(torch.float32)
    rows, cols = xf.shape
    if granularity.startswith("block") and cols % TILE:
        raise ValueError(f"FP8 {granularity} scaling needs the last dim to be a multiple of {TILE}, got {shape}")
    amax = _group_amax(xf, granularity)
    scale = amax / torch.tensor(E4M3_MAX, dtype=amax.dtype, device=amax.device)  # true division on CUDA too
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    data = to_e4m3(xf / _expand(scale, rows, cols, granularity))
    return FP8Tensor(data=data, scale=scale, shape=shape, granularity=granularity)


def dequantize_fp8(q: FP8Tensor, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """x̂ = float(data) · scale (fp32, broadcast by granularity), cast to `dtype`, original shape."""
    rows, cols = q.data.shape
    out = q.data.to(torch.float32) * _expand(q.scale.to(torch.float32), rows, cols, q.granularity)
    return out.to(dtype).reshape(q.shape)


__all__ = ["GRANULARITIES", "dequantize_fp8", "quantize_fp8"]


def fp8_window(x: torch.Tensor, amax: torch.Tensor | None = None) -> FP8Window:
    """x in E4M3 with one per-tensor scale (amax / 448), computed on the device: no host sync.

    `amax` (a one-element float32 tensor) may be given when the caller already knows a bound. An all-zero tensor
    gets scale 1 (as the reference quantiser); values beyond 448 · scale saturate; NaN stays NaN. The codes are
    e4m3(clamp(x · (1 / scale), ±448)), the FP8 window cache's arithmetic (`quant.e4m3.write_e4m3`), not the
    reference quantiser's x / scale (they can differ by one fp32 ulp before the E4M3 rounding): on CUDA a [B, L, H, D]
    operand then costs two passes (the amax reduction, one Triton write) instead of five unfused ones.
    """
    a = abs_max(x.detach()).reshape(1) if amax is None else amax.float().reshape(1)
    scale = scale_for(a)
    inv = torch.reciprocal(scale)
    if x.ndim == 4:
        data = torch.empty(x.shape, dtype=torch.float8_e4m3fn, device=x.device)
        write_e4m3(data, x, inv)
    else:
        data = (x.float() * inv).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
    return FP8Window(data, scale)
