"""Workloads registered by name: what one cell of a sweep does.

The runner only calls `check(spec)` (cheap, in the sweep's process: why the cell cannot run here, or None) and
`run(spec, ctx)` (in the cell's own process: the row's metric columns), `spec.repeats` times unless the workload
says `repeats_inside = True` and repeats its timed part itself (build once, time n times); it knows nothing else
about them (lm-evaluation-harness's habit). Each workload lives in its own module, imported only when a cell names
it, so a cell's process loads what its workload needs and no more. A workload of your own registers with
`register_workload("name", "package.module:Class")`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from longlive.experiments.spec import RunSpec


@dataclass
class CellContext:
    out: Path                      # this cell's artifact folder
    reference_dir: Path | None     # the fidelity reference cell's artifact folder, when it has finished

    def for_repeat(self, k: int) -> CellContext:
        """The context of run k (0-based) of a repeated cell: the first writes the cell's folder (its files are the
        row's artifacts), later runs `repeat<k+1>/` inside it, so no run overwrites another's files."""
        return self if k == 0 else CellContext(out=self.out / f"repeat{k + 1}", reference_dir=self.reference_dir)


class Workload(Protocol):
    name: str
    repeats_inside: bool  # optional (False when absent): run() handles spec.repeats itself and aggregates

    def check(self, spec: RunSpec) -> str | None: ...

    def run(self, spec: RunSpec, ctx: CellContext) -> dict[str, Any]: ...


REGISTRY: dict[str, str] = {
    "infer": "longlive.workloads.infer:InferWorkload",
    "quality": "longlive.workloads.infer:QualityWorkload",
    "train": "longlive.workloads.train:TrainWorkload",
    "dmd": "longlive.workloads.train:DMDWorkload",
    "vae_decode": "longlive.workloads.vae_decode:VAEDecodeWorkload",
    "quant_kernels": "longlive.workloads.quant_kernels:QuantKernelsWorkload",
    "tiny_default": "longlive.workloads.tiny:TinyDefaultWorkload",
    "attn_error": "longlive.workloads.attn_error:AttnErrorWorkload",
}
"""name -> "module:Class"; the module is imported on first use."""


_LOADED: dict[str, Workload] = {}


def register_workload(name: str, target: str) -> None:
    """Register (or replace) a workload: `target` is "module:Class" with a no-argument constructor."""
    if ":" not in target:
        raise ValueError(f"workload target {target!r} must be 'module:Class'")
    REGISTRY[name] = target
    _LOADED.pop(name, None)


def workload_names() -> list[str]:
    return list(REGISTRY)


def get_workload(name: str) -> Workload:
    if name not in REGISTRY:
        raise ValueError(f"unknown workload {name!r}; registered: {', '.join(REGISTRY)}")
    if name not in _LOADED:
        module, cls = REGISTRY[name].split(":")
        wl = getattr(importlib.import_module(module), cls)()
        wl.name = name
        _LOADED[name] = wl
    return _LOADED[name]
