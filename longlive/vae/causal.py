"""Causal time handling for the Wan VAEs: a per-stream cache object and the cached causal 3-D conv.

The Wan VAEs are causal in time: every temporal conv sees only the current and earlier frames, so a
video can be processed a few frames at a time as long as each conv remembers the tail of its input.
That memory lives in a :class:`CausalCache` which the caller owns and passes down through ``forward``;
the modules themselves stay stateless, so one model can serve several independent streams at once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class CausalCache:
    """The causal memory of one stream through an encoder or a decoder.

    Maps a module to the tensor it must remember between calls (e.g. the last input frames of a
    causal conv). ``first`` is True until :meth:`advance` is called once, which is how the modules
    that treat the very first chunk specially (temporal up/down-sampling, the duplicate-up shortcut)
    know where they are. :meth:`reset` starts a new stream.
    """

    def __init__(self, memory_format: torch.memory_format = torch.contiguous_format) -> None:
        self._memory: dict[nn.Module, Tensor] = {}
        self.steps = 0
        # The layout every activation of the stream keeps (channels_last_3d for a channels-last VAE): the blocks
        # that rebuild a tensor by reshaping (time interleave, shortcuts, upsampling) write it in this layout, so
        # no add or conv ever mixes layouts (a mixed add runs a strided kernel several times slower).
        self.memory_format = memory_format

    @property
    def first(self) -> bool:
        """Whether the chunk being processed is the first of the stream."""
        return self.steps == 0

    def get(self, module: nn.Module) -> Tensor | None:
        return self._memory.get(module)

    def put(self, module: nn.Module, value: Tensor) -> None:
        self._memory[module] = value

    def advance(self) -> None:
        """Mark the end of one chunk (called once per full encoder/decoder pass)."""
        self.steps += 1

    def reset(self) -> None:
        """Forget everything: the next chunk is the first of a new stream."""
        self._memory.clear()
        self.steps = 0

    def __len__(self) -> int:
        return len(self._memory)


class CausalConv3d(nn.Conv3d):
    """Conv3d padded causally in time: ``2·p_t`` frames on the left, none on the right.

    The left padding is zeros for the first chunk of a stream and the remembered last ``2·p_t`` input
    frames afterwards, so feeding a sequence in pieces gives exactly the result of one call on the
    whole sequence. Spatial padding is the conv's own zero padding (no extra F.pad copy).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int, int],
        stride: int | tuple[int, int, int] = 1,
        padding: int | tuple[int, int, int] = 0,
    ) -> None:
        k = (kernel_size,) * 3 if isinstance(kernel_size, int) else tuple(kernel_size)
        p = (padding,) * 3 if isinstance(padding, int) else tuple(padding)
        super().__init__(in_channels, out_channels, k, stride=stride, padding=(0, p[1], p[2]))
        self.causal_pad = 2 * p[0]

    def forward(self, x: Tensor, cache: CausalCache | None = None) -> Tensor:
        pad = self.causal_pad
        if pad == 0:
            return in_layout(super().forward(x), cache)
        prev = cache.get(self) if cache is not None else None
        if prev is None:
            seq = F.pad(x, (0, 0, 0, 0, pad, 0))
        else:
            seq = torch.cat([prev, x], dim=2)
        if cache is not None:
            # Copy the tail so the cache does not pin the whole (large) input tensor.
            cache.put(self, seq[:, :, -pad:].clone())
        return in_layout(super().forward(seq), cache)


def in_layout(x: Tensor, cache: CausalCache | None) -> Tensor:
    """x in the stream's layout: a no-op where the backend already returns it (cuDNN with channels-last
    weights), a copy where it does not (CPU convolutions return NCDHW)."""
    return x if cache is None else x.contiguous(memory_format=cache.memory_format)
