"""Table 1 on Hopper: seconds per AR teacher-forcing iteration under each SP layout and training precision.

    torchrun --nproc_per_node=4 -m longlive.bench.train_ladder --preset wan2.2-ti2v-5b --frames 96 \
        --config bf16-balanced fp8-balanced --out reports/train-5b/h200

Each config runs in the same processes one after another (the model is rebuilt from the same seed for each):
the release's Stage-1 step (FSDP2 over the world with BF16 params and FP32 reduce, activation checkpointing on
every block, AdamW, grad clip, EMA) on random latents of `--frames` latent frames (the step's cost does not depend
on the data) with per-GPU batch 1.

Timing definition (`timing = "train_iter_s"`): wall time of one optimiser iteration — data, forward, backward,
gradient reduce-scatter, clip, AdamW, EMA — between two `cuda.synchronize` + world barriers, median over the
iterations after the first (a warm-up: it compiles FlexAttention). MFU = useful FLOPs of the iteration (3 × forward,
recompute not counted, masked attention at its density; every SP group's sample) / (iter_s · world · peak), peak =
dense BF16 peak of the GPU (`longlive.train.measure.PEAK_BF16_TFLOPS`: 989.4 TFLOP/s on H100/H200 SXM) for every config
(the FP8 rows too, so MFU compares like with like; none on CPU).
Memory: torch peak allocated / reserved per rank and NVML device use. One JSON per config, rank 0 writes.
On CPU (FSDP2 over gloo, dense mask) it runs the same plumbing on the tiny preset — a check, not a measurement.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch
import torch.distributed as dist

from longlive.measure.manifest import manifest

# name → (training precision recipe, sp layout, use SP over the whole world)
CONFIGS = {
    "bf16-nosp": ("bf16", "none", False),
    "bf16-traditional": ("bf16", "traditional", True),
    "bf16-balanced": ("bf16", "balanced", True),
    "fp8-balanced": ("fp8", "balanced", True),
    "nvfp4-emulated-balanced": ("nvfp4", "balanced", True),
}


def run_config(name: str, args: argparse.Namespace, dims) -> dict:
    from longlive.train.measure import measure_train

    precision, layout, use_sp = CONFIGS[name]
    sp_group = dist.group.WORLD if use_sp else None
    m = measure_train(args.preset, args.frames, precision=precision, layout=layout, iters=args.iters,
                      device=dims.device, out_dir=Path(args.out) / name, seed=args.seed, attn=args.attn,
                      sp_group=sp_group, log=lambda s: print(f"[{name}] {s}", flush=True))
    extra = m.pop("extra")
    all_mem = [None] * dims.world
    dist.all_gather_object(all_mem, {k: m.get(k) for k in ("peak_allocated_gb", "peak_reserved_gb",
                                                          "device_used_gb")})
    return {
        "config": name, "status": "ok", "preset": args.preset, "frames": args.frames, "precision": precision,
        "train_layout": layout, "sp": extra["sp"], "world": dims.world, "samples_per_iter": extra["samples_per_iter"],
        "tokens_per_sample": extra["tokens_per_sample"], "timing": "train_iter_s", "iter_s": m["iter_s"],
        "iter_s_all": extra["iter_s_all"], "warmup": 1, "flops_per_iter": extra["flops_per_iter"],
        "mfu_bf16_peak": m["mfu"], "peak_tflops_assumed": extra["peak_tflops_assumed"], "loss": extra["losses"],
        "fsdp": extra["fsdp"],
        "activation_checkpointing": True, "attn": args.attn,
        "peak_allocated_gb_per_rank": [r["peak_allocated_gb"] for r in all_mem],
        "peak_reserved_gb_per_rank": [r["peak_reserved_gb"] for r in all_mem],
        "device_used_gb_per_rank": [r["device_used_gb"] for r in all_mem],
    }


def main(argv: list[str] | None = None) -> int:
    from longlive.parallel.groups import init_parallel, shutdown_parallel
    from longlive.quant.linear import BackendUnavailable
    from longlive.train.measure import release_memory

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="wan2.2-ti2v-5b")
    p.add_argument("--frames", type=int, default=96, help="latent frames per sample (96 = 16 s)")
    p.add_argument("--config", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--iters", type=int, default=2)
    p.add_argument("--attn", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    if args.iters < 1:
        raise ValueError("--iters must be ≥ 1")
    logging.basicConfig(level=logging.WARNING)
    dims = init_parallel(1)  # the per-config SP group is the whole world; dp groups are built per config
    if dims.world < 2:
        raise SystemExit("launch with torchrun --nproc_per_node=N (N ≥ 2): FSDP and SP need several ranks")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in args.config:
        try:
            row = run_config(name, args, dims)
        except BackendUnavailable as exc:  # raised on every rank before any collective: safe to go on
            row = {"config": name, "preset": args.preset, "frames": args.frames, "status": "unavailable",
                   "error": str(exc), "timing": "train_iter_s"}
        except torch.OutOfMemoryError as exc:
            row = {"config": name, "preset": args.preset, "frames": args.frames, "status": "oom",
                   "error": str(exc).splitlines()[0], "timing": "train_iter_s"}
            release_memory()
        row["manifest"] = manifest(config=vars(args), seed=args.seed)
        if dims.is_main:
            (out / f"{name}.json").write_text(json.dumps(row, indent=2, default=str) + "\n")
            print(json.dumps({k: row.get(k) for k in ("config", "status", "iter_s", "mfu_bf16_peak",
                                                       "peak_allocated_gb_per_rank")}, default=str), flush=True)
    shutdown_parallel()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
