"""The environment manifest carried by every result row (spec 05): machine, versions, commit, config, seed."""

from __future__ import annotations

import datetime as _dt
import importlib.metadata as md
import os
import platform
import socket
import subprocess
from pathlib import Path
from typing import Any

import pynvml
import torch

KEY_PACKAGES = ("torch", "numpy", "transformers", "triton", "safetensors", "nvidia-ml-py", "transformer_engine")


def git_commit(repo: Path | None = None) -> str:
    """LONGLIVE_GIT_COMMIT when set (a copied tree's .git may be stale: seen on the GPU machine, whose copy reported
    an older HEAD); else HEAD of the checkout, with '+dirty' if it has changes."""
    if os.environ.get("LONGLIVE_GIT_COMMIT"):
        return os.environ["LONGLIVE_GIT_COMMIT"]
    repo = repo or Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, check=True).stdout.strip()
        return head.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _versions() -> dict[str, str]:
    out = {}
    for name in KEY_PACKAGES:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            continue
    return out


def _gpus() -> dict[str, Any]:
    if not torch.cuda.is_available():
        return {"gpu": "cpu", "gpu_count": 0}
    props = torch.cuda.get_device_properties(0)
    info: dict[str, Any] = {
        "gpu": props.name,
        "gpu_count": torch.cuda.device_count(),
        "compute_capability": f"{props.major}.{props.minor}",
        "gpu_memory_gb": round(props.total_memory / 1e9, 2),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
    }
    try:
        pynvml.nvmlInit()
        info["driver"] = pynvml.nvmlSystemGetDriverVersion()
        pynvml.nvmlShutdown()
    except Exception as exc:  # NVML absent or unusable: say so rather than guess
        info["driver"] = f"unavailable ({type(exc).__name__})"
    return info


def manifest(config: dict[str, Any] | None = None, seed: int | None = None) -> dict[str, Any]:
    """Everything needed to trace a number back to the machine and the config behind it."""
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "git_commit": git_commit(),
        "packages": _versions(),
        **_gpus(),
        "seed": seed,
        "config": config or {},
    }
