"""The `train` and `dmd` workloads: timed Stage-1 teacher-forcing iterations (Table 1) and Stage-2 DMD iterations
with LoRA as the frozen networks move to NVFP4 (Table 2). Random latents: the cost does not depend on the data."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from longlive.experiments.spec import RunSpec
from longlive.model.presets import get_preset
from longlive.parallel.groups import init_parallel
from longlive.quant.linear import BackendUnavailable
from longlive.quant.training import check_training_recipe, get_training_recipe
from longlive.train.dmd import DMD_SPEC_FIELDS, DMDConfig
from longlive.train.error_recycling import ErrorRecyclingConfig
from longlive.train.measure import DMD_TIMING, TRAIN_TIMING, measure_dmd, measure_train
from longlive.train.trainer import TrainConfig
from longlive.workloads import CellContext
from longlive.workloads.checks import hardware_reason

TRAIN_RECIPES = ("fp32", "bf16", "fp8", "fp8-emulated", "nvfp4")
"""Precisions that name a training recipe (longlive.quant.training); nvfp4 is emulated below sm100."""
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def train_config(spec: RunSpec) -> TrainConfig:
    """The run spec's training knobs as a TrainConfig (same names); the measurement fixes the rest."""
    return TrainConfig(lr=spec.lr, batch_size=spec.batch_size, grad_accum=spec.grad_accum,
                       weight_decay=spec.weight_decay,
                       betas=tuple(spec.betas), ema_decay=spec.ema_decay, ema_start=spec.ema_start,
                       keep_checkpoints=spec.keep_checkpoints, error_recycling=spec.error_recycling, i2v=spec.i2v,
                       tf_window=spec.tf_window,
                       error_recycling_config=ErrorRecyclingConfig(**dataclasses.asdict(spec.error_recycling_config)))


def cell_device(spec: RunSpec) -> tuple[torch.device, Any]:
    """(device, sp process group) of this cell's process; joins torchrun's group when sp × dp > 1."""
    if spec.sp * spec.dp > 1:
        dims = init_parallel(spec.sp, device=None if spec.hardware.device == "cuda" else "cpu")
        return dims.device, (dims.sp_group if spec.sp > 1 else None)
    return torch.device("cuda" if spec.hardware.device == "cuda" else "cpu"), None


class TrainWorkload:
    """Stage-1 teacher-forcing iterations."""

    name = "train"

    def check(self, spec: RunSpec) -> str | None:
        reason = hardware_reason(spec)
        if reason:
            return reason
        prec = spec.precision.name
        if prec not in TRAIN_RECIPES:
            return f"precision={prec} has no training recipe here (training recipes: {', '.join(TRAIN_RECIPES)})"
        if prec not in ("fp32", "bf16"):
            try:
                check_training_recipe(get_training_recipe(prec), spec.hardware.device)
            except BackendUnavailable as exc:
                return f"precision={prec}: {exc}"
        if spec.sp > 1 and spec.train_layout not in ("traditional", "balanced"):
            raise ValueError(f"train with sp={spec.sp} needs train_layout=traditional or balanced, "
                             f"got {spec.train_layout!r}")
        if spec.sp > 1 and spec.batch_size > 1:
            raise ValueError(f"train with sp={spec.sp} trains one sample per SP group and pass; batch_size="
                             f"{spec.batch_size} needs sp=1 (use grad_accum for more samples per step)")
        if spec.sp > 1 and spec.i2v:
            return f"i2v is single-process / data-parallel only (the SP losses do not condition latent 0); sp={spec.sp}"
        train_config(spec)  # the TrainConfig checks, before the cell's process starts
        mc = get_preset(spec.model.name)
        if spec.frames % (spec.sp * mc.chunk_frames):
            raise ValueError(f"train frames={spec.frames} must be a multiple of sp·chunk = {spec.sp * mc.chunk_frames}")
        return None

    def run(self, spec: RunSpec, ctx: CellContext) -> dict[str, Any]:
        device, sp_group = cell_device(spec)
        m = measure_train(spec.model.name, spec.frames, precision=spec.precision.name,
                          train_layout=spec.train_layout if spec.sp > 1 else "none", iters=spec.train_iters,
                          device=device, out_dir=ctx.out / "train", seed=spec.seed, attn="auto",
                          error_recycling=spec.error_recycling, sp_group=sp_group, config=train_config(spec))
        extra = m.pop("extra")
        return {**m, "timing_definition": {"iter_s": TRAIN_TIMING}, "metrics_extra": extra}


class DMDWorkload:
    """Stage-2 DMD iterations with LoRA; the dmd_quantised axis puts frozen networks in NVFP4 (Table 2)."""

    name = "dmd"

    def check(self, spec: RunSpec) -> str | None:
        reason = hardware_reason(spec)
        if reason:
            return reason
        if spec.sp != 1 or spec.dp != 1:
            return "DMD runs on one device here (spec 04: no SP in Stage 2; this workload measures one rank)"
        prec = spec.precision
        if prec.linear_quant != "none":
            return (f"precision={prec.name}: DMD quantises its frozen networks through the dmd_quantised axis; "
                    "run it with precision=bf16 or fp32")
        mc = get_preset(spec.model.name)
        if spec.frames % mc.chunk_frames:
            raise ValueError(f"dmd frames={spec.frames} must be whole blocks of {mc.chunk_frames}")
        dmd_config(spec)  # a bad DMD knob fails here, before any cell runs
        return None

    def run(self, spec: RunSpec, ctx: CellContext) -> dict[str, Any]:
        device, _ = cell_device(spec)
        attn = spec.attn
        if attn == "auto" and device.type == "cuda":
            attn = "flash"  # the rollout backpropagates through its attention: flash has the backward we tested
        m = measure_dmd(spec.model.name, spec.frames, rung=spec.dmd_quantised, iters=spec.dmd_iters, device=device,
                        out_dir=ctx.out / "dmd", seed=spec.seed, lora_rank=spec.lora_rank, attn=attn,
                        dtype=DTYPES[spec.precision.dtype], dmd=dmd_config(spec))
        extra = m.pop("extra")
        knobs = {k: getattr(spec, k) for k in DMD_SPEC_FIELDS if k not in ("frames", "steps", "seed")}  # row columns
        return {**m, **knobs, "timing_definition": {"iter_s": DMD_TIMING, "peak_allocated_gb": DMD_TIMING},
                "metrics_extra": extra}


def dmd_config(spec: RunSpec) -> DMDConfig:
    """The run spec's DMD knobs, same names (DMDConfig checks the values: ValueError)."""
    return DMDConfig(**{k: getattr(spec, k) for k in DMD_SPEC_FIELDS})
