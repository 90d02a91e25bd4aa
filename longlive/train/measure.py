"""Measured training iterations, shared by the Table 1/2 benches and the runner's `train` / `dmd` workloads.

`measure_train`: the release's Stage-1 step (FSDP2 over the world where there is more than one rank, activation
checkpointing, AdamW, clip, EMA) on random latents, timed per iteration between device syncs and barriers.
`measure_dmd`: Stage-2 DMD iterations (LoRA generator and critic, frozen teacher; frozen networks optionally in
packed NVFP4/FP8), with peak memory over the iterations and what stays resident after construction.
Both return flat metric dicts (result-row columns) plus per-iteration lists; they write nothing themselves.
"""

from __future__ import annotations

import dataclasses
import gc
import resource
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from longlive.measure.memory import peaks, reset_peaks
from longlive.model.dit import build_model
from longlive.model.presets import get_preset
from longlive.train.dmd import DMDConfig, DMDTrainer
from longlive.train.trainer import ARTrainer, RandomLatentData, TrainConfig

PEAK_BF16_TFLOPS = {"H100": 989.4, "H200": 989.4, "GB200": 2450.0, "B200": 2250.0}
"""Dense BF16 tensor-core peaks per GPU (vendor datasheets, no sparsity): MFU denominators."""

TRAIN_TIMING = ("iter_s: wall time of one optimiser iteration (data, forward, backward, gradient reduce, clip, "
                "AdamW, EMA) between device synchronise + world barrier, median over the iterations after the "
                "first (warm-up: compilation); mfu: useful FLOPs (3 x forward, recompute not counted, masked "
                "attention at its density, every SP group's sample) / (iter_s x ranks x dense BF16 peak)")
DMD_TIMING = ("iter_s: wall time of one DMD iteration between device synchronise calls, median over all "
              "iterations (iteration 0 updates generator and critic, later ones the critic; 4 in 5 release "
              "iterations are critic-only); peak_allocated_gb: torch peak over the iterations, construction "
              "excluded (resident_gb: allocated after construction)")
DMD_RUNGS = {  # Table 2: which frozen networks hold quantised weights (generator, teacher = real score, critic)
    "none": ("none", "none", "none"),
    "generator": ("nvfp4", "none", "none"),
    "generator+real": ("nvfp4", "nvfp4", "none"),
    "generator+real+critic": ("nvfp4", "nvfp4", "nvfp4"),
}


def peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k.lower() in name.lower()), None)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def release_memory() -> None:
    """Collect garbage and return cached device memory (between measured configurations)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _rss_gb() -> float | None:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # Linux: KiB → GB


def measure_train(preset: str, frames: int, *, precision: str, train_layout: str, iters: int, device: torch.device,
                  out_dir: Path, seed: int = 0, attn: str = "auto", error_recycling: bool = False,
                  sp_group=None, log=print, config: TrainConfig | None = None) -> dict[str, Any]:
    """`iters` timed iterations after one warm-up. Call on every rank; sp_group spans the SP ranks (or None).

    config: the run's optimiser, EMA, accumulation, batch and error-recycling knobs (the `train` workload builds it
    from the run spec); what the measurement fixes (steps, precision, layout, FSDP, AC, no resume, no checkpoints,
    seed, attention, error_recycling) overrides it."""
    mc = get_preset(preset)
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    rank = dist.get_rank() if world > 1 else 0
    sp = dist.get_world_size(sp_group) if (sp_group is not None and world > 1) else 1
    if sp > 1 and frames % (sp * mc.chunk_frames):
        raise ValueError(f"SP training needs frames divisible by sp·chunk = {sp * mc.chunk_frames}; got {frames}")
    if iters < 1:
        raise ValueError("iters must be ≥ 1")
    reset_peaks(device)
    model = build_model(mc, device=device, seed=seed)
    cfg = dataclasses.replace(config or TrainConfig(), train_steps=10**9, precision=precision,
                              train_layout=train_layout if sp > 1 else "none", fsdp=True,
                              activation_checkpointing=True, resume=False, progress=False, ckpt_every=10**9,
                              seed=seed, attn=attn, error_recycling=error_recycling)
    # batches take single-prompt samples (TrainConfig.batch_size)
    data = RandomLatentData(mc, frames, seed=seed, rank=rank // sp, num_prompts=1 if cfg.batch_size > 1 else 2)
    trainer = ARTrainer(model, cfg, data, out_dir, device=device, sp_group=sp_group)
    secs, losses = [], []
    for i in range(1 + iters):
        _sync(device)
        t0 = time.perf_counter()
        m = trainer.train_step()
        _sync(device)
        secs.append(time.perf_counter() - t0)
        losses.append(m["loss"])
        if rank == 0:
            log(f"train iter {i}: {secs[-1]:.3f} s loss {m['loss']:.4f} grad_norm {m['grad_norm']:.3f}")
    mem = peaks(device)
    iter_s = statistics.median(secs[1:])
    groups = world // sp
    per_rank = cfg.batch_size * cfg.grad_accum  # samples per step of one SP group
    flops = trainer.flops_per_step * groups
    peak = peak_tflops(device)
    out = {
        "iter_s": iter_s, "tokens_per_s": trainer.tokens_per_step * groups / iter_s,
        "mfu": flops / iter_s / (world * peak * 1e12) if peak else None,
        "loss_first": losses[0], "loss_last": losses[-1], **mem,
        "extra": {"iter_s_all": secs, "losses": losses, "samples_per_iter": groups * per_rank, "world": world,
                  "sp": sp, "fsdp": trainer.fsdp, "flops_per_iter": flops, "peak_tflops_assumed": peak,
                  "tokens_per_sample": trainer.tokens_per_step // per_rank, "rss_gb": _rss_gb(),
                  "data": "random latents", "batch_size": cfg.batch_size, "grad_accum": cfg.grad_accum},
    }
    del trainer, model
    release_memory()
    return out


def measure_dmd(preset: str, latents: int, *, rung: str | tuple[str, str, str], iters: int, device: torch.device,
                out_dir: Path, seed: int = 0, lora_rank: int = 128, attn: str = "auto",
                dtype: torch.dtype = torch.bfloat16, log=print, dmd: DMDConfig | None = None) -> dict[str, Any]:
    """DMD iterations on one device; `rung` names a Table 2 rung (DMD_RUNGS) or gives the three formats. `dmd` holds
    the run spec's DMD knobs (None: the release's defaults at `lora_rank`, alpha = rank); the rollout length
    (`latents`), the frozen formats, activation checkpointing, attention and seed are set here."""
    mc = get_preset(preset)
    if latents % mc.chunk_frames:
        raise ValueError(f"DMD latents must be whole blocks of {mc.chunk_frames}; got {latents}")
    if isinstance(rung, str):
        if rung not in DMD_RUNGS:
            raise ValueError(f"unknown DMD rung {rung!r}; choose one of {', '.join(DMD_RUNGS)}")
        rung = DMD_RUNGS[rung]
    gq, tq, cq = rung
    knobs = dmd if dmd is not None else DMDConfig(lora_rank=lora_rank, lora_alpha=float(lora_rank))
    cfg = dataclasses.replace(knobs, frames=latents, quant_generator=gq, quant_teacher=tq, quant_critic=cq,
                              activation_checkpointing=True, attn=attn, seed=seed)
    g = torch.Generator().manual_seed(seed)

    def prompts():
        while True:
            yield torch.randn(1, mc.text_len, mc.text_dim, generator=g)

    base = build_model(mc, device=device, dtype=dtype, seed=seed)
    trainer = DMDTrainer(base, cfg, prompts(), out_dir, negative_embed=torch.zeros(1, mc.text_len, mc.text_dim))
    del base
    release_memory()
    resident = torch.cuda.memory_allocated(device) / 1e9 if device.type == "cuda" else None
    reset_peaks(device)
    secs, steps = [], []
    for i in range(iters):
        _sync(device)
        t0 = time.perf_counter()
        step = trainer.step()
        _sync(device)
        secs.append(time.perf_counter() - t0)
        steps.append({k: step.get(k) for k in ("generator_updated", "generator_loss", "critic_loss", "exit_step")})
        log(f"dmd iter {i}: {secs[-1]:.3f} s {steps[-1]}")
    mem = peaks(device)
    gen = [s["generator_loss"] for s in steps if s["generator_loss"] is not None]
    out = {"iter_s": statistics.median(secs), "resident_gb": resident, **mem,
           "generator_loss": gen[-1] if gen else None, "critic_loss": steps[-1]["critic_loss"],
           "extra": {"iter_s_all": secs, "steps": steps, "frozen_formats": {"generator": gq, "teacher": tq,
                                                                             "critic": cq},
                     "lora_rank": cfg.lora_rank, "rss_gb": _rss_gb()}}
    del trainer
    release_memory()
    return out
