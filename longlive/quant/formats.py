"""Element formats shared by the NVFP4 / MXFP4 / FP8 quantisers: E2M1 rounding and nibble packing, E4M3 casts.

This is the *reference* arithmetic that the Triton kernels must reproduce bit for bit, so every function states
its exact float operations. All arithmetic is IEEE fp32, round-to-nearest-even, no flush-to-zero.

E2M1 (FP4): 1 sign, 2 exponent (bias 1), 1 mantissa bit, no Inf/NaN. Code c (4 bits) = sign << 3 | magnitude index,
magnitudes by index 0..7: {0, 0.5, 1, 1.5, 2, 3, 4, 6}; code 8 is −0.

Rounding `round_to_e2m1(y)` (nearest, ties to even mantissa), on a = min(|y|, 6) in fp32::

    idx = (a > 0.25) + (a >= 0.75) + (a > 1.25) + (a >= 1.75) + (a > 2.5) + (a >= 3.5) + (a > 5)

i.e. midpoints 0.25→0, 0.75→1, 1.25→1, 1.75→2, 2.5→2, 3.5→4, 5→4; |y| ≥ 6 (and ±Inf) saturate to 6.
sign bit = signbit(y) (so −0.0 and negatives that round to 0 give code 8, i.e. −0). NaN → code 0.

Stochastic rounding (given u ~ U[0, 1) fp32 per element, `torch.rand` order = row-major over the tensor)::

    lo_idx = (a >= 0.5) + (a >= 1) + (a >= 1.5) + (a >= 2) + (a >= 3) + (a >= 4) + (a >= 6)
    lo = E2M1[lo_idx]; hi = E2M1[min(lo_idx + 1, 7)]
    p = (a - lo) / (hi - lo)   (exact in fp32; p = 0 when lo == 6)
    idx = lo_idx + (u < p)

so E[value] = a exactly and only the two grid neighbours of a are ever produced. NaN → code 0.
"""

from __future__ import annotations

import torch

E2M1_MAX = 6.0
E4M3_MAX = 448.0
E4M3_MIN_NORMAL = 2.0**-6
E4M3_NAN_BYTE = 0x7F

# Magnitudes by index; full table by code (8 = −0.0).
E2M1_MAGNITUDES: tuple[float, ...] = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
E2M1_VALUES: tuple[float, ...] = E2M1_MAGNITUDES + tuple(-v for v in E2M1_MAGNITUDES)

_TABLE_CACHE: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}


def e2m1_table(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The 16 E2M1 values indexed by code (cached per device/dtype)."""
    key = (torch.device(device), dtype)
    if key not in _TABLE_CACHE:
        _TABLE_CACHE[key] = torch.tensor(E2M1_VALUES, dtype=dtype, device=key[0])
    return _TABLE_CACHE[key]


def _signbit_code(y: torch.Tensor, mag: torch.Tensor) -> torch.Tensor:
    """Attach the sign bit (signbit of y, NaN → 0) to magnitude indices."""
    neg = torch.signbit(y) & ~torch.isnan(y)
    return (mag | (neg.to(torch.uint8) << 3)).to(torch.uint8)


def round_to_e2m1(
    x: torch.Tensor,
    *,
    stochastic: bool = False,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Round (already scaled) values to E2M1 codes (uint8 0..15, same shape), saturating at ±6.

    Nearest rounding is ties-to-even on the E2M1 grid (see module docstring). With `stochastic=True` each element
    rounds up with probability equal to its fractional position between its two grid neighbours, using
    `noise` (uniform [0, 1) fp32, same shape) if given, else `torch.rand(..., generator=generator)`.
    """
    y = x.to(torch.float32)
    a = torch.clamp(y.abs(), max=E2M1_MAX)  # NaN stays NaN; every comparison below is then False → index 0
    if not stochastic:
        mag = (a > 0.25).to(torch.uint8) + (a >= 0.75) + (a > 1.25) + (a >= 1.75) + (a > 2.5) + (a >= 3.5) + (a > 5.0)
        return _signbit_code(y, mag.to(torch.uint8))
    if noise is None:
        noise = torch.rand(y.shape, generator=generator, device=y.device, dtype=torch.float32)
    elif noise.shape != y.shape:
        raise ValueError(f"noise shape {tuple(noise.shape)} must equal the input shape {tuple(y.shape)}")
    lo_idx = (a >= 0.5).to(torch.int64) + (a >= 1.0) + (a >= 1.5) + (a >= 2.0) + (a >= 3.0) + (a >= 4.0) + (a >= 6.0)
    table = e2m1_table(y.device)
    lo = table[lo_idx]
    hi = table[torch.clamp(lo_idx + 1, max=7)]
    step = hi - lo
    p = torch.where(step > 0, (a - lo) / torch.where(step > 0, step, torch.ones_like(step)), torch.zeros_like(a))
    up = noise.to(torch.float32) < p  # NaN p → False
    mag = (lo_idx + up.to(torch.int64)).to(torch.uint8)
    return _signbit_code(y, mag)


def e2m1_to_float(codes: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Decode E2M1 codes (any integer dtype, values 0..15) to floats; code 8 is −0.0."""
    return e2m1_table(codes.device, dtype)[codes.to(torch.int64) & 0xF]


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """Pack 4-bit codes [..., n] (n even) into bytes [..., n/2]: low nibble = even index, high nibble = odd index."""
    if codes.shape[-1] % 2:
        raise ValueError(f"pack_nibbles needs an even last dimension, got shape {tuple(codes.shape)}")
    c = codes.to(torch.uint8) & 0xF
    return (c[..., 0::2] | (c[..., 1::2] << 4)).contiguous()


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of `pack_nibbles`: bytes [..., m] → codes [..., 2m] (uint8)."""
    p = packed.to(torch.uint8)
    return torch.stack((p & 0xF, p >> 4), dim=-1).reshape(*p.shape[:-1], p.shape[-1] * 2)


def to_e4m3(x: torch.Tensor) -> torch.Tensor:
    """fp32 → float8_e4m3fn with saturation: clamp to ±448 in fp32, then torch's RNE cast (subnormals kept).

    NaN maps to the canonical NaN byte 0x7F (whatever the NaN's sign).
    """
    y = torch.clamp(x.to(torch.float32), min=-E4M3_MAX, max=E4M3_MAX)
    bits = y.to(torch.float8_e4m3fn).view(torch.uint8)
    nan_byte = torch.full_like(bits, E4M3_NAN_BYTE)
    return torch.where(torch.isnan(y), nan_byte, bits).view(torch.float8_e4m3fn)  # no host sync


def e4m3_to_float(x: torch.Tensor) -> torch.Tensor:
    """float8_e4m3fn → fp32 (exact)."""
    return x.to(torch.float32)
