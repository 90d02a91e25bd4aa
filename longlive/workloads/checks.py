"""Environment checks shared by workloads: an axis value this machine or build cannot run becomes an explained skip,
never a silent fallback."""

from __future__ import annotations

import torch

from longlive.experiments.spec import RunSpec
from longlive.quant.linear import BackendUnavailable, check_backend


def hardware_reason(spec: RunSpec) -> str | None:
    """Why this machine is not the hardware the cell asks for (or cannot host its GPU count), else None."""
    hw = spec.hardware
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if hw.device == "cuda" and gpus == 0:
        return f"hardware {hw.name} needs a CUDA GPU; this machine has none"
    if hw.gpu_name:
        actual = torch.cuda.get_device_name(0)
        if hw.gpu_name.lower() not in actual.lower():
            return f"hardware {hw.name} asks for a {hw.gpu_name} GPU; this machine has {actual}"
    need = max(spec.sp * spec.dp, hw.min_gpus)
    if spec.decode.vae_device:
        need += 1 if hw.device == "cuda" else 0
    if hw.device == "cuda" and need > gpus:
        return f"needs {need} GPUs (sp={spec.sp}, decode={spec.decode.mode}); this machine has {gpus}"
    if spec.decode.mode == "device" and hw.device != "cuda":
        return "decode=device puts the VAE on a second GPU; this cell runs on the CPU"
    return None


def feature_reason(spec: RunSpec) -> str | None:
    """Precision backends this machine or build lacks (FP8 GEMMs below sm89, TransformerEngine not installed)."""
    prec = spec.precision
    if prec.linear_quant != "none":
        try:
            check_backend(prec.linear_quant, prec.linear_backend, spec.hardware.device)
        except BackendUnavailable as exc:
            return f"precision={prec.name}: {exc}"
    return None


def cell_device(spec: RunSpec) -> torch.device:
    return torch.device("cuda" if spec.hardware.device == "cuda" else "cpu")
