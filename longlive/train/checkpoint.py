"""Resumable, crash-safe training checkpoints (spec 04, Stage 1).

A checkpoint is ONE file `out_dir/checkpoints/step_XXXXXXXX.pt` holding the model and EMA state, the optimiser
state, the step, the RNG states, the data iterator's position and the config. It is written to a hidden temp file
in the same directory, fsynced, then `os.replace`d into place, so a crash mid-save leaves at most a stray temp file
(ignored and cleaned up by `load_latest`) and never a truncated `step_*.pt`. Loading picks the highest step.
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
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
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
    # weights_only=False: the state holds RNG states (numpy's is an ndarray tuple) and a config dict, written by us.
    return torch.load(path, map_location=map_location, weights_only=False)


def load_latest(out_dir: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
    """The newest complete checkpoint's state, or None. Removes stale temp files left by a crash during a save."""
    d = checkpoint_dir(out_dir)
    if d.is_dir():
        for p in d.glob(f"{TMP_PREFIX}*"):
            p.unlink(missing_ok=True)
    ckpts = list_checkpoints(out_dir)
    return load_checkpoint(ckpts[-1][1], map_location) if ckpts else None


def prune_checkpoints(out_dir: str | os.PathLike, keep: int) -> None:
    """Keep only the newest `keep` checkpoints (keep ≤ 0 keeps all)."""
    if keep <= 0:
        return
    for _, p in list_checkpoints(out_dir)[:-keep]:
        p.unlink(missing_ok=True)
