"""Benchmark: the inference ladder at the hardware limit (issue 7) — precision × KV cache × steps × compile.

For each precision the 5B generator is built once with random weights (speed does not depend on their values),
post-training-quantised (fp8: real W8A8 `_scaled_mm`; nvfp4: emulated W4A4 on Hopper), optionally compiled per
block (`longlive.infer.compile`), warmed up over every window length, then timed on `--chunks` chunks.

Timing definition: `denoise_fps` of spec 05 — device events around each chunk (all steps, the clean re-run and
the KV writes; text encoding, load, compile and VAE excluded), chunks before the window is full dropped. The
ceilings are measured in the same process: the dense GEMM rate at the FFN shape (BF16 and FP8 `_scaled_mm`) and
the attention rate at the steady-state window shape (`longlive.measure.roofline`). Every row is appended to
`rows.jsonl` as soon as it is measured, with the manifest.

    python -m longlive.bench.perf --configs bf16:none:4 fp8:none:2 --compile none default --out reports/perf/x
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

import torch

from longlive.infer.compile import COMPILE_MODES, compile_and_warm
from longlive.infer.pipeline import GenerationSpec, generate
from longlive.measure.manifest import manifest
from longlive.measure.memory import peaks, reset_peaks
from longlive.measure.roofline import (
    ceiling_fps,
    chunk_flops,
    frames_per_chunk,
    measure_attention_tflops,
    measure_fp8_gemm_tflops,
    measure_gemm_tflops,
)
from longlive.model.attention import resolve_backend
from longlive.model.dit import build_model
from longlive.model.presets import get_preset

PRECISIONS = ("bf16", "fp8", "nvfp4")
KVS = ("none", "fp8", "nvfp4")
TIMING = ("denoise_fps: latent-to-video frames per second of device time over the chunks after the window is "
          "full (device events around each chunk: all denoising steps, the clean re-run and KV writes); excludes "
          "load, compile warm-up, text encoding and VAE decode (spec 05)")


def parse_config(text: str) -> tuple[str, str, int]:
    """'precision:kv:steps' → a checked triple (clear error before any GPU work)."""
    parts = text.split(":")
    if len(parts) != 3 or parts[0] not in PRECISIONS or parts[1] not in KVS or not parts[2].isdigit():
        raise ValueError(f"config {text!r} must be precision:kv:steps with precision in {PRECISIONS}, kv in {KVS}, "
                         "steps a positive integer (e.g. fp8:nvfp4:2)")
    return parts[0], parts[1], int(parts[2])


def rel_err(latents: torch.Tensor, ref: torch.Tensor | None) -> float | None:
    """‖latents − ref‖ / ‖ref‖ over the whole video (None without a reference of the same shape)."""
    if ref is None or ref.shape != latents.shape:
        return None
    return float((latents.float().cpu() - ref).norm() / ref.norm())


def build(preset: str, precision: str, device: torch.device, seed: int, attn: str, fuse_qkv: bool = False):
    from longlive.model.fuse import fuse_qkv as fuse
    from longlive.quant.linear import LinearQuantConfig
    from longlive.quant.recipes import quantize_model

    cfg = get_preset(preset)
    model = build_model(cfg, device=device, dtype=torch.bfloat16, seed=seed).eval().requires_grad_(False)
    if fuse_qkv:  # before quantising: the fused Linear is the one quantised
        fuse(model)
    if precision == "fp8":
        quantize_model(model, LinearQuantConfig(fmt="fp8", backend="fp8"), device=device)
    elif precision == "nvfp4":
        quantize_model(model, LinearQuantConfig(fmt="nvfp4", backend="emulated"), device=device)
    model.attn_backend = resolve_backend(attn, device)
    return model


def ceilings(cfg, device: torch.device, backend: str) -> dict[str, float]:
    """Kernel rates at the model's shapes, measured now on this GPU."""
    return {"gemm_bf16_tflops": measure_gemm_tflops(cfg, device, torch.bfloat16),
            "gemm_fp8_tflops": measure_fp8_gemm_tflops(cfg, device),
            "attn_tflops": measure_attention_tflops(cfg, device, torch.bfloat16, backend)}


def run(a: argparse.Namespace) -> list[dict]:
    dev = torch.device(a.device)
    configs = [parse_config(c) for c in a.configs]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rows_path = out / "rows.jsonl"
    run_manifest = manifest({k: v for k, v in vars(a).items()}, a.seed)
    (out / "manifest.json").write_text(json.dumps(run_manifest, indent=2, default=str))
    cfg = get_preset(a.preset)
    slots = cfg.window_frames // cfg.chunk_frames
    rates = ceilings(cfg, dev, resolve_backend(a.attn, dev))
    print(f"ceilings: {json.dumps({k: round(v, 1) for k, v in rates.items() if v is not None})}", flush=True)
    g = torch.Generator().manual_seed(a.seed)
    embeds = [torch.randn(1, cfg.text_len, cfg.text_dim, generator=g).to(dev, torch.bfloat16)]  # one prompt, all runs
    rows = []
    eager: dict[tuple, torch.Tensor] = {}  # final latents of the eager runs: the compiled ones must match them
    fp32_ref: dict[int, torch.Tensor] = {}  # --fidelity: eager fp32 latents (KV unquantised) per steps, --chunks
    if a.fidelity:  # the same (bf16-rounded) weights in fp32, eager: the reference
        ref_model = build(a.preset, "bf16", dev, a.seed, a.attn).float()
        ref_model.attn_backend = "efficient" if dev.type == "cuda" else "math"  # cuDNN/flash: no fp32
        for steps in sorted({st for _, _, st in configs}):
            spec = GenerationSpec(prompts=["random"], frames=a.chunks * cfg.chunk_frames, steps=steps, seed=a.seed,
                                  warmup_chunks=slots - 1)
            fp32_ref[steps] = generate(ref_model, spec, [embeds[0].float()]).latents.float().cpu()
        del ref_model
        torch.cuda.empty_cache()
    for precision in dict.fromkeys(p for p, _, _ in configs):
        for mode in a.compile:  # eager first: compiling is in place
            model = build(a.preset, precision, dev, a.seed, a.attn, a.fuse_qkv)
            warm_s = compile_and_warm(model, mode, embeds, seed=a.seed)  # None when eager
            for p, kv, steps in configs:
                if p != precision:
                    continue
                chunks = a.long_chunks if (a.long_chunks and (p, kv) == ("fp8", "nvfp4")) else a.chunks
                spec = GenerationSpec(prompts=["random"], frames=chunks * cfg.chunk_frames, steps=steps, seed=a.seed,
                                      warmup_chunks=slots - 1, kv_quant=kv)
                reset_peaks(dev)
                res = generate(model, spec, embeds)
                s = res.stats.summary()
                key = (p, kv, steps, chunks)
                if mode == "none":
                    eager[key] = res.latents.float().cpu()
                rel = rel_err(res.latents, eager.get(key)) if mode != "none" else None
                rel32 = rel_err(res.latents, fp32_ref.get(steps))
                gemm = rates["gemm_fp8_tflops"] if p == "fp8" else rates["gemm_bf16_tflops"]
                ceil = ceiling_fps(cfg, steps, gemm, rates["attn_tflops"])
                row = {"preset": a.preset, "precision": p, "linear_backend": {"bf16": None, "fp8": "fp8 _scaled_mm",
                                                                               "nvfp4": "emulated"}[p],
                       "kv_quant": kv, "steps": steps, "compile": mode, "fused_qkv": a.fuse_qkv, "chunks": chunks,
                       "attn_backend": model.attn_backend, "resolution": f"{cfg.height}x{cfg.width}",
                       "chunk_frames": cfg.chunk_frames, "window_frames": cfg.window_frames,
                       "sink_frames": cfg.sink_frames, "timing_definition": TIMING, **s, **peaks(dev),
                       "kv_cache_gb": res.kv_cache_bytes / 1e9, "compile_warmup_s": warm_s,
                       "chunk_ms": [round(x, 2) for x in res.stats.chunk_ms], **rates,
                       "latent_rel_err_vs_eager": rel, "latent_rel_err_vs_fp32_eager": rel32, "ceiling_fps": ceil,
                       "fraction_of_ceiling": s["denoise_fps"] / ceil,
                       "achieved_tflops": s["denoise_fps"] * chunk_flops(cfg, steps) / frames_per_chunk(cfg) / 1e12,
                       "model_config": asdict(cfg), "manifest": run_manifest}
                rows.append(row)
                with rows_path.open("a") as f:  # no finished row is lost if a later config fails
                    f.write(json.dumps(row, default=str) + "\n")
                print(f"{p:>5} kv={kv:<5} {steps}-step compile={mode:<8}: {s['denoise_fps']:6.2f} FPS "
                      f"(ceiling {ceil:.1f}, {row['fraction_of_ceiling']:.0%}), median chunk "
                      f"{s['chunk_ms_median']:.0f} ms, peak {row['peak_allocated_gb'] or 0:.1f} GB "
                      f"({chunks} chunks)", flush=True)
            if a.profile and mode == a.compile[-1]:
                from longlive.bench.chunks import profile_chunks

                profile_chunks(model, cfg, embeds, configs[0][2], a.seed, "bf16",
                               out / f"profile_{precision}_{mode}.txt")
            del model
            torch.cuda.empty_cache()
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="wan2.2-ti2v-5b")
    ap.add_argument("--configs", nargs="+", default=["bf16:none:4", "bf16:none:2", "fp8:none:4", "fp8:none:2"])
    ap.add_argument("--compile", nargs="+", choices=COMPILE_MODES, default=["default"])
    ap.add_argument("--chunks", type=int, default=8, help="timed chunks per config (window full from chunk 3)")
    ap.add_argument("--long-chunks", type=int, default=0,
                    help="fp8 + nvfp4-KV configs run this many chunks instead (peak memory at long videos)")
    ap.add_argument("--attn", default="auto")
    ap.add_argument("--fuse-qkv", action="store_true", help="one q/k/v GEMM per block (longlive.model.fuse)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fidelity", action="store_true",
                    help="also run every (kv none, steps) config eagerly in fp32 and report each row's latent error")
    ap.add_argument("--profile", action="store_true", help="profile one config per precision (last compile mode)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    for c in a.configs:
        parse_config(c)
    if not torch.cuda.is_available() and a.device.startswith("cuda"):
        raise SystemExit("longlive.bench.perf needs a CUDA GPU (it measures the hardware limit)")
    run(a)


if __name__ == "__main__":
    main()
