"""Ulysses all-to-alls (sequence ↔ heads), autograd-aware, with an optional compressed exchange.

seq→heads: each rank holds [B, L/sp, H, D] (its contiguous sequence shard) and receives [B, L, H/sp, D] (the
full sequence, in rank order, on its head group); heads→seq is the inverse. Compression quantises what crosses
the wire — FP8 E4M3 with one scale per (token, head), or NVFP4 with 16-channel blocks and one tensor scale per
destination — and dequantises on arrival, so the bytes really shrink. Every call adds its sent bytes to
`ExchangeStats`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from longlive.names import EXCHANGE
from longlive.quant import kernels
from longlive.quant.tensors import FP8Tensor, NVFP4Tensor

COMPRESSION = EXCHANGE  # the exchange field's values (longlive.names)


@dataclass
class ExchangeStats:
    bytes_sent: int = 0
    calls: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)

    def add(self, kind: str, nbytes: int) -> None:
        self.bytes_sent += nbytes
        self.calls += 1
        self.by_kind[kind] = self.by_kind.get(kind, 0) + nbytes


def _a2a(send: torch.Tensor, group) -> torch.Tensor:
    """all_to_all_single over dim 0 (one equal slice per rank)."""
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send.contiguous(), group=group)
    return recv


def _exchange(blocks: torch.Tensor, group, compress: str, stats: ExchangeStats | None, kind: str) -> torch.Tensor:
    """Send blocks[j] to rank j, return the received [sp, ...] (compressed on the wire if asked)."""
    if compress == "none":
        if stats is not None:
            stats.add(kind, blocks.numel() * blocks.element_size())
        return _a2a(blocks, group)
    sp, D = blocks.shape[0], blocks.shape[-1]
    rows = blocks[0].numel() // D
    dtype = blocks.dtype
    if compress == "fp8":
        qs = [kernels.quantize_fp8(blocks[j].reshape(rows, D), "row") for j in range(sp)]
        data = torch.stack([q.data.view(torch.uint8) for q in qs])
        scale = torch.stack([q.scale.reshape(rows) for q in qs])
        payload = [data, scale]
    elif compress == "nvfp4":
        qs = [kernels.quantize_nvfp4(blocks[j].reshape(rows, D), block=(1, 16), rule="static_6") for j in range(sp)]
        payload = [torch.stack([q.values for q in qs]), torch.stack([q.scales.view(torch.uint8) for q in qs]),
                   torch.stack([q.global_scale.reshape(1) for q in qs]), torch.stack([q.amax.reshape(1) for q in qs])]
    else:
        raise ValueError(f"unknown exchange compression {compress!r}; choose one of {', '.join(COMPRESSION)}")
    if stats is not None:
        stats.add(kind, sum(t.numel() * t.element_size() for t in payload))
    got = [_a2a(t, group) for t in payload]
    out = torch.empty_like(blocks)
    for j in range(sp):
        if compress == "fp8":
            q = FP8Tensor(got[0][j].view(torch.float8_e4m3fn), got[1][j].reshape(rows, 1), (rows, D), "row")
            out[j] = kernels.dequantize_fp8(q, dtype).view_as(out[j])
        else:
            q = NVFP4Tensor(got[0][j], got[1][j].view(torch.float8_e4m3fn), got[3][j], got[2][j], (rows, D))
            out[j] = kernels.dequantize_nvfp4(q, dtype).view_as(out[j])
    return out


def seq_to_heads(x: torch.Tensor, group, compress: str = "none", stats: ExchangeStats | None = None,
                 kind: str = "qkv") -> torch.Tensor:
    """[B, Ls, H, D] sequence shard → [B, sp·Ls, H/sp, D] full sequence on this rank's heads."""
    sp = dist.get_world_size(group)
    B, Ls, H, D = x.shape
    blocks = x.reshape(B, Ls, sp, H // sp, D).permute(2, 0, 1, 3, 4)  # [sp(dest head group), B, Ls, H/sp, D]
    got = _exchange(blocks.contiguous(), group, compress, stats, kind)  # [sp(src = seq shard), B, Ls, H/sp, D]
    return got.permute(1, 0, 2, 3, 4).reshape(B, sp * Ls, H // sp, D)


def heads_to_seq(y: torch.Tensor, group, compress: str = "none", stats: ExchangeStats | None = None,
                 kind: str = "out") -> torch.Tensor:
    """[B, L, H/sp, D] full sequence on local heads → [B, L/sp, H, D] this rank's sequence shard, all heads."""
    sp = dist.get_world_size(group)
    B, L, Hl, D = y.shape
    blocks = y.reshape(B, sp, L // sp, Hl, D).permute(1, 0, 2, 3, 4)  # [sp(dest seq shard), B, L/sp, H/sp, D]
    got = _exchange(blocks.contiguous(), group, compress, stats, kind)  # [sp(src head group), B, L/sp, H/sp, D]
    return got.permute(1, 2, 0, 3, 4).reshape(B, L // sp, sp * Hl, D)


class SeqToHeads(torch.autograd.Function):
    """Autograd-aware seq→heads: the backward is heads→seq of the gradient (uncompressed)."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return seq_to_heads(x, group)

    @staticmethod
    def backward(ctx, g):
        return heads_to_seq(g, ctx.group), None


class HeadsToSeq(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y, group):
        ctx.group = group
        return heads_to_seq(y, group)

    @staticmethod
    def backward(ctx, g):
        return seq_to_heads(g, ctx.group), None


def all_to_all_4d(x: torch.Tensor, group, *, to_heads: bool) -> torch.Tensor:
    """Differentiable Ulysses all-to-all: to_heads (seq→heads) or back (heads→seq)."""
    return SeqToHeads.apply(x, group) if to_heads else HeadsToSeq.apply(x, group)
