"""The Hydra config tree (model, precision, kv, decode, hardware, workload groups and the experiment presets), shipped
as package data so that an installed wheel runs `longlive sweep +experiment=smoke` as a checkout does.

Precisions are named configs (`precision/<name>.yaml`); `request_fields` maps one onto the fields of a video request,
so `generate --precision NAME`, `fidelity --precision NAME` and a sweep's `precision=NAME` mean exactly the same.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from longlive.experiments.spec import RunSpec, check_spec, from_config  # registers the schema

__all__ = ["EXPERIMENTS_DIR", "RunSpec", "check_spec", "from_config", "precision_config", "precisions",
           "request_fields"]

EXPERIMENTS_DIR = Path(__file__).resolve().parent
PRECISION_DIR = EXPERIMENTS_DIR / "precision"


def precisions() -> list[str]:
    """The named precisions (`precision/*.yaml`)."""
    return sorted(p.stem for p in PRECISION_DIR.glob("*.yaml"))


def precision_config(name: str) -> dict[str, Any]:
    """The precision config `name` as a plain dict; an unknown name is a ValueError listing the known ones."""
    path = PRECISION_DIR / f"{name}.yaml"
    if not path.exists():
        raise ValueError(f"unknown precision {name!r}; known: {', '.join(precisions())}")
    return OmegaConf.to_container(OmegaConf.load(path))


def request_fields(precision: dict[str, Any]) -> dict[str, Any]:
    """Video-request fields of a precision config, named as in the config: dtype, linear_quant, linear_backend,
    act_quant and, where the config names them, weight_rule and act_scale (else the request's default)."""
    out = {"precision": precision["name"], "dtype": precision["dtype"],
           "linear_quant": precision.get("linear_quant", "none"),
           "linear_backend": precision.get("linear_backend") or "emulated",
           "act_quant": precision.get("act_quant", True)}
    if precision.get("weight_rule"):
        out["weight_rule"] = precision["weight_rule"]
    if precision.get("act_scale"):
        out["act_scale"] = precision["act_scale"]
    return out
