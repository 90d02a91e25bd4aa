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

KEY_PACKAGES = ("longlive", "torch", "numpy", "transformers", "triton", "safetensors", "nvidia-ml-py",
                "transformer_engine", "hydra-core", "omegaconf", "pandas", "matplotlib")
"""Distributions whose versions every manifest records (those installed): the model stack, the config system
(a Hydra/OmegaConf change alters composition), and the report stack (pandas, matplotlib)."""

COMMIT_ENV = "LONGLIVE_GIT_COMMIT"


def git_state(repo: Path | None = None) -> tuple[str, bool | None]:
    """(commit, dirty). LONGLIVE_GIT_COMMIT wins when set (a copied tree's .git may be stale: seen on the GPU
    machine, whose copy reported an older HEAD); its dirty flag is then whether it ends in '+dirty'. Else HEAD of the
    checkout and whether `git status --porcelain` lists anything; ("unknown", None) outside a checkout (an installed
    package whose folder is not a repository's root)."""
    if os.environ.get(COMMIT_ENV):
        value = os.environ[COMMIT_ENV]
        return value, value.endswith("+dirty")
    repo = repo or Path(__file__).resolve().parents[2]
    try:
        top, head = subprocess.run(["git", "rev-parse", "--show-toplevel", "HEAD"], cwd=repo, capture_output=True,
                                   text=True, check=True).stdout.split()
        status = subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True,
                                check=True).stdout.strip()
    except (OSError, ValueError, subprocess.CalledProcessError):
        return "unknown", None
    if Path(top).resolve() != Path(repo).resolve():  # an installed copy inside some other repository's tree
        return "unknown", None
    dirty = bool(status)
    return head + ("+dirty" if dirty else ""), dirty


def git_commit(repo: Path | None = None) -> str:
    """The commit of `git_state` ('+dirty' appended when the checkout has changes)."""
    return git_state(repo)[0]


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


def slurm_job_id() -> str | None:
    """The Slurm job running this process (None off Slurm), as squeue, scancel and submitit's log names spell it:
    ARRAY_TASK for a task of a job array (a sweep's jobs), whose bare SLURM_JOB_ID scancel rejects."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID")


def manifest(config: dict[str, Any] | None = None, seed: int | None = None) -> dict[str, Any]:
    """Everything needed to trace a number back to the machine and the config behind it."""
    commit, dirty = git_state()
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "slurm_job_id": slurm_job_id(),
        "git_commit": commit,
        "git_dirty": dirty,
        "packages": _versions(),
        **_gpus(),
        "seed": seed,
        "config": config or {},
    }


def version_line() -> str:
    """`longlive --version`: the package version and the checkout it runs from, so a bug report names both."""
    commit, dirty = git_state()
    version = _versions().get("longlive", "unknown")
    if dirty is None and commit == "unknown":
        return f"longlive {version} (not a git checkout)"
    return f"longlive {version} (commit {commit.removesuffix('+dirty')}{', uncommitted changes' if dirty else ''})"
