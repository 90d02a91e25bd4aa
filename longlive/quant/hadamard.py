"""16×16 random Hadamard transform (RHT) used before NVFP4 quantisation of WGRAD operands (spec 03).

T = diag(signs) · H16 / 4, with H16 the Sylvester ±1 Hadamard matrix (H_{2n} = [[H, H], [H, −H]]) and `signs` a
fixed ±1 vector. Applied to each group of 16 consecutive elements along `dim` as a row vector: y = x · T.
T is orthonormal, so the inverse is y · Tᵀ = (y · H16 / 4) · diag(signs).

Reference arithmetic (what a kernel must match bit for bit), all fp32, per 16-group g[0..15]:
  forward: g ← g · signs (exact); then the in-place fast Walsh–Hadamard butterfly for h = 1, 2, 4, 8: for every
  i with (i // h) even, (g[i], g[i+h]) ← (g[i] + g[i+h], g[i] − g[i+h]); finally g ← g · 0.25.
  inverse: the same butterfly on y, then · 0.25, then · signs.
A dense fp32 matmul gives the same values up to summation-order rounding, not bit-exactly.
"""

from __future__ import annotations

import torch

# The fixed 16-entry sign vector TransformerEngine's NVFP4 recipe uses for its WGRAD RHT (public constant).
DEFAULT_SIGNS: tuple[float, ...] = (1, 1, 1, -1, 1, -1, -1, -1, -1, -1, -1, 1, -1, 1, -1, -1)
GROUP = 16


def hadamard_matrix(n: int = GROUP, *, normalized: bool = True, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Sylvester Hadamard matrix of power-of-two size n (entries ±1, or ±1/√n when normalized)."""
    if n < 1 or n & (n - 1):
        raise ValueError(f"Hadamard size must be a power of two, got {n}")
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat((torch.cat((h, h), 1), torch.cat((h, -h), 1)), 0)
    if normalized:
        h = h / n**0.5
    return h.to(dtype)


def hadamard_signs(signs: torch.Tensor | int | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
    """Resolve a sign spec to a ±1 fp32 vector of length 16: None → DEFAULT_SIGNS, int → seeded draw, tensor → it."""
    if signs is None:
        out = torch.tensor(DEFAULT_SIGNS, dtype=torch.float32)
    elif isinstance(signs, int):
        gen = torch.Generator().manual_seed(signs)
        out = torch.randint(0, 2, (GROUP,), generator=gen).to(torch.float32) * 2 - 1
    else:
        out = signs.detach().to(torch.float32).flatten()
        if out.numel() != GROUP:
            raise ValueError(f"signs must be 16 values of ±1, got shape {tuple(signs.shape)}")
        if out.device.type == "cpu" and not bool(((out == 1) | (out == -1)).all()):  # no device sync on GPU
            raise ValueError(f"signs must be 16 values of ±1, got {signs.tolist()}")
    return out.to(device)


def random_hadamard_matrix(signs: torch.Tensor | int | None = None) -> torch.Tensor:
    """The orthonormal 16×16 transform T = diag(signs) · H16 / 4 (fp32)."""
    return hadamard_signs(signs)[:, None] * hadamard_matrix(GROUP, normalized=True)


def _butterfly(g: torch.Tensor) -> torch.Tensor:
    """Unnormalised Walsh–Hadamard transform of the last dim (size 16) in the documented butterfly order."""
    lead = g.shape[:-1]
    h = 1
    while h < GROUP:
        v = g.reshape(*lead, GROUP // (2 * h), 2, h)
        a, b = v[..., 0, :], v[..., 1, :]
        g = torch.stack((a + b, a - b), dim=-2).reshape(*lead, GROUP)
        h *= 2
    return g


def _grouped(x: torch.Tensor, dim: int) -> tuple[torch.Tensor, int]:
    dim = dim % x.ndim
    if x.shape[dim] % GROUP:
        raise ValueError(f"Hadamard transform needs dim {dim} to be a multiple of {GROUP}, got shape {tuple(x.shape)}")
    xm = x.movedim(dim, -1)
    return xm.reshape(*xm.shape[:-1], xm.shape[-1] // GROUP, GROUP), dim


def random_hadamard_transform(x: torch.Tensor, signs: torch.Tensor | int | None = None, dim: int = -1) -> torch.Tensor:
    """Apply y = x · diag(signs) · H16/4 to each 16-group along `dim` (fp32 result, same shape)."""
    g, d = _grouped(x.to(torch.float32), dim)
    s = hadamard_signs(signs, x.device)
    y = _butterfly(g * s) * 0.25
    return y.reshape(*y.shape[:-2], -1).movedim(-1, d)


def inverse_random_hadamard_transform(
    y: torch.Tensor, signs: torch.Tensor | int | None = None, dim: int = -1
) -> torch.Tensor:
    """Inverse of `random_hadamard_transform` (the transform is orthonormal: x = y · Tᵀ)."""
    g, d = _grouped(y.to(torch.float32), dim)
    s = hadamard_signs(signs, y.device)
    x = (_butterfly(g) * 0.25) * s
    return x.reshape(*x.shape[:-2], -1).movedim(-1, d)
