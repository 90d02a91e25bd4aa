"""On-disk cache of prompt embeddings, so the 5.7 B-parameter umT5 runs once per prompt, ever.

One safetensors file per (encoder identity, prompt), named by the sha256 of both: a changed checkpoint,
tokenizer, config or dtype changes the identity and therefore misses. Files are written to a temp name
and `os.replace`d, so a killed run never leaves a half-written entry that a later run would trust.
Trailing all-zero rows (the padding) are not stored; they are restored as +0.0 on read, so a round
trip is bit-identical.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from .base import TextEncoder

FORMAT = "longlive_prompt_embedding"


def _stored_length(emb: Tensor) -> int:
    """Rows up to the last one with any non-zero bit (so -0.0 counts as data and is kept)."""
    bits = emb.contiguous().view(torch.uint8).reshape(emb.shape[0], -1)
    nonzero = torch.nonzero(bits.any(dim=1)).flatten()
    return int(nonzero[-1]) + 1 if len(nonzero) else 0


class EmbeddingCache:
    """Prompt → embedding [max_len, dim] store under `root`, keyed by sha256(identity, prompt)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    @staticmethod
    def key(identity: str, prompt: str) -> str:
        # JSON keeps the pair unambiguous (no separator an identity or prompt could contain).
        return hashlib.sha256(json.dumps([identity, prompt], ensure_ascii=False).encode()).hexdigest()

    def path(self, identity: str, prompt: str) -> Path:
        k = self.key(identity, prompt)
        return self.root / k[:2] / f"{k}.safetensors"

    def get(self, identity: str, prompt: str) -> Tensor | None:
        """The stored embedding (CPU, stored dtype) or None; unreadable or foreign files count as misses."""
        path = self.path(identity, prompt)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
            data = load_file(str(path))["embedding"]
        except (SafetensorError, OSError, KeyError, ValueError):
            return None
        if meta.get("format") != FORMAT or meta.get("identity") != identity or meta.get("prompt") != prompt:
            return None
        max_len, dim = int(meta["max_len"]), int(meta["dim"])
        out = torch.zeros((max_len, dim), dtype=data.dtype)
        out[: data.shape[0]] = data
        return out

    def put(self, identity: str, prompt: str, embedding: Tensor) -> Path:
        """Store one [max_len, dim] embedding atomically (temp file in the same folder, then replace)."""
        if embedding.ndim != 2:
            raise ValueError(f"expected one [max_len, dim] embedding, got shape {tuple(embedding.shape)}")
        emb = embedding.detach().to("cpu").contiguous()
        n = _stored_length(emb)
        meta = {
            "format": FORMAT,
            "identity": identity,
            "prompt": prompt,
            "max_len": str(emb.shape[0]),
            "dim": str(emb.shape[1]),
        }
        path = self.path(identity, prompt)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            save_file({"embedding": emb[:n].clone()}, str(tmp), metadata=meta)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    def encode(
        self,
        encoder: TextEncoder,
        prompts: list[str],
        *,
        batch_size: int = 16,
        device: str | torch.device | None = None,
    ) -> Tensor:
        """[B, max_len, dim] embeddings: cached entries read back, only missing unique prompts encoded.

        Returned on `device` (default: the encoder's), in the stored dtype, bit-identical to the entries.
        """
        if isinstance(prompts, str):
            raise TypeError("encode() takes a list of prompts, not a single string")
        identity = encoder.identity
        found: dict[str, Tensor] = {}
        missing: list[str] = []
        for p in dict.fromkeys(prompts):
            hit = self.get(identity, p)
            if hit is None:
                missing.append(p)
            else:
                found[p] = hit
        for i in range(0, len(missing), batch_size):
            chunk = missing[i : i + batch_size]
            embs = encoder.encode(chunk).detach().to("cpu")
            for p, e in zip(chunk, embs, strict=True):
                self.put(identity, p, e)
                found[p] = e.clone()
        target = device if device is not None else getattr(encoder, "device", "cpu")
        if not prompts:
            return torch.empty((0, encoder.max_len, encoder.dim), dtype=encoder.dtype, device=target)
        return torch.stack([found[p] for p in prompts]).to(target)
