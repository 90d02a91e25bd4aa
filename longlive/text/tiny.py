"""The tiny preset's text encoder: a small `UMT5EncoderModel` over UTF-8 bytes.

It runs the same model class and encode path as umT5-XXL, so everything downstream (zero padding, the
cache, the DiT's text embedding) is exercised on CPU without any downloaded weights or vocabulary.
Weights come from a fixed seed (reproducible on any machine and transformers version: we initialise
them ourselves with a private generator) or from a safetensors file the training code saves.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from longlive.filecheck import TINY_TEXT, check_weights, load_safetensors

from .base import PROMPT_CLEANING, UMT5TextEncoder, clean_prompt, config_fingerprint, file_fingerprint
from .umt5 import TIED_KEY, UMT5Spec, assign_state_dict, build_umt5_model, match_state_dict, umt5_shapes

PAD_ID, EOS_ID, UNK_ID = 0, 1, 2  # T5's special ids; bytes follow them
BYTE_OFFSET = 3
# dim / text_len are the tiny preset's text_dim / text_len (longlive.model.presets).
TINY_SPEC = UMT5Spec(
    vocab_size=256 + BYTE_OFFSET, dim=64, ffn_dim=128, num_heads=4, num_layers=2, text_len=32
)
CHECKPOINT_FORMAT = "longlive_tiny_text_encoder"


class ByteTokenizer:
    """UTF-8 bytes shifted past the special ids, EOS appended, truncated and padded to `max_len`."""

    def __init__(self, max_len: int):
        if max_len < 1:
            raise ValueError("max_len must be at least 1 (room for EOS)")
        self.max_len = max_len

    def ids(self, prompt: str) -> list[int]:
        data = clean_prompt(prompt).encode("utf-8")[: self.max_len - 1]
        return [b + BYTE_OFFSET for b in data] + [EOS_ID]

    def visible(self, prompt: str) -> str:
        """The part of the cleaned prompt the ids keep (truncation drops the rest; a word cut in two is dropped)."""
        text = clean_prompt(prompt)
        data = text.encode("utf-8")
        kept = data[: self.max_len - 1].decode("utf-8", errors="ignore")
        if kept and len(kept) < len(text) and kept[-1].isalnum() and text[len(kept)].isalnum():
            kept = kept[: len(kept) - len(kept.split()[-1])] if kept.split() else ""
        return kept

    def __call__(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        ids = torch.full((len(prompts), self.max_len), PAD_ID, dtype=torch.long)
        mask = torch.zeros((len(prompts), self.max_len), dtype=torch.long)
        for i, p in enumerate(prompts):
            row = self.ids(p)
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, : len(row)] = 1
        return ids, mask


def _init_std(name: str, spec: UMT5Spec) -> float | None:
    """T5's init scales (None = norm weight, set to one)."""
    if name.endswith("layer_norm.weight"):
        return None
    table = {
        "shared.weight": 1.0,
        ".q.weight": (spec.dim * spec.head_dim) ** -0.5,
        ".k.weight": spec.dim**-0.5,
        ".v.weight": spec.dim**-0.5,
        ".o.weight": (spec.num_heads * spec.head_dim) ** -0.5,
        ".relative_attention_bias.weight": spec.dim**-0.5,
        ".wi_0.weight": spec.dim**-0.5,
        ".wi_1.weight": spec.dim**-0.5,
        ".wo.weight": spec.ffn_dim**-0.5,
    }
    for suffix, std in table.items():
        if name.endswith(suffix):
            return std
    raise RuntimeError(f"no init rule for tiny text-encoder parameter {name!r}")


@torch.no_grad()
def init_tiny_weights(model: torch.nn.Module, seed: int, spec: UMT5Spec = TINY_SPEC) -> None:
    """Deterministic init from `seed`, independent of the global RNG and of transformers' init code."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    for name, p in sorted(model.named_parameters()):  # tied embedding appears once
        std = _init_std(name, spec)
        if std is None:
            p.fill_(1.0)
        else:
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32) * std)


def save_tiny_text_encoder(
    model_or_encoder: torch.nn.Module | UMT5TextEncoder, path: str | os.PathLike
) -> Path:
    """Save the weights as safetensors (float32, tied alias dropped), atomically."""
    model = model_or_encoder.model if isinstance(model_or_encoder, UMT5TextEncoder) else model_or_encoder
    state = model.state_dict()
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in state.items() if k != TIED_KEY}
    meta = {"format": CHECKPOINT_FORMAT, "spec": json.dumps(asdict(TINY_SPEC), sort_keys=True)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file(tensors, str(tmp), metadata=meta)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_tiny_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read a tiny text-encoder checkpoint, checking its format tag and spec before its keys."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"tiny text-encoder checkpoint not found: {path}. Train/save one with save_tiny_text_encoder(), "
            "or pass checkpoint=None to use the seeded initialisation."
        )
    check_weights(path, TINY_TEXT)  # a safetensors file, whole, before its metadata is read
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a tiny text-encoder checkpoint (format={meta.get('format')!r})")
    if json.loads(meta.get("spec", "{}")) != asdict(TINY_SPEC):
        raise ValueError(f"{path}: saved for spec {meta.get('spec')}, this code expects {asdict(TINY_SPEC)}")
    return load_safetensors(path, TINY_TEXT)


def build_tiny_text_encoder(
    checkpoint: str | os.PathLike | None = None,
    *,
    seed: int = 0,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> UMT5TextEncoder:
    """The tiny preset's encoder: seeded weights, or those saved at `checkpoint` (loaded strictly)."""
    dtype = dtype or torch.float32
    dev = torch.device(device or "cpu")
    # The checkpoint's format, spec and keys are read now (bad input fails before any work); the model itself is
    # built on first use, so prompts already in the embedding cache never build it.
    state = load_tiny_state_dict(checkpoint) if checkpoint is not None else None
    if state is not None:
        match_state_dict(state, umt5_shapes(TINY_SPEC), what=f"tiny text-encoder checkpoint {checkpoint}")
    source = f"seed={seed}" if state is None else f"ckpt={file_fingerprint(checkpoint)}"

    def build() -> torch.nn.Module:
        model = build_umt5_model(TINY_SPEC, "meta")
        if state is None:
            model = model.to_empty(device="cpu")
            model.encoder.embed_tokens.weight = model.shared.weight  # to_empty keeps ties, but be explicit
            init_tiny_weights(model, seed)
        else:
            assign_state_dict(model, state)  # load_state_dict(strict=True): the keys were matched above
        return model.to(device=dev, dtype=dtype)

    dtype_name = str(dtype).removeprefix("torch.")
    identity = f"tiny/{dtype_name}/{source}/cfg={config_fingerprint([asdict(TINY_SPEC), PROMPT_CLEANING])}"
    return UMT5TextEncoder("tiny", build, ByteTokenizer(TINY_SPEC.text_len), TINY_SPEC.text_len, identity,
                           dim=TINY_SPEC.dim, device=dev, dtype=dtype)
