"""cuBLAS / CUTLASS "blocked" scale-factor layout (128×4 tiles) used by block-scaled FP4/FP8 GEMMs and by the
published NVFP4 checkpoints.

A scale matrix S [rows, cols] is zero-padded to [R = round_up(rows, 128), C = round_up(cols, 4)] and cut into
128×4 tiles, stored tile after tile in row-major tile order (tile (i, j) at flat tile index i · C/4 + j). Inside a
tile, element (r, c) with r = 32·a + b (a ∈ 0..3, b ∈ 0..31) sits at offset b·16 + a·4 + c (the (4, 32, 4) →
(32, 4, 4) interleave). Hence S[r, c] lives at

    ((r // 128) · (C // 4) + c // 4) · 512 + (r % 32) · 16 + ((r % 128) // 32) · 4 + c % 4.
"""

from __future__ import annotations

import torch


def round_up(n: int, m: int) -> int:
    return (n + m - 1) // m * m


def blocked_shape(rows: int, cols: int) -> tuple[int, int]:
    """Padded [rows, cols] of a scale matrix in the blocked layout."""
    return round_up(rows, 128), round_up(cols, 4)


def _as_bytes(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.uint8) if t.element_size() == 1 and t.dtype != torch.uint8 else t


def to_blocked(scales: torch.Tensor) -> torch.Tensor:
    """[rows, cols] scales (any dtype) → 1-D tensor of length R·C in the blocked layout (padding = 0 bits)."""
    if scales.ndim != 2:
        raise ValueError(f"to_blocked expects a 2-D scale matrix, got shape {tuple(scales.shape)}")
    rows, cols = scales.shape
    pr, pc = blocked_shape(rows, cols)
    src = _as_bytes(scales)
    padded = src.new_zeros(pr, pc)
    padded[:rows, :cols] = src
    out = padded.view(pr // 128, 4, 32, pc // 4, 4).permute(0, 3, 2, 1, 4).reshape(-1)
    return out.view(scales.dtype) if src is not scales else out


def from_blocked(blocked: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Inverse of `to_blocked`: 1-D blocked scales → [rows, cols] (padding dropped)."""
    pr, pc = blocked_shape(rows, cols)
    if blocked.ndim != 1 or blocked.numel() != pr * pc:
        raise ValueError(
            f"blocked scales for a [{rows}, {cols}] matrix must be 1-D of length {pr}·{pc} = {pr * pc}, "
            f"got shape {tuple(blocked.shape)}"
        )
    src = _as_bytes(blocked)
    out = src.view(pr // 128, pc // 4, 32, 4, 4).permute(0, 3, 2, 1, 4).reshape(pr, pc)[:rows, :cols].contiguous()
    return out.view(blocked.dtype) if src is not blocked else out
