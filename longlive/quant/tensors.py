"""Containers for quantised tensors: what is stored, in the layouts the published files and kernels use.

These are plain dataclasses (no tensor subclassing): a quantised Linear or KV slot holds one and
dequantises it explicitly, so where precision is lost is always visible in the code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class NVFP4Tensor:
    """NVFP4: E2M1 values packed two per byte (low nibble = even index along the last dim), one E4M3 scale
    per 16 consecutive elements of the last (reduction) dim, one FP32 tensor scale.

    values: uint8 [rows, cols // 2]; scales: float8_e4m3fn [rows, cols // 16] (row-major, unswizzled;
    2-D 16×16 blocks repeat their scale over the block's 16 rows); amax: fp32 [1] tensor amax;
    global_scale: fp32 [1] = amax / (6 · denominator) (448 for static_6, 256 for the 4-over-6 rules,
    static_4: amax / (4 · 448)). rows × cols is the 2-D view of `shape` (leading dims flattened).
    """

    values: torch.Tensor
    scales: torch.Tensor
    amax: torch.Tensor
    global_scale: torch.Tensor
    shape: tuple[int, ...]
    rule: str = "static_6"
    block: tuple[int, int] = (1, 16)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.values, self.scales, self.amax, self.global_scale))

    @property
    def device(self) -> torch.device:
        """Where the packed data lives (libraries such as PEFT place adapters by the base weight's device)."""
        return self.values.device


@dataclass
class FP8Tensor:
    """FP8 E4M3 data with FP32 scales; x ≈ data.float() · scale broadcast by granularity.

    granularity: "tensor" (scale [1]), "row" (scale [rows, 1]), "block1x128" (scale [rows, cols/128]),
    "block128x128" (scale [rows/128, cols/128]).
    """

    data: torch.Tensor
    scale: torch.Tensor
    shape: tuple[int, ...]
    granularity: str = "row"

    def nbytes(self) -> int:
        return self.data.numel() * self.data.element_size() + self.scale.numel() * self.scale.element_size()

    @property
    def device(self) -> torch.device:
        return self.data.device


@dataclass
class MXFP4Tensor:
    """MXFP4: E2M1 values packed like NVFP4, one E8M0 power-of-two scale (stored as uint8 exponent with
    bias 127) per 32 consecutive elements, no tensor scale."""

    values: torch.Tensor
    scales: torch.Tensor
    shape: tuple[int, ...]

    def nbytes(self) -> int:
        return self.values.numel() + self.scales.numel()
