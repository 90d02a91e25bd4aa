"""Where weights live: one root (LONGLIVE_WEIGHTS, default ~/.cache/longlive/weights) in the published names.

Nothing is ever downloaded. A missing file is an error naming the exact path expected, raised before any
model is built; the tiny preset's own trained weights are optional (random, seeded weights otherwise).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from longlive.model.presets import ModelConfig


def weights_root() -> Path:
    return Path(os.environ.get("LONGLIVE_WEIGHTS", Path.home() / ".cache" / "longlive" / "weights"))


@dataclass(frozen=True)
class WeightPaths:
    generator: Path
    vae: Path
    text: Path
    tokenizer: Path | None


def default_paths(cfg: ModelConfig, root: Path | None = None) -> WeightPaths:
    root = root or weights_root()
    if cfg.name == "tiny":
        d = root / "tiny"
        return WeightPaths(d / "model_bf16.pt", d / "vae.safetensors", d / "text_encoder.safetensors", None)
    vae_file = {"wan2.2": "Wan2.2_VAE.pth", "wan2.1": "Wan2.1_VAE.pth"}[cfg.vae]
    return WeightPaths(
        root / cfg.name / "model_bf16.pt",
        root / vae_file,
        root / "models_t5_umt5-xxl-enc-bf16.pth",
        root / "google" / "umt5-xxl",
    )


def require(path: Path, what: str) -> Path:
    """Return path if it exists, else raise FileNotFoundError naming it and how to provide it."""
    if not Path(path).exists():
        raise FileNotFoundError(
            f"{what} not found: expected {path}. Place the published file there, pass its path explicitly, "
            f"or set LONGLIVE_WEIGHTS to the folder that holds it (or use --random-weights for speed runs)."
        )
    return Path(path)
