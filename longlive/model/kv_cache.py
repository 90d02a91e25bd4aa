"""Rolling KV cache with a global sink and a multi-shot sink (spec 02, "KV cache").

The window is `num_slots` chunk-sized slots, pre-allocated once per layer. Attention inside the window is
non-causal and keys are stored already rotated at their absolute positions, so the result does not
depend on the physical order of slots: we keep a ring of slots and evict in place instead of shifting
slots left as the release does. The logical window (which chunks are attended, in the release's order)
is tracked separately and reported by `window_chunks()`.

Filled slots always form a prefix [0, n) of the buffer, so the attended K/V are a view of it — no
concatenation and no per-call clone. Storage is pluggable (`KVStorage`): dense BF16 here; quantised
storage implements the same three methods.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from longlive.names import KV_QUANT


class KVStorage(Protocol):
    """Where K/V of one cache live.

    attend(): this forward's chunk K/V for `slot`, the number of filled slots (a prefix of the buffer, the
    current slot among them) and whether this is the chunk's final (clean) forward; returns the attended
    window K/V [B, filled·chunk_tokens, H, D] in the compute dtype.
    """

    def attend(self, layer: int, slot: int, filled: int, k: torch.Tensor, v: torch.Tensor,
               commit: bool) -> tuple[torch.Tensor, torch.Tensor]: ...

    def nbytes(self) -> int: ...


def heads_first_buffer(batch: int, tokens: int, heads: int, head_dim: int, dtype: torch.dtype,
                       device: torch.device | str | None) -> torch.Tensor:
    """A [B, tokens, H, D] view of a zeroed [B, H, tokens, D] buffer.

    SDPA kernels take [B, H, L, D]; stored token-major, the window's `transpose(1, 2)` is strided, and the
    5B profile (reports/foundation-5b/h200-run3) shows `contiguous` copies around cuDNN attention taking 8 % of
    device time. Stored heads-first, a full window is already in the kernel's layout; callers still index
    [B, L, H, D].
    """
    return torch.zeros((batch, heads, tokens, head_dim), dtype=dtype, device=device).transpose(1, 2)


class DenseKVStorage:
    """Plain K/V buffers [B, slots·chunk_tokens, heads, head_dim] per layer in one dtype (BF16 by default),
    laid out heads-first in memory (`heads_first_buffer`)."""

    def __init__(
        self, num_layers: int, batch: int, num_slots: int, chunk_tokens: int, heads: int, head_dim: int,
        dtype: torch.dtype = torch.bfloat16, device: torch.device | str | None = None,
    ):
        self.chunk_tokens = chunk_tokens
        args = (batch, num_slots * chunk_tokens, heads, head_dim, dtype, device)
        self.k = [heads_first_buffer(*args) for _ in range(num_layers)]
        self.v = [heads_first_buffer(*args) for _ in range(num_layers)]

    def attend(self, layer: int, slot: int, filled: int, k: torch.Tensor, v: torch.Tensor,
               commit: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Every forward writes its chunk in place (the next one overwrites it); the window is a view."""
        lo = slot * self.chunk_tokens
        n = k.shape[1]
        self.k[layer][:, lo : lo + n].copy_(k)
        self.v[layer][:, lo : lo + n].copy_(v)
        end = filled * self.chunk_tokens
        return self.k[layer][:, :end], self.v[layer][:, :end]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.k, *self.v))


STORAGES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32, "fp64": torch.float64}
QUANTISED = tuple(f for f in KV_QUANT if f != "none")


@dataclass(frozen=True)
class CacheGeometry:
    """Window shape in chunk slots, validated once."""

    chunk_frames: int
    window_frames: int
    sink_frames: int
    tokens_per_frame: int
    multishot_sink: bool = True

    def __post_init__(self):
        for name in ("window_frames", "sink_frames"):
            if getattr(self, name) % self.chunk_frames:
                raise ValueError(f"{name}={getattr(self, name)} is not a multiple of chunk_frames={self.chunk_frames}")
        need = self.sink_slots + 1 + (1 if self.multishot_sink else 0)
        if self.num_slots < need:
            raise ValueError(
                f"window of {self.window_frames} frames holds {self.num_slots} chunk slots; need at least {need} "
                f"(sink {self.sink_slots}{', shot sink 1' if self.multishot_sink else ''}, current chunk 1)"
            )

    @property
    def num_slots(self) -> int:
        return self.window_frames // self.chunk_frames

    @property
    def sink_slots(self) -> int:
        return self.sink_frames // self.chunk_frames

    @property
    def chunk_tokens(self) -> int:
        return self.chunk_frames * self.tokens_per_frame


class KVCache:
    """Slot bookkeeping (which chunk lives where, what is pinned) over a `KVStorage`."""

    def __init__(self, geometry: CacheGeometry, storage: KVStorage):
        self.geo = geometry
        self.storage = storage
        self.reset()

    @classmethod
    def allocate(
        cls, geometry: CacheGeometry, num_layers: int, batch: int, heads: int, head_dim: int,
        storage: str = "bf16", device: torch.device | str | None = None, compute_dtype: torch.dtype | None = None,
    ) -> KVCache:
        """storage: a dense dtype name (bf16, fp16, fp32, fp64). Quantised storage (fp8, nvfp4) is applied from
        outside, by `longlive.quant.kv.allocate_cache`, which takes every storage name."""
        args = (num_layers, batch, geometry.num_slots, geometry.chunk_tokens, heads, head_dim)
        if storage in QUANTISED:
            raise ValueError(f"KV storage {storage!r} is quantised: allocate it with longlive.quant.kv.allocate_cache")
        if storage not in STORAGES:
            raise ValueError(f"unknown KV storage {storage!r}; known: {', '.join([*STORAGES, *QUANTISED])}")
        return cls(geometry, DenseKVStorage(*args, dtype=STORAGES[storage], device=device))

    def reset(self) -> None:
        self.slot_chunk: list[int | None] = [None] * self.geo.num_slots
        self.slot_time: list[int] = [-1] * self.geo.num_slots  # when the slot was filled (for eviction)
        self.pinned_slot: int | None = None
        self.current_slot: int | None = None
        self.committing = False  # set by the loop around the chunk's clean re-run
        self._clock = 0

    # -- chunk lifecycle ------------------------------------------------------------------------------
    def begin_chunk(self, chunk: int) -> int:
        """Choose the slot of a new chunk (the release's roll), return it. Called once per chunk."""
        empty = [s for s, c in enumerate(self.slot_chunk) if c is None]
        if empty:
            slot = empty[0]
        else:
            candidates = [s for s in range(self.geo.sink_slots, self.geo.num_slots) if s != self.pinned_slot]
            slot = min(candidates, key=lambda s: self.slot_time[s])
        self.slot_chunk[slot] = chunk
        self.slot_time[slot] = self._clock
        self._clock += 1
        self.current_slot = slot
        return slot

    def clear_to_sink(self) -> None:
        """The release's `shot_clean_recache`, called just before a cut chunk's clean re-run: drop every chunk but
        the global sink (the shot pin goes too), keeping the current chunk.

        The current chunk moves to the first slot after the sink, so filled slots stay a prefix of the buffer; its
        K/V there are written by the re-run itself (every storage writes the current chunk before attending).
        """
        if self.current_slot is None:
            raise RuntimeError("KVCache.clear_to_sink() before begin_chunk()")
        if self.current_slot < self.geo.sink_slots:
            return  # the chunk is itself part of the global sink: nothing after it yet
        chunk, time = self.slot_chunk[self.current_slot], self.slot_time[self.current_slot]
        for s in range(self.geo.sink_slots, self.geo.num_slots):
            self.slot_chunk[s] = None
            self.slot_time[s] = -1
        self.pinned_slot = None
        self.current_slot = self.geo.sink_slots
        self.slot_chunk[self.current_slot], self.slot_time[self.current_slot] = chunk, time

    def pin_current(self) -> None:
        """Multi-shot sink: keep the just-generated chunk (a scene cut's first chunk) until the next cut."""
        if not self.geo.multishot_sink:
            raise RuntimeError("pin_current() called but the multi-shot sink is disabled")
        if self.current_slot is None or self.current_slot < self.geo.sink_slots:
            return  # a cut on a sink chunk is already kept
        self.pinned_slot = self.current_slot

    @property
    def pinned_chunk(self) -> int | None:
        """The chunk held by the multi-shot sink, if any."""
        return None if self.pinned_slot is None else self.slot_chunk[self.pinned_slot]

    @property
    def filled_slots(self) -> int:
        return sum(c is not None for c in self.slot_chunk)

    # -- per-layer traffic ------------------------------------------------------------------------------
    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Hand this forward's chunk K/V to the storage (kept if committing); return the attended window."""
        if self.current_slot is None:
            raise RuntimeError("KVCache.update() before begin_chunk()")
        return self.storage.attend(layer, self.current_slot, self.filled_slots, k, v, self.committing)

    # -- introspection -------------------------------------------------------------------------------
    def window_chunks(self) -> list[int]:
        """Attended chunks in the release's physical order, which is always chronological.

        (Its shift-left roll preserves order and the pin merely escapes eviction, so the steady state
        after a cut reads [global sink | shot sink | previous chunk | current chunk].)
        """
        return sorted(c for c in self.slot_chunk if c is not None)

    def window_frames(self) -> list[int]:
        """Latent frame indices attended by the current chunk, in logical order."""
        f = self.geo.chunk_frames
        return [c * f + i for c in self.window_chunks() for i in range(f)]

    def relative_frame_positions(self) -> tuple[list[int], list[int]]:
        """Window-relative temporal RoPE positions (the release's `use_relative_rope`; spec 02): the attended chunks
        numbered 0, 1, … in chronological order, so positions never exceed the window whatever the video's length.

        Returns the current chunk's frame positions and every filled slot's, in buffer order (the layout `update`
        returns), for rotating unrotated cached keys where they now sit.
        """
        if self.current_slot is None:
            raise RuntimeError("KVCache.relative_frame_positions() before begin_chunk()")
        f = self.geo.chunk_frames
        rank = {c: i for i, c in enumerate(self.window_chunks())}
        keys = [rank[c] * f + i for c in self.slot_chunk[: self.filled_slots] for i in range(f)]
        current = rank[self.slot_chunk[self.current_slot]]
        return [current * f + i for i in range(f)], keys
