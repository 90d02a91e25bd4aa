"""Reference NVFP4 quantiser / dequantiser (spec 03), including the Four-over-Six (4/6) block-scale rules.

This is the numerical reference: Triton/CUDA kernels must reproduce it bit for bit. The exact operation order is
(all fp32 IEEE round-to-nearest-even, correctly rounded division, no FMA contraction, no flush-to-zero; x is the
2-D view [rows, cols] of the input converted to fp32 — after the optional Hadamard transform):

Constants per rule (D = E4M3 denominator, M = block target, DM = D·M, both exact in fp32):
    static_6: D=448, M=6 (DM=2688) | static_4: D=448, M=4 (DM=1792) | mse / mae / abs_max: D=256, M=6 (DM=1536)

 1. amax = max|x| over the whole tensor (fp32; NaN propagates), unless given by the caller.
 2. g = amax / DM                                      (fp32 division; the stored `global_scale`)
 3. bm = max|x| over each block (1×16 along the last dim, or 16×16 tiles; rows padded with zeros to 16)
 4. s_f = (g == 0) ? 0 : (bm / M) / g                   (two fp32 divisions, in this order)
    4/6 rules: s6_f = (g == 0) ? 0 : (bm / 6) / g; s4_f = s6_f · 1.5 (fp32 multiply)
 5. s = e4m3(min(s_f, 448))                            (RNE cast, subnormals kept; NaN → byte 0x7F)
 6. den = float(s) · g                                 (fp32 multiply)
 7. y = (den == 0) ? 0 : x / den                        (fp32 division; NaN den → y NaN)
 8. code = round_to_e2m1(y)                            (clamp ±6, RNE on the E2M1 grid, sign = signbit(y), NaN → 0;
                                                       stochastic: see `formats.round_to_e2m1`)
 9. 4/6 selection (per block, i.e. per 1×16 row block or per whole 16×16 tile):
      x̂_k = (e2m1(code_k) · float(s_k)) · g                (fp32, exactly the dequantisation below), k ∈ {4, 6}
      d_k = float64(x̂_k) − float64(x)                      (float64 subtraction)
      mse: err_k = Σ d_k²; mae: err_k = Σ |d_k|; abs_max: err_k = max |d_k|      (float64)
      Σ is a fixed pairwise tree over the block's elements in row-major order (16 or 256 terms):
      level by level, e ← e[0::2] + e[1::2] until one element remains.
      keep the 4-candidate (its codes and scale) iff err_4 < err_6 (strict: ties and NaN keep the 6-candidate).
    With stochastic rounding both candidates use the same uniform draw u per element.
10. dequantise: x̂ = (e2m1(code) · float(s)) · g in fp32 (e2m1 · s is exact), then cast to the output dtype (RNE).

Consequences: all-zero tensors/blocks give scale 0, codes 0 and dequantise to 0 (no division by zero). A caller
amax smaller than the data saturates (scale clamped to 448, |y| clamped to 6). NaN policy: NaN propagates, no
exception (raising would need a device sync): a NaN in a block makes that block's scale NaN (0x7F) and its codes 0,
so it dequantises to NaN; with amax computed from x (the default) any NaN or ±Inf makes amax non-finite and the whole
tensor dequantises to NaN. With a finite caller amax, ±Inf saturates to ±6 in a block whose scale is clamped to 448.
"""

from __future__ import annotations

import torch

from .formats import E2M1_MAX, E4M3_MAX, e2m1_to_float, pack_nibbles, round_to_e2m1, to_e4m3, unpack_nibbles
from .hadamard import inverse_random_hadamard_transform, random_hadamard_transform
from .tensors import NVFP4Tensor

BLOCK = 16
RULES = ("static_6", "static_4", "mse", "mae", "abs_max")
FOUR_OVER_SIX_RULES = ("mse", "mae", "abs_max")
BLOCKS = ((1, 16), (16, 16))


def rule_constants(rule: str) -> tuple[float, float]:
    """(E4M3 denominator D, block target M) of a rule: global scale = amax / (D · M)."""
    if rule == "static_6":
        return 448.0, 6.0
    if rule == "static_4":
        return 448.0, 4.0
    if rule in FOUR_OVER_SIX_RULES:
        return 256.0, 6.0
    raise ValueError(f"unknown NVFP4 scale rule {rule!r}; expected one of {RULES}")


def global_scale_from_amax(amax: torch.Tensor, rule: str) -> torch.Tensor:
    """g = amax / (D·M) in fp32 (the per-tensor decode scale; shape of amax)."""
    d, m = rule_constants(rule)
    a = amax.to(torch.float32)
    return a / torch.tensor(d * m, dtype=torch.float32, device=a.device)


def block_scale_candidates(
    block_amax: torch.Tensor, global_scale: torch.Tensor, rule: str
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Steps 4–5: the E4M3 block scale(s) for block maxima `bm` (fp32) — (s, None) for static rules, (s6, s4) for 4/6.

    s_f = (g == 0) ? 0 : (bm / M) / g; s4_f = s6_f · 1.5; each then e4m3(min(·, 448)).
    """
    _, m = rule_constants(rule)
    bm = block_amax.to(torch.float32)
    g = global_scale.to(torch.float32)
    # Divide by a tensor, not a Python float: on CUDA PyTorch turns `t / float` into `t * fp32(1/float)`, which
    # is not the correctly rounded division this reference (and the Triton kernels) define.
    m_t = torch.tensor(m, dtype=bm.dtype, device=bm.device)
    s_f = torch.where(g == 0, torch.zeros_like(bm), (bm / m_t) / g)
    s = to_e4m3(torch.clamp(s_f, max=E4M3_MAX))
    if rule not in FOUR_OVER_SIX_RULES:
        return s, None
    return s, to_e4m3(torch.clamp(s_f * 1.5, max=E4M3_MAX))


def _as_2d(x: torch.Tensor) -> torch.Tensor:
    if x.ndim == 0 or x.shape[-1] % BLOCK:
        raise ValueError(
            f"NVFP4 quantisation needs a last dimension that is a multiple of {BLOCK}, got shape {tuple(x.shape)}"
        )
    return x.reshape(-1, x.shape[-1]).to(torch.float32)


def _tree_sum(e: torch.Tensor) -> torch.Tensor:
    """Pairwise sum over the last dim (power of two) in the fixed documented order."""
    while e.shape[-1] > 1:
        e = e[..., 0::2] + e[..., 1::2]
    return e[..., 0]


class _Blocks:
    """Views between the [rows, cols] element layout and the per-block layout of a block shape."""

    def __init__(self, rows: int, cols: int, block: tuple[int, int]):
        self.rows, self.cols, self.block = rows, cols, block
        self.nb = cols // BLOCK
        self.br = block[0]
        self.prows = (rows + self.br - 1) // self.br * self.br

    def to_blocks(self, t: torch.Tensor) -> torch.Tensor:
        """[rows, cols] → [n_row_blocks, nb, br·16] (block elements in row-major order; zero row padding)."""
        if self.prows != self.rows:
            t = torch.cat((t, t.new_zeros(self.prows - self.rows, self.cols)), 0)
        return (
            t.reshape(self.prows // self.br, self.br, self.nb, BLOCK)
            .permute(0, 2, 1, 3)
            .reshape(self.prows // self.br, self.nb, self.br * BLOCK)
        )

    def from_blocks(self, t: torch.Tensor) -> torch.Tensor:
        """Inverse of to_blocks (drops padding rows)."""
        return (
            t.reshape(self.prows // self.br, self.nb, self.br, BLOCK)
            .permute(0, 2, 1, 3)
            .reshape(self.prows, self.cols)[: self.rows]
        )

    def expand_scales(self, s: torch.Tensor) -> torch.Tensor:
        """Per-block [n_row_blocks, nb] → per-row [rows, nb] (a 16×16 tile repeats its scale on its 16 rows)."""
        return s.repeat_interleave(self.br, dim=0)[: self.rows] if self.br > 1 else s


def _candidate(
    xb: torch.Tensor, s: torch.Tensor, g: torch.Tensor, stochastic: bool, noise: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Steps 6–8 for one e4m3 scale candidate on block layout xb [nrb, nb, n]: (codes, e4m3 scales, fp32 scales)."""
    sf = s.to(torch.float32)
    den = (sf * g)[..., None]
    y = torch.where(den == 0, torch.zeros_like(xb), xb / den)
    codes = round_to_e2m1(y, stochastic=stochastic, noise=noise)
    return codes, s, sf


def _dequant_blocks(codes: torch.Tensor, sf: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return (e2m1_to_float(codes) * sf[..., None]) * g


def _block_error(xhat: torch.Tensor, xb: torch.Tensor, rule: str) -> torch.Tensor:
    d = xhat.to(torch.float64) - xb.to(torch.float64)
    if rule == "mse":
        return _tree_sum(d * d)
    if rule == "mae":
        return _tree_sum(d.abs())
    return d.abs().amax(dim=-1)  # abs_max


def quantize_nvfp4(
    x: torch.Tensor,
    *,
    block: tuple[int, int] = (1, 16),
    rule: str = "static_6",
    stochastic: bool = False,
    generator: torch.Generator | None = None,
    amax: torch.Tensor | float | None = None,
    hadamard: torch.Tensor | int | bool | None = None,
    noise: torch.Tensor | None = None,
) -> NVFP4Tensor:
    """Quantise `x` (any leading shape, last dim a multiple of 16) to NVFP4 exactly as in the module docstring.

    block: (1, 16) blocks along the last dim, or (16, 16) tiles of the 2-D view (so W and Wᵀ quantise alike).
    rule: static_6 | static_4 | mse | mae | abs_max (the last three are Four-over-Six, per block / per tile).
    stochastic: unbiased stochastic rounding with uniform draws from `generator` (one per element, row-major over
    the 2-D view, drawn with `torch.rand`) or from `noise` ([rows, cols] fp32 in [0, 1)) when given.
    amax: tensor amax to use instead of max|x| (e.g. to re-quantise with a fixed global scale).
    hadamard: None/False = off; True = default sign vector; int seed or ±1 tensor of 16 signs = that RHT. The
    transform is applied along the last dim before everything else; the result stays in the rotated domain
    (pass the same `hadamard` to `dequantize_nvfp4` to rotate back).
    """
    if rule not in RULES:
        raise ValueError(f"unknown NVFP4 scale rule {rule!r}; expected one of {RULES}")
    block = tuple(block)  # type: ignore[assignment]
    if block not in BLOCKS:
        raise ValueError(f"NVFP4 block must be one of {BLOCKS}, got {block}")
    shape = tuple(x.shape)
    xf = _as_2d(x)
    if hadamard is not None and hadamard is not False:
        xf = random_hadamard_transform(xf, None if hadamard is True else hadamard, dim=-1)
    rows, cols = xf.shape
    if amax is None:
        amax_t = xf.abs().amax().reshape(1) if xf.numel() else torch.zeros(1, device=xf.device)
    else:
        amax_t = torch.as_tensor(amax, dtype=torch.float32, device=xf.device).reshape(1)
    amax_t = amax_t.to(torch.float32)
    g = global_scale_from_amax(amax_t, rule)

    bl = _Blocks(rows, cols, block)
    xb = bl.to_blocks(xf)  # [nrb, nb, n]
    bm = xb.abs().amax(dim=-1)  # NaN propagates
    s6, s4_cand = block_scale_candidates(bm, g, rule)

    if stochastic:
        if noise is None:
            noise = torch.rand((rows, cols), generator=generator, device=xf.device, dtype=torch.float32)
        elif tuple(noise.shape) != (rows, cols):
            raise ValueError(f"noise must have the 2-D shape {(rows, cols)}, got {tuple(noise.shape)}")
        nb_noise = bl.to_blocks(noise.to(torch.float32))
    else:
        nb_noise = None

    codes, s, sf = _candidate(xb, s6, g, stochastic, nb_noise)
    if s4_cand is not None:
        codes4, s4, sf4 = _candidate(xb, s4_cand, g, stochastic, nb_noise)
        err6 = _block_error(_dequant_blocks(codes, sf, g), xb, rule)
        err4 = _block_error(_dequant_blocks(codes4, sf4, g), xb, rule)
        pick4 = err4 < err6
        codes = torch.where(pick4[..., None], codes4, codes)
        s = torch.where(pick4, s4.view(torch.uint8), s.view(torch.uint8)).view(torch.float8_e4m3fn)

    codes_2d = bl.from_blocks(codes)
    scales = bl.expand_scales(s.view(torch.uint8)).contiguous().view(torch.float8_e4m3fn)
    return NVFP4Tensor(
        values=pack_nibbles(codes_2d),
        scales=scales,
        amax=amax_t,
        global_scale=g,
        shape=shape,
        rule=rule,
        block=block,  # type: ignore[arg-type]
    )


def nvfp4_codes(q: NVFP4Tensor) -> torch.Tensor:
    """Unpacked E2M1 codes [rows, cols] (uint8)."""
    return unpack_nibbles(q.values)


def dequantize_nvfp4(
    q: NVFP4Tensor, dtype: torch.dtype = torch.bfloat16, *, hadamard: torch.Tensor | int | bool | None = None
) -> torch.Tensor:
    """x̂ = (e2m1(code) · float(scale)) · global_scale in fp32, cast to `dtype`, in the original shape.

    hadamard: the same spec given to `quantize_nvfp4` to undo the RHT (applied in fp32 before the cast).
    """
    v = e2m1_to_float(unpack_nibbles(q.values))
    rows, cols = v.shape
    s = q.scales.to(torch.float32).repeat_interleave(BLOCK, dim=1)
    if tuple(s.shape) != (rows, cols):
        raise ValueError(f"NVFP4 scales {tuple(q.scales.shape)} do not match values {tuple(q.values.shape)}")
    out = (v * s) * q.global_scale.to(torch.float32).reshape(())
    if hadamard is not None and hadamard is not False:
        out = inverse_random_hadamard_transform(out, None if hadamard is True else hadamard, dim=-1)
    return out.to(dtype).reshape(q.shape)


def fake_quantize_nvfp4(x: torch.Tensor, dtype: torch.dtype | None = None, **kwargs) -> torch.Tensor:
    """dequantize_nvfp4(quantize_nvfp4(x, **kwargs)) in x's dtype (or `dtype`); kwargs as for quantize_nvfp4."""
    q = quantize_nvfp4(x, **kwargs)
    return dequantize_nvfp4(q, dtype or x.dtype, hadamard=kwargs.get("hadamard"))


__all__ = [
    "BLOCKS",
    "E2M1_MAX",
    "FOUR_OVER_SIX_RULES",
    "RULES",
    "block_scale_candidates",
    "dequantize_nvfp4",
    "fake_quantize_nvfp4",
    "global_scale_from_amax",
    "nvfp4_codes",
    "quantize_nvfp4",
    "rule_constants",
]
