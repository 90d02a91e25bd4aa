"""`int8-fp8` attention: a Triton kernel of our own with split precision (SageAttention-2-style, written anew).

Why split: FP8 (E4M3, three mantissa bits) Q·Kᵀ perturbs the logits, and exp() turns a logit error into a relative
weight error, so that product needs more bits than P·V. INT8 with a scale per small block gives about seven bits
there; P (in [0, 1]) and V take E4M3 with little loss (issue 20: FP8 P ≈ 1-2 %, FP8 V ≈ 2.6 % on random inputs).

What one call computes (q [B, Lq, H, D] BF16/FP16; k, v [B, Lk, H, D] tensors or `FP8Window`s):

1. K smoothing: k̃ = k − mean over keys, per (b, h, channel), in fp32. q·mean is the same for every key of a row,
   so the softmax is unchanged; what changes is that the channel offsets common to all keys (large in real K)
   no longer set the INT8 step. An `FP8Window` K is dequantised (data · scale, fp32) for this: INT8 codes need the
   smoothed values, so the FP8 cache bytes cannot be used as stored here (that costs one read of the FP8 window).
2. INT8 blocks (`quantize_int8_blocks`): q per Q_BLOCK queries of one head, k̃ per K_BLOCK keys of one head;
   symmetric, scale = amax / 127, code = rne(x · (127 / amax)) clamped to ±127, all-zero block → scale 1, codes 0;
   a NaN/Inf in a block → codes 0 and a NaN/Inf scale, so the block's logits (and the rows they reach) are NaN.
   q's scale also carries the softmax scale 1/√D and log2 e, so logits come out in base 2.
3. V in E4M3 with one per-tensor scale: an `FP8Window` V as stored; a BF16 V quantised like `quant.fp8.fp8_window`.
4. The kernel, per (b, h, BLOCK_M queries), over BLOCK_N keys at a time: int8 × int8 → int32 `tl.dot`, × k scales
   (per key) and q scales (per row), online softmax with exp2 in fp32 shifted so that P lies in [0, 448) (the 448
   of E4M3 folded into the exponent: no extra multiply), P → E4M3, `tl.dot` of P and V (E4M3) in a zero
   accumulator, added to the fp32 accumulator (Hopper's FP8 MMA keeps only about 22 accumulator bits, so sums stay
   within one tile), and at the end × v_scale / row sum. The tail key tile (Lk not a multiple of BLOCK_N) has −inf
   logits past Lk. Output [B, Lq, H, D] in q's dtype, contiguous.

Quantisation blocks (Q_BLOCK, K_BLOCK) are fixed, not tied to the kernel's tile: the kernel reads one scale per row
and per key, so every tile size in CONFIGS gives the same codes. The online softmax does depend on BLOCK_N (P is
rounded against the running row maximum), so `reference` takes the tile too.

Layouts (Hopper): the FP8 MMA (wgmma) takes its B operand from shared memory K-major only; for P·V that means V
with keys contiguous. A V window stored heads-first [B, H, L, D] has channels contiguous, so each call transposes
it into [B, H, D, Lk] (one read and one write of the FP8 window: 2 × 86 MB at the 5B steady shape), fused with the
E4M3 quantisation when V is BF16. A V whose keys are already contiguous (stride 1 along L) is read as stored.
INT8 Q·Kᵀ is K-major on both sides as stored (channels contiguous).

Pre-pass cost per call at the steady 5B shape (1 × 24 heads × 7,040 queries × 28,160 keys × 128), in HBM bytes:
K: key sums (read K) + smooth/quantise (read K again, write 86 MB INT8) = 432 MB for BF16 K, 260 MB for FP8 K;
V: 173 MB for an FP8 window (transpose), 432 MB for BF16 (amax pass, then quantise + transpose); Q: 43 MB read +
22 MB written. In all 0.5 GB with an FP8 cache, 0.93 GB with a BF16 one: about 0.17 / 0.31 ms per call at
~3 TB/s against ~3 ms of attention, so 25 / 47 ms per chunk of 150 calls (30 blocks × 5 forwards).
`reports/perf/attn20/probe_triton.py` times it.

Triton is an optional extra, imported on first use (`_kernels`); with TRITON_INTERPRET=1 the kernels also run on CPU
tensors in Triton's interpreter (a logic check; it emulates the FP8 and INT8 dots in numpy).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import torch

from longlive.model.attention import KV, FP8Window

from .e4m3 import abs_max, scale_for
from .formats import E4M3_MAX
from .fp8 import fp8_window

NAME = "int8-fp8"
Q_BLOCK = 128
"""Queries (of one head) per INT8 scale of q."""
K_BLOCK = 64
"""Keys (of one head) per INT8 scale of the smoothed k."""
INT8_MAX = 127.0
LOG2E = 1.4426950408889634
P_LOG2 = math.log2(E4M3_MAX) - 2.0**-10
"""P = exp2(logit − rowmax + P_LOG2) lies in [0, 447.7]: E4M3's range without a multiply by 448, and below 448 by a
margin that exp2's approximation on the GPU cannot cross (so the FP8 cast never saturates)."""
PAD = 128
"""Rows of the INT8 Q and K buffers are padded with zeros to a multiple of this (every tile size divides it)."""
HEAD_DIMS = (32, 64, 128)
SUM_CHUNK, SUM_ROWS = 512, 32  # key-sum pre-pass: keys per program, keys per load
V_ROWS = 128  # V transpose: keys per program (128-byte rows out)


@dataclass(frozen=True)
class TileConfig:
    """One launch configuration of the attention kernel (tile sizes, warps, software-pipelining depth)."""

    block_m: int
    block_n: int
    num_warps: int
    num_stages: int

    def __str__(self) -> str:
        return f"m{self.block_m}-n{self.block_n}-w{self.num_warps}-s{self.num_stages}"


CONFIGS = (
    TileConfig(128, 128, 8, 3),
    TileConfig(128, 128, 8, 2),
    TileConfig(128, 64, 4, 3),
    TileConfig(128, 64, 8, 3),
    TileConfig(64, 128, 4, 3),
)
"""Hopper candidates for the autotuner (`attend(..., config="autotune")`, keyed on (Lk bucket, D)) and the probe."""
DEFAULT_CONFIG = CONFIGS[0]


# ---------------------------------------------------------------------------------------------------------------
# PyTorch reference: the kernel's quantisation and online softmax in float32 (runs anywhere; the tests' twin).
# ---------------------------------------------------------------------------------------------------------------
def quantize_int8_blocks(x: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric INT8 per block of `block` rows: x [..., L, D] → (codes int8 [..., L_pad, D], scales fp32
    [..., L_pad / block]) with L_pad = L rounded up to the block (padding rows are zeros, codes 0).

    amax = max |x| over the block (NaN propagates); scale = amax / 127 and inv = 127 / amax (fp32, correctly
    rounded), both 1 for an all-zero block; code = rne(x · inv) clamped to ±127; NaN (and Inf · 0) → code 0. A block
    holding NaN/Inf gets a NaN/Inf scale, so it dequantises to NaN rather than to plausible numbers. Not guarded:
    a block with 0 < amax < 127 / FLT_MAX ≈ 3.7e-37 gets inv = Inf and its nonzero codes saturate at ±127.
    """
    xf = x.to(torch.float32)
    L = xf.shape[-2]
    pad = -L % block
    if pad:
        xf = torch.cat((xf, xf.new_zeros(*xf.shape[:-2], pad, xf.shape[-1])), dim=-2)
    blocks = xf.unflatten(-2, (-1, block))  # [..., nblk, block, D]
    amax = blocks.abs().amax(dim=(-2, -1))
    qmax = torch.tensor(INT8_MAX, dtype=torch.float32, device=xf.device)  # tensor divisor: true division on CUDA
    one = torch.ones_like(amax)
    scale = torch.where(amax == 0, one, amax / qmax)
    inv = torch.where(amax == 0, one, qmax / amax)
    y = blocks * inv[..., None, None]
    codes = torch.round(y).clamp(-INT8_MAX, INT8_MAX)
    codes = torch.where(torch.isnan(y), torch.zeros_like(codes), codes)
    return codes.to(torch.int8).flatten(-3, -2), scale


def _as_float(x: KV) -> torch.Tensor:
    return x.dequantize(torch.float32) if isinstance(x, FP8Window) else x.to(torch.float32)


def reference(q: torch.Tensor, k: KV, v: KV, block_m: int = Q_BLOCK, block_n: int = K_BLOCK,
              tile_n: int = DEFAULT_CONFIG.block_n) -> torch.Tensor:
    """The `int8-fp8` computation in PyTorch float32, step for step as the kernel does it: K smoothing, INT8
    blocks of `block_m` queries / `block_n` keys, the online softmax over key tiles of `tile_n` (the kernel's
    BLOCK_N: P is rounded to E4M3 against the running row maximum), FP8 P·V. q [B, Lq, H, D]; k, v [B, Lk, H, D]
    tensors or FP8Windows; returns [B, Lq, H, D] in q's dtype. What differs from the GPU: the summation order and
    the GPU's approximate exp2 (a P code may move by one step where a value sits at a rounding boundary).
    """
    B, Lq, H, D = q.shape
    Lk = k.shape[1]
    qh = q.to(torch.float32).transpose(1, 2)  # [B, H, Lq, D]
    kh = _as_float(k).transpose(1, 2)
    q8, sq = quantize_int8_blocks(qh, block_m)
    k8, sk = quantize_int8_blocks(kh - kh.mean(dim=2, keepdim=True), block_n)
    c = torch.tensor(LOG2E / math.sqrt(D), dtype=torch.float32, device=q.device)
    sq_row = (sq * c).repeat_interleave(block_m, dim=-1)[..., :Lq]  # [B, H, Lq]
    sk_col = sk.repeat_interleave(block_n, dim=-1)[..., :Lk]  # [B, H, Lk]
    q8f, k8f = q8[..., :Lq, :].to(torch.float32), k8[..., :Lk, :].to(torch.float32)
    vw = v if isinstance(v, FP8Window) else fp8_window(v)
    v8f = vw.data.to(torch.float32).transpose(1, 2)  # [B, H, Lk, D]
    m = torch.full((B, H, Lq), float("-inf"), device=q.device)
    l_sum = torch.zeros(B, H, Lq, device=q.device)
    acc = torch.zeros(B, H, Lq, D, device=q.device)
    for start in range(0, Lk, tile_n):
        sl = slice(start, min(start + tile_n, Lk))
        y = (q8f @ k8f[..., sl, :].transpose(-1, -2)) * sk_col[..., None, sl]  # exact integers, then × k scale
        m_new = torch.maximum(m, y.amax(dim=-1) * sq_row)
        p = torch.exp2(y * sq_row[..., None] - (m_new - P_LOG2)[..., None])
        alpha = torch.exp2(m - m_new)
        l_sum = l_sum * alpha + p.sum(dim=-1)
        acc = acc * alpha[..., None] + p.to(torch.float8_e4m3fn).to(torch.float32) @ v8f[..., sl, :]
        m = m_new
    out = acc * (vw.scale.to(torch.float32).reshape(()) / l_sum)[..., None]
    return out.transpose(1, 2).to(q.dtype)


# ---------------------------------------------------------------------------------------------------------------
# Triton device code. Plain functions here (annotations stay strings), wrapped by triton.jit on first use.
# ---------------------------------------------------------------------------------------------------------------
tl: Any = None  # triton.language, bound by _kernels() on first use
_KERNELS: dict[str, Any] | None = None


def _max_nan(a, b):
    """max that propagates NaN (like torch.amax)."""
    return tl.where((a > b) | (a != a), a, b)


def _to_e4m3(x):
    """fp32 (|x| ≤ 448, or NaN) → E4M3, round to nearest even (cvt.rn.satfinite on the GPU)."""
    return x.to(tl.float8e4nv)


def _to_e4m3_portable(x):
    """Interpreter twin of _to_e4m3 (the interpreter's own cast loses the carry when the mantissa rounds up, e.g.
    126.5 → 64): RNE on the fp32 bits in integer arithmetic, subnormals by the 2^23 trick, NaN → 0x7F."""
    u = x.to(tl.int32, bitcast=True)
    sign = (u >> 24) & 0x80
    u = u & 0x7FFFFFFF
    un = u + 0x7FFFF + ((u >> 20) & 1)
    normal = ((((un >> 23) - 120) << 3) | ((un >> 20) & 7)) & 0x7F
    sub = ((tl.abs(x) * 512.0 + 8388608.0) - 8388608.0).to(tl.int32)
    b = tl.where(u >= 0x3C800000, normal, sub) | sign  # 0x3C800000 = 2^-6, E4M3's smallest normal
    b = tl.where(x != x, 0x7F, b)
    return b.to(tl.uint8).to(tl.float8e4nv, bitcast=True)


def _cast_out(x, dtype: tl.constexpr):
    """fp32 → the output dtype, round to nearest even."""
    return x.to(dtype)


def _cast_out_portable(x, dtype: tl.constexpr):
    """Interpreter twin of _cast_out (its fp32 → bf16 cast truncates): RNE to bf16 on the bits."""
    if dtype == tl.bfloat16:
        u = x.to(tl.int32, bitcast=True)
        r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) & 0xFFFF
        r = tl.where(x != x, 0x7FC0, r)
        out = r.to(tl.int16).to(tl.bfloat16, bitcast=True)
    else:
        out = x.to(dtype)
    return out


def _key_sum_kernel(x_ptr, xs_ptr, part_ptr, H, L, n_chunks, sb, sl, sh, sd,
                    D: tl.constexpr, CHUNK: tl.constexpr, ROWS: tl.constexpr, FP8: tl.constexpr):
    """part[bh, c, :] = Σ over keys c·CHUNK … of x[b, key, h, :] in fp32 (FP8: each element × the window scale)."""
    c = tl.program_id(0)
    bh = tl.program_id(1)
    base = x_ptr + (bh // H).to(tl.int64) * sb + (bh % H).to(tl.int64) * sh
    d = tl.arange(0, D)
    acc = tl.zeros((ROWS, D), dtype=tl.float32)
    for r0 in range(0, CHUNK, ROWS):
        r = c * CHUNK + r0 + tl.arange(0, ROWS)
        x = tl.load(base + r.to(tl.int64)[:, None] * sl + d[None, :] * sd, mask=(r < L)[:, None], other=0.0)
        x = x.to(tl.float32)
        if FP8:
            x = x * tl.load(xs_ptr)
        acc += x
    tl.store(part_ptr + (bh.to(tl.int64) * n_chunks + c) * D + d, tl.sum(acc, axis=0))


def _int8_block_kernel(x_ptr, xs_ptr, mean_ptr, out_ptr, scale_ptr, H, L, L_pad, sb, sl, sh, sd, mult,
                       D: tl.constexpr, BLK: tl.constexpr, FP8: tl.constexpr, SMOOTH: tl.constexpr):
    """One block of BLK rows of one head → INT8 codes out[bh, rows, :] and scale[bh, blk] · mult, exactly as
    `quantize_int8_blocks` (after dequantising FP8 and subtracting the key mean where asked). Rows past L are
    zeros (they pad the buffer to L_pad)."""
    blk = tl.program_id(0)
    bh = tl.program_id(1)
    base = x_ptr + (bh // H).to(tl.int64) * sb + (bh % H).to(tl.int64) * sh
    r = blk * BLK + tl.arange(0, BLK)
    d = tl.arange(0, D)
    valid = (r < L)[:, None]
    x = tl.load(base + r.to(tl.int64)[:, None] * sl + d[None, :] * sd, mask=valid, other=0.0).to(tl.float32)
    if FP8:
        x = x * tl.load(xs_ptr)
    if SMOOTH:
        x = x - tl.load(mean_ptr + bh.to(tl.int64) * D + d)[None, :]
    x = tl.where(valid, x, 0.0)
    amax = tl.reduce(tl.reduce(tl.abs(x), 1, _max_nan), 0, _max_nan)
    scale = tl.where(amax == 0.0, 1.0, tl.math.div_rn(amax, 127.0))
    inv = tl.where(amax == 0.0, 1.0, tl.math.div_rn(127.0, amax))
    y = x * inv
    code = (y + 12582912.0) - 12582912.0  # round half to even for |y| < 2^22 (1.5 · 2^23 trick; no FMA)
    code = tl.where(code > 127.0, 127.0, tl.where(code < -127.0, -127.0, code))
    code = tl.where(y != y, 0.0, code)
    tl.store(out_ptr + (bh.to(tl.int64) * L_pad + r[:, None]) * D + d[None, :], code.to(tl.int8))
    tl.store(scale_ptr + bh.to(tl.int64) * (L_pad // BLK) + blk, scale * mult)


def _v_kmajor_kernel(x_ptr, xs_ptr, out_ptr, H, L, L_out, sb, sl, sh, sd,
                     D: tl.constexpr, ROWS: tl.constexpr, QUANT: tl.constexpr):
    """V [B, L, H, D] (any strides) → out [B, H, D, L_out] E4M3 with keys contiguous. QUANT: x is BF16/FP16/FP32
    and becomes e4m3(clamp(x · (1 / scale), ±448)) (the reciprocal correctly rounded, then one fp32 multiply, RNE:
    `fp8_window`'s rule, scale at xs_ptr); else x is E4M3, copied."""
    blk = tl.program_id(0)
    bh = tl.program_id(1)
    base = x_ptr + (bh // H).to(tl.int64) * sb + (bh % H).to(tl.int64) * sh
    r = blk * ROWS + tl.arange(0, ROWS)
    d = tl.arange(0, D)
    x = tl.load(base + r.to(tl.int64)[:, None] * sl + d[None, :] * sd, mask=(r < L)[:, None], other=0.0)
    if QUANT:
        y = x.to(tl.float32) * tl.math.div_rn(1.0, tl.load(xs_ptr))
        y = tl.where(y > 448.0, 448.0, tl.where(y < -448.0, -448.0, y))
        x = _to_e4m3(y)
    tl.store(out_ptr + (bh.to(tl.int64) * D + d[:, None]) * L_out + r[None, :], tl.trans(x), mask=(r < L)[None, :])


def _attn_tile(acc, l_i, m_i, q, sq, k_base, sk_base, v_base, svn, svd, start, Lk, offs_n, offs_d,
               D: tl.constexpr, KB: tl.constexpr, P_OFF: tl.constexpr, TAIL: tl.constexpr):
    """One key tile of the online softmax (see the module docstring); TAIL masks keys ≥ Lk."""
    n = start + offs_n
    k = tl.load(k_base + n[:, None] * D + offs_d[None, :])  # INT8 rows are zero-padded to a multiple of PAD
    sk = tl.load(sk_base + n // KB)
    y = tl.dot(q, tl.trans(k)).to(tl.float32) * sk[None, :]  # int32 accumulation is exact
    if TAIL:
        y = tl.where((n < Lk)[None, :], y, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(y, 1) * sq)  # sq > 0: max(y) · sq == max(y · sq)
    z = y * sq[:, None] - (m_new - P_OFF)[:, None]
    if TAIL:
        z = tl.where((n < Lk)[None, :], z, float("-inf"))
    p = tl.math.exp2(z)
    alpha = tl.math.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    if TAIL:
        v = tl.load(v_base + n[:, None] * svn + offs_d[None, :] * svd, mask=(n < Lk)[:, None], other=0.0)
    else:
        v = tl.load(v_base + n[:, None] * svn + offs_d[None, :] * svd)
    acc = acc * alpha[:, None] + tl.dot(_to_e4m3(p), v)
    return acc, l_i, m_new


def _attn_kernel(q_ptr, sq_ptr, k_ptr, sk_ptr, v_ptr, vs_ptr, o_ptr, H, Lq, Lk, lq_pad, lk_pad,
                 svb, svn, svh, svd, sob, som, soh, sod, LK_BUCKET,
                 D: tl.constexpr, QB: tl.constexpr, KB: tl.constexpr, P_OFF: tl.constexpr, BLOCK_M: tl.constexpr,
                 BLOCK_N: tl.constexpr):
    """Program (query tile, b·H + h): INT8 Q·Kᵀ, online softmax, FP8 P·V, output rows < Lq. LK_BUCKET only keys
    the autotuner; P_OFF is P_LOG2."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    bh64 = bh.to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D)
    q = tl.load(q_ptr + (bh64 * lq_pad + offs_m[:, None]) * D + offs_d[None, :])
    sq = tl.load(sq_ptr + bh64 * (lq_pad // QB) + offs_m // QB)
    k_base = k_ptr + bh64 * lk_pad * D
    sk_base = sk_ptr + bh64 * (lk_pad // KB)
    v_base = v_ptr + b * svb + h * svh
    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, D), dtype=tl.float32)
    n_full = (Lk // BLOCK_N) * BLOCK_N
    for start in range(0, n_full, BLOCK_N):
        acc, l_i, m_i = _attn_tile(acc, l_i, m_i, q, sq, k_base, sk_base, v_base, svn, svd, start, Lk, offs_n,
                                   offs_d, D, KB, P_OFF, False)
    if n_full < Lk:
        acc, l_i, m_i = _attn_tile(acc, l_i, m_i, q, sq, k_base, sk_base, v_base, svn, svd, n_full, Lk, offs_n,
                                   offs_d, D, KB, P_OFF, True)
    out = acc * (tl.load(vs_ptr) / l_i)[:, None]
    o_ptrs = o_ptr + b * sob + h * soh + offs_m.to(tl.int64)[:, None] * som + offs_d[None, :] * sod
    tl.store(o_ptrs, _cast_out(out, o_ptr.dtype.element_ty), mask=(offs_m < Lq)[:, None])


_HELPERS = ("_max_nan", "_to_e4m3", "_cast_out", "_attn_tile")
_KERNEL_NAMES = {"key_sum": "_key_sum_kernel", "int8_block": "_int8_block_kernel", "v_kmajor": "_v_kmajor_kernel",
                 "attn": "_attn_kernel"}


def _kernels() -> dict[str, Any]:
    """Import Triton and JIT-wrap the device functions above (once); "attn_tuned" autotunes over CONFIGS."""
    global _KERNELS, tl
    if _KERNELS is None:
        try:
            import triton  # optional extra: Triton, absence -> RuntimeError
            import triton.language as language  # optional extra: Triton, absence -> RuntimeError
        except ImportError as exc:
            raise RuntimeError(f"attention backend {NAME!r} needs Triton (pip install triton) and a CUDA GPU") from exc
        tl = language
        g = globals()
        if _interpreting():
            g["_to_e4m3"], g["_cast_out"] = g["_to_e4m3_portable"], g["_cast_out_portable"]
        for name in _HELPERS:
            g[name] = triton.jit(g[name])
        kernels = {key: triton.jit(g[fn]) for key, fn in _KERNEL_NAMES.items()}
        configs = [triton.Config({"BLOCK_M": c.block_m, "BLOCK_N": c.block_n}, num_warps=c.num_warps,
                                 num_stages=c.num_stages) for c in CONFIGS]
        kernels["attn_tuned"] = triton.autotune(configs, key=["LK_BUCKET", "D"])(kernels["attn"])
        _KERNELS = kernels
    return _KERNELS


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


# ---------------------------------------------------------------------------------------------------------------
# Host side
# ---------------------------------------------------------------------------------------------------------------
def unavailable(device: torch.device | str) -> str | None:
    """Why `int8-fp8` cannot run on `device` (not CUDA, a GPU older than sm_90, no Triton), or None."""
    device = torch.device(device)
    if device.type != "cuda":
        return f"attention backend {NAME!r} needs a CUDA device, but the model is on {device.type}"
    if not torch.cuda.is_available():
        return f"attention backend {NAME!r} needs CUDA, but torch.cuda.is_available() is False"
    major, minor = torch.cuda.get_device_capability(device)
    if major < 9:
        return (f"attention backend {NAME!r} needs an sm_90+ GPU (Hopper or newer) for its FP8 P·V; "
                f"{torch.cuda.get_device_name(device)} is sm_{major}{minor}")
    try:
        import triton  # noqa: F401  # optional extra: Triton probe, absence -> reason
    except ImportError:
        return f"attention backend {NAME!r} needs Triton (pip install triton)"
    return None


@dataclass
class Prepared:
    """The kernel's operands after the pre-pass (exposed for the GPU tests and the probe's timing)."""

    q8: torch.Tensor  # int8 [B·H, Lq_pad, D]
    sq: torch.Tensor  # fp32 [B·H, Lq_pad / Q_BLOCK]: scale · (1/√D) · log2 e
    k8: torch.Tensor  # int8 [B·H, Lk_pad, D], smoothed
    sk: torch.Tensor  # fp32 [B·H, Lk_pad / K_BLOCK]
    mean: torch.Tensor  # fp32 [B·H, D]: the key mean subtracted before quantising
    v8: torch.Tensor  # E4M3 indexed [B, Lk, H, D] (keys contiguous after a transpose)
    vs: torch.Tensor  # fp32 [1]: V's per-tensor scale


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def _check(q: torch.Tensor, k: KV, v: KV) -> tuple[int, int, int, int, int]:
    """Shapes, dtypes and device, with errors that name the operand (before any work)."""
    if q.ndim != 4 or q.dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f"attention backend {NAME!r}: q must be [B, Lq, H, D] in BF16 or FP16, got "
                         f"{tuple(q.shape)} {q.dtype}")
    B, Lq, H, D = q.shape
    if D not in HEAD_DIMS:
        raise ValueError(f"attention backend {NAME!r} supports head_dim {HEAD_DIMS}, got {D}")
    for name, x in (("k", k), ("v", v)):
        t = x.data if isinstance(x, FP8Window) else x
        if isinstance(x, FP8Window):
            if t.dtype != torch.float8_e4m3fn or x.scale.numel() != 1:
                raise ValueError(f"attention backend {NAME!r}: FP8Window {name} must hold float8_e4m3fn data and "
                                 f"a one-element scale, got {t.dtype} and {x.scale.numel()} scales")
        elif t.dtype not in (torch.bfloat16, torch.float16, torch.float32):
            raise ValueError(f"attention backend {NAME!r}: {name} must be a float tensor or an FP8Window, "
                             f"got {t.dtype}")
        if t.ndim != 4 or (t.shape[0], t.shape[2], t.shape[3]) != (B, H, D) or t.device != q.device:
            raise ValueError(f"attention backend {NAME!r}: {name} must be [B, Lk, H, D] = [{B}, Lk, {H}, {D}] on "
                             f"{q.device} like q, got {tuple(t.shape)} on {t.device}")
    if k.shape[1] != v.shape[1] or k.shape[1] == 0:
        raise ValueError(f"attention backend {NAME!r}: k and v need the same number of keys (≥ 1), got "
                         f"{k.shape[1]} and {v.shape[1]}")
    if not q.is_cuda and not _interpreting():
        raise ValueError(f"attention backend {NAME!r} runs on CUDA tensors, got q on {q.device}")
    return B, Lq, H, D, k.shape[1]


def _v_scale(v: torch.Tensor) -> torch.Tensor:
    """V's per-tensor scale, the same value as `fp8_window`'s (the GPU tests compare the codes): max |v| by one
    reduction (the ∞-norm; `abs().amax()` would first write |v| out), NaN kept, then fp8_window's expression."""
    a = abs_max(v.detach()).reshape(1)
    return scale_for(a)


def prepare(q: torch.Tensor, k: KV, v: KV, v_transpose: bool | None = None) -> Prepared:
    """The pre-pass: INT8 q, key mean, smoothed INT8 k, E4M3 V with keys contiguous. v_transpose: None = transpose
    unless V's keys are already contiguous; True/False force it (False reads a channels-contiguous V as stored,
    which the FP8 MMA then has to transpose itself: the probe times both)."""
    B, Lq, H, D, Lk = _check(q, k, v)
    kern = _kernels()
    dev = q.device
    f32 = torch.float32
    lq_pad, lk_pad = _round_up(Lq, PAD), _round_up(Lk, PAD)
    one = torch.ones(1, dtype=f32, device=dev)
    quant = {"num_warps": 8, "enable_fp_fusion": False}
    q8 = torch.empty(B * H, lq_pad, D, dtype=torch.int8, device=dev)
    sq = torch.empty(B * H, lq_pad // Q_BLOCK, dtype=f32, device=dev)
    kern["int8_block"][(lq_pad // Q_BLOCK, B * H)](q, one, one, q8, sq, H, Lq, lq_pad, *q.stride(),
                                                    LOG2E / math.sqrt(D), D=D, BLK=Q_BLOCK, FP8=False, SMOOTH=False,
                                                    **quant)
    kd, ks = (k.data, k.scale.to(f32).reshape(1)) if isinstance(k, FP8Window) else (k, one)
    n_chunks = -(-Lk // SUM_CHUNK)
    part = torch.empty(B * H, n_chunks, D, dtype=f32, device=dev)
    kern["key_sum"][(n_chunks, B * H)](kd, ks, part, H, Lk, n_chunks, *kd.stride(), D=D, CHUNK=SUM_CHUNK,
                                       ROWS=SUM_ROWS, FP8=isinstance(k, FP8Window), num_warps=4)
    mean = (part.sum(dim=1) / Lk).contiguous()
    k8 = torch.empty(B * H, lk_pad, D, dtype=torch.int8, device=dev)
    sk = torch.empty(B * H, lk_pad // K_BLOCK, dtype=f32, device=dev)
    kern["int8_block"][(lk_pad // K_BLOCK, B * H)](kd, ks, mean, k8, sk, H, Lk, lk_pad, *kd.stride(), 1.0, D=D,
                                                    BLK=K_BLOCK, FP8=isinstance(k, FP8Window), SMOOTH=True, **quant)
    if isinstance(v, FP8Window):
        vd, vs, needs_quant = v.data, v.scale.to(f32).reshape(1), False
    else:
        vd, vs, needs_quant = v, _v_scale(v), True
    keys_contiguous = vd.stride(1) == 1 and all(s % 16 == 0 for s in (vd.stride(0), vd.stride(2), vd.stride(3)))
    if v_transpose is None:
        v_transpose = not keys_contiguous
    if v_transpose:
        vt = torch.empty(B, H, D, lk_pad, dtype=torch.float8_e4m3fn, device=dev)
        kern["v_kmajor"][(-(-Lk // V_ROWS), B * H)](vd, vs, vt, H, Lk, lk_pad, *vd.stride(), D=D, ROWS=V_ROWS,
                                                     QUANT=needs_quant, num_warps=4, enable_fp_fusion=False)
        v8 = vt[..., :Lk].permute(0, 3, 1, 2)
    else:
        v8 = fp8_window(v).data if needs_quant else vd
    return Prepared(q8, sq, k8, sk, mean, v8, vs)


def launch(prep: Prepared, q_shape: tuple[int, int, int, int], dtype: torch.dtype,
           config: TileConfig | str | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """The attention kernel on prepared operands → out [B, Lq, H, D] (`dtype`). config: a TileConfig, None for
    DEFAULT_CONFIG, or "autotune" (Triton's autotuner over CONFIGS, keyed on (Lk bucket, D))."""
    kern = _kernels()
    B, Lq, H, D = q_shape
    Lk = prep.v8.shape[1]
    if out is None:
        out = torch.empty(B, Lq, H, D, dtype=dtype, device=prep.q8.device)
    elif tuple(out.shape) != (B, Lq, H, D) or out.dtype != dtype or out.device != prep.q8.device:
        raise ValueError(f"attention backend {NAME!r}: out must be [{B}, {Lq}, {H}, {D}] {dtype} on "
                         f"{prep.q8.device}, got {tuple(out.shape)} {out.dtype} on {out.device}")
    v8 = prep.v8
    args = (prep.q8, prep.sq, prep.k8, prep.sk, v8, prep.vs, out, H, Lq, Lk, prep.q8.shape[1], prep.k8.shape[1],
            v8.stride(0), v8.stride(1), v8.stride(2), v8.stride(3), *out.stride(), 1 << (Lk - 1).bit_length())
    if config == "autotune":
        grid = lambda meta: (-(-Lq // meta["BLOCK_M"]), B * H)  # noqa: E731
        kern["attn_tuned"][grid](*args, D=D, QB=Q_BLOCK, KB=K_BLOCK, P_OFF=P_LOG2)
        return out
    cfg = DEFAULT_CONFIG if config is None else config
    if not isinstance(cfg, TileConfig) or PAD % cfg.block_m or PAD % cfg.block_n:
        raise ValueError(f"attention backend {NAME!r}: config must be a TileConfig with tiles dividing {PAD}, "
                         f"None or 'autotune', got {config!r}")
    kern["attn"][(-(-Lq // cfg.block_m), B * H)](*args, D=D, QB=Q_BLOCK, KB=K_BLOCK, P_OFF=P_LOG2,
                                                   BLOCK_M=cfg.block_m,
                                                   BLOCK_N=cfg.block_n, num_warps=cfg.num_warps,
                                                   num_stages=cfg.num_stages)
    return out


def attend(q: torch.Tensor, k: KV, v: KV, *, config: TileConfig | str | None = None,
           v_transpose: bool | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """Non-causal attention, q [B, Lq, H, D] BF16/FP16, k, v [B, Lk, H, D] tensors or FP8Windows → [B, Lq, H, D]
    in q's dtype (contiguous), with INT8 Q·Kᵀ and FP8 P·V (module docstring). The registered backend function;
    the keywords are for tests and the probe (tile config, V layout, a preallocated output)."""
    return launch(prepare(q, k, v, v_transpose), tuple(q.shape), q.dtype, config, out)
