"""Parallel Wan VAE decode: every SP rank decodes one spatial tile of each frame, rank 0 gathers the video.

Why tiles: the decoder's cost is dominated by its high-resolution stages (3×3×3 convs on 176×320 and
352×640 for Wan2.2 at 704×1280), which are spatially local, so splitting H or W over ranks divides it.

Exactness. Each rank owns a core of latent rows [a, b) along the tiled axis and runs the decoder on
that core plus a halo. Everything in the decoder is local in space except the middle block's per-frame
attention, which is global over H×W, so the graph is cut there into segments:

* segment 0 (``conv2`` → ``conv1`` → middle ResBlock) runs on the core ± 3 latent rows and keeps the
  exact core; the cores are all-gathered into the full attention input (1/16 resolution, small), every
  rank runs the attention on the whole map (exactly the single-device op) and keeps its core ± 15 rows;
* segment 1 (middle ResBlock → up stages → head) runs on that and keeps the core.

The halos are derived from the graph (:func:`decoder_halo`), counting 3×3 convs per resolution level and
the ×2 nearest upsamplings, at the latent grid: pre-attention ``conv1`` (1) + ResBlock (2) = 3; post-
attention ResBlock (2) + stage 0: 3 ResBlocks (6) + the up conv at 2× (½) + stage 1: 6 rows at 2× (3) +
up conv at 4× (¼) + stage 2: 6 rows at 4× (1.5) + up conv at 8× (⅛) + stage 3: 6 rows at 8× (¾) + head
at 8× (⅛) = 14.25, i.e. 15 latent rows once nearest upsampling's floor/ceil is applied level by level.
(Same for the Wan2.2 release and ``tiny``: depth, not width.) After every block the tile is cropped to
the rows the *rest* of the network still needs, so every held value is exact: the zero padding at a
cut only ever touches rows that are about to be cropped. That also holds across time: a causal conv's
cache holds its own (exact) input rows of earlier frames, so a per-rank cache of just its tile carries
the stream, and the high-resolution stages only compute the core plus a few rows (e.g. ±7 at 8×).

Single-device decode and tiled decode therefore agree to float rounding: max |Δ| ≤ 4e-6 on pixels in
[-1, 1] (fp32, ``tiny`` and ``tiny-wan2.1`` with random weights, 2–3 tiles/ranks, H or W; only the
conv summation order differs), so the tests use 1e-5. A smaller halo is allowed (``halo=``) and only
perturbs pixels near the cuts; that is how the derived numbers are shown to be minimal: (2, 15) is
visibly wrong (attention spreads the leak), (3, 14) changes exactly the 4 pixel rows either side of a
cut, though only by ~3e-7 there (the leak through the outermost taps fades with distance; 11 → 1e-5).

Cost (graph arithmetic, not measured): for Wan2.2 at 704×1280 split over W on 4 ranks an interior rank
computes 160 + 14 of 640 columns at 8× (stage 3), 80 + 20 of 320 at 4×, 40 + 24 at 2×, 20 + 26 at 1×;
weighted by stage FLOPs that is ≈1.25/4 of the single-device work per rank.

Every rank passes the same full latent chunk; frames come back on rank 0 only. Communication per latent
frame: one all-gather of the attention input (B·C·h·w values); per chunk: one gather of the pixel tiles.
Works with gloo (CPU) and NCCL (GPU) process groups.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..vae import CausalCache, WanVAE
from ..vae.layers import AttentionBlock, Resample, ResidualBlock, run_head, unpatchify
from ..vae.wan22 import UpStage

Extent = tuple[int, int]  # [lo, hi) along the tiled axis, in rows of the tensor's own resolution
Gather = Callable[[list[Tensor], int], Tensor]  # (this process's cores, rows per latent row) → the full map


# ---- the decoder as a program of spatially local ops and global cuts ---------------------------------


@dataclass(frozen=True)
class _Op:
    """One step of the decoder walk.

    ``local``: ``fn(x, cache)`` reading ``radius`` rows of context on each side at its *output*
    resolution, after an optional ×``up`` nearest upsampling. ``global``: attention over the whole frame
    (cuts the program into segments). ``push`` / ``pop``: an UpStage's input is saved, and at the end its
    parameter-free ×``up`` shortcut of it is added.
    """

    kind: str
    fn: Callable[[Tensor, CausalCache], Tensor] | None = None
    radius: int = 0
    up: int = 1


def _conv_radius(conv: nn.Module) -> int:
    pad = conv.padding
    if pad[-1] != pad[-2]:
        raise NotImplementedError("tiled decode assumes square spatial kernels")
    return int(pad[-1])


def _ops_for(layer: nn.Module) -> list[_Op]:
    if isinstance(layer, ResidualBlock):
        radius = _conv_radius(layer.residual["2"]) + _conv_radius(layer.residual["6"])
        return [_Op("local", layer, radius)]
    if isinstance(layer, AttentionBlock):
        return [_Op("global", layer)]
    if isinstance(layer, Resample):
        if not layer.up:
            raise NotImplementedError("tiled decode: downsampling inside a decoder")
        return [_Op("local", layer, _conv_radius(layer.resample["1"]), up=2)]
    if isinstance(layer, UpStage):
        ops = [_Op("push")]
        for block in layer.upsamples:
            ops += _ops_for(block)
        if layer.avg_shortcut is not None:
            ops.append(_Op("pop", layer.avg_shortcut, up=layer.avg_shortcut.factor_s))
        else:
            ops.append(_Op("pop"))
        return ops
    raise NotImplementedError(f"tiled decode does not know how to split {type(layer).__name__} spatially")


def _program(vae: WanVAE) -> list[_Op]:
    """The decoder pass of :meth:`WanVAE.decode_step` as a flat op list (same modules, same order)."""
    dec = vae.decoder
    ops = [_Op("local", lambda x, cache: vae.conv2(x), 0), _Op("local", dec.conv1, _conv_radius(dec.conv1))]
    for name in dec.body:
        for layer in getattr(dec, name):
            ops += _ops_for(layer)
    ops.append(_Op("local", lambda x, cache: run_head(dec.head, x, cache), _conv_radius(dec.head["2"])))
    return ops


def _segments(ops: list[_Op]) -> tuple[list[list[_Op]], list[_Op]]:
    segs: list[list[_Op]] = [[]]
    cuts: list[_Op] = []
    for op in ops:
        if op.kind == "global":
            cuts.append(op)
            segs.append([])
        else:
            segs[-1].append(op)
    return segs, cuts


def _clip(ext: Extent, size: int) -> Extent:
    return max(0, ext[0]), min(size, ext[1])


def _meet(a: Extent, b: Extent) -> Extent:
    return max(a[0], b[0]), min(a[1], b[1])


@dataclass(frozen=True)
class _TilePlan:
    """Per-op crop targets for one tile, from the rows the rest of the network needs (backward pass)."""

    core: Extent  # latent rows owned
    n: int  # latent rows of the frame along the axis
    halos: tuple[int, ...]  # context rows fed into each segment (latent rows)
    targets: tuple[tuple[Extent, ...], ...]  # per segment, per op: rows to keep after the op
    entry: tuple[Extent, ...]  # per segment: rows needed at its input
    scales: tuple[int, ...]  # per segment: resolution at its input (rows per latent row)
    out_scale: int


def _plan(segs: list[list[_Op]], core: Extent, n: int, halos: Sequence[int]) -> _TilePlan:
    scales, s = [], 1
    for seg in segs:
        scales.append(s)
        s *= math.prod(op.up for op in seg if op.kind == "local")
    out_scale = s
    need: Extent = (core[0] * s, core[1] * s)
    targets: list[tuple[Extent, ...]] = [()] * len(segs)
    entry: list[Extent] = [(0, 0)] * len(segs)
    for i in reversed(range(len(segs))):
        per_op: list[Extent] = []
        for op in reversed(segs[i]):
            per_op.append(need)
            if op.kind == "local":
                lo, hi = _clip((need[0] - op.radius, need[1] + op.radius), n * s)
                s //= op.up
                need = (lo // op.up, -(-hi // op.up))
        targets[i] = tuple(reversed(per_op))
        entry[i] = need
        need = (core[0] * s, core[1] * s)  # a cut needs exactly the core of every tile
    return _TilePlan(core, n, tuple(halos), tuple(targets), tuple(entry), tuple(scales), out_scale)


def decoder_halo(vae: WanVAE) -> tuple[int, ...]:
    """Latent rows of context each segment needs for an exact tile (Wan2.2 and ``tiny``: (3, 15)).

    Segment k runs between the k-th and (k+1)-th global attention; derived from the same backward
    pass the tiles use, for an interior tile of a frame much larger than the receptive field.
    """
    segs, _ = _segments(_program(vae))
    big, core = 1 << 20, (1 << 19, (1 << 19) + 1)
    plan = _plan(segs, core, big, [0] * len(segs))
    halos = []
    for (lo, hi), s in zip(plan.entry, plan.scales, strict=True):
        rows = max(core[0] * s - lo, hi - core[1] * s)
        halos.append(-(-rows // s))
    return tuple(halos)


def split_rows(n: int, parts: int) -> list[Extent]:
    """``parts`` contiguous cores covering [0, n), sizes differing by at most one (larger first)."""
    if parts < 1 or n < parts:
        raise ValueError(f"cannot split {n} latent rows into {parts} tiles of at least one row")
    base, extra = divmod(n, parts)
    bounds = [0]
    for i in range(parts):
        bounds.append(bounds[-1] + base + (1 if i < extra else 0))
    return list(zip(bounds[:-1], bounds[1:], strict=True))


# ---- running tiles ------------------------------------------------------------------------------------


def _narrow(x: Tensor, dim: int, have: Extent, want: Extent) -> Tensor:
    if have == want:
        return x
    return x.narrow(dim, want[0] - have[0], want[1] - want[0])


class _Tile:
    """One tile's decoder stream: its plan and its own causal cache (its rows plus the halos only)."""

    def __init__(self, plan: _TilePlan, dim: int) -> None:
        self.plan = plan
        self.dim = dim
        self.cache = CausalCache()

    def enter(self, k: int, full: Tensor) -> tuple[Tensor, Extent]:
        """The rows of a full map (latent frame / attention output) that segment ``k`` starts from."""
        p, s = self.plan, self.plan.scales[k]
        halo = p.halos[k] * s
        ext = _meet(_clip((p.core[0] * s - halo, p.core[1] * s + halo), p.n * s), p.entry[k])
        return _narrow(full, self.dim, (0, full.shape[self.dim]), ext), ext

    def run(self, k: int, seg: list[_Op], x: Tensor, ext: Extent) -> Tensor:
        """Segment ``k`` on rows ``ext``, cropping after every op to the rows still needed downstream."""
        dim, cache = self.dim, self.cache
        saved: list[tuple[Tensor, Extent]] = []
        for op, target in zip(seg, self.plan.targets[k], strict=True):
            if op.kind == "push":
                saved.append((x, ext))
            elif op.kind == "pop":
                x0, ext0 = saved.pop()
                if op.fn is not None:  # Wan2.2's DupUp3D shortcut (a stage without one adds nothing)
                    x = x.add_(_narrow(op.fn(x0, cache), dim, (ext0[0] * op.up, ext0[1] * op.up), ext))
            else:
                x = op.fn(x, cache)
                ext = (ext[0] * op.up, ext[1] * op.up)
                new = _meet(ext, target)
                x, ext = _narrow(x, dim, ext, new), new
        return x


class _TiledStream:
    """The tile algorithm for the tiles this process owns; ``gather`` assembles the attention inputs."""

    def __init__(
        self, vae: WanVAE, tiles: int, owned: Sequence[int], halo: int | Sequence[int] | None, axis: str, gather: Gather
    ) -> None:
        if axis not in ("auto", "h", "w"):
            raise ValueError(f"axis must be 'auto', 'h' or 'w', got {axis!r}")
        self.vae = vae
        self.tiles = tiles
        self.owned = list(owned)
        self.axis = axis
        self.gather = gather
        self.segs, self.cuts = _segments(_program(vae))
        if halo is None:
            self.halos = decoder_halo(vae)
        elif isinstance(halo, int):
            self.halos = (halo,) * len(self.segs)
        else:
            self.halos = tuple(int(h) for h in halo)
        if len(self.halos) != len(self.segs) or min(self.halos) < 0:
            raise ValueError(f"halo needs {len(self.segs)} non-negative entries (one per segment), got {halo!r}")
        self.dim = 3  # tiled tensor dim of [B, C, T, H, W]; set per stream by _setup
        self.n = 0  # latent rows along it
        self._tiles: list[_Tile] = []
        self._shape: tuple[int, int] | None = None

    @property
    def first(self) -> bool:
        return not self._tiles or self._tiles[0].cache.first

    def reset(self) -> None:
        self._tiles = []
        self._shape = None

    def sizes(self, scale: int) -> list[int]:
        """Every tile's core size along the axis at ``scale`` rows per latent row."""
        return [(b - a) * scale for a, b in split_rows(self.n, self.tiles)]

    def _setup(self, h: int, w: int) -> None:
        if self._shape is not None:
            if self._shape != (h, w):
                raise ValueError(f"latent frame size changed mid-stream: {self._shape} → {(h, w)}; reset() first")
            return
        use_w = self.axis == "w" or (self.axis == "auto" and w > h)
        self.dim, self.n = (4, w) if use_w else (3, h)
        cores = split_rows(self.n, self.tiles)
        self._tiles = [_Tile(_plan(self.segs, cores[i], self.n, self.halos), self.dim) for i in self.owned]
        self._shape = (h, w)

    @torch.no_grad()
    def decode(self, latents: Tensor) -> list[Tensor]:
        """The owned tiles' pixels [B, 3, n_out, rows, W] (or [..., H, cols]) for one chunk."""
        vae = self.vae
        if latents.dim() != 5 or latents.shape[1] != vae.z_dim:
            raise ValueError(f"decode expects latents [B, {vae.z_dim}, T, h, w], got shape {tuple(latents.shape)}")
        if latents.shape[2] == 0:
            raise ValueError("decode needs at least one latent frame")
        self._setup(latents.shape[3], latents.shape[4])
        z = latents.to(device=vae.device, dtype=vae.dtype)
        mean, std = vae._stats(z)
        z = z * std + mean  # as StreamingDecoder: de-normalise, then one decoder pass per latent frame
        frames: list[list[Tensor]] = [[] for _ in self._tiles]
        for i in range(z.shape[2]):
            for acc, y in zip(frames, self._step(z[:, :, i : i + 1]), strict=True):
                acc.append(unpatchify(y.clamp_(-1.0, 1.0), vae.config.patch_size))
        return [torch.cat(f, dim=2) if len(f) > 1 else f[0] for f in frames]

    def _step(self, z: Tensor) -> list[Tensor]:
        """One decoder pass (one latent frame) of every owned tile, in lockstep across the global cuts."""
        full = z
        for k, seg in enumerate(self.segs):
            outs = []
            for tile in self._tiles:
                x, ext = tile.enter(k, full)
                outs.append(tile.run(k, seg, x, ext))
            if k < len(self.cuts):
                full = self.cuts[k].fn(self.gather(outs, self._tiles[0].plan.scales[k + 1]), None)
        for tile in self._tiles:
            tile.cache.advance()
        return outs


# ---- public API ---------------------------------------------------------------------------------------


class TiledStreamingDecoder:
    """Single-process tiled decoder: all tiles in turn, each with its own cache; stitches the frames.

    Same stream rule as :class:`longlive.vae.StreamingDecoder` (first call 1 + 4(t − 1) frames, later 4t).
    """

    def __init__(self, vae: WanVAE, tiles: int, halo: int | Sequence[int] | None = None, axis: str = "auto") -> None:
        self._stream = _TiledStream(vae, tiles, range(tiles), halo, axis, self._cat)

    def _cat(self, parts: list[Tensor], scale: int) -> Tensor:
        return torch.cat(parts, dim=self._stream.dim)

    @property
    def first(self) -> bool:
        """Whether the next call starts a new video."""
        return self._stream.first

    def reset(self) -> None:
        self._stream.reset()

    def decode(self, latents: Tensor) -> Tensor:
        return torch.cat(self._stream.decode(latents), dim=self._stream.dim)


def decode_tiles(
    vae: WanVAE,
    latents: Tensor,
    tiles: int,
    halo: int | Sequence[int] | None = None,
    chunks: Sequence[int] | None = None,
    axis: str = "auto",
) -> Tensor:
    """Decode ``latents`` [B, z, T, h, w] with the tile algorithm in one process (tests, debugging).

    ``chunks`` splits T into consecutive chunk lengths fed through one stream (caches carried), as a
    streaming caller would; with the derived halo the result equals ``vae.decode(latents)``.
    """
    sizes = [latents.shape[2]] if chunks is None else list(chunks)
    if sum(sizes) != latents.shape[2] or min(sizes) < 1:
        raise ValueError(f"chunks {sizes} must be positive and sum to T={latents.shape[2]}")
    dec = TiledStreamingDecoder(vae, tiles, halo, axis)
    outs, start = [], 0
    for n in sizes:
        outs.append(dec.decode(latents[:, :, start : start + n]))
        start += n
    return torch.cat(outs, dim=2)


def _group_ranks(group: dist.ProcessGroup | None, who: str) -> tuple[int, int, int]:
    """(this rank in `group`, the group's size, the global rank of its first member)."""
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError(f"{who} needs an initialised torch.distributed process group")
    root = dist.get_global_rank(group, 0) if group is not None else 0
    return dist.get_rank(group), dist.get_world_size(group), root


def _padded(x: Tensor, dim: int, rows: int) -> Tensor:
    """Collectives need equal shapes: zero-pad an uneven tile along `dim` to the largest one."""
    if x.shape[dim] == rows:
        return x.contiguous()
    shape = list(x.shape)
    shape[dim] = rows - x.shape[dim]
    return torch.cat([x, x.new_zeros(shape)], dim=dim)


def _stitch(bufs: list[Tensor], sizes: list[int], dim: int) -> Tensor:
    return torch.cat([b.narrow(dim, 0, n) for b, n in zip(bufs, sizes, strict=True)], dim=dim)


def _gather_tiles(tile: Tensor, sizes: list[int], dim: int, rank: int, root: int,
                  group: dist.ProcessGroup | None) -> Tensor | None:
    """Every rank's tile (`sizes[r]` rows along `dim`) stitched on the group's first rank; None elsewhere."""
    send = _padded(tile, dim, max(sizes))
    bufs = [torch.empty_like(send) for _ in sizes] if rank == 0 else None
    dist.gather(send, bufs, dst=root, group=group)
    return _stitch(bufs, sizes, dim) if bufs is not None else None


class ParallelDecoder:
    """Streaming VAE decode split by spatial tiles over the ranks of ``group`` (default: the world group).

    Every rank calls :meth:`decode` with the same latent chunk [B, z, t, h, w]; rank r decodes tile r with
    its own persistent causal cache, and the group's rank 0 returns the frames [B, 3, 1 + 4(t − 1) or 4t,
    H, W] (other ranks return None), equal to ``vae.streaming_decoder()`` chunk by chunk within float
    rounding. The tiled axis (``"auto"``: the longer latent side, H on ties) needs one latent row per rank.
    """

    def __init__(
        self,
        vae: WanVAE,
        group: dist.ProcessGroup | None = None,
        halo: int | Sequence[int] | None = None,
        axis: str = "auto",
    ) -> None:
        self.group = group
        self.rank, self.world, self.root = _group_ranks(group, "ParallelDecoder")
        self._stream = _TiledStream(vae, self.world, [self.rank], halo, axis, self._all_gather)

    @property
    def first(self) -> bool:
        """Whether the next call starts a new video."""
        return self._stream.first

    def reset(self) -> None:
        self._stream.reset()

    def _all_gather(self, parts: list[Tensor], scale: int) -> Tensor:
        sizes, dim = self._stream.sizes(scale), self._stream.dim
        send = _padded(parts[0], dim, max(sizes))
        bufs = [torch.empty_like(send) for _ in sizes]
        dist.all_gather(bufs, send, group=self.group)
        return _stitch(bufs, sizes, dim)

    def decode(self, latents: Tensor) -> Tensor | None:
        """Decode one chunk on every rank; the frames on the group's rank 0, None elsewhere."""
        (tile,) = self._stream.decode(latents)
        sizes = self._stream.sizes(self.vae_stride)
        return _gather_tiles(tile, sizes, self._stream.dim, self.rank, self.root, self.group)

    @property
    def vae_stride(self) -> int:
        """Pixels per latent row along the tiled axis."""
        return self._stream.vae.stride[1 if self._stream.dim == 3 else 2]


class PatchParallelDecoder:
    """:class:`ParallelDecoder` for a codec without spatial mixing (``vae.patch_local``: the tiny preset's PCA codec):
    rank r streams its own latent rows through its own ``vae.streaming_decoder()`` and the group's rank 0 stitches
    the rows; equal to one process's streaming decode, bit for bit (nothing crosses a row boundary)."""

    def __init__(self, vae: nn.Module, group: dist.ProcessGroup | None = None) -> None:
        if not getattr(vae, "patch_local", False):
            raise ValueError(f"{type(vae).__name__} mixes neighbouring latents; use ParallelDecoder (halo tiles)")
        self.group = group
        self.rank, self.world, self.root = _group_ranks(group, "PatchParallelDecoder")
        self.vae = vae
        self._stream = vae.streaming_decoder()

    @property
    def first(self) -> bool:
        return self._stream.first

    def reset(self) -> None:
        self._stream.reset()

    def decode(self, latents: Tensor) -> Tensor | None:
        """Decode one chunk's rows on every rank; the frames on the group's rank 0, None elsewhere."""
        cores = split_rows(latents.shape[3], self.world)
        lo, hi = cores[self.rank]
        rows = self._stream.decode(latents[:, :, :, lo:hi].contiguous())
        sizes = [(b - a) * self.vae.stride[1] for a, b in cores]
        return _gather_tiles(rows, sizes, 3, self.rank, self.root, self.group)
