"""Wan2.1 VAE encoder and decoder (plain residual stacks, no patchify, no parameter-free shortcuts).

Published widths (base 96): encoder 3 → 96 → [96, 192, 384, 384]; decoder z → 384 → [384, 384, 192, 96]
→ 3. Blocks sit in one flat list per half (``downsamples.{k}`` / ``upsamples.{k}``) as in the published
checkpoint. The decoder's up-Resample convs halve the channels, so every decoder stage after the first
starts from half the previous stage's width.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from .causal import CausalConv3d
from .layers import CausalStack, Resample, ResidualBlock, head_blocks, middle_blocks


class Encoder21(CausalStack):
    """RGB video → 2·z channels at 1/4 time, 1/8 space."""

    body = ("downsamples", "middle")

    def __init__(
        self, dim: int, z2: int, dim_mult: Sequence[int], num_res_blocks: int, temporal_down: Sequence[bool]
    ) -> None:
        super().__init__()
        dims = [dim * m for m in (1, *dim_mult)]
        n = len(dim_mult)
        self.conv1 = CausalConv3d(3, dims[0], 3, padding=1)
        blocks: list[nn.Module] = []
        for i in range(n):
            blocks += [ResidualBlock(dims[i] if j == 0 else dims[i + 1], dims[i + 1]) for j in range(num_res_blocks)]
            if i < n - 1:
                blocks.append(Resample(dims[i + 1], "downsample3d" if temporal_down[i] else "downsample2d"))
        self.downsamples = nn.ModuleList(blocks)
        self.middle = middle_blocks(dims[-1])
        self.head = head_blocks(dims[-1], z2)


class Decoder21(CausalStack):
    """z channels → RGB at 4× time, 8× space."""

    body = ("middle", "upsamples")

    def __init__(
        self, dim: int, z: int, dim_mult: Sequence[int], num_res_blocks: int, temporal_up: Sequence[bool]
    ) -> None:
        super().__init__()
        dims = [dim * m for m in (dim_mult[-1], *reversed(dim_mult))]
        n = len(dim_mult)
        self.conv1 = CausalConv3d(z, dims[0], 3, padding=1)
        self.middle = middle_blocks(dims[0])
        blocks: list[nn.Module] = []
        for i in range(n):
            in_dim = dims[i] // 2 if i > 0 else dims[i]
            out_dim = dims[i + 1]
            blocks += [ResidualBlock(in_dim if j == 0 else out_dim, out_dim) for j in range(num_res_blocks + 1)]
            if i < n - 1:
                mode = "upsample3d" if temporal_up[i] else "upsample2d"
                blocks.append(Resample(out_dim, mode, out_dim=out_dim // 2))
        self.upsamples = nn.ModuleList(blocks)
        self.head = head_blocks(dims[-1], 3)
