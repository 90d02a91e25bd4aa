"""SP-aware chunked VAE encoding with a left halo (spec 04, "SP-aware chunked VAE encoding").

Under sequence parallelism rank r only needs its own latents [r·L, (r+1)·L) (L = F/sp), and those are
already in SP layout, so nothing is gathered. The Wan VAE encoder is causal in time, so a latent depends
on earlier raw frames only through the causal conv caches. Their temporal receptive field is finite, so
encoding a short window that starts H latents early ("left halo") warms the caches and reproduces the
whole-video latents of this rank:

* window [h, e) with h = max(0, r·L − H), e = (r+1)·L;
* raw frames [4(h−1), 4(e−1)+1) when h > 0 — the window's first raw frame is encoded alone, as the
  stream's first frame, and becomes a throw-away pseudo-first latent — and [0, 4(e−1)+1) when h = 0;
* keep latents [drop, drop+L) of the window's encoding, drop = (1 if h > 0) + (r·L − h).

Receptive field (graph arithmetic, Wan2.2 and ``tiny`` alike — it depends on depth, not widths): latent j
reads raw frames down to 4(j − 28): at the latent rate the head conv (2 frames back) + middle (4 convs, 8)
+ last stage (4 convs, 8) = 18 latents; at half rate the temporal down conv (2) + 4 convs (8) = 10 half
frames = 5 latents; at full rate the temporal down conv (2) + 8 convs (16) + conv1 (2) = 20 raw frames = 5
latents. Causal caches store conv *inputs*, and the pseudo-first latent supplies raw frame 4(h − 1), so
H = 27 already covers it. Measured on the ``tiny`` VAE, random weights, F = 64, sp = 2, rank 1, 32×32 px:
H ≥ 27 is bit-identical to whole-video encoding; H = 26 / 25 / 24 / 20 / 0 give 3e-7 / 3e-6 / 1e-5 /
6e-4 / 0.6 relative error (the leak fades with distance, so ~1e-5 is reached at H = 24–25, weight
dependent). The release halo H = 28 has one latent of margin. At 64 s (F = 384, 1533 raw frames),
sp = 4, H = 28 the slowest rank encodes 497 raw frames (≈3.1× less).

`encode_gathered` is the training data's use of it: every rank of an SP group encodes its window and the group
all-gathers the pieces, so the latent cache (which holds whole samples, for any sp and either training layout)
gets the same latents an sp = 1 encode writes, at 1/sp of the slowest rank's encode work.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from ..vae import WanVAE

#: Smallest left halo (latents) that reproduces whole-video latents exactly (Wan2.2 graph; measured on ``tiny``).
EXACT_ENCODE_HALO = 27
#: The release halo (spec 04).
RELEASE_HALO = 28


@dataclass(frozen=True)
class EncodeWindow:
    """What one rank encodes: latent window [h, e), raw frames [raw_start, raw_stop), keep [drop, drop+L)."""

    h: int
    e: int
    raw_start: int
    raw_stop: int
    drop: int

    @property
    def pseudo_first(self) -> bool:
        """Whether the window's first latent is a throw-away (raw frame 4(h−1) encoded as a first frame)."""
        return self.h > 0

    @property
    def start(self) -> int:
        """First latent this rank keeps (r·L)."""
        return self.h + self.drop - int(self.pseudo_first)

    @property
    def length(self) -> int:
        """Latents this rank keeps (L)."""
        return self.e - self.start

    @property
    def num_raw(self) -> int:
        """Raw frames this rank encodes."""
        return self.raw_stop - self.raw_start

    @property
    def num_encoded(self) -> int:
        """Latents the window's encoding produces (pseudo-first included)."""
        return self.e - self.h + int(self.pseudo_first)

    @property
    def keep(self) -> slice:
        """Slice of the window's encoding (along time) that is this rank's latents."""
        return slice(self.drop, self.drop + self.length)


def _check_int(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def encode_window(rank: int, sp: int, num_latents: int, halo: int, stride_t: int = 4) -> EncodeWindow:
    """Rank ``rank`` of ``sp``'s encode window for a video of ``num_latents`` (F) latents, spec 04's arithmetic.

    ``stride_t`` is the VAE's temporal stride (4 for Wan): latent j ≥ 1 covers raw frames
    [4(j−1)+1, 4j+1), latent 0 raw frame 0.
    """
    _check_int("sp", sp, 1)
    _check_int("num_latents", num_latents, 1)
    _check_int("halo", halo, 0)
    _check_int("stride_t", stride_t, 1)
    _check_int("rank", rank, 0)
    if rank >= sp:
        raise ValueError(f"rank {rank} is out of range for sp={sp}")
    if num_latents % sp:
        raise ValueError(
            f"F={num_latents} latents do not split evenly over sp={sp} ranks (SP layout needs F % sp == 0)"
        )
    size = num_latents // sp
    begin, e = rank * size, (rank + 1) * size
    h = max(0, begin - halo)
    raw_stop = stride_t * (e - 1) + 1
    if h > 0:
        return EncodeWindow(h, e, stride_t * (h - 1), raw_stop, 1 + (begin - h))
    return EncodeWindow(0, e, 0, raw_stop, begin)


def raw_frames_per_rank(num_latents: int, sp: int, halo: int, stride_t: int = 4) -> list[int]:
    """Raw frames each rank encodes (the slowest rank sets the encode time)."""
    return [encode_window(r, sp, num_latents, halo, stride_t).num_raw for r in range(sp)]


def encode_local(
    vae: WanVAE, video: Tensor, rank: int, sp: int, halo: int = RELEASE_HALO, num_latents: int | None = None
) -> Tensor:
    """This rank's latents [B, z, L, h, w] (= ``vae.encode(full)[:, :, r·L:(r+1)·L]`` once ``halo`` covers the
    encoder's causal receptive field).

    ``video`` [B, 3, T, H, W] is either the full raw video (T = 1 + 4(F−1); F inferred when ``num_latents``
    is None) or only this rank's raw window (T = ``encode_window(...).num_raw``; then ``num_latents`` must
    be given), so a data loader can read just the frames a rank needs.
    """
    st = vae.stride[0]
    t = video.shape[2]
    if num_latents is None:
        if t < 1 or (t - 1) % st:
            raise ValueError(f"a full video needs T = 1 + {st}·k frames, got T={t} (pass num_latents for a window)")
        num_latents = 1 + (t - 1) // st
    win = encode_window(rank, sp, num_latents, halo, st)
    full = 1 + st * (num_latents - 1)
    if t == full:
        frames = video[:, :, win.raw_start : win.raw_stop]
    elif t == win.num_raw:
        frames = video
    else:
        raise ValueError(
            f"video has {t} frames: expected the full video ({full}) or rank {rank}'s window "
            f"[{win.raw_start}, {win.raw_stop}) ({win.num_raw} frames)"
        )
    latents = vae.encode(frames)
    return latents[:, :, win.keep]


def encode_gathered(vae: WanVAE, video: Tensor, group: dist.ProcessGroup, halo: int = RELEASE_HALO) -> Tensor:
    """The whole video's latents [B, z, F, h, w] on every rank of ``group``, each rank encoding only its halo window.

    A collective: every rank of the group calls it with the same full ``video`` [B, 3, 1 + 4(F−1), H, W]. Equals
    ``vae.encode(video)`` once ``halo`` covers the encoder's causal receptive field (``EXACT_ENCODE_HALO``). NCCL
    groups gather on the current CUDA device; the result is on the device the VAE returned.
    """
    sp, rank = dist.get_world_size(group), dist.get_rank(group)
    local = encode_local(vae, video, rank, sp, halo).contiguous()
    wire = local.cuda() if dist.get_backend(group) == "nccl" and local.device.type != "cuda" else local
    parts = [torch.empty_like(wire) for _ in range(sp)]
    dist.all_gather(parts, wire, group=group)
    return torch.cat(parts, dim=2).to(local.device)
