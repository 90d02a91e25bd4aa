"""Sequence-parallel inference: run under torchrun, compare with one process, measure the exchange.

    torchrun --nproc_per_node=2 -m longlive.bench.sp --preset tiny --chunks 4 --exchange none fp8 nvfp4 --out r.json
    python -m longlive.bench.sp --preset wan2.2-ti2v-5b --chunks 6 --out sp1.json        # the sp = 1 baseline

For each exchange (none | fp8 | nvfp4 on the all-to-all of K and V) every rank generates the same video with
its share of every chunk; rank 0 records per-chunk ms and denoise FPS (spec 05 definition, its own device
events), bytes sent per forward pass (all ranks' all-to-all payloads, summed), and the fidelity of the final
latents against a reference (`--reference single`: a single-process run on rank 0, for small presets;
`--reference first`: the first exchange in the list).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch
import torch.distributed as dist

from longlive.eval.fidelity import latent_rel_err
from longlive.infer.compile import compile_and_warm
from longlive.infer.pipeline import GenerationSpec, generate
from longlive.infer.video import DTYPES
from longlive.measure.manifest import manifest
from longlive.measure.memory import peaks, reset_peaks
from longlive.model.attention import resolve_backend
from longlive.model.dit import build_model
from longlive.model.presets import get_preset
from longlive.parallel.groups import check_sp, init_parallel, shutdown_parallel
from longlive.parallel.sp_infer import SPContext


def _e2e(model, spec, embeds, dims, decode: str, exchange: str, preset: str, steps: int, chunks: int,
         dtype: str) -> dict:
    """End to end with the Wan VAE decoding each chunk right after it is denoised (streaming, not overlapped):
    sp = 1 decodes on its GPU; sp > 1 decodes spatial tiles on every SP rank (`decode=parallel`) or on rank 0
    only (`decode=rank0`, the release's behaviour). Frames end in pinned host memory on rank 0."""
    import time

    from longlive.infer.decode import frames_to_uint8, to_host
    from longlive.measure.timers import Clock
    from longlive.vae import build_vae

    cfg = get_preset(preset)
    dev = dims.device
    torch.manual_seed(0)
    vae = build_vae(cfg.vae, device=dev, dtype=DTYPES[dtype])
    if dims.world > 1 and decode == "parallel":
        from longlive.parallel.vae_decode import ParallelDecoder

        dec = ParallelDecoder(vae, group=dims.sp_group)
    else:
        dec = vae.streaming_decoder() if dims.is_main else None
    ctx = None
    if dims.world > 1:
        ctx = SPContext(dims.sp_group, dims.sp_rank, dims.sp, exchange=exchange)
    clock, frames = Clock(dev), []

    def on_chunk(c: int, x: torch.Tensor) -> None:
        clock.mark()
        out = dec.decode(x.to(vae.dtype)) if dec is not None else None
        if out is not None:
            frames.append(to_host(frames_to_uint8(out)))
        clock.mark()

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    if dims.world > 1:
        dist.barrier()
    t0 = time.perf_counter()
    res = generate(model, spec, embeds, sp=ctx, on_chunk=on_chunk)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    wall = time.perf_counter() - t0
    decode_ms = clock.intervals_ms()[::2]
    n_frames = sum(f.shape[1] for f in frames) if frames else 1 + 4 * (chunks * cfg.chunk_frames - 1)
    steady = decode_ms[1:] or decode_ms
    row = {"preset": preset, "sp": dims.sp, "exchange": exchange if dims.world > 1 else "none", "steps": steps,
           "chunks": chunks, "precision": dtype, "decode": decode if dims.world > 1 else "single",
           "e2e_s": wall, "e2e_fps": n_frames / wall, "frames_video": n_frames, "decode_ms": [round(x, 1) for x in
                                                                                            decode_ms],
           "decode_ms_steady_median": sorted(steady)[len(steady) // 2], **res.stats.summary(), **peaks(dev),
           "timing_definition": "e2e_fps: video frames / wall time from the first chunk's noise to the last decoded "
                                "frame in pinned host memory on rank 0; decode streams each chunk right after it is "
                                "denoised (not overlapped); denoise_fps here includes the decode's interference"}
    if dims.is_main:
        print(f"{preset} sp={dims.sp} decode={row['decode']}: e2e {row['e2e_fps']:.2f} FPS ({wall:.1f} s, "
              f"{n_frames} frames), steady decode {row['decode_ms_steady_median']:.0f} ms/chunk", flush=True)
    return row


def run(preset: str, chunks: int, steps: int | list[int], exchanges: list[str], dtype: str, seed: int,
        reference: str, kv_quant: str, compress_q: bool, compress_out: bool, attn: str, decode: str = "none",
        compile: str = "none", quant: str = "none", profile: Path | None = None) -> dict | None:
    """Every (steps, exchange) pair on one model, compiled once; `quant` fp8 runs the block Linears as W8A8
    (`_scaled_mm` on CUDA, emulated elsewhere)."""
    cfg = get_preset(preset)
    import os

    sp_size = int(os.environ.get("WORLD_SIZE", "1"))
    check_sp(cfg, sp_size)
    dims = init_parallel(sp_size)
    dev = dims.device
    model = build_model(cfg, device=dev, dtype=DTYPES[dtype], seed=seed).eval().requires_grad_(False)
    if quant != "none":
        from longlive.quant.linear import LinearQuantConfig
        from longlive.quant.recipes import quantize_model

        backend = "fp8" if quant == "fp8" and dev.type == "cuda" else "emulated"
        quantize_model(model, LinearQuantConfig(fmt=quant, backend=backend), device=dev)
    model.attn_backend = resolve_backend(attn, dev)
    g = torch.Generator().manual_seed(seed)
    embeds = [torch.randn(1, cfg.text_len, cfg.text_dim, generator=g).to(dev, DTYPES[dtype])]
    slots = cfg.window_frames // cfg.chunk_frames
    steps_list = [steps] if isinstance(steps, int) else list(steps)
    spec = GenerationSpec(prompts=["random"], frames=chunks * cfg.chunk_frames, steps=steps_list[0], seed=seed,
                          warmup_chunks=min(slots - 1, chunks - 1), kv_storage=None if kv_quant == "none" else kv_quant)
    ctx0 = SPContext(dims.sp_group, dims.sp_rank, dims.sp, exchange=exchanges[0]) \
        if dims.world > 1 and compile != "none" else None
    compile_s = compile_and_warm(model, compile, embeds, kv_storage=spec.kv_storage, sp=ctx0, seed=seed)
    rows = []
    for steps in steps_list:
        spec = dataclasses.replace(spec, steps=steps)
        ref_lat = None
        if reference == "single" and dims.is_main:
            ref_lat = generate(model, spec, embeds).latents.float()
        for ex in exchanges:
            ctx = None
            if dims.world > 1:
                ctx = SPContext(dims.sp_group, dims.sp_rank, dims.sp, exchange=ex, compress_q=compress_q,
                                compress_out=compress_out)
            reset_peaks(dev)
            res = generate(model, spec, embeds, sp=ctx)
            lat = res.latents.float()
            forwards = chunks * (steps + 1)
            sent = torch.tensor([ctx.stats.bytes_sent if ctx else 0], dtype=torch.float64, device=dev)
            if dims.world > 1:
                dist.all_reduce(sent)
            if ref_lat is None and reference == "first" and dims.is_main:
                ref_lat = lat
            row = {"preset": preset, "sp": dims.sp, "exchange": ex if dims.world > 1 else "none", "steps": steps,
                   "chunks": chunks, "precision": dtype, "quant": quant, "kv_quant": kv_quant, "compress_q": compress_q,
                   "compress_out": compress_out, "attn_backend": model.attn_backend, "compile": compile,
                   "compile_s": compile_s,
                   "chunk_ms": [round(x, 2) for x in res.stats.chunk_ms], **res.stats.summary(), **peaks(dev),
                   "bytes_per_forward": sent.item() / forwards,
                   "bytes_by_kind_rank0": {k: v / forwards for k, v in (ctx.stats.by_kind if ctx else {}).items()},
                   "kv_cache_gb_per_rank": res.kv_cache_bytes / 1e9, "timing_definition": res.stats.timing_definition}
            if dims.is_main and ref_lat is not None:
                row["latent_rel_err_vs_ref"] = latent_rel_err(lat, ref_lat)
                row["latent_max_abs_err_vs_ref"] = (lat - ref_lat).abs().max().item()
            rows.append(row)
            if dims.is_main:
                print(f"{preset} sp={dims.sp} steps={steps} exchange={row['exchange']:<5} median chunk "
                      f"{row['chunk_ms_median']:.1f} ms, "
                      f"{row['denoise_fps']:.2f} FPS, {row['bytes_per_forward'] / 1e6:.1f} MB/forward, rel.err "
                      f"{row.get('latent_rel_err_vs_ref', float('nan')):.2e}", flush=True)
    if profile is not None:  # every rank runs it (the collectives); rank 0 records
        from longlive.bench.chunks import profile_chunks

        pctx = SPContext(dims.sp_group, dims.sp_rank, dims.sp, exchange=exchanges[0]) if dims.world > 1 else None
        profile_chunks(model, cfg, embeds, steps_list[0], seed, spec.kv_storage, Path(profile), sp=pctx,
                       record=dims.is_main, title=f"{preset} sp={dims.sp} rank 0, {quant} Linears, exchange "
                                                  f"{exchanges[0]}, {steps_list[0]}-step, {slots + 1} chunks")
    if decode != "none":
        rows.append(_e2e(model, spec, embeds, dims, decode, exchanges[0], preset, spec.steps, chunks, dtype))
    if dims.world > 1:
        dist.barrier()
    if not dims.is_main:
        return None
    config = {"preset": preset, "chunks": chunks, "steps": steps_list, "exchanges": exchanges, "dtype": dtype,
              "quant": quant, "seed": seed,
              "reference": reference, "kv_quant": kv_quant, "sp": dims.sp, "world": dims.world, "weights": "random",
              "compile": compile}
    return {"rows": rows, "manifest": manifest(config, seed)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="wan2.2-ti2v-5b")
    ap.add_argument("--chunks", type=int, default=6)
    ap.add_argument("--steps", type=int, nargs="+", default=[4], help="step counts (one model, compiled once)")
    ap.add_argument("--quant", choices=["none", "fp8"], default="none", help="W8A8 block Linears (PTQ at load)")
    ap.add_argument("--exchange", nargs="+", default=["none", "fp8", "nvfp4"])
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bf16" if torch.cuda.is_available() else "fp32")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reference", choices=["single", "first"], default="first")
    ap.add_argument("--kv-quant", default="none")
    ap.add_argument("--compress-q", action="store_true")
    ap.add_argument("--compress-out", action="store_true")
    ap.add_argument("--attn", default="auto")
    ap.add_argument("--decode", choices=["none", "parallel", "rank0"], default="none",
                    help="also run end to end with the VAE: tiles on every SP rank (parallel) or rank 0 only")
    ap.add_argument("--compile", choices=["none", "default", "max-autotune-no-cudagraphs"], default="none",
                    help="torch.compile the DiT blocks (longlive.infer.compile); a warm-up runs first, untimed")
    ap.add_argument("--profile", type=Path, default=None,
                    help="after timing, profile a short run of the first steps/exchange; rank 0's table to this file")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    result = run(a.preset, a.chunks, a.steps, a.exchange, a.dtype, a.seed, a.reference, a.kv_quant, a.compress_q,
                 a.compress_out, a.attn, a.decode, a.compile, a.quant, a.profile)
    if result is not None and a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(result, indent=2, default=str))
    shutdown_parallel()


if __name__ == "__main__":
    main()
