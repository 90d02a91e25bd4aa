"""Text encoders (umT5-XXL from Wan's checkpoint, a tiny byte-level one) and their embedding cache.

Use `build_text_encoder(preset.text_encoder, ...)`; the returned `TextEncoder` gives zero-padded
[B, max_len, dim] embeddings and an `identity` string that keys `EmbeddingCache`.
"""

from __future__ import annotations

import os

import torch

from .base import TextEncoder, UMT5TextEncoder, clean_prompt
from .cache import EmbeddingCache
from .tiny import build_tiny_text_encoder
from .umt5 import build_umt5_text_encoder

TEXT_ENCODERS = ("tiny", "umt5-xxl")

__all__ = [
    "TEXT_ENCODERS",
    "EmbeddingCache",
    "TextEncoder",
    "UMT5TextEncoder",
    "build_text_encoder",
    "clean_prompt",
]


def build_text_encoder(
    name: str,
    *,
    checkpoint: str | os.PathLike | None = None,
    tokenizer_dir: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    seed: int | None = None,
) -> TextEncoder:
    """Build the text encoder a preset names (`ModelConfig.text_encoder`).

    `umt5-xxl`: `checkpoint` is Wan's `models_t5_umt5-xxl-enc-bf16.pth` or the release folder holding it
    (tokenizer defaults to its `google/umt5-xxl/`); dtype None keeps the stored bf16. `tiny`: seeded
    weights (`seed`, default 0) unless `checkpoint` is a saved safetensors file; float32 by default.
    device None: CUDA when available, else CPU.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "tiny":
        if tokenizer_dir is not None:
            raise ValueError("the tiny text encoder is byte-level and takes no tokenizer_dir")
        seed = 0 if seed is None else seed
        return build_tiny_text_encoder(checkpoint, seed=seed, device=device, dtype=dtype)
    if name == "umt5-xxl":
        if seed is not None:
            raise ValueError("seed only applies to the tiny text encoder; umt5-xxl loads its checkpoint")
        return build_umt5_text_encoder(checkpoint, tokenizer_dir=tokenizer_dir, device=device, dtype=dtype)
    raise ValueError(f"unknown text encoder {name!r}; known text encoders: {', '.join(TEXT_ENCODERS)}")
