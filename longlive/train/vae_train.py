"""Training the tiny preset's autoencoder: the Wan2.2 VAE graph at tiny widths, on procedural video.

The differentiable pass mirrors `WanVAE.encode` / `StreamingDecoder.decode` (same modules, same causal caches:
frame 0 alone then groups of 4 through the encoder, one latent per decoder step) without their inference-only
`no_grad` and in-place clamps. Loss: L1 + MSE on pixels plus a small penalty keeping μ near unit scale (the
denoiser assumes unit-variance latents).

Windowed training (`window_latents`): the decoder's causal convs reach back tens of latents, so a VAE trained on
2-latent clips only ever sees the start-up transient of its caches and drifts in colour on long videos (measured:
fine on latents 0–1, then off). Each step therefore runs a random prefix of 0..`prefix_latents` latents without
gradients (filling the caches as at inference) and trains on the next `window_latents` latents; the window at
prefix 0 includes frame 0 (encoded alone, as at inference). Residual branches and attention outputs start at
zero (`zero_init`), which made the tiny VAE learn faster on 2 CPU cores.

After training, per-channel latent mean/std are measured on data and stored beside the weights
(`vae_stats.json`), as the published VAEs ship theirs.
"""

from __future__ import annotations

import json
import math
import time
from itertools import pairwise
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from longlive.eval.palette import palette_match
from longlive.vae.causal import CausalCache
from longlive.vae.layers import AttentionBlock, ResidualBlock, patchify, unpatchify


def encode_mu(vae, video: torch.Tensor) -> torch.Tensor:
    """Differentiable μ (un-normalised) of video [B, 3, 1+4k, H, W] in [-1, 1]."""
    st = vae.stride[0]
    x = patchify(video, vae.config.patch_size)
    cache, outs = CausalCache(), []
    bounds = [0, *range(1, video.shape[2] + 1, st)]
    for a, b in pairwise(bounds):
        outs.append(vae.encoder(x[:, :, a:b], cache))
        cache.advance()
    h = torch.cat(outs, dim=2)
    z = vae.z_dim
    return F.conv3d(h, vae.conv1.weight[:z], vae.conv1.bias[:z])


def decode_mu(vae, mu: torch.Tensor) -> torch.Tensor:
    """Differentiable decode of un-normalised latents [B, z, T, h, w] → video [B, 3, 1+4(T−1), H, W]."""
    cache, outs = CausalCache(), []
    for i in range(mu.shape[2]):
        outs.append(vae.decoder(vae.conv2(mu[:, :, i : i + 1]), cache))
        cache.advance()
    return unpatchify(torch.cat(outs, dim=2), vae.config.patch_size)


def window_reconstruct(vae, video: torch.Tensor, start: int, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Encode+decode latents [0, start) without gradients (caches only), then latents [start, start+n) with them.

    video: [B, 3, ≥ 1+4(start+n−1), H, W]. Returns (reconstruction, target frames, μ) of the trained window."""
    st, z = vae.stride[0], vae.z_dim
    x = patchify(video, vae.config.patch_size)
    bounds = [0, *range(1, video.shape[2] + 1, st)]
    enc, dec, outs, mus = CausalCache(), CausalCache(), [], []
    for i in range(start + n):
        with torch.set_grad_enabled(i >= start and torch.is_grad_enabled()):
            h = vae.encoder(x[:, :, bounds[i] : bounds[i + 1]], enc)
            enc.advance()
            mu = F.conv3d(h, vae.conv1.weight[:z], vae.conv1.bias[:z])
            y = vae.decoder(vae.conv2(mu), dec)
            dec.advance()
        if i >= start:
            outs.append(y)
            mus.append(mu)
    rec = unpatchify(torch.cat(outs, dim=2), vae.config.patch_size)
    return rec, video[:, :, bounds[start] : bounds[start + n]], torch.cat(mus, dim=2)


def zero_init_residuals(vae) -> None:
    """Start every residual branch (second conv) and attention output projection at zero: identity blocks."""
    for m in vae.modules():
        if isinstance(m, ResidualBlock):
            torch.nn.init.zeros_(m.residual["6"].weight)
            torch.nn.init.zeros_(m.residual["6"].bias)
        elif isinstance(m, AttentionBlock):
            torch.nn.init.zeros_(m.proj.weight)
            torch.nn.init.zeros_(m.proj.bias)


def random_crop(video: torch.Tensor, size: int, g: torch.Generator) -> torch.Tensor:
    """A random spatial crop of [3, T, H, W] (the conv VAE is translation-equivariant, so crops train it cheaply)."""
    H, W = video.shape[-2:]
    if size >= min(H, W):
        return video
    y = int(torch.randint(0, H - size + 1, (1,), generator=g))
    x = int(torch.randint(0, W - size + 1, (1,), generator=g))
    return video[..., y : y + size, x : x + size]


def train_vae(vae, clips, *, steps: int, lr: float = 1e-3, batch: int = 2, seconds: float | None = None,
              log=print, seed: int = 0, crop: int | None = 64, prefix_latents: int | None = None,
              window_latents: int = 2, warmup: int = 0, min_lr: float | None = None,
              zero_init: bool = False, betas: tuple[float, float] = (0.9, 0.999)) -> list[float]:
    """Adam on reconstruction. Stops at `steps` or `seconds`.

    Plain mode (`prefix_latents=None`): `clips(i) -> uint8 [T, H, W, 3]` with T = 1 + 4k, the whole clip trained.
    Windowed mode: `clips(i, T)` gives T frames; a random 0..`prefix_latents` latents run without gradients first.
    Linear lr warm-up over `warmup` steps (at most 5 % of the budget); with `min_lr`, cosine decay to it over
    `seconds` (or `steps`)."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    if zero_init:
        zero_init_residuals(vae)
    vae.train().requires_grad_(True)
    opt = torch.optim.Adam(vae.parameters(), lr=lr, betas=betas)
    st = vae.stride[0]
    losses, t0 = [], time.perf_counter()
    for step in range(steps):
        progress = (time.perf_counter() - t0) / seconds if seconds else step / steps
        # warm-up ends after `warmup` steps or 5 % of the budget, whichever comes first (slow machines do few steps)
        cur = lr * min(1.0, max((step + 1) / warmup, progress / 0.05)) if warmup else lr
        if min_lr is not None:
            cur = min_lr + (cur - min_lr) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        for group in opt.param_groups:
            group["lr"] = cur
        if prefix_latents is None:
            video = torch.stack([to_unit(clips(step * batch + j)) for j in range(batch)])
        else:
            start = int(torch.randint(0, prefix_latents + 1, (1,), generator=g))
            n_frames = 1 + st * (start + window_latents - 1)
            video = torch.stack([to_unit(clips(step * batch + j, n_frames)) for j in range(batch)])
        if crop:
            video = random_crop(video, crop, g)
        if prefix_latents is None:
            mu = encode_mu(vae, video)
            rec, target = decode_mu(vae, mu), video
        else:
            rec, target, mu = window_reconstruct(vae, video, start, window_latents)
        loss = F.l1_loss(rec, target) + F.mse_loss(rec, target) + 1e-3 * (mu.pow(2).mean() - 1).abs()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if step % 20 == 0:
            recent = losses[-20:]
            log(f"vae step {step}: loss {sum(recent) / len(recent):.4f} (mean of last {len(recent)}), lr {cur:.2e} "
                f"({time.perf_counter() - t0:.0f} s)")
        if seconds is not None and time.perf_counter() - t0 > seconds:
            break
    vae.eval().requires_grad_(False)
    return losses


@torch.no_grad()
def reconstruction_quality(vae, frames: torch.Tensor, palette: torch.Tensor) -> tuple[dict, torch.Tensor]:
    """PSNR (dB, pixels in [-1, 1]) and palette match of one clip through `vae.encode`/`vae.decode`.

    frames: uint8 [T, H, W, 3]. Returns (metrics, reconstructed uint8 frames)."""
    video = to_unit(frames)[None]
    rec = vae.decode(vae.encode(video))
    mse = (rec - video).pow(2).mean(dim=(0, 1, 3, 4)).clamp_min(1e-10)
    psnr = 10 * torch.log10(4.0 / mse)
    rec_u8 = rec[0].permute(1, 2, 3, 0).add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8)
    return {"psnr_db": psnr.mean().item(), "psnr_frame0_db": psnr[0].item(),
            "palette_match": palette_match(rec_u8, palette)}, rec_u8


def to_unit(frames: torch.Tensor) -> torch.Tensor:
    """uint8 [T, H, W, 3] → float [3, T, H, W] in [-1, 1]."""
    return frames.permute(3, 0, 1, 2).float().div(127.5).sub(1.0)


@torch.no_grad()
def measure_latent_stats(vae, clips, n: int = 8) -> tuple[list[float], list[float]]:
    mus = torch.cat([encode_mu(vae, to_unit(clips(10_000 + i))[None]) for i in range(n)], dim=2)
    mean = mus.mean(dim=(0, 2, 3, 4))
    std = mus.std(dim=(0, 2, 3, 4)).clamp_min(1e-3)
    return mean.tolist(), std.tolist()


def save_vae(vae, out: Path, mean: list[float], std: list[float]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(tmp))
    tmp.replace(out)
    stats = out.with_name("vae_stats.json")
    stats.write_text(json.dumps({"latent_mean": mean, "latent_std": std}))
