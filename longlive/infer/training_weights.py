"""Generator weights inside a training checkpoint: a longlive run's `checkpoints/step_*.pt` or the release's
`generator_ema`, with or without the EMA (`ema`, the release's `use_ema`).

A longlive training checkpoint (longlive.train.checkpoint) holds `model` (every parameter and buffer), `ema` (an FP32
copy of every trainable parameter), the optimiser, RNG states and the config. The EMA weights are `model` with each
trainable parameter replaced by its EMA. The release's checkpoints keep the EMA as a whole state dict,
`generator_ema`, with FSDP segments in its keys. This reader does not import the training package (the layers point
down): it reads the file format, which is plain `torch.save` of dicts, tensors and NumPy RNG state.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from longlive.filecheck import GENERATOR, TRAINING, load_torch
from longlive.model.checkpoint import PREFIX, check_state_dict

TRAINING_KEYS = ("model", "ema", "optim", "step")
"""The keys that make a file a longlive training checkpoint."""
RELEASE_EMA_KEY = "generator_ema"
WRAPPER_SEGMENTS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")
# A training checkpoint stores NumPy's RNG state; these are the only non-tensor globals it needs to unpickle, so it
# loads with weights_only=True (no arbitrary code) instead of a full unpickle.
NUMPY_GLOBALS = [np.dtype, np.ndarray, np._core.multiarray._reconstruct, type(np.dtype(np.uint32))]


def clean_key(key: str) -> str:
    """A parameter name without wrapper segments (FSDP, activation checkpointing, compile) and the `model.` prefix."""
    for seg in WRAPPER_SEGMENTS:
        key = key.replace(seg, "")
    return key[len(PREFIX):] if key.startswith(PREFIX) else key


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint's top-level dict, memory-mapped (tensors are read when used); {} for a folder, a safetensors
    file or a file that is not a dict. The file's format and integrity are checked first (`longlive.filecheck`),
    against a training checkpoint's layout for a `step_*.pt`, else the generator's."""
    path = Path(path)
    if path.is_dir() or path.suffix == ".safetensors":
        return {}
    layout = TRAINING if path.name.startswith("step_") else GENERATOR
    obj = load_torch(path, layout, safe_globals=NUMPY_GLOBALS)
    return obj if isinstance(obj, dict) else {}


def is_training_checkpoint(obj: dict[str, Any]) -> bool:
    return all(k in obj for k in TRAINING_KEYS) and isinstance(obj["model"], dict) and isinstance(obj["ema"], dict)


def has_ema(obj: dict[str, Any]) -> bool:
    return isinstance(obj.get(RELEASE_EMA_KEY), dict) or is_training_checkpoint(obj)


def check_ema(path: str | Path) -> None:
    """ValueError, before any model is built, when `path` holds no EMA weights."""
    obj = read_checkpoint(path)
    if not has_ema(obj):
        raise ValueError(f"--ema: {path} holds no EMA weights: neither the release's {RELEASE_EMA_KEY} nor a longlive "
                         f"training checkpoint's ema (its keys: {sorted(obj)[:8]})")


def training_state(obj: dict[str, Any], *, ema: bool) -> tuple[dict[str, torch.Tensor], str]:
    """(state dict under the model's names, where it came from) of a training checkpoint's generator."""
    if ema and isinstance(obj.get(RELEASE_EMA_KEY), dict):
        return {clean_key(k): v for k, v in obj[RELEASE_EMA_KEY].items()}, f"the release's {RELEASE_EMA_KEY}"
    if not is_training_checkpoint(obj):
        raise ValueError(f"not a training checkpoint with {'EMA ' if ema else ''}weights (keys: {sorted(obj)[:8]})")
    sd = {clean_key(k): v for k, v in obj["model"].items()}
    step = obj.get("step")
    if not ema:
        return sd, f"the training weights of step {step}"
    for name, t in obj["ema"].items():
        key = clean_key(name)
        if key not in sd:
            raise ValueError(f"EMA entry {name} names no parameter of the checkpoint's model")
        sd[key] = t
    return sd, f"the EMA weights of step {step} ({len(obj['ema'])} trainable tensors)"


def load_training_weights(model: nn.Module, path: str | Path, *, ema: bool) -> str:
    """Strictly load a training checkpoint's generator (EMA or training weights) into `model`; returns a note."""
    sd, source = training_state(read_checkpoint(path), ema=ema)
    check_state_dict(model, sd)
    model.load_state_dict(sd, strict=True)
    return f"generator: {source} from {path}"
