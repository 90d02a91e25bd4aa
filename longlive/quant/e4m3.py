"""Per-tensor E4M3 on the device in few passes: the amax reduction and the scaled write (one Triton pass on CUDA).

Shared by the FP8 window KV cache (`quant.kv`), which writes each chunk with a fixed scale, and `quant.fp8.fp8_window`,
which quantises an attention operand with its own amax (the `cudnn-fp8` and `int8-fp8` backends). Both round the same
way on every device: y = x · (1 / scale) in fp32, clamped to ±448, round to nearest even.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from longlive.quant import triton_kernels
from longlive.quant.formats import E4M3_MAX

_TRITON_WRITE_ROWS = 4096  # elements per program of the E4M3 write kernel (rows = this // head_dim)
_E4M3_MAX_T: dict[torch.device, torch.Tensor] = {}


def e4m3_max(device: torch.device) -> torch.Tensor:
    """448 as a one-element fp32 tensor: `t / tensor` is a correctly rounded division on CUDA (`t / 448.0` is a
    multiply by fp32(1/448) there), so the scales are the same on every device."""
    if device not in _E4M3_MAX_T:
        _E4M3_MAX_T[device] = torch.tensor([E4M3_MAX], dtype=torch.float32, device=device)
    return _E4M3_MAX_T[device]


def scale_for(amax: torch.Tensor) -> torch.Tensor:
    """The per-tensor E4M3 scale for a device amax: amax / 448 (a correctly rounded division), 1 where amax is zero
    or NaN (no host sync)."""
    return torch.where(amax > 0, amax / e4m3_max(amax.device), torch.ones_like(amax))


def abs_max(x: torch.Tensor) -> torch.Tensor:
    """max |x| as a 0-d fp32 tensor on x's device (one reduction kernel, NaN propagates, no host sync)."""
    return torch.linalg.vector_norm(x, math.inf, dtype=torch.float32)


# -- the E4M3 write: dst = e4m3(clamp(x · inv, ±448)), counting |x · inv| > 448 -----------------------------------
tl: Any = None  # triton.language, bound by _write_kernel() on first use
_WRITE_KERNEL: Any = None


def _e4m3_write_kernel(x_ptr, out_ptr, inv_ptr, count_ptr, rows, T, H, sx_b, sx_t, sx_h, so_b, so_t, so_h,
                       D: tl.constexpr, BLOCK_R: tl.constexpr, COUNT: tl.constexpr):
    """Rows r = (b·T + t)·H + h of [B, T, H, D] views (last stride 1): y = x · inv (fp32), saturated count += |y| > 448,
    out byte = E4M3 of clamp(y, ±448), round to nearest even (NaN → 0x7F, not counted)."""
    r = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    h = r % H
    t = (r // H) % T
    b = r // H // T
    d = tl.arange(0, D)
    mask = (r < rows)[:, None] & (d < D)[None, :]
    x = tl.load(x_ptr + (b * sx_b + t * sx_t + h * sx_h)[:, None] + d[None, :], mask=mask, other=0.0)
    y = x.to(tl.float32) * tl.load(inv_ptr)
    if COUNT:
        n = tl.sum(((y > 448.0) | (y < -448.0)).to(tl.int64))
        tl.atomic_add(count_ptr, n, mask=n > 0)
    y = tl.where(y > 448.0, 448.0, tl.where(y < -448.0, -448.0, y))
    tl.store(out_ptr + (b * so_b + t * so_t + h * so_h)[:, None] + d[None, :], _e4m3_bits(y).to(tl.uint8), mask=mask)


_e4m3_bits: Any = None  # triton_kernels' fp32 → E4M3 byte (PTX cvt.rn.satfinite; an integer twin when interpreting)


def _write_kernel() -> Any:
    """Import Triton and JIT-wrap the write kernel (once), with triton_kernels' tested E4M3 conversion."""
    global _WRITE_KERNEL, _e4m3_bits, tl
    if _WRITE_KERNEL is None:
        import triton  # optional extra: Triton (callers check triton_available first)
        import triton.language as language  # optional extra: Triton

        tl = language
        triton_kernels._kernels()  # binds its device helpers, JIT-wrapped (the interpreter's stand-ins if interpreting)
        _e4m3_bits = triton_kernels._e4m3_bits
        _WRITE_KERNEL = triton.jit(_e4m3_write_kernel, do_not_specialize=["rows", "T"])
    return _WRITE_KERNEL


def _use_triton(x: torch.Tensor, dst: torch.Tensor) -> bool:
    d = x.shape[-1]
    return (x.is_cuda and not torch.compiler.is_compiling() and triton_kernels.triton_available() and (d & (d - 1)) == 0
            and x.stride(-1) == 1 and dst.stride(-1) == 1)


def write_e4m3(dst: torch.Tensor, x: torch.Tensor, inv: torch.Tensor, saturated: torch.Tensor | None = None) -> None:
    """dst (an E4M3 [B, T, H, D] view, any strides) = e4m3(clamp(x · inv, ±448)), x · inv in fp32, round to nearest
    even; `inv` is a one-element fp32 tensor (1 / scale). With `saturated` (an int64 device tensor), add the number of
    elements with |x · inv| > 448. One Triton pass on CUDA (x and dst read and written once), the same arithmetic
    in PyTorch ops elsewhere: both give the same bytes (tests/test_kv_fp8_window.py, GPU)."""
    if tuple(dst.shape) != tuple(x.shape) or x.ndim != 4:
        raise ValueError(f"write_e4m3: x {tuple(x.shape)} and dst {tuple(dst.shape)} must be the same [B, T, H, D]")
    if _use_triton(x, dst):
        B, T, H, D = x.shape
        rows = B * T * H
        if rows:
            br = max(1, _TRITON_WRITE_ROWS // D)
            count = saturated if saturated is not None else inv  # not read when COUNT is off
            _write_kernel()[(-(-rows // br),)](
                x, dst.view(torch.uint8), inv, count, rows, T, H, x.stride(0), x.stride(1), x.stride(2),
                dst.stride(0), dst.stride(1), dst.stride(2), D=D, BLOCK_R=br, COUNT=saturated is not None,
                num_warps=4, enable_fp_fusion=False)
        return
    y = torch.mul(x, inv)  # fp32 (type promotion), one kernel
    if saturated is not None:
        saturated.add_(torch.count_nonzero(y.abs() > E4M3_MAX))
    dst.copy_(y.clamp_(-E4M3_MAX, E4M3_MAX))
