"""Benchmark: denoise N chunks of a preset with random weights; per-chunk ms, denoise FPS, peak memory.

Speed does not depend on the weights' values, so random weights measure the real cost at the real shapes.
Timing definition: `denoise_fps` of spec 05 (device events around each chunk: all steps, the clean
re-run and KV writes; text encoding, load and VAE excluded; chunks before the window is full dropped).

    python -m longlive.bench.chunks --preset wan2.2-ti2v-5b --chunks 6 --steps 4 --out result.json
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import torch

from longlive.infer.pipeline import GenerationSpec, generate
from longlive.infer.video import DTYPES
from longlive.measure.manifest import manifest
from longlive.measure.memory import peaks, reset_peaks
from longlive.model.attention import resolve_backend
from longlive.model.dit import build_model
from longlive.model.presets import get_preset


def run(preset: str, chunks: int, steps_list: list[int], dtype: str, attn: str, device: str, seed: int,
        warmup: int | None, profile: Path | None = None) -> dict:
    cfg = get_preset(preset)
    dev = torch.device(device)
    t0 = time.perf_counter()
    model = build_model(cfg, device=dev, dtype=DTYPES[dtype], seed=seed).eval().requires_grad_(False)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    load_s = time.perf_counter() - t0
    model.attn_backend = resolve_backend(attn, dev)
    weight_gb = sum(p.numel() * p.element_size() for p in model.parameters()) / 1e9
    g = torch.Generator().manual_seed(seed)
    embeds = [torch.randn(1, cfg.text_len, cfg.text_dim, generator=g).to(dev, DTYPES[dtype])]
    slots = cfg.window_frames // cfg.chunk_frames
    warmup = slots - 1 if warmup is None else warmup  # from chunk `slots-1` on the window is full
    rows = []
    for steps in steps_list:
        reset_peaks(dev)
        spec = GenerationSpec(prompts=["random"], frames=chunks * cfg.chunk_frames, steps=steps, seed=seed,
                              warmup_chunks=warmup, kv_storage=dtype)

        def progress(c, n, ms, steps=steps):
            print(f"  [{steps}-step] chunk {c + 1}/{n}: {ms:8.1f} ms", flush=True)

        res = generate(model, spec, embeds, on_progress=progress)
        row = {
            "preset": preset, "precision": dtype, "steps": steps, "chunks": chunks, "attn_backend": model.attn_backend,
            "kv_quant": "none", "sp": 1, "decode": "none", "resolution": f"{cfg.height}x{cfg.width}",
            "chunk_frames": cfg.chunk_frames, "window_frames": cfg.window_frames, "sink_frames": cfg.sink_frames,
            "tokens_per_chunk": cfg.tokens_per_frame * cfg.chunk_frames,
            "timing_definition": res.stats.timing_definition,
            "chunk_ms": [round(x, 2) for x in res.stats.chunk_ms],
            **res.stats.summary(), **peaks(dev), "weights_gb": weight_gb, "load_s": load_s,
            "kv_cache_gb": res.kv_cache_bytes / 1e9,
        }
        rows.append(row)
        print(f"{preset} {dtype} {steps}-step: denoise_fps {row['denoise_fps']:.2f} "
              f"(chunks {warmup}..{chunks - 1}), median chunk {row['chunk_ms_median']:.1f} ms, "
              f"first chunk {row['first_chunk_latency_s'] * 1e3:.1f} ms, peak allocated "
              f"{row['peak_allocated_gb'] or 0:.2f} GB, reserved {row['peak_reserved_gb'] or 0:.2f} GB", flush=True)
    if profile is not None:
        profile_chunks(model, cfg, embeds, steps_list[0], seed, dtype, profile)
    config = {"preset": preset, "chunks": chunks, "steps": steps_list, "dtype": dtype, "attn": attn,
              "device": device, "warmup_chunks": warmup, "weights": "random", "model_config": asdict(cfg)}
    return {"rows": rows, "manifest": manifest(config, seed)}


def profile_chunks(model, cfg, embeds, steps: int, seed: int, dtype: str | None, path: Path, *, sp=None,
                   record: bool = True, title: str | None = None) -> None:
    """Profile a run long enough to fill the window plus one steady chunk (KV cache stored as `dtype`); write the
    device time by kind of kernel and the top kernels. Under SP every rank must call it (the collectives run);
    only those with `record` profile and write."""
    from torch.profiler import ProfilerActivity, profile

    slots = cfg.window_frames // cfg.chunk_frames
    spec = GenerationSpec(prompts=["random"], frames=(slots + 1) * cfg.chunk_frames, steps=steps, seed=seed,
                          warmup_chunks=slots, kv_storage=dtype)
    if not record:
        generate(model, spec, embeds, sp=sp)
        return
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=acts) as prof:
        generate(model, spec, embeds, sp=sp)
    write_profile(prof, path, title or f"{cfg.name}, KV cache {dtype}, {steps}-step, {slots + 1} chunks (window "
                                       f"fills at chunk {slots - 1})")


def write_profile(prof, path: Path, title: str) -> None:
    """The device time by kind of kernel, then the top kernels, to `path` (and the terminal)."""
    sort = "cuda_time_total" if torch.cuda.is_available() else "cpu_time_total"
    events = prof.key_averages()
    table = events.table(sort_by=sort, row_limit=30, max_name_column_width=70)
    shares = device_time_breakdown(device_kernels(events))
    total = sum(shares.values()) or 1.0
    summary = "\n".join(f"{k:<28} {v / 1e3:10.1f} ms {v / total:7.1%}" for k, v in shares.items())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{title}\ndevice time by kind of kernel (self time, all chunks):\n{summary}\n\n{table}")
    print(summary + "\n" + table[:6000])


KERNEL_KINDS = (  # first match wins; names as the CUDA profiler reports them
    ("communication (NCCL)", ("nccl",)),
    ("attention", ("fmha", "flash", "cudnn", "attention", "sdpa")),
    ("GEMM", ("triton_tem",)),  # inductor's Triton GEMM templates
    # every other inductor kernel, also those named after a GEMM whose output they consume (…fused__scaled_mm…)
    ("fused pointwise (inductor)", ("triton_",)),
    ("GEMM", ("nvjet", "gemm", "cutlass", "xmma", "sm90_", "scaled_mm", "wgmma")),
    ("copies", ("copy", "memcpy", "memset", "cat")),
)


def device_kernels(events) -> list[tuple[str, float]]:
    """(name, self device µs) of the profiler's device-side events only: the CPU operators that launched them
    (aten::addmm, the Triton launchers) and GPU user annotations (nccl:all_to_all) report the same time again, so
    they are left out, as the profiler's own 'Self CUDA time total' leaves them out."""
    from torch.autograd import DeviceType

    return [(e.key, e.self_device_time_total) for e in events
            if e.device_type != DeviceType.CPU and not getattr(e, "is_user_annotation", False)]


def device_time_breakdown(events) -> dict[str, float]:
    """(kernel name, self device µs) pairs (`device_kernels`) → µs per kind of kernel (KERNEL_KINDS, else 'other'),
    largest first."""
    out: dict[str, float] = {}
    for name, us in events:
        if not us:
            continue
        low = name.lower()
        kind = next((k for k, keys in KERNEL_KINDS if any(x in low for x in keys)), "other")
        out[kind] = out.get(kind, 0.0) + float(us)
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="wan2.2-ti2v-5b")
    ap.add_argument("--chunks", type=int, default=6)
    ap.add_argument("--steps", type=int, nargs="+", default=[4])
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    ap.add_argument("--attn", default="auto")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--warmup", type=int, default=None,
                    help="chunks dropped from denoise_fps (default: until the window fills)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--profile", type=Path, default=None, help="also profile a short run; kernel table to this file")
    a = ap.parse_args(argv)
    result = run(a.preset, a.chunks, a.steps, a.dtype, a.attn, a.device, a.seed, a.warmup, a.profile)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(result, indent=2, default=str))
        print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
