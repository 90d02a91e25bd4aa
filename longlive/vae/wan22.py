"""Wan2.2 VAE encoder and decoder (residual stages with parameter-free shortcuts).

Stage layout (published widths for the 5B VAE; the tiny preset scales them down):
encoder 12 → 160 → [160, 320, 640, 640], each stage = 2 ResidualBlocks + down-Resample (none in the
last), wrapped by an AvgDown3D shortcut; middle = Res → Attention → Res; head = RMSNorm → SiLU →
causal conv to 2·z. Decoder z → 1024 → [1024, 1024, 512, 256], each stage = 3 ResidualBlocks +
up-Resample (none in the last), wrapped by a DupUp3D shortcut; head → 12 channels (2×2-packed RGB).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from .causal import CausalCache, CausalConv3d
from .layers import AvgDown3D, CausalStack, DupUp3D, Resample, ResidualBlock, head_blocks, middle_blocks


class DownStage(nn.Module):
    """Residual blocks, then an optional (temporal+)spatial ×2 downsample, plus the AvgDown3D shortcut."""

    def __init__(self, in_dim: int, out_dim: int, num_blocks: int, down_t: bool, down_s: bool) -> None:
        super().__init__()
        self.avg_shortcut = AvgDown3D(in_dim, out_dim, 2 if down_t else 1, 2 if down_s else 1)
        blocks: list[nn.Module] = [ResidualBlock(in_dim if i == 0 else out_dim, out_dim) for i in range(num_blocks)]
        if down_s:
            blocks.append(Resample(out_dim, "downsample3d" if down_t else "downsample2d"))
        self.downsamples = nn.ModuleList(blocks)

    def forward(self, x: Tensor, cache: CausalCache) -> Tensor:
        y = x
        for block in self.downsamples:
            y = block(y, cache)
        return y.add_(self.avg_shortcut(x))


class UpStage(nn.Module):
    """Residual blocks, then an optional spatial(+temporal) ×2 upsample, plus the DupUp3D shortcut."""

    def __init__(self, in_dim: int, out_dim: int, num_blocks: int, up_t: bool, up_s: bool) -> None:
        super().__init__()
        self.avg_shortcut = DupUp3D(in_dim, out_dim, 2 if up_t else 1, 2) if up_s else None
        blocks: list[nn.Module] = [ResidualBlock(in_dim if i == 0 else out_dim, out_dim) for i in range(num_blocks)]
        if up_s:
            blocks.append(Resample(out_dim, "upsample3d" if up_t else "upsample2d"))
        self.upsamples = nn.ModuleList(blocks)

    def forward(self, x: Tensor, cache: CausalCache) -> Tensor:
        *blocks, last = self.upsamples
        y = x
        for block in blocks:
            y = block(y, cache)
        if self.avg_shortcut is None:
            return last(y, cache)
        return last(y, cache, skip=(self.avg_shortcut, x))  # the up-resample adds the shortcut in its output pass


class Encoder22(CausalStack):
    """Patchified video (12 channels) → 2·z channels at 1/4 time, 1/8 space (of the patchified grid)."""

    body = ("downsamples", "middle")

    def __init__(
        self,
        dim: int,
        z2: int,
        dim_mult: Sequence[int],
        num_res_blocks: int,
        temporal_down: Sequence[bool],
        in_channels: int = 12,
    ) -> None:
        super().__init__()
        dims = [dim * m for m in (1, *dim_mult)]
        n = len(dim_mult)
        self.conv1 = CausalConv3d(in_channels, dims[0], 3, padding=1)
        self.downsamples = nn.ModuleList(
            DownStage(dims[i], dims[i + 1], num_res_blocks, i < n - 1 and temporal_down[i], i < n - 1) for i in range(n)
        )
        self.middle = middle_blocks(dims[-1])
        self.head = head_blocks(dims[-1], z2)


class Decoder22(CausalStack):
    """z channels → 12 channels (2×2-packed RGB) at 4× time, 8× space."""

    body = ("middle", "upsamples")

    def __init__(
        self,
        dim: int,
        z: int,
        dim_mult: Sequence[int],
        num_res_blocks: int,
        temporal_up: Sequence[bool],
        out_channels: int = 12,
    ) -> None:
        super().__init__()
        dims = [dim * m for m in (dim_mult[-1], *reversed(dim_mult))]
        n = len(dim_mult)
        self.conv1 = CausalConv3d(z, dims[0], 3, padding=1)
        self.middle = middle_blocks(dims[0])
        self.upsamples = nn.ModuleList(
            UpStage(dims[i], dims[i + 1], num_res_blocks + 1, i < n - 1 and temporal_up[i], i < n - 1) for i in range(n)
        )
        self.head = head_blocks(dims[-1], out_channels)
