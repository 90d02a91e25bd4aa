"""The text-encoder interface shared by the umT5-XXL adapter and the tiny encoder.

Both encoders are a `transformers.UMT5EncoderModel` behind a tokenizer; they differ only in how prompts
become ids and where the weights come from. The DiT attends to all `max_len` positions, so every
position past a prompt's token count must be exactly zero (spec 01, "Text encoder").
"""

from __future__ import annotations

import hashlib
import html
import json
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor

try:  # Wan cleans prompts with ftfy first; it is optional here (a no-op on ordinary text).
    import ftfy as _ftfy
except ImportError:  # pragma: no cover - depends on the environment
    _ftfy = None

#: Recorded in encoder identities so cached embeddings never mix the two cleaning variants.
PROMPT_CLEANING = "ftfy+html+ws" if _ftfy is not None else "html+ws"

_WHITESPACE = re.compile(r"\s+")

Tokenize = Callable[[Sequence[str]], tuple[Tensor, Tensor]]


def clean_prompt(text: str) -> str:
    """Normalise a prompt the way Wan's tokenizer wrapper does before tokenising.

    (ftfy if installed, HTML entities unescaped twice, whitespace runs collapsed, ends stripped), so the
    same prompt yields the same token ids as the published pipeline.
    """
    if _ftfy is not None:
        text = _ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return _WHITESPACE.sub(" ", text).strip()


def file_fingerprint(path: str | os.PathLike, content_hash_limit: int = 64 << 20) -> str:
    """A short hash that changes when the file changes.

    Small files are hashed by content (robust to copies and touch); large ones (the 11 GB umT5
    checkpoint) by resolved path, size and mtime, which is instant and changes on any rewrite.
    """
    p = Path(path).resolve()
    st = p.stat()
    h = hashlib.sha256()
    if st.st_size <= content_hash_limit:
        h.update(b"content:")
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    else:
        h.update(f"stat:{p}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def dir_fingerprint(path: str | os.PathLike) -> str:
    """`file_fingerprint` over every file of a folder (a tokenizer folder), names included."""
    root = Path(path).resolve()
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(f"{f.relative_to(root).as_posix()}={file_fingerprint(f)};".encode())
    return h.hexdigest()[:16]


def config_fingerprint(obj: object) -> str:
    """Hash of a JSON-serialisable description (config, dtype, seed)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


class TextEncoder(ABC):
    """Prompts in, zero-padded embeddings [B, max_len, dim] out.

    Attributes: `dim` (embedding width), `max_len` (token positions, padding included), `identity`
    (a string that changes whenever weights, tokenizer, config or compute dtype change; it keys the
    embedding cache), `device` and `dtype` of the returned tensor.
    """

    name: str
    dim: int
    max_len: int
    identity: str
    device: torch.device
    dtype: torch.dtype

    @abstractmethod
    def tokenize(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Return (ids, mask), both int64 [B, max_len]; mask is 1 on real tokens (EOS included)."""

    @abstractmethod
    def encode(self, prompts: list[str]) -> Tensor:
        """Return [B, max_len, dim] embeddings, exactly zero past each prompt's token count."""

    def __call__(self, prompts: list[str]) -> Tensor:
        return self.encode(prompts)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(identity={self.identity!r}, dim={self.dim}, max_len={self.max_len})"


class UMT5TextEncoder(TextEncoder):
    """A `UMT5EncoderModel` behind a tokenize function; used for both umT5-XXL and the tiny encoder.

    `model` may be a factory: the model is then built on the first `encode`, so a run whose prompts are all in the
    embedding cache never builds it (nor loads transformers' model classes, about 1.5 s per CPU process). A factory
    needs `dim`, `device` and `dtype` up front, and the built model is checked against them.
    """

    def __init__(self, name: str, model: torch.nn.Module | Callable[[], torch.nn.Module], tokenize: Tokenize,
                 max_len: int, identity: str, *, dim: int | None = None, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None):
        self.name = name
        self._tokenize = tokenize
        self.max_len = max_len
        self.identity = identity
        self._model: torch.nn.Module | None = None
        self._build: Callable[[], torch.nn.Module] | None = None
        if isinstance(model, torch.nn.Module):
            self._set_model(model)
        else:
            if dim is None or device is None or dtype is None:
                raise ValueError("a model factory needs dim, device and dtype")
            self._build = model
            self.dim, self.device, self.dtype = int(dim), torch.device(device), dtype

    def _set_model(self, model: torch.nn.Module) -> None:
        self._model = model.eval().requires_grad_(False)
        self.dim = int(model.config.d_model)
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype

    @property
    def built(self) -> bool:
        """Whether the model exists yet (False until the first encode for a factory-built encoder)."""
        return self._model is not None

    @property
    def model(self) -> torch.nn.Module:
        if self._model is None:
            assert self._build is not None
            want = (self.dim, self.device.type, self.dtype)
            self._set_model(self._build())
            if (self.dim, self.device.type, self.dtype) != want:
                raise RuntimeError(f"{self.name} text encoder: the factory built (dim, device, dtype) = "
                                   f"{(self.dim, self.device.type, self.dtype)}, declared {want}")
            self._build = None
        return self._model

    def tokenize(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        if isinstance(prompts, str):
            raise TypeError("encode() takes a list of prompts, not a single string")
        ids, mask = self._tokenize(list(prompts))
        if ids.shape != (len(prompts), self.max_len) or mask.shape != ids.shape:
            raise RuntimeError(
                f"tokenizer returned {tuple(ids.shape)}, expected ({len(prompts)}, {self.max_len})"
            )
        return ids.long(), mask.long()

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> Tensor:
        ids, mask = self.tokenize(prompts)
        ids, mask = ids.to(self.device), mask.to(self.device)
        out = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        # Padded positions still carry values after the final norm; the DiT expects exact zeros there.
        # masked_fill rather than a multiply: it writes +0.0 (never -0.0 or NaN) into the padding.
        return out.masked_fill(mask.unsqueeze(-1) == 0, 0.0)
