"""Resumable, crash-safe training checkpoints (spec 04, Stage 1).

A checkpoint is ONE file `out_dir/checkpoints/step_XXXXXXXX.pt` holding the model and EMA state, the optimiser
state, the step, the RNG states, the data iterator's position and the config. It is written to a hidden temp file
in the same directory, fsynced, then `os.replace`d into place, so a crash mid-save leaves at most a stray temp file
(ignored and cleaned up by `load_latest`) and never a truncated `step_*.pt`. Loading picks the highest step.
Retention (`prune_checkpoints`) runs only after the new file is renamed into place and its directory synced, and
removes whole files, oldest first, so a crash at any point leaves every kept checkpoint complete.

Fine-tuning starts from generator weights in any layout the project loads (`read_generator_weights`): a published
BF16 file or safetensors shard folder (`longlive.model.checkpoint`), a packed NVFP4 file (`longlive.quant`,
dequantised: training updates dense weights), or one of these training checkpoints (its weights, or its EMA; read
by `longlive.infer.training_weights`, as generation reads them).
"""

from __future__ import annotations

import os
import random
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from longlive.filecheck import TRAINING, load_torch
from longlive.infer.training_weights import (
    NUMPY_GLOBALS,
    RELEASE_EMA_KEY,
    has_ema,
    is_training_checkpoint,
    read_checkpoint,
    training_state,
)
from longlive.model.checkpoint import NVFP4_FORMAT, check_state_dict, read_generator_file
from longlive.output import write_error
from longlive.quant.nvfp4 import dequantize_nvfp4
from longlive.quant.nvfp4_checkpoint import load_nvfp4_generator

CKPT_DIR = "checkpoints"
_NAME = re.compile(r"^step_(\d{8})\.pt$")
TMP_PREFIX = ".tmp_step_"


def checkpoint_dir(out_dir: str | os.PathLike) -> Path:
    return Path(out_dir) / CKPT_DIR


def checkpoint_path(out_dir: str | os.PathLike, step: int) -> Path:
    return checkpoint_dir(out_dir) / f"step_{step:08d}.pt"


def capture_rng() -> dict[str, Any]:
    """Every RNG a training step could touch (the trainer's own draws are stateless, but user code may not be)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    state["numpy"] = np.random.get_state()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuple(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        np.random.set_state(state["numpy"])


def _as_tuple(x: Any) -> Any:
    """random.setstate needs tuples all the way down (a round trip may have turned them into lists)."""
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write `state` (see module docstring) to `path` atomically: temp file in the same directory → fsync → rename.

    The temp file lives beside the target so the rename never crosses file systems (which would not be atomic).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=".pt", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):  # a full disk: name the file, the previous checkpoints are intact
            raise write_error(exc, path) from exc
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(d: Path) -> None:
    """Make the rename itself durable (POSIX); harmless where directories cannot be opened."""
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def list_checkpoints(out_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """(step, path) of every complete checkpoint, ascending by step; temp files are never listed."""
    d = checkpoint_dir(out_dir)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint's state after checking the file (`longlive.filecheck`); weights only, NumPy's RNG state being the
    one non-tensor global allowed (no arbitrary unpickling), not memory-mapped (resume reads every tensor)."""
    state = load_torch(path, TRAINING, mmap=False, map_location=map_location, safe_globals=NUMPY_GLOBALS)
    if not isinstance(state, dict) or "step" not in state:
        raise ValueError(f"{path}: not a training checkpoint (no step in it): expected {TRAINING.description}")
    return state


def load_latest(out_dir: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
    """The newest complete checkpoint's state, or None. Removes stale temp files left by a crash during a save."""
    d = checkpoint_dir(out_dir)
    if d.is_dir():
        for p in d.glob(f"{TMP_PREFIX}*"):
            p.unlink(missing_ok=True)
    ckpts = list_checkpoints(out_dir)
    return load_checkpoint(ckpts[-1][1], map_location) if ckpts else None


def prune_checkpoints(out_dir: str | os.PathLike, keep: int) -> list[Path]:
    """Keep only the newest `keep` checkpoints (keep ≤ 0 keeps all); returns the removed paths.

    Call it after `save_checkpoint` returned: the newest file is then complete and durable, and it is never removed.
    """
    if keep <= 0:
        return []
    gone = [p for _, p in list_checkpoints(out_dir)[:-keep]]
    for p in gone:
        p.unlink(missing_ok=True)
    if gone:
        _fsync_dir(checkpoint_dir(out_dir))
    return gone


# -- initial generator weights for fine-tuning ---------------------------------------------------------------------


def training_checkpoint_file(path: str | os.PathLike) -> Path | None:
    """The training checkpoint `path` names (a `step_*.pt` file, a run directory or its `checkpoints/` folder, whose
    newest checkpoint is taken), or None when `path` is a generator file or shard folder instead."""
    path = Path(path)
    if path.is_file():
        return path if _NAME.match(path.name) else None
    if not path.is_dir():
        return None
    run = path.parent if path.name == CKPT_DIR else path
    ckpts = list_checkpoints(run)
    if ckpts:
        return ckpts[-1][1]
    if (run / CKPT_DIR).is_dir():
        raise FileNotFoundError(f"{run / CKPT_DIR} holds no step_*.pt checkpoint to start from")
    return None


def read_generator_weights(path: str | os.PathLike, *, ema: bool = False,
                           shapes_only: bool = False) -> tuple[dict[str, torch.Tensor], str]:
    """Generator weights from any layout the project loads → (state dict under the model's names, what was read).

    Training checkpoints (a longlive run or step_*.pt; the release's `generator_ema`) are read by the same reader
    generation uses (`longlive.infer.training_weights`). ema: their EMA weights. shapes_only: for a check, packed NVFP4
    weights become meta tensors of their shape instead of being dequantised.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"--checkpoint {path} does not exist (give a model_bf16.pt-style file, a model_4o6.pt "
                                "NVFP4 file, a folder of *.safetensors shards, or a longlive train run / step_*.pt)")
    target = training_checkpoint_file(path) or path
    obj = read_checkpoint(target)  # memory-mapped; {} for a shard folder or a safetensors file
    if is_training_checkpoint(obj) or (ema and has_ema(obj)):
        sd, source = training_state(obj, ema=ema)
        return sd, f"{source} from {target}"
    if ema:
        raise ValueError(f"--checkpoint-ema: {path} holds no EMA weights (neither a longlive training checkpoint nor "
                         f"the release's {RELEASE_EMA_KEY}); drop --checkpoint-ema")
    if obj.get("checkpoint_format") == NVFP4_FORMAT:
        quantised, other, meta = load_nvfp4_generator(path)
        sd = dict(other)
        for name, q in quantised.items():
            sd[f"{name}.weight"] = (torch.empty(q.shape, device="meta") if shapes_only
                                    else dequantize_nvfp4(q, torch.float32))
        return sd, (f"NVFP4 generator {path} (rule {meta.get('rule')}): {len(quantised)} packed Linears dequantised "
                    "to float32 for training")
    sd, meta = read_generator_file(path)
    kind = "safetensors shards" if path.is_dir() else f"generator file ({meta.get('checkpoint_format', 'no format')})"
    return sd, f"{kind} {path}"


def check_generator_weights(model: nn.Module, path: str | os.PathLike, *, ema: bool = False) -> str:
    """Read and strictly check `path` against `model` (a meta-device model is enough); raises CheckpointError naming
    the first missing, unexpected or wrongly shaped key. Returns what was read."""
    sd, what = read_generator_weights(path, ema=ema, shapes_only=True)
    check_state_dict(model, sd)
    return what


def load_generator_weights(model: nn.Module, path: str | os.PathLike, *, ema: bool = False) -> str:
    """Strictly load generator weights from any supported layout into `model` (cast to its dtype); returns what was
    read (for the log)."""
    sd, what = read_generator_weights(path, ema=ema)
    check_state_dict(model, sd)
    model.load_state_dict(sd, strict=True)
    return what
