"""Fidelity against a reference run: latent relative error and video PSNR.

Both accumulate in float64 (or exact int64 for uint8 frames), so a low-precision run's error is measured,
not the metric's own rounding; both process bounded slabs, so a 60 s video or a long latent costs no more than
a few hundred MB of scratch memory.
"""

from __future__ import annotations

import math

import torch

from .loading import TensorLike, VideoLike, as_tensor, as_video

_CHUNK = 1 << 22  # elements per float64 slab
_FRAME_SLAB = 8


def _check_shapes(x: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    if x.shape != ref.shape:
        raise ValueError(f"{what} shape mismatch: {tuple(x.shape)} vs reference {tuple(ref.shape)}")
    if x.numel() == 0:
        raise ValueError(f"{what} are empty")


def latent_rel_err(x: TensorLike, ref: TensorLike, *, key: str | None = None) -> float:
    """||x − ref||₂ / ||ref||₂ over all elements (Frobenius), accumulated in float64.

    Zero reference: identical tensors (both all-zero) give 0.0; a non-zero x against an all-zero reference gives
    `inf` (the ratio's limit), never a division error. NaN/inf in either input propagate to the result, so a
    broken low-precision run shows up instead of being masked. `key` picks the tensor from safetensors paths.
    """
    xt, rt = as_tensor(x, key), as_tensor(ref, key)
    _check_shapes(xt, rt, "latents")
    xf, rf = xt.reshape(-1), rt.reshape(-1)
    num = torch.zeros((), dtype=torch.float64, device=xf.device)
    den = torch.zeros((), dtype=torch.float64, device=xf.device)
    for s in range(0, xf.numel(), _CHUNK):
        a = xf[s : s + _CHUNK].to(torch.float64)
        b = rf[s : s + _CHUNK].to(device=a.device, dtype=torch.float64)
        num += (a - b).square().sum()
        den += b.square().sum()
    num_v, den_v = float(num), float(den)
    if num_v == 0.0:
        return 0.0
    if den_v == 0.0:
        return math.inf
    return math.sqrt(num_v / den_v)


def psnr(frames: VideoLike, ref_frames: VideoLike, max: float = 255.0) -> float:
    """PSNR in dB of a whole video against a reference: 10·log10(max² / MSE), MSE over every pixel of every frame.

    One MSE for the clip (not the mean of per-frame PSNRs, which is undefined as soon as one frame matches
    exactly). Identical videos → `inf`. Shapes must match exactly (same frame count and size). uint8 inputs are
    summed exactly in int64; frames may be tensors, ndarrays or video paths.
    """
    x, r = as_video(frames), as_video(ref_frames)
    _check_shapes(x, r, "frames")
    sse = 0
    for s in range(0, x.shape[0], _FRAME_SLAB):
        a = x[s : s + _FRAME_SLAB].to(torch.int32)
        b = r[s : s + _FRAME_SLAB].to(device=a.device, dtype=torch.int32)
        sse += int((a - b).square().sum(dtype=torch.int64))
    if sse == 0:
        return math.inf
    mse = sse / x.numel()
    return 10.0 * math.log10(float(max) ** 2 / mse)


def latent_rel_err_per_chunk(x: TensorLike, ref: TensorLike, chunk_frames: int, *, key: str | None = None,
                             dim: int = 2) -> list[float]:
    """`latent_rel_err` of each chunk of `chunk_frames` latent frames along `dim` (the frame axis of generate's
    [B, C, F, H, W] latents), in chunk order: where along a long rollout a low-precision run drifts from its
    reference. F must be whole chunks (generation makes nothing else)."""
    if chunk_frames < 1:
        raise ValueError(f"chunk_frames={chunk_frames} must be ≥ 1")
    xt, rt = as_tensor(x, key), as_tensor(ref, key)
    _check_shapes(xt, rt, "latents")
    frames = xt.shape[dim]
    if frames % chunk_frames:
        raise ValueError(f"latents have {frames} frames along dim {dim}, not whole chunks of {chunk_frames}")
    return [latent_rel_err(xt.narrow(dim, s, chunk_frames), rt.narrow(dim, s, chunk_frames))
            for s in range(0, frames, chunk_frames)]


def chunk_frame_ranges(latent_frames: int, chunk_frames: int, t_stride: int = 4,
                       video_frames: int | None = None) -> list[tuple[int, int] | None]:
    """[start, end) of the decoded frames of each latent chunk, for a causal VAE of temporal stride `t_stride`: latent
    0 decodes to frame 0 alone, latent l ≥ 1 to frames t_stride·(l−1)+1 … t_stride·l. A chunk whose frames lie beyond
    `video_frames` (a shorter video) gets None; one that is cut short keeps the frames that exist."""
    if chunk_frames < 1 or t_stride < 1 or latent_frames % chunk_frames:
        raise ValueError(f"latent_frames={latent_frames} must be whole chunks of chunk_frames={chunk_frames} ≥ 1, "
                         f"t_stride={t_stride} ≥ 1")

    def first_frame(latent: int) -> int:
        return 0 if latent == 0 else t_stride * (latent - 1) + 1

    out: list[tuple[int, int] | None] = []
    for a in range(0, latent_frames, chunk_frames):
        lo, hi = first_frame(a), first_frame(a + chunk_frames)
        if video_frames is not None:
            hi = min(hi, video_frames)
        out.append((lo, hi) if hi > lo else None)
    return out


def psnr_per_chunk(frames: VideoLike, ref_frames: VideoLike,
                   ranges: list[tuple[int, int] | None]) -> list[float | None]:
    """`psnr` of each frame range (`chunk_frame_ranges`) of a video against the reference; None for a range
    without frames. Both videos are read once."""
    x, r = as_video(frames), as_video(ref_frames)
    _check_shapes(x, r, "frames")
    return [None if rg is None else psnr(x[rg[0]:rg[1]], r[rg[0]:rg[1]]) for rg in ranges]
