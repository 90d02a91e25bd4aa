"""Where weights live, and loading the VAE and text encoder a preset pairs with.

Published weights sit under one root (LONGLIVE_WEIGHTS, default ~/.cache/longlive/weights) in their published names;
nothing is ever downloaded, and a missing file is an error naming the exact path expected, raised before any model
is built. The tiny preset's trained weights ship with the package (`longlive/assets/tiny`, see its MANIFEST.json);
setting LONGLIVE_WEIGHTS makes LONGLIVE_WEIGHTS/tiny win over them (seeded random weights where files are missing).

The loaders are shared by generation (`infer.video`) and training data (`train.data`), so both read the same files
the same way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from longlive.model.presets import ModelConfig
from longlive.text import build_text_encoder
from longlive.vae import apply_stats, build_vae, load_vae

ENV = "LONGLIVE_WEIGHTS"
SHIPPED_TINY = Path(__file__).resolve().parent / "assets" / "tiny"


def weights_root(*, must_exist: bool = True) -> Path:
    """LONGLIVE_WEIGHTS, else ~/.cache/longlive/weights (which need not exist: every file is then reported missing).

    A LONGLIVE_WEIGHTS that is a file, or (when reading, `must_exist`) a missing path, is an error now: taken as is,
    a typo would read as "every weight file missing" and the tiny preset would silently run on random weights.
    """
    value = os.environ.get(ENV)
    if not value:
        return Path.home() / ".cache" / "longlive" / "weights"
    root = Path(value).expanduser()
    if root.exists() and not root.is_dir():
        raise ValueError(f"{ENV}={value} is a file; set it to the folder that holds the weight files (or unset it)")
    if must_exist and not root.exists():
        raise FileNotFoundError(f"{ENV}={value} does not exist; set it to the folder that holds the weight files "
                                f"(or unset it: the tiny preset then uses its shipped weights)")
    return root


def tiny_dir() -> Path:
    """LONGLIVE_WEIGHTS/tiny when LONGLIVE_WEIGHTS is set, else the trained tiny weights shipped with the package."""
    return weights_root() / "tiny" if os.environ.get(ENV) else SHIPPED_TINY


@dataclass(frozen=True)
class WeightPaths:
    generator: Path
    vae: Path
    text: Path
    tokenizer: Path | None
    generator_2step: Path | None = None  # a generator distilled for 2-step sampling (the tiny default's LoRA merge)


def _generator_file(folder: Path, stem: str) -> Path:
    """folder/stem.safetensors (how the package ships them) if present, else folder/stem.pt (what training writes)."""
    st = folder / f"{stem}.safetensors"
    return st if st.exists() else folder / f"{stem}.pt"


def default_paths(cfg: ModelConfig, root: Path | None = None) -> WeightPaths:
    if cfg.name == "tiny":
        d = root / "tiny" if root is not None else tiny_dir()
        return WeightPaths(_generator_file(d, "model_bf16"), d / "vae.safetensors", d / "text_encoder.safetensors",
                           None, _generator_file(d, "model_2step"))
    root = root or weights_root()
    vae_file = {"wan2.2": "Wan2.2_VAE.pth", "wan2.1": "Wan2.1_VAE.pth"}[cfg.vae]
    return WeightPaths(
        root / cfg.name / "model_bf16.pt",
        root / vae_file,
        root / "models_t5_umt5-xxl-enc-bf16.pth",
        root / "google" / "umt5-xxl",
    )


def describe(path: Path) -> str:
    """Where a weight file came from, for notes and manifests."""
    path = Path(path)
    return f"shipped tiny weights ({path.name})" if path.parent == SHIPPED_TINY else str(path)


def require(path: Path, what: str) -> Path:
    """Return path if it exists, else raise FileNotFoundError naming it and how to provide it."""
    if not Path(path).exists():
        raise FileNotFoundError(
            f"{what} not found: expected {path}. Place the published file there, pass its path explicitly, "
            f"or set LONGLIVE_WEIGHTS to the folder that holds it (or use --random-weights for speed runs)."
        )
    return Path(path)


def load_vae_for(cfg: ModelConfig, path: Path | None, *, explicit: bool = False, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32, seed: int = 0):
    """(VAE, note or None): the file at `path` with its latent stats, or seeded random weights where there is none
    (an error instead if the path was given explicitly)."""
    if path is not None and Path(path).exists():
        vae = load_vae(cfg.vae, path, device=device, dtype=dtype)
        apply_stats(vae, Path(path).with_name("vae_stats.json"))  # our trained VAEs ship their latent stats
        return vae, None
    if explicit:
        raise FileNotFoundError(f"VAE checkpoint not found: expected {path}")
    torch.manual_seed(seed)
    return build_vae(cfg.vae, device=device, dtype=dtype), "vae: seeded random weights (no trained checkpoint found)"


def load_text_for(cfg: ModelConfig, path: Path | None, tokenizer: Path | None, *, device: torch.device | str = "cpu",
                  seed: int = 0, random_weights: bool = False):
    """(text encoder or None, note or None). The tiny encoder falls back to seeded weights; umT5 with random_weights
    is skipped (None: the caller draws random prompt embeddings)."""
    if cfg.text_encoder == "tiny":
        ckpt = path if path is not None and Path(path).exists() else None
        text = build_text_encoder("tiny", checkpoint=ckpt, device=device, seed=seed if ckpt is None else None)
        return text, None if ckpt is not None else "text encoder: seeded random tiny umT5"
    if random_weights:
        return None, "text encoder: skipped (random prompt embeddings)"
    return build_text_encoder(cfg.text_encoder, checkpoint=path, tokenizer_dir=tokenizer, device=device), None
