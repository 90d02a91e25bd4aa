"""Sequence-parallel inference (Ulysses): what one rank needs to run its share of every chunk.

Each rank patch-embeds and runs every token-local op on its contiguous frames of the chunk; self-attention
exchanges q, k, v sequence→heads, attends on its head group against a head-sharded local KV cache (no cache
traffic), and sends the output back heads→sequence. K/V (optionally q and the output) can cross the wire in
FP8 or NVFP4. The finished chunk is all-gathered along frames.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from longlive.model.attention import sdpa
from longlive.parallel.ulysses import COMPRESSION, ExchangeStats, heads_to_seq, seq_to_heads


@dataclass
class SPContext:
    group: object
    rank: int
    size: int
    exchange: str = "none"     # none | fp8 | nvfp4: K and V on the wire
    compress_q: bool = False      # also Q
    compress_out: bool = False    # also the attention output (heads→seq)
    stats: ExchangeStats = field(default_factory=ExchangeStats)

    def __post_init__(self):
        if self.exchange not in COMPRESSION:
            raise ValueError(f"unknown exchange {self.exchange!r}; choose one of {', '.join(COMPRESSION)}")

    def frame_range(self, chunk_frames: int) -> tuple[int, int]:
        per = chunk_frames // self.size
        return self.rank * per, (self.rank + 1) * per

    def attn_fn(self, cache, backend: str):
        c = self.exchange
        g, st = self.group, self.stats

        def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer: int) -> torch.Tensor:
            qf = seq_to_heads(q, g, c if self.compress_q else "none", st, "q")
            kf = seq_to_heads(k, g, c, st, "k")
            vf = seq_to_heads(v, g, c, st, "v")
            kw, vw = cache.update(layer, kf, vf)
            out = sdpa(qf, kw, vw, backend)
            return heads_to_seq(out, g, c if self.compress_out else "none", st, "out")

        return attend

    def gather_frames(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, F/sp, H, W] on each rank → [B, C, F, H, W] on every rank (frames in rank order)."""
        parts = [torch.empty_like(x) for _ in range(self.size)]
        dist.all_gather(parts, x.contiguous(), group=self.group)
        return torch.cat(parts, dim=2)
