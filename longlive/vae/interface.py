"""What every autoencoder of the project shares (the Wan VAEs and the tiny preset's PCA codec): the video shape
check of `encode` and the config-derived shape properties."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def check_video(video: Tensor, stride: tuple[int, int, int], what: str) -> int:
    """Validate a video [B, 3, 1+st·k, H, W] for a causal encoder of `stride`; returns T."""
    st, sh, sw = stride
    if video.dim() != 5 or video.shape[1] != 3:
        raise ValueError(f"encode expects video [B, 3, T, H, W], got shape {tuple(video.shape)}")
    t, h, w = video.shape[2:]
    if t < 1 or (t - 1) % st:
        raise ValueError(f"encode needs T = 1 + {st}·k frames (causal {what}), got T={t}")
    if h % sh or w % sw:
        raise ValueError(f"encode needs H, W divisible by the {what} stride {sh}×{sw}, got {h}×{w}")
    return t


class CodecShape:
    """The shape half of the autoencoder interface, shared by every codec: latent channels and stride from the
    config; device and dtype from the tensor named by `_anchor` (a weight or buffer every instance has)."""

    config: Any
    _anchor: str

    @property
    def z_dim(self) -> int:
        return self.config.z_dim

    @property
    def stride(self) -> tuple[int, int, int]:
        """Pixels per latent along (t, h, w)."""
        return self.config.stride

    def _anchor_tensor(self) -> Tensor:
        t = self
        for part in self._anchor.split("."):
            t = getattr(t, part)
        return t

    @property
    def device(self) -> torch.device:
        return self._anchor_tensor().device

    @property
    def dtype(self) -> torch.dtype:
        return self._anchor_tensor().dtype
