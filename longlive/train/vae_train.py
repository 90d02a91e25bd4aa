"""Training the tiny preset's autoencoder: the Wan2.2 VAE graph at tiny widths, on procedural video.

The differentiable pass mirrors `WanVAE.encode` / `StreamingDecoder.decode` (same modules, same causal caches:
frame 0 alone then groups of 4 through the encoder, one latent per decoder step) without their inference-only
`no_grad` and in-place clamps. Loss: L1 + MSE on pixels plus a small penalty keeping μ near unit scale (the
denoiser assumes unit-variance latents). After training, per-channel latent mean/std are measured on data and
stored beside the weights (`vae_stats.json`), as the published VAEs ship theirs.
"""

from __future__ import annotations

import json
import time
from itertools import pairwise
from pathlib import Path

import torch
import torch.nn.functional as F

from longlive.vae.causal import CausalCache
from longlive.vae.layers import patchify, unpatchify


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


def random_crop(video: torch.Tensor, size: int, g: torch.Generator) -> torch.Tensor:
    """A random spatial crop of [3, T, H, W] (the conv VAE is translation-equivariant, so crops train it cheaply)."""
    H, W = video.shape[-2:]
    if size >= min(H, W):
        return video
    y = int(torch.randint(0, H - size + 1, (1,), generator=g))
    x = int(torch.randint(0, W - size + 1, (1,), generator=g))
    return video[..., y : y + size, x : x + size]


def train_vae(vae, clips, *, steps: int, lr: float = 1e-3, batch: int = 2, seconds: float | None = None,
              log=print, seed: int = 0, crop: int | None = 64) -> list[float]:
    """Adam on reconstruction; `clips(i) -> uint8 [T, H, W, 3]` with T = 1 + 4k. Stops at `steps` or `seconds`."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    vae.train().requires_grad_(True)
    opt = torch.optim.Adam(vae.parameters(), lr=lr)
    losses, t0 = [], time.perf_counter()
    for step in range(steps):
        video = torch.stack([to_unit(clips(step * batch + j)) for j in range(batch)])
        if crop:
            video = random_crop(video, crop, g)
        mu = encode_mu(vae, video)
        rec = decode_mu(vae, mu)
        loss = F.l1_loss(rec, video) + F.mse_loss(rec, video) + 1e-3 * (mu.pow(2).mean() - 1).abs()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if step % 20 == 0:
            log(f"vae step {step}: loss {loss.item():.4f} ({time.perf_counter() - t0:.0f} s)")
        if seconds is not None and time.perf_counter() - t0 > seconds:
            break
    vae.eval().requires_grad_(False)
    return losses


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
    from safetensors.torch import save_file

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(tmp))
    tmp.replace(out)
    stats = out.with_name("vae_stats.json")
    stats.write_text(json.dumps({"latent_mean": mean, "latent_std": std}))


def apply_stats(vae, stats_path: Path) -> bool:
    """Set the latent normalisation measured at training time (if the file exists)."""
    if not stats_path.exists():
        return False
    s = json.loads(stats_path.read_text())
    dev = vae.conv1.weight.device
    vae.latent_mean = torch.tensor(s["latent_mean"], dtype=torch.float32, device=dev)
    vae.latent_std = torch.tensor(s["latent_std"], dtype=torch.float32, device=dev)
    return True
