"""Build a Wan VAE from a preset and load published-layout checkpoints (``Wan2.x_VAE.pth``/safetensors).

The published files are raw state dicts with Wan's key names; our module names equal them, so a load is
a strict ``load_state_dict``. Shapes and key sets are checked first so a mismatch names the offending
key and both shapes instead of failing deep inside torch.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from longlive.filecheck import VAE, load_safetensors, load_torch

from .config import VAEConfig, get_vae_config
from .pca_codec import PCACodec, PCACodecConfig
from .wan_vae import WanVAE


def build_vae(
    preset: str | VAEConfig, device: str | torch.device | None = None, dtype: torch.dtype | None = None
) -> WanVAE:
    """A randomly initialised VAE (``device="meta"`` for shapes only), in eval mode with frozen params."""
    config = get_vae_config(preset)
    with torch.device(device if device is not None else "cpu"):
        vae = PCACodec(config) if isinstance(config, PCACodecConfig) else WanVAE(config)
    if dtype is not None:
        vae.to(dtype=dtype)
    return vae.eval().requires_grad_(False)


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a raw state dict from ``.safetensors`` or a torch pickle (weights only, mmap when a zip archive), after
    checking the file's format and integrity (`longlive.filecheck`)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return load_safetensors(path, VAE)
    state = load_torch(path, VAE)  # a legacy (non-zip) pickle is read without mmap
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a raw state dict of tensors (Wan VAE layout)")
    return dict(state)


def check_state_dict(vae: WanVAE, state: Mapping[str, Tensor], source: str) -> None:
    """Raise ValueError naming the first missing / mis-shaped / unexpected key."""
    expected = vae.state_dict()
    name = vae.config.name
    for key, ref in expected.items():
        if key not in state:
            raise ValueError(f"{source}: missing key {key!r} (VAE preset {name!r} expects shape {tuple(ref.shape)})")
        got = tuple(state[key].shape)
        if got != tuple(ref.shape):
            raise ValueError(
                f"{source}: key {key!r} has shape {got} in the checkpoint but VAE preset {name!r} "
                f"expects {tuple(ref.shape)}"
            )
    extra = [k for k in state if k not in expected]
    if extra:
        raise ValueError(
            f"{source}: unexpected key {extra[0]!r} for VAE preset {name!r} ({len(extra)} unexpected in total)"
        )


def load_vae(
    preset: str | VAEConfig,
    path: str | Path,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> WanVAE:
    """Build ``preset`` and strictly load the published-layout checkpoint at ``path``.

    Weights keep the file's dtype unless ``dtype`` is given; they land on ``device`` (default CPU).
    """
    config = get_vae_config(preset)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"VAE checkpoint for preset {config.name!r} not found: {path}")
    state = read_state_dict(path)
    vae = build_vae(config, device="meta")
    if hasattr(vae, "upgrade_state_dict"):  # keys an older file of this codec may lack
        state = vae.upgrade_state_dict(state)
    check_state_dict(vae, state, str(path))
    vae.load_state_dict(state, strict=True, assign=True)
    vae.reset_latent_stats()
    vae.to(device=device if device is not None else "cpu", dtype=dtype)
    return vae.eval().requires_grad_(False)


def apply_stats(vae, stats_path: str | Path) -> bool:
    """Set the latent normalisation measured when our own VAEs were trained (`vae_stats.json`), if the file exists."""
    stats_path = Path(stats_path)
    if not stats_path.exists():
        return False
    s = json.loads(stats_path.read_text())
    dev = vae.device
    vae.latent_mean = torch.tensor(s["latent_mean"], dtype=torch.float32, device=dev)
    vae.latent_std = torch.tensor(s["latent_std"], dtype=torch.float32, device=dev)
    return True
