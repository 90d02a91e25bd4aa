"""Probe (issue 20): the full Wan2.2 VAE decoder on one steady 32-frame chunk (8 latents, 704×1280, BF16), eager and
compiled, with each of `compile_vae`'s decoder fusions switched off in turn, a profile of one compiled chunk by kernel
kind, and the three up-convolutions alone (nearest ×2 + 3×3 against the four 2×2 parity convs).

Set up as a generation sets it up: `infer.assemble.load_vae` (random weights, seed 0, channels-last, cuDNN benchmark)
then `compile_vae` for the compiled rows, and `warm_decoder`'s warm-up (a throwaway two-chunk stream of zeros
through `make_decoder("streaming")`). Each row: a fresh stream of seeded random latents; chunk 0 (the first, 29
frames) and one steady chunk untimed, then the median of --chunks steady chunks, each timed by CUDA events around
`StreamingDecoder.decode`. Run from the repo root: `python reports/perf/attn20/probe_vae.py` (≈ 2 min on an H100).
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections import defaultdict

import torch
import torch.nn.functional as F
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from longlive.infer.assemble import load_vae
from longlive.infer.compile import compile_vae
from longlive.infer.decode import make_decoder
from longlive.infer.video import VideoRequest
from longlive.model.presets import get_preset
from longlive.vae.layers import CL3D, DupUp3D, Resample, subpixel_weight, upsample_hw2

PRESET = "wan2.2-ti2v-5b"


def decode_ms(vae, lat: torch.Tensor, chunk: int, n: int) -> list[float]:
    """Device ms of `n` steady chunks of a fresh stream (chunk 0 and one steady chunk decoded first, untimed)."""
    stream, times = vae.streaming_decoder(), []
    with torch.no_grad():
        for c in range(2 + n):
            a = torch.cuda.Event(enable_timing=True)
            b = torch.cuda.Event(enable_timing=True)
            a.record()
            stream.decode(lat[:, :, (c % 3) * chunk : (c % 3 + 1) * chunk])
            b.record()
            b.synchronize()
            if c >= 2:
                times.append(a.elapsed_time(b))
    return times


FUSIONS = ("head", "dupup", "resample")


def set_fusions(vae, saved: dict, on: set[str]) -> None:
    """Switch `compile_vae`'s decoder fusions: a switched-off one falls back to its eager path."""
    vae.decoder.fused_head = saved["head"] if "head" in on else None
    for m in vae.decoder.modules():
        if isinstance(m, Resample) and m.up:
            m.fused = saved["resample"] if "resample" in on else None
        elif isinstance(m, DupUp3D):
            m.fused = saved["dupup"] if "dupup" in on else None


def kind(name: str) -> str:
    low = name.lower()
    if low.startswith(("memcpy", "memset")):
        return "copies, memset"
    if low.startswith("triton"):
        return "pointwise (triton)"
    if any(k in low for k in ("implicit_gemm", "fprop", "cudnn", "convolve", "conv2d", "conv3d")):
        return "convolution"
    if any(k in low for k in ("gemm", "nvjet", "cutlass")):
        return "GEMM (attention)"
    if any(k in low for k in ("copy", "cat_", "catarray")):
        return "copies, memset"
    if any(k in low for k in ("elementwise", "reduce_kernel", "softmax")):
        return "pointwise (aten)"
    return "other"


def profile_chunk(vae, lat: torch.Tensor, chunk: int) -> None:
    """One steady chunk under torch.profiler: device time by kernel kind, and the largest kernels."""
    stream = vae.streaming_decoder()
    with torch.no_grad():
        stream.decode(lat[:, :, :chunk])
        stream.decode(lat[:, :, chunk : 2 * chunk])
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            stream.decode(lat[:, :, 2 * chunk : 3 * chunk])
            torch.cuda.synchronize()
    by_kind: dict[str, float] = defaultdict(float)
    by_name: dict[str, list] = defaultdict(lambda: [0.0, 0])
    skipped = 0.0
    for e in prof.events():
        if e.device_type != DeviceType.CUDA:
            continue
        us = e.time_range.elapsed_us()
        if e.name == "Command Buffer Full":  # a profiler marker of a full launch queue, not a kernel
            skipped += us
            continue
        by_kind[kind(e.name)] += us
        by_name[e.name][0] += us
        by_name[e.name][1] += 1
    total = sum(by_kind.values()) or 1.0
    print(f"\nprofile of one steady compiled chunk: {total / 1e3:.1f} ms of kernels"
          + (f" ('Command Buffer Full' markers left out: {skipped / 1e3:.1f} ms)" if skipped else ""))
    print("largest kernels:")
    for name, (us, calls) in sorted(by_name.items(), key=lambda kv: -kv[1][0])[:8]:
        print(f"  {us / 1e3:8.2f} ms {calls:4d}×  [{kind(name)}] {name[:110]}")
    print("\n| kernel kind | ms | share |\n|---|---:|---:|")
    for k, us in sorted(by_kind.items(), key=lambda kv: -kv[1]):
        print(f"| {k} | {us / 1e3:.1f} | {100 * us / total:.1f} % |")


def up_conv_shapes(vae, lat: torch.Tensor, chunk: int) -> list[tuple]:
    """(conv input [B, C, T, H, W] before the ×2, weight, bias) of each up-resample in a steady pass."""
    seen: list[tuple] = []

    def hook(mod, args):
        x = args[0]
        t = x.shape[2] * (2 if mod.mode == "upsample3d" else 1)
        conv = mod.resample["1"]
        seen.append(((x.shape[0], x.shape[1], t, x.shape[3], x.shape[4]), conv.weight, conv.bias))

    ups = [m for m in vae.decoder.modules() if isinstance(m, Resample) and m.up]
    handles = [m.register_forward_pre_hook(hook) for m in ups]
    stream = vae.streaming_decoder()
    with torch.no_grad():
        stream.decode(lat[:, :, :1])
        seen.clear()
        stream.decode(lat[:, :, 1:2])
    for h in handles:
        h.remove()
    return seen[: len(ups)]


def time_fn(fn, reps: int = 10) -> float:
    with torch.no_grad():
        for _ in range(3):
            fn()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(reps):
            fn()
        b.record()
        b.synchronize()
    return a.elapsed_time(b) / reps


def up_convs(vae, lat: torch.Tensor, chunk: int) -> None:
    """Each up-convolution alone: nearest ×2 + 3×3 conv as the eager decoder runs it, the 3×3 conv alone, and the
    four 2×2 parity convs in one conv3d (what the compiled resample runs)."""
    print("\n| up-conv input | ×2 + 3×3 conv + bias (eager) | 3×3 conv alone | 2×2 parity convs | TFLOP/s 3×3 / parity "
          "(useful FLOP) |\n|---|---:|---:|---:|---:|")
    for shape, w, b in up_conv_shapes(vae, lat, chunk):
        x = torch.randn(shape, device=w.device, dtype=w.dtype).contiguous(memory_format=CL3D)
        up = upsample_hw2(x, CL3D)
        w3, ws = w.unsqueeze(2), subpixel_weight(w, CL3D)
        eager = time_fn(lambda x=x, w3=w3, b=b: F.conv3d(upsample_hw2(x, CL3D), w3, b, padding=(0, 1, 1)))
        conv = time_fn(lambda up=up, w3=w3: F.conv3d(up, w3, None, padding=(0, 1, 1)))
        par = time_fn(lambda x=x, ws=ws: F.conv3d(x, ws, None, padding=(0, 1, 1)))
        flop = 2 * w.shape[0] * w.shape[1] * 9 * up.shape[2] * up.shape[3] * up.shape[4]
        print(f"| {list(shape)} → {w.shape[0]} ch | {eager:.2f} ms | {conv:.2f} ms | {par:.2f} ms | "
              f"{flop / conv / 1e9:.0f} / {flop / par / 1e9:.0f} |")
        del x, up


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--chunks", type=int, default=5, help="timed steady chunks per row (median)")
    ap.add_argument("--no-ablation", action="store_true", help="only eager and fully compiled")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("probe_vae needs a CUDA GPU")
    warnings.filterwarnings("ignore", category=FutureWarning)  # inductor's own deprecation notices while compiling
    t_start = time.perf_counter()
    cfg = get_preset(PRESET)
    req = VideoRequest(model=PRESET, frames=cfg.chunk_frames, device="cuda", random_weights=True, compile="none")
    vae, note = load_vae(req, cfg, None)
    h, w = cfg.latent_hw
    chunk = cfg.chunk_frames
    shape = (1, vae.z_dim, chunk, h, w)
    print(f"{torch.cuda.get_device_name()} torch {torch.__version__} cuDNN {torch.backends.cudnn.version()}; "
          f"{cfg.vae} VAE {cfg.height}x{cfg.width}, chunk {chunk} latents, {vae.dtype}, {note}")
    g = torch.Generator().manual_seed(0)
    lat = torch.randn(1, vae.z_dim, 3 * chunk, h, w, generator=g).to("cuda", vae.dtype)
    rows = []

    def row(label: str) -> None:
        ms = decode_ms(vae, lat, chunk, args.chunks)
        rows.append((label, statistics.median(ms), min(ms), max(ms)))
        print(f"{label}: median {rows[-1][1]:.1f} ms ({', '.join(f'{t:.1f}' for t in ms)})", flush=True)

    t0 = time.perf_counter()
    make_decoder("streaming", vae).warm_up(shape)
    print(f"eager warm-up {time.perf_counter() - t0:.1f} s")
    row("eager")
    compile_vae(vae)
    t0 = time.perf_counter()
    make_decoder("streaming", vae).warm_up(shape)
    print(f"compiled warm-up (compilation included) {time.perf_counter() - t0:.1f} s")
    torch.cuda.reset_peak_memory_stats()
    row("compiled, all fusions")
    peak = torch.cuda.max_memory_allocated() / 2**30
    if not args.no_ablation:
        saved = {"head": vae.decoder.fused_head, **{k: None for k in ("dupup", "resample")}}
        for m in vae.decoder.modules():
            if isinstance(m, Resample) and m.up:
                saved["resample"] = m.fused
            elif isinstance(m, DupUp3D):
                saved["dupup"] = m.fused
        for off in FUSIONS:
            set_fusions(vae, saved, set(FUSIONS) - {off})
            row(f"compiled, without {off}")
        set_fusions(vae, saved, set())
        row("compiled, none of them (v6: norms, pads, residual blocks)")
        set_fusions(vae, saved, set(FUSIONS))
    profile_chunk(vae, lat, chunk)
    up_convs(vae, lat, chunk)
    wall = time.perf_counter() - t_start
    print(f"\npeak memory (compiled, all fusions): {peak:.1f} GiB; probe wall time {wall:.0f} s")
    print("\n| decode of one steady 32-frame chunk | median ms | min | max |\n|---|---:|---:|---:|")
    for label, med, lo, hi in rows:
        print(f"| {label} | {med:.1f} | {lo:.1f} | {hi:.1f} |")


if __name__ == "__main__":
    main()
