"""Triton kernels for NVFP4 and FP8 (E4M3, row-wise) quantisation that reproduce the reference quantisers
(`longlive.quant.nvfp4`, `longlive.quant.fp8`) bit for bit: same `NVFP4Tensor` / `FP8Tensor` fields, same bytes.

API (CUDA tensors only; Triton is imported on first use, so this module imports on any machine):

* `quantize_nvfp4_triton(x, rule="static_6", block=(1, 16), amax=None)` → `NVFP4Tensor`, all five rules
  (static_6, static_4, and the Four-over-Six rules mse / mae / abs_max, selected in-kernel), 1×16 or 16×16 blocks,
  deterministic RNE (no stochastic rounding, no Hadamard transform).
* `dequantize_nvfp4_triton(q, dtype=torch.bfloat16)` → tensor of `q.shape`.
* `quantize_fp8_rowwise_triton(x)` → `FP8Tensor` (granularity "row").
* `dequantize_fp8_triton(q, dtype=torch.bfloat16)` → tensor of `q.shape` (any of the four granularities).

With TRITON_INTERPRET=1 the kernels also run on CPU tensors in Triton's interpreter, with portable stand-ins for
the inline PTX (useful to check logic without a GPU; the interpreter's own bf16 conversions are not exact for
subnormals).

How bit-exactness is kept (each point was a way to lose it):

* fp32 division is PTX `div.rn.f32` through inline assembly: Triton's `/` is the approximate `div.full.f32`, and
  `tl.math.div_rn` goes through libdevice, which Triton links in flush-to-zero mode (subnormal global scales are
  real: amax < 2688 · 2^-126). The per-element divisions by a block's (or row's) scale use div.rn.f32's own
  fast-path instructions with the reciprocal hoisted out of the element loop (MUFU.RCP + one Newton step per
  block; per element q = a·r, remainder by FMA, one FMA correction) when every divisor of the program lies in
  [2^-90, 2^90] and |a| is capped at 8·d (NVFP4; the code is 7 beyond 6·d anyway) or ≤ 448·d (FP8): there that
  path is the one div.rn.f32 takes, so the result is its correctly rounded quotient (the GPU tests check the
  kernels end to end, and `test_hoisted_reciprocal_division_equals_div_rn` the division itself); other programs
  fall back to div.rn.f32 per element.
* the E2M1 index is computed from the fp32 bits (mantissa rounded to one bit, ties to even) above 1 and by two
  comparisons below; it equals the reference's seven comparisons on every fp32 in [0, 8] (checked exhaustively).
* fp32 → E4M3 is PTX `cvt.rn.satfinite.e4m3x2.f32` after the reference's ±448 clamp (RNE, subnormals kept); NaN is
  mapped to 0x7F explicitly. E4M3 → fp32 and E2M1 → fp32 are decoded with integer arithmetic (exact, −0 kept).
* kernels are compiled with `enable_fp_fusion=False`, so no multiply-add is contracted into an FMA; the 4/6 error
  is float64 with the reference's pairwise tree (`e[0::2] + e[1::2]`, row-major within a 16×16 tile).
* `div_mode`: the references specify correctly rounded divisions `bm / M` (NVFP4 block scale) and `amax / 448`
  (FP8 scale), which is what they compute on the CPU. On CUDA, PyTorch evaluates `tensor / python_scalar` as
  `tensor * fp32(1 / scalar)`, so the same reference code gives a different last bit on the GPU. "ieee" (default)
  follows the documented arithmetic; "torch_cuda" multiplies by fp32(1/M) and fp32(1/448) like the reference
  does when it runs on a GPU. The global scale `amax / (D·M)` divides by a device tensor there, so it is
  correctly rounded in both modes.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from .nvfp4 import BLOCK, BLOCKS, FOUR_OVER_SIX_RULES, RULES, rule_constants
from .tensors import FP8Tensor, NVFP4Tensor

DIV_MODES = ("ieee", "torch_cuda")
E4M3_MAX = 448.0
_RULE_IDS = {"static_6": 0, "static_4": 0, "mse": 1, "mae": 2, "abs_max": 3}
_IN_DTYPES = (torch.bfloat16, torch.float16, torch.float32)

# NVFP4 quantise tile per (block shape, Four-over-Six?): rows × cols of the 2-D view per program, warps per program.
# The 4/6 rules hold twice the state (two candidates, float64 errors): smaller tiles keep occupancy up.
NVFP4_QUANT_CONFIG: dict[tuple[tuple[int, int], bool], dict[str, int]] = {
    ((1, 16), False): {"BLOCK_R": 8, "BLOCK_C": 256, "num_warps": 4},
    ((1, 16), True): {"BLOCK_R": 4, "BLOCK_C": 256, "num_warps": 4},
    ((16, 16), False): {"BLOCK_R": 16, "BLOCK_C": 128, "num_warps": 4},
    ((16, 16), True): {"BLOCK_R": 16, "BLOCK_C": 64, "num_warps": 4},
}

tl: Any = None  # triton.language, bound by _kernels() on first use
_KERNELS: dict[str, Any] | None = None


# ---------------------------------------------------------------------------------------------------------------
# Triton device code. Plain functions here (annotations stay strings), wrapped by triton.jit on first use.
# ---------------------------------------------------------------------------------------------------------------
def _max_nan(a, b):
    """max that propagates NaN (like torch.amax)."""
    return tl.where((a > b) | (a != a), a, b)


def _div_rn(a, b):
    """Correctly rounded IEEE fp32 division (no flush-to-zero)."""
    return tl.inline_asm_elementwise("div.rn.f32 $0, $1, $2;", "=f,f,f", [a, b], dtype=tl.float32, is_pure=True,
                                     pack=1)


def _e4m3_bits(y):
    """fp32 (already clamped to ±448) → E4M3 byte as int32 (RNE, subnormals kept, NaN → 0x7F)."""
    b = tl.inline_asm_elementwise(
        "{ .reg .b16 t; cvt.rn.satfinite.e4m3x2.f32 t, $1, $1; cvt.u32.u16 $0, t; }",
        "=r,f", [y], dtype=tl.int32, is_pure=True, pack=1,
    )
    return tl.where(y != y, 0x7F, b & 0xFF)


def _recip_fast(d):
    """The refined reciprocal that div.rn.f32's fast path forms (MUFU.RCP, one Newton step), hoisted per block."""
    return tl.inline_asm_elementwise(
        "{ .reg .f32 r, e, n; rcp.approx.ftz.f32 r, $1; neg.f32 n, $1; fma.rn.f32 e, n, r, 0f3F800000; "
        "fma.rn.f32 $0, r, e, r; }",
        "=f,f", [d], dtype=tl.float32, is_pure=True, pack=1,
    )


def _div_fast(a, d, r):
    """a / d by div.rn.f32's fast path (q = a·r, remainder by FMA, one correction) with r = _recip_fast(d): the
    same instructions, so the same correctly rounded result wherever that path is taken (both operands in a
    comfortable exponent range; the callers check d and bound a / d)."""
    return tl.inline_asm_elementwise(
        "{ .reg .f32 q, n, m; mul.rn.f32 q, $1, $3; neg.f32 n, $2; fma.rn.f32 m, n, q, $1; fma.rn.f32 $0, $3, m, q; }",
        "=f,f,f,f", [a, d, r], dtype=tl.float32, is_pure=True, pack=1,
    )


def _recip_portable(d):
    """Interpreter stand-in for _recip_fast."""
    return 1.0 / d


def _div_fast_portable(a, d, r):
    """Interpreter stand-in for _div_fast (exact division)."""
    return a / d


def _fast_range(d):
    """Divisors the hoisted-reciprocal division is used for: 2^-90 ≤ d ≤ 2^90 (also False for NaN)."""
    return (d >= 8.077935669463161e-28) & (d <= 1.2379400392853803e27)


def _div_portable(a, b):
    """Interpreter stand-in for _div_rn (numpy fp32 division is IEEE)."""
    return a / b


def _e4m3_bits_portable(y):
    """Integer-arithmetic twin of _e4m3_bits (the Triton interpreter has no inline PTX): RNE fp32 → E4M3."""
    u = y.to(tl.int32, bitcast=True)
    sign = (u >> 24) & 0x80
    u = u & 0x7FFFFFFF
    un = u + 0x7FFFF + ((u >> 20) & 1)  # round the 23-bit mantissa to 3 bits, ties to even
    normal = ((((un >> 23) - 120) << 3) | ((un >> 20) & 7)) & 0x7F
    q = tl.abs(y) * 512.0  # subnormal range: value / 2^-9, rounded to an integer (ties to even) below
    sub = ((q + 8388608.0) - 8388608.0).to(tl.int32)
    b = tl.where(u >= 0x3C800000, normal, sub) | sign  # 0x3C800000 = 2^-6, the smallest normal E4M3
    return tl.where(y != y, 0x7F, b)


def _cast_out(v, dtype: tl.constexpr):
    """fp32 → output dtype, round to nearest even (cvt.rn)."""
    return v.to(dtype)


def _cast_out_portable(v, dtype: tl.constexpr):
    """Interpreter twin of _cast_out (its fp32 → bf16 cast truncates): RNE to bf16 in integer arithmetic."""
    if dtype == tl.bfloat16:
        u = v.to(tl.int32, bitcast=True)
        r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) & 0xFFFF
        r = tl.where(v != v, 0x7FFF, r)
        out = r.to(tl.int16).to(tl.bfloat16, bitcast=True)
    else:
        out = v.to(dtype)
    return out


def _e4m3_value(b):
    """E4M3 byte (int32 0..255) → fp32, exact (0x7F / 0xFF → NaN)."""
    e = (b >> 3) & 15
    m = b & 7
    normal = (((e + 120) << 23) | (m << 20)).to(tl.float32, bitcast=True)
    v = tl.where(e == 0, m.to(tl.float32) * 0.001953125, normal)
    v = tl.where((e == 15) & (m == 7), float("nan"), v)
    return (v.to(tl.int32, bitcast=True) | ((b & 0x80) << 24)).to(tl.float32, bitcast=True)


def _e2m1_code(y):
    """RNE onto the E2M1 grid (saturating at 6): 4-bit code, sign = signbit(y), NaN → 0."""
    a = tl.abs(y)
    idx = ((a > 0.25).to(tl.int32) + (a >= 0.75).to(tl.int32) + (a > 1.25).to(tl.int32)
           + (a >= 1.75).to(tl.int32) + (a > 2.5).to(tl.int32) + (a >= 3.5).to(tl.int32) + (a > 5.0).to(tl.int32))
    neg = (y.to(tl.int32, bitcast=True) < 0) & (y == y)
    return idx + tl.where(neg, 8, 0)


def _e2m1_idx(q):
    """E2M1 magnitude index of q ≥ 0 (or NaN → 0), RNE, saturating at 6 — same as the comparisons in _e2m1_code:
    from 1 up the fp32 mantissa is rounded to one bit in integer arithmetic; below 1 two comparisons remain."""
    a = tl.where(q > 6.0, 6.0, q)
    u = a.to(tl.int32, bitcast=True)
    hi = ((u + 0x1FFFFF + ((u >> 22) & 1)) >> 22) - 252
    lo = (a > 0.25).to(tl.int32) + (a >= 0.75).to(tl.int32)
    return tl.where(a >= 1.0, hi, lo)


def _e2m1_value(code):
    """E2M1 code (int32 0..15) → fp32 (code 8 = −0.0)."""
    idx = code & 7
    mag = tl.where(idx < 4, idx.to(tl.float32) * 0.5, tl.where(idx < 7, (idx - 2).to(tl.float32), 6.0))
    return (mag.to(tl.int32, bitcast=True) | ((code & 8) << 28)).to(tl.float32, bitcast=True)


def _pairsum(e, N: tl.constexpr, M: tl.constexpr):
    """One level of the reference tree on [N, M]: e[:, 0::2] + e[:, 1::2] → [N, M / 2] (a sum of two is exact in
    either order, so the reduction over the pair may be in-thread or a lane shuffle)."""
    return tl.sum(tl.reshape(e, (N, M // 2, 2)), axis=2)


def _tree_sum(e, N: tl.constexpr, BE: tl.constexpr):
    """Pairwise sum over the last dim (16 or 256, row-major block order) of [N, BE], level by level."""
    e = _pairsum(_pairsum(_pairsum(e, N, BE), N, BE // 2), N, BE // 4)
    if BE == 256:
        e = _pairsum(_pairsum(_pairsum(_pairsum(e, N, 32), N, 16), N, 8), N, 4)
    return tl.sum(e, axis=1)


def _nvfp4_candidate(xb, s_f, g):
    """Reference steps 5–8 for one scale candidate on blocks xb [N, BE]: (codes, scale byte [N], fp32 scale [N])."""
    sc = tl.where(s_f > 448.0, 448.0, s_f)
    sc = tl.where(sc < -448.0, -448.0, sc)
    sb = _e4m3_bits(sc)
    sf = _e4m3_value(sb)
    den = sf * g
    fast = tl.min((_fast_range(den) | (den == 0.0)).to(tl.int32), axis=0)
    if fast != 0:  # every block divisor in range (or 0): one reciprocal per block, 3 FP32 ops per element
        d = den[:, None]
        d8 = d * 8.0
        ax = tl.abs(xb)
        q = _div_fast(tl.where(ax > d8, d8, ax), d, _recip_fast(den)[:, None])  # |y| capped at 8: index 7 anyway
        neg = (xb.to(tl.int32, bitcast=True) < 0) & (xb == xb)  # d > 0: sign(y) = sign(x); NaN y only from NaN x
        codes = tl.where(d == 0.0, 0, _e2m1_idx(q) + tl.where(neg, 8, 0))
    else:
        d = den[:, None]
        codes = _e2m1_code(tl.where(d == 0.0, 0.0, _div_rn(xb, d)))
    return codes, sb, sf


def _nvfp4_block_error(codes, sf, g, xb, RULE: tl.constexpr, N: tl.constexpr, BE: tl.constexpr):
    """4/6 error of one candidate per block [N], float64, in the reference's order."""
    xh = (_e2m1_value(codes) * sf[:, None]) * g
    d = xh.to(tl.float64) - xb.to(tl.float64)
    # (no early returns: Triton compiles the statements after a static `if ...: return` too)
    if RULE == 3:  # abs_max
        err = tl.reduce(tl.abs(d), 1, _max_nan)
    elif RULE == 1:  # mse
        err = _tree_sum(d * d, N, BE)
    else:  # mae
        err = _tree_sum(tl.abs(d), N, BE)
    return err


def _nvfp4_quant_kernel(x_ptr, g_ptr, v_ptr, s_ptr, rows, cols, stride_x, m, inv_m, use_recip,
                        RULE: tl.constexpr, BR: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """One [BLOCK_R, BLOCK_C] tile of the 2-D view → packed codes and E4M3 block scales.

    The tile is handled block-major, as [N blocks, BE = BR·16 elements] (row-major inside a 16×16 block), so
    each block's elements sit in one or two threads and the 4/6 error tree is the reference's.
    """
    NB: tl.constexpr = BLOCK_C // 16  # blocks per tile row-group
    N: tl.constexpr = (BLOCK_R // BR) * NB
    BE: tl.constexpr = BR * 16
    i = tl.arange(0, N)
    e = tl.arange(0, BE)
    brow = tl.program_id(0) * BLOCK_R + (i // NB) * BR  # first row of block i
    bcol = tl.program_id(1) * BLOCK_C + (i % NB) * 16  # first column of block i
    bmask = (bcol < cols)[:, None]
    base = brow.to(tl.int64) * stride_x + bcol
    if BR == 1:
        xmask = (brow < rows)[:, None] & bmask
        xptr = x_ptr + base[:, None] + e[None, :]
    else:
        xmask = ((brow[:, None] + e[None, :] // 16) < rows) & bmask
        xptr = x_ptr + base[:, None] + ((e // 16) * stride_x + e % 16)[None, :]
    xb = tl.load(xptr, mask=xmask, other=0.0).to(tl.float32)
    g = tl.load(g_ptr)

    bm = tl.reduce(tl.abs(xb), 1, _max_nan)  # [N]
    t = tl.where(use_recip != 0, bm * inv_m, _div_rn(bm, m))  # bm / M
    s6 = tl.where(g == 0.0, 0.0, _div_rn(t, g))
    codes, sb, sf = _nvfp4_candidate(xb, s6, g)
    if RULE != 0:  # Four-over-Six: keep the 4-candidate iff its error is strictly lower
        codes4, sb4, sf4 = _nvfp4_candidate(xb, s6 * 1.5, g)
        err6 = _nvfp4_block_error(codes, sf, g, xb, RULE, N, BE)
        err4 = _nvfp4_block_error(codes4, sf4, g, xb, RULE, N, BE)
        pick4 = err4 < err6
        codes = tl.where(pick4[:, None], codes4, codes)
        sb = tl.where(pick4, sb4, sb)

    lo, hi = tl.split(tl.reshape(codes, (N, BE // 2, 2)))
    packed = (lo | (hi << 4)).to(tl.uint8)
    e2 = tl.arange(0, BE // 2)
    pbase = brow.to(tl.int64) * (cols // 2) + bcol // 2
    if BR == 1:
        tl.store(v_ptr + pbase[:, None] + e2[None, :], packed, mask=xmask)
    else:
        poff = ((e2 // 8) * (cols // 2) + e2 % 8)[None, :]
        tl.store(v_ptr + pbase[:, None] + poff, packed, mask=((brow[:, None] + e2[None, :] // 8) < rows) & bmask)
    k = tl.arange(0, BR)
    srow = brow[:, None] + k[None, :]  # [N, BR]: the rows of block i, each gets the block's scale
    sptr = s_ptr + srow.to(tl.int64) * (cols // 16) + (bcol // 16)[:, None]
    tl.store(sptr, tl.broadcast_to(sb[:, None], (N, BR)).to(tl.uint8), mask=(srow < rows) & bmask)


def _absmax_partial_kernel(x_ptr, part_ptr, n, BLOCK: tl.constexpr, ITERS: tl.constexpr):
    """Partial max|x| (NaN-propagating) of ITERS·BLOCK consecutive elements per program."""
    base = tl.program_id(0).to(tl.int64) * (BLOCK * ITERS)
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for i in range(ITERS):
        offs = base + i * BLOCK + tl.arange(0, BLOCK)
        v = tl.abs(tl.load(x_ptr + offs, mask=offs < n, other=0.0).to(tl.float32))
        acc = _max_nan(acc, v)
    tl.store(part_ptr + tl.program_id(0), tl.reduce(acc, 0, _max_nan))


def _amax_finalize_kernel(part_ptr, n_part, amax_ptr, g_ptr, dm, BLOCK: tl.constexpr):
    """amax = max over the partials (NaN-propagating), g = amax / (D·M) (correctly rounded)."""
    acc = tl.full((BLOCK,), float("-inf"), dtype=tl.float32)
    for i in range(0, n_part, BLOCK):
        offs = i + tl.arange(0, BLOCK)
        acc = _max_nan(acc, tl.load(part_ptr + offs, mask=offs < n_part, other=float("-inf")))
    amax = tl.reduce(acc, 0, _max_nan, keep_dims=True)  # [1]
    one = tl.arange(0, 1)
    tl.store(amax_ptr + one, amax)
    tl.store(g_ptr + one, _div_rn(amax, dm))


def _nvfp4_dequant_kernel(v_ptr, s_ptr, g_ptr, out_ptr, rows, cols, BLOCK_R: tl.constexpr,
                          BLOCK_C: tl.constexpr):
    """x̂ = (e2m1(code) · float(scale)) · g in fp32, cast to the output dtype (RNE)."""
    NB: tl.constexpr = BLOCK_C // 16
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    r64 = r.to(tl.int64)
    rmask = r < rows
    c2 = tl.program_id(1) * (BLOCK_C // 2) + tl.arange(0, BLOCK_C // 2)
    b = tl.load(v_ptr + r64[:, None] * (cols // 2) + c2[None, :], mask=rmask[:, None] & (c2 < cols // 2)[None, :],
                other=0).to(tl.int32)
    codes = tl.reshape(tl.join(b & 15, b >> 4), (BLOCK_R, BLOCK_C))
    cs = tl.program_id(1) * NB + tl.arange(0, NB)
    sb = tl.load(s_ptr + r64[:, None] * (cols // 16) + cs[None, :], mask=rmask[:, None] & (cs < cols // 16)[None, :],
                 other=0).to(tl.int32)
    sf = tl.reshape(tl.broadcast_to(_e4m3_value(sb)[:, :, None], (BLOCK_R, NB, 16)), (BLOCK_R, BLOCK_C))
    out = (_e2m1_value(codes) * sf) * tl.load(g_ptr)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    tl.store(out_ptr + r64[:, None] * cols + c[None, :], _cast_out(out, out_ptr.dtype.element_ty),
             mask=rmask[:, None] & (c < cols)[None, :])


def _fp8_codes(x, scale, rcp, fast):
    """e4m3(clamp(x / scale, ±448)) as bytes; x / scale by the hoisted-reciprocal path when `fast` (program-wide)."""
    if fast != 0:
        q = _div_fast(tl.abs(x), scale, rcp)
        y = (q.to(tl.int32, bitcast=True) | (x.to(tl.int32, bitcast=True) & -2147483648)).to(tl.float32, bitcast=True)
    else:
        y = _div_rn(x, scale)
    y = tl.where(y > 448.0, 448.0, tl.where(y < -448.0, -448.0, y))
    return _e4m3_bits(y).to(tl.uint8)


def _fp8_row_quant_kernel(x_ptr, d_ptr, scale_ptr, rows, cols, stride_x, inv_448, use_recip,
                          BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, SINGLE: tl.constexpr):
    """Row-wise E4M3: scale = amax_row / 448 (0 → 1), data = e4m3(clamp(x / scale, ±448))."""
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    r64 = r.to(tl.int64)
    rmask = r < rows
    c0 = tl.arange(0, BLOCK_C)
    if SINGLE:
        mask = rmask[:, None] & (c0 < cols)[None, :]
        x = tl.load(x_ptr + r64[:, None] * stride_x + c0[None, :], mask=mask, other=0.0).to(tl.float32)
        amax = tl.reduce(tl.abs(x), 1, _max_nan)
    else:
        acc = tl.zeros((BLOCK_R, BLOCK_C), dtype=tl.float32)
        for k in range(0, cols, BLOCK_C):
            c = k + c0
            xk = tl.load(x_ptr + r64[:, None] * stride_x + c[None, :], mask=rmask[:, None] & (c < cols)[None, :],
                         other=0.0)
            acc = _max_nan(acc, tl.abs(xk.to(tl.float32)))
        amax = tl.reduce(acc, 1, _max_nan)
    scale = tl.where(use_recip != 0, amax * inv_448, _div_rn(amax, 448.0))
    scale = tl.where(scale == 0.0, 1.0, scale)
    tl.store(scale_ptr + r64, scale, mask=rmask)
    fast = tl.min(_fast_range(scale).to(tl.int32), axis=0)  # finite, normal scales: |x| / scale ≤ 448 (1 + 2^-23)
    rcp = _recip_fast(scale)[:, None]
    if SINGLE:
        tl.store(d_ptr + r64[:, None] * cols + c0[None, :], _fp8_codes(x, scale[:, None], rcp, fast), mask=mask)
    else:
        for k in range(0, cols, BLOCK_C):
            c = k + c0
            mask = rmask[:, None] & (c < cols)[None, :]
            xk = tl.load(x_ptr + r64[:, None] * stride_x + c[None, :], mask=mask, other=0.0).to(tl.float32)
            tl.store(d_ptr + r64[:, None] * cols + c[None, :], _fp8_codes(xk, scale[:, None], rcp, fast), mask=mask)


def _fp8_dequant_kernel(d_ptr, scale_ptr, out_ptr, rows, cols, GR, GC, s_stride_r, s_stride_c,
                        BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, GRAN: tl.constexpr):
    """x̂ = float(data) · scale in fp32, cast to the output dtype (RNE). GRAN: 0 tensor, 1 row, 2 blocks
    (scale[r // GR, c // GC] with strides s_stride_r, s_stride_c)."""
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    r64 = r.to(tl.int64)
    rmask = r < rows
    mask = rmask[:, None] & (c < cols)[None, :]
    b = tl.load(d_ptr + r64[:, None] * cols + c[None, :], mask=mask, other=0).to(tl.int32)
    if GRAN == 0:
        s = tl.load(scale_ptr)
    elif GRAN == 1:
        s = tl.load(scale_ptr + r64, mask=rmask, other=1.0)[:, None]
    else:
        s = tl.load(scale_ptr + (r64 // GR)[:, None] * s_stride_r + (c // GC)[None, :] * s_stride_c, mask=mask,
                    other=1.0)
    out = _e4m3_value(b) * s
    tl.store(out_ptr + r64[:, None] * cols + c[None, :], _cast_out(out, out_ptr.dtype.element_ty), mask=mask)


def _div_check_kernel(a_ptr, d_ptr, fast_ptr, rn_ptr, n, BLOCK: tl.constexpr):
    """Self-check for the tests: a / d by the hoisted-reciprocal path and by div.rn.f32, side by side."""
    o = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = o < n
    a = tl.load(a_ptr + o, mask=mask, other=1.0)
    d = tl.load(d_ptr + o, mask=mask, other=1.0)
    tl.store(fast_ptr + o, _div_fast(a, d, _recip_fast(d)), mask=mask)
    tl.store(rn_ptr + o, _div_rn(a, d), mask=mask)


_HELPERS = ("_max_nan", "_div_rn", "_e4m3_bits", "_recip_fast", "_div_fast", "_fast_range", "_cast_out",
            "_e4m3_value", "_e2m1_code", "_e2m1_idx", "_e2m1_value", "_pairsum", "_tree_sum", "_nvfp4_candidate",
            "_nvfp4_block_error", "_fp8_codes")
_KERNEL_NAMES = {
    "nvfp4_quant": ("_nvfp4_quant_kernel", ["rows", "use_recip"]),
    "absmax_partial": ("_absmax_partial_kernel", []),
    "amax_finalize": ("_amax_finalize_kernel", ["n_part"]),
    "nvfp4_dequant": ("_nvfp4_dequant_kernel", ["rows"]),
    "fp8_row_quant": ("_fp8_row_quant_kernel", ["rows", "use_recip"]),
    "fp8_dequant": ("_fp8_dequant_kernel", ["rows", "GR", "GC", "s_stride_r", "s_stride_c"]),
    "div_check": ("_div_check_kernel", []),
}


# ---------------------------------------------------------------------------------------------------------------
# Host side
# ---------------------------------------------------------------------------------------------------------------
def triton_available() -> bool:
    """True when Triton imports and a CUDA device is visible."""
    try:
        import triton  # noqa: F401  # optional extra: Triton probe, absence -> False
    except ImportError:
        return False
    return torch.cuda.is_available()


def _kernels() -> dict[str, Any]:
    """Import Triton and JIT-wrap the device functions above (once)."""
    global _KERNELS, tl
    if _KERNELS is None:
        try:
            import triton  # optional extra: Triton, absence -> RuntimeError
            import triton.language as language  # optional extra: Triton, absence -> RuntimeError
        except ImportError as exc:
            msg = "longlive.quant.triton_kernels needs Triton (pip install triton) and a CUDA GPU"
            raise RuntimeError(msg) from exc
        tl = language
        g = globals()
        if _interpreting():  # CPU interpreter: no inline PTX
            g["_div_rn"], g["_e4m3_bits"] = g["_div_portable"], g["_e4m3_bits_portable"]
            g["_cast_out"] = g["_cast_out_portable"]
            g["_recip_fast"], g["_div_fast"] = g["_recip_portable"], g["_div_fast_portable"]
        for name in _HELPERS:
            g[name] = triton.jit(g[name])
        _KERNELS = {key: triton.jit(g[fn], do_not_specialize=dns) for key, (fn, dns) in _KERNEL_NAMES.items()}
    return _KERNELS


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _check_input(x: torch.Tensor, what: str) -> None:
    if not x.is_cuda and not _interpreting():
        raise RuntimeError(f"{what}: the Triton kernels need a CUDA tensor, got device {x.device}")
    try:
        import triton  # noqa: F401  # optional extra: Triton probe, absence -> RuntimeError
    except ImportError:
        raise RuntimeError(f"{what}: Triton is not installed (pip install triton)") from None


def _as_2d(x: torch.Tensor) -> torch.Tensor:
    x2 = x.reshape(-1, x.shape[-1])
    return x2 if x2.stride(-1) == 1 else x2.contiguous()


def _use_recip(div_mode: str) -> int:
    if div_mode not in DIV_MODES:
        raise ValueError(f"div_mode must be one of {DIV_MODES}, got {div_mode!r}")
    return int(div_mode == "torch_cuda")


def _fp32_recip(v: float) -> float:
    """fp32(1 / v) as PyTorch's CUDA `tensor / scalar` forms it (double division, rounded once to fp32)."""
    return torch.tensor(1.0 / v, dtype=torch.float32).item()


def tensor_amax_and_scale(x2: torch.Tensor, dm: float, amax: torch.Tensor | float | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """(amax [1] fp32, global scale [1] fp32 = amax / dm): amax = max|x| (NaN-propagating) unless given."""
    k = _kernels()
    dev = x2.device
    amax_t = torch.empty(1, dtype=torch.float32, device=dev)
    g = torch.empty(1, dtype=torch.float32, device=dev)
    if amax is not None:
        part = torch.as_tensor(amax, dtype=torch.float32, device=dev).reshape(1)
    elif x2.numel() == 0:
        part = torch.zeros(1, dtype=torch.float32, device=dev)
    else:
        flat = x2.contiguous().view(-1)
        block, iters = 2048, 8
        n_part = triton_cdiv(flat.numel(), block * iters)
        part = torch.empty(n_part, dtype=torch.float32, device=dev)
        k["absmax_partial"][(n_part,)](flat, part, flat.numel(), BLOCK=block, ITERS=iters, num_warps=8,
                                       enable_fp_fusion=False)
    k["amax_finalize"][(1,)](part, part.numel(), amax_t, g, dm, BLOCK=1024, num_warps=4, enable_fp_fusion=False)
    return amax_t, g


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


def quantize_nvfp4_triton(
    x: torch.Tensor,
    *,
    rule: str = "static_6",
    block: tuple[int, int] = (1, 16),
    amax: torch.Tensor | float | None = None,
    div_mode: str = "ieee",
    config: dict[str, int] | None = None,
) -> NVFP4Tensor:
    """NVFP4-quantise a CUDA tensor (last dim a multiple of 16) exactly as `quantize_nvfp4(x, block=, rule=, amax=)`.

    div_mode: "ieee" (documented reference arithmetic) or "torch_cuda" (the reference as PyTorch runs it on a
    GPU; see the module docstring). config: tile override {BLOCK_R, BLOCK_C, num_warps} (benchmark sweeps).
    """
    _check_input(x, "quantize_nvfp4_triton")
    if rule not in RULES:
        raise ValueError(f"unknown NVFP4 scale rule {rule!r}; expected one of {RULES}")
    block = tuple(block)  # type: ignore[assignment]
    if block not in BLOCKS:
        raise ValueError(f"NVFP4 block must be one of {BLOCKS}, got {block}")
    if x.ndim == 0 or x.shape[-1] % BLOCK:
        raise ValueError(
            f"NVFP4 quantisation needs a last dimension that is a multiple of {BLOCK}, got shape {tuple(x.shape)}"
        )
    if x.dtype not in _IN_DTYPES:
        raise ValueError(f"quantize_nvfp4_triton takes {_IN_DTYPES}, got {x.dtype}")
    use_recip = _use_recip(div_mode)
    k = _kernels()
    shape = tuple(x.shape)
    x2 = _as_2d(x)
    rows, cols = x2.shape
    d, m = rule_constants(rule)
    amax_t, g = tensor_amax_and_scale(x2, d * m, amax)
    values = torch.empty(rows, cols // 2, dtype=torch.uint8, device=x.device)
    scales = torch.empty(rows, cols // BLOCK, dtype=torch.uint8, device=x.device)
    cfg = dict(NVFP4_QUANT_CONFIG[(block, rule in FOUR_OVER_SIX_RULES)])  # type: ignore[index]
    cfg.update(config or {})
    br = block[0]
    if cfg["BLOCK_R"] % br or cfg["BLOCK_C"] % BLOCK:
        raise ValueError(f"tile {cfg} does not hold whole {block} blocks")
    if rows:
        grid = (triton_cdiv(rows, cfg["BLOCK_R"]), triton_cdiv(cols, cfg["BLOCK_C"]))
        k["nvfp4_quant"][grid](
            x2, g, values, scales, rows, cols, x2.stride(0), m, _fp32_recip(m), use_recip,
            RULE=_RULE_IDS[rule], BR=br, BLOCK_R=cfg["BLOCK_R"], BLOCK_C=cfg["BLOCK_C"], num_warps=cfg["num_warps"],
            enable_fp_fusion=False,
        )
    return NVFP4Tensor(
        values=values,
        scales=scales.view(torch.float8_e4m3fn),
        amax=amax_t,
        global_scale=g,
        shape=shape,
        rule=rule,
        block=block,  # type: ignore[arg-type]
    )


def dequantize_nvfp4_triton(q: NVFP4Tensor, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """x̂ = (e2m1(code) · float(scale)) · global_scale in fp32, cast to `dtype`, in `q.shape` (as `dequantize_nvfp4`)."""
    _check_input(q.values, "dequantize_nvfp4_triton")
    k = _kernels()
    rows, half = q.values.shape
    cols = half * 2
    if tuple(q.scales.shape) != (rows, cols // BLOCK):
        raise ValueError(f"NVFP4 scales {tuple(q.scales.shape)} do not match values {tuple(q.values.shape)}")
    values = q.values.contiguous()
    scales = q.scales.contiguous().view(torch.uint8)
    g = q.global_scale.to(torch.float32).reshape(1)
    out = torch.empty(rows, cols, dtype=dtype, device=values.device)
    if rows and cols:
        br, bc = 16, 256
        grid = (triton_cdiv(rows, br), triton_cdiv(cols, bc))
        k["nvfp4_dequant"][grid](values, scales, g, out, rows, cols, BLOCK_R=br, BLOCK_C=bc, num_warps=4,
                                 enable_fp_fusion=False)
    return out.reshape(q.shape)


def _fp8_row_config(cols: int) -> tuple[int, int, bool, int]:
    """(BLOCK_R, BLOCK_C, SINGLE, num_warps) for a row width. A row padded to a power of two ≤ 16384 with at most
    1/8 idle lanes stays in registers (one read). Otherwise, where a power of two from 512 to 2048 divides the row,
    two passes over such chunks (amax, then quantise; the second read hits L2) beat padding; else pad if the row
    fits in 16384, else masked chunks of 1024."""
    p2 = 1 << max(4, (cols - 1).bit_length())
    chunk = next((c for c in (2048, 1024, 512) if cols % c == 0), None)
    if p2 <= 16384 and (8 * p2 <= 9 * cols or chunk is None):
        br = max(1, 2048 // p2)
        return br, p2, True, max(1, min(16, br * p2 // 512))
    bc = chunk or 1024
    return 1, bc, False, max(1, bc // 256)


def quantize_fp8_rowwise_triton(
    x: torch.Tensor, *, div_mode: str = "ieee", config: tuple[int, int, bool, int] | None = None
) -> FP8Tensor:
    """Row-wise FP8 E4M3 quantisation, exactly as `quantize_fp8(x, "row")` (see the module docstring for div_mode).

    config: (BLOCK_R, BLOCK_C, SINGLE, num_warps) override for benchmark sweeps (SINGLE needs BLOCK_C ≥ cols)."""
    _check_input(x, "quantize_fp8_rowwise_triton")
    if x.ndim == 0 or x.shape[-1] == 0:
        raise ValueError(f"quantize_fp8_rowwise_triton needs a non-empty last dim, got shape {tuple(x.shape)}")
    if x.dtype not in _IN_DTYPES:
        raise ValueError(f"quantize_fp8_rowwise_triton takes {_IN_DTYPES}, got {x.dtype}")
    use_recip = _use_recip(div_mode)
    k = _kernels()
    shape = tuple(x.shape)
    x2 = _as_2d(x)
    rows, cols = x2.shape
    data = torch.empty(rows, cols, dtype=torch.uint8, device=x.device)
    scale = torch.empty(rows, 1, dtype=torch.float32, device=x.device)
    if rows:
        br, bc, single, warps = config or _fp8_row_config(cols)
        if single and bc < cols:
            raise ValueError(f"SINGLE needs BLOCK_C ≥ {cols}, got {bc}")
        k["fp8_row_quant"][(triton_cdiv(rows, br),)](
            x2, data, scale, rows, cols, x2.stride(0), _fp32_recip(E4M3_MAX), use_recip,
            BLOCK_R=br, BLOCK_C=bc, SINGLE=single, num_warps=warps, enable_fp_fusion=False,
        )
    return FP8Tensor(data=data.view(torch.float8_e4m3fn), scale=scale, shape=shape, granularity="row")


def dequantize_fp8_triton(q: FP8Tensor, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """x̂ = float(data) · scale (fp32, broadcast by granularity), cast to `dtype`, in `q.shape` (as `dequantize_fp8`)."""
    _check_input(q.data, "dequantize_fp8_triton")
    k = _kernels()
    data = q.data.contiguous().view(torch.uint8)
    rows, cols = data.shape
    scale = q.scale.to(torch.float32).contiguous()
    gran, gr, gc, ssr, ssc = {
        "tensor": (0, 1, 1, 0, 0),
        "row": (1, 1, 1, 0, 0),
        "block1x128": (2, 1, 128, scale.shape[-1], 1),
        "block128x128": (2, 128, 128, scale.shape[-1], 1),
    }.get(q.granularity, (None, 0, 0, 0, 0))
    if gran is None:
        raise ValueError(f"unknown FP8 granularity {q.granularity!r}")
    out = torch.empty(rows, cols, dtype=dtype, device=data.device)
    if rows and cols:
        br, bc = 16, 256
        grid = (triton_cdiv(rows, br), triton_cdiv(cols, bc))
        k["fp8_dequant"][grid](data, scale, out, rows, cols, gr, gc, ssr, ssc, BLOCK_R=br, BLOCK_C=bc, GRAN=gran,
                               num_warps=4, enable_fp_fusion=False)
    return out.reshape(q.shape)


__all__ = [
    "DIV_MODES",
    "FOUR_OVER_SIX_RULES",
    "NVFP4_QUANT_CONFIG",
    "dequantize_fp8_triton",
    "dequantize_nvfp4_triton",
    "quantize_fp8_rowwise_triton",
    "quantize_nvfp4_triton",
    "tensor_amax_and_scale",
    "triton_available",
]
