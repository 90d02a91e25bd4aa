"""Generator checkpoints in the published layouts (spec 01, "Checkpoint layouts to load").

- generator files (`model_bf16.pt`, merged-LoRA exports): a pickle dict with `generator` (or
  `generator_ema` with `_fsdp_wrapped_module.` segments, `model`, or a raw state dict); keys carry `model.`;
- base Wan weights: a folder of `*.safetensors` shards (optionally with an index json), no prefix.

Loads are strict: the first missing, unexpected or wrongly shaped key is named in the error.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn

from longlive.filecheck import GENERATOR, check_shard_folder, load_safetensors, load_torch
from longlive.output import atomic_path

PREFIX = "model."
GENERATOR_KEYS = ("generator", "generator_ema", "model")
NVFP4_FORMAT = "longlive_generator_nvfp4"


class CheckpointError(ValueError):
    """A checkpoint that does not match the model (named key and shapes in the message)."""


def _strip(key: str) -> str:
    key = key.replace("_fsdp_wrapped_module.", "").replace("_orig_mod.", "")
    return key[len(PREFIX):] if key.startswith(PREFIX) else key


def read_generator_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a generator checkpoint (file or safetensors folder) → (state dict without `model.`, metadata)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"generator checkpoint not found: expected {path} (a model_bf16.pt-style file or a folder of "
            "*.safetensors shards)"
        )
    if path.is_dir():
        sd: dict[str, torch.Tensor] = {}
        for shard in check_shard_folder(path, GENERATOR):  # every shard's header and the index, before any load
            sd.update(load_safetensors(shard, GENERATOR))
        meta = {}
        cfg = path / "config.json"
        if cfg.exists():
            meta["config"] = json.loads(cfg.read_text())
        return {_strip(k): v for k, v in sd.items()}, meta
    if path.suffix == ".safetensors":
        return {_strip(k): v for k, v in load_safetensors(path, GENERATOR).items()}, {}
    obj = load_torch(path, GENERATOR)  # format and integrity checked first; weights only, mmap'd when a zip
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict, got {type(obj).__name__}")
    meta = {k: v for k, v in obj.items() if not isinstance(v, (dict, torch.Tensor))}
    if "quantization" in obj:
        meta["quantization"] = obj["quantization"]
    if meta.get("checkpoint_format") == NVFP4_FORMAT:
        raise CheckpointError(
            f"{path} is an NVFP4 generator ({NVFP4_FORMAT}); load it through the low-precision loader "
            "(longlive.quant), not as a BF16 state dict"
        )
    for key in GENERATOR_KEYS:
        if key in obj and isinstance(obj[key], dict):
            return {_strip(k): v for k, v in obj[key].items()}, meta
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{path}: no state dict under {GENERATOR_KEYS} and no tensors at top level")
    return {_strip(k): v for k, v in tensors.items()}, meta


def checkpoint_format(path: str | Path) -> str | None:
    """The `checkpoint_format` recorded in a generator pickle (None for folders, safetensors and raw dicts)."""
    path = Path(path)
    if path.is_dir() or path.suffix == ".safetensors" or not path.exists():
        return None
    obj = load_torch(path, GENERATOR)
    return obj.get("checkpoint_format") if isinstance(obj, dict) else None


def check_state_dict(model: nn.Module, sd: dict[str, torch.Tensor], *, prefix: str = PREFIX) -> None:
    """Raise CheckpointError naming the first key that is missing, unexpected or of the wrong shape."""
    expected = model.state_dict()
    for key, ref in expected.items():
        if key not in sd:
            raise CheckpointError(f"checkpoint is missing key {prefix}{key} (expected shape {list(ref.shape)})")
        if tuple(sd[key].shape) != tuple(ref.shape):
            raise CheckpointError(
                f"checkpoint key {prefix}{key} has shape {list(sd[key].shape)} but the model expects "
                f"{list(ref.shape)}"
            )
    for key in sd:
        if key not in expected:
            raise CheckpointError(f"checkpoint has unexpected key {prefix}{key}")


def load_generator(model: nn.Module, path: str | Path) -> dict:
    """Strictly load a published-layout generator into `model` (in its dtype/device); return metadata."""
    sd, meta = read_generator_file(path)
    check_state_dict(model, sd)
    if next(model.parameters()).is_meta:
        model.load_state_dict(sd, strict=True, assign=True)
    else:
        model.load_state_dict(sd, strict=True)
    return meta


def generator_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights under the published `model.`-prefixed names."""
    return {PREFIX + k: v.detach().cpu() for k, v in model.state_dict().items()}


def save_generator(
    model: nn.Module, path: str | Path, *, checkpoint_format: str = "longlive_generator_merged_bf16",
    merged_lora: bool = False,
) -> Path:
    """Write a generator file in the published layout, atomically (temp file, then rename)."""
    path = Path(path)
    if any(getattr(m, "qkv", None) is not None for m in model.modules()):
        raise ValueError("this model's q/k/v are fused (longlive.model.fuse); the published layout has separate "
                         "q, k and v: save the model before fusing")
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = generator_state_dict(model)
    dtype = str(next(iter(sd.values())).dtype).replace("torch.", "")
    payload = {"generator": sd, "checkpoint_format": checkpoint_format, "dtype": dtype, "merged_lora": merged_lora}
    with atomic_path(path) as tmp:  # a failed save (full disk) leaves the old file and no temp file
        torch.save(payload, str(tmp))
    return path
