"""Benchmark: streaming decode of latent chunks with a VAE preset (random weights), per-chunk ms.

Timing definition: `decode_ms` = device time of one streaming `decode(chunk)` call with causal caches
carried from the previous chunk (the first chunk yields 1+4(t−1) frames, later ones 4t); `decode_fps` =
frames of the steady chunks ÷ their time. Frames stay on the device (host copy excluded).

    python -m longlive.bench.vae_decode --preset wan2.2-ti2v-5b --chunks 3 --out vae.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from longlive.infer.video import DTYPES
from longlive.measure.manifest import manifest
from longlive.measure.memory import peaks, reset_peaks
from longlive.measure.timers import Clock
from longlive.model.presets import get_preset
from longlive.vae import build_vae


def run(preset: str, chunks: int, dtype: str, device: str, seed: int, channels_last: bool, compile: bool = False,
        profile: Path | None = None) -> dict:
    cfg = get_preset(preset)
    dev = torch.device(device)
    torch.manual_seed(seed)
    vae = build_vae(cfg.vae, device=dev, dtype=DTYPES[dtype])
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if channels_last:
        vae = vae.to(memory_format=torch.channels_last_3d)
    if compile:
        from longlive.infer.compile import compile_vae

        compile_vae(vae)
    h, w = cfg.latent_hw
    g = torch.Generator().manual_seed(seed)
    lat = torch.randn(1, vae.z_dim, chunks * cfg.chunk_frames, h, w, generator=g).to(dev, DTYPES[dtype])
    dec = vae.streaming_decoder()
    clock = Clock(dev)
    reset_peaks(dev)
    frames = []
    with torch.no_grad():
        for c in range(chunks):
            clock.mark()
            out = dec.decode(lat[:, :, c * cfg.chunk_frames : (c + 1) * cfg.chunk_frames])
            clock.mark()
            frames.append(out.shape[2])
            print(f"  chunk {c}: {out.shape[2]} frames {tuple(out.shape[-2:])}", flush=True)
        if profile is not None:  # one more steady chunk under the profiler
            from torch.profiler import ProfilerActivity
            from torch.profiler import profile as prof

            acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
            with prof(activities=acts, record_shapes=True) as p:
                dec.decode(lat[:, :, -cfg.chunk_frames:])
                if dev.type == "cuda":
                    torch.cuda.synchronize()
            key = "cuda_time_total" if dev.type == "cuda" else "cpu_time_total"
            profile.parent.mkdir(parents=True, exist_ok=True)
            profile.write_text(p.key_averages().table(sort_by=key, row_limit=40, max_name_column_width=90))
            # by input shape too: which tensors a slow elementwise kernel or copy came from
            profile.with_suffix(".shapes.txt").write_text(p.key_averages(group_by_input_shape=True).table(
                sort_by=key, row_limit=60, max_name_column_width=60, max_shapes_column_width=140))
    ms = clock.intervals_ms()[::2]
    steady_ms, steady_frames = ms[1:], frames[1:]
    row = {
        "preset": preset, "vae": cfg.vae, "precision": dtype, "channels_last": channels_last,
        "resolution": f"{cfg.height}x{cfg.width}", "chunk_latents": cfg.chunk_frames, "compile": compile,
        "timing_definition": "decode_ms: device time of one streaming decode(chunk) call, caches carried; "
                             "decode_fps: steady-chunk frames / their time; host copy excluded",
        "decode_ms": [round(x, 1) for x in ms], "frames": frames,
        "decode_fps": sum(steady_frames) / (sum(steady_ms) / 1e3) if steady_ms else None, **peaks(dev),
    }
    print(f"{cfg.vae} VAE {dtype} {cfg.height}x{cfg.width}: per chunk ms {row['decode_ms']}, "
          f"steady decode {row['decode_fps']:.1f} FPS, peak allocated {row['peak_allocated_gb'] or 0:.1f} GB")
    config = {"preset": preset, "chunks": chunks, "dtype": dtype, "device": device, "channels_last": channels_last,
              "compile": compile,
              "weights": "random"}
    return {"rows": [row], "manifest": manifest(config, seed)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="wan2.2-ti2v-5b")
    ap.add_argument("--chunks", type=int, default=3)
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--compile", action="store_true", help="fuse RMSNorm+SiLU (longlive.infer.compile.compile_vae)")
    ap.add_argument("--profile", type=Path, default=None, help="profile one extra steady chunk into this file")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    result = run(a.preset, a.chunks, a.dtype, a.device, a.seed, a.channels_last, a.compile, a.profile)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
