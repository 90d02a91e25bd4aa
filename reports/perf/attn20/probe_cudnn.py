"""cudnn-fp8 on one GPU (issue 20): versions, quick correctness checks, and the steady 5B shape timed against
torch's cuDNN BF16 SDPA. Run from the repo root: `PYTHONPATH=. python reports/perf/attn20/probe_cudnn.py`.

Checks (small shapes, fresh N(0, 1) inputs, K/V as contiguous tensors, heads-first strided views and FP8Windows):
relative error against a float64 softmax next to the PyTorch emulation's (`attention_cudnn.reference`), agreement
with the emulation when every row's maximum lies in the first KV tile (keys repeat every 16), V = 0, a NaN in q.
Timing: 1 × 24 heads × 7,040 queries × 28,160 keys × head_dim 128, non-causal, CUDA events, median of 20 after
3 warm-ups; TFLOP/s = 4·B·H·Lq·Lk·D / time. Rows: torch SDPA cuDNN BF16 (K/V strided views of a heads-first BF16
cache), cudnn-fp8 on BF16 K/V (quantised per call), cudnn-fp8 on FP8Window K/V (an FP8 cache's window as stored),
and the bare cuDNN call on E4M3 windows (no Q quantisation, no O dequantisation). The accuracy of each path at the
steady shape is measured on 2 heads × 512 queries against float64 on the BF16 inputs. The table is printed last.
"""

from __future__ import annotations

import math
import sys
import traceback

import torch

from longlive.model.attention import FP8Window, sdpa
from longlive.quant import attention_cudnn
from longlive.quant.attention_cudnn import attend, attend_fp8, reference, unavailable
from longlive.quant.fp8 import fp8_window

DEV = torch.device("cuda")
STEADY = (1, 24, 7040, 28160, 128)  # B, H, Lq, Lk, D
SHAPES = [(1, 2, 64, 1000, 128), (2, 3, 300, 333, 64), (1, 4, 128, 1536, 128), (1, 2, 200, 130, 128)]
TABLE: list[tuple[str, float, float, float]] = []  # (path, ms, TFLOP/s, rel. error vs float64)


def exact(q, k, v):
    k = k.dequantize(torch.float64) if isinstance(k, FP8Window) else k.double()
    v = v.dequantize(torch.float64) if isinstance(v, FP8Window) else v.double()
    s = torch.einsum("bqhd,bkhd->bhqk", q.double(), k) / math.sqrt(q.shape[-1])
    return torch.einsum("bhqk,bkhd->bqhd", s.softmax(dim=-1), v)


def rel(a, b) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def inputs(B, H, Lq, Lk, D, seed, period=None):
    g = torch.Generator(device="cpu").manual_seed(seed)
    q, k, v = (torch.randn(B, L, H, D, generator=g) for L in (Lq, Lk, Lk))
    if period is not None:
        k = k[:, torch.arange(Lk) % period]
    return tuple(t.to(DEV, torch.bfloat16) for t in (q, k, v))


def heads_first(x, extra=0, fp8=False):
    """x [B, L, H, D] in the prefix of a heads-first [B, H, L + extra, D] buffer, as the strided view a cache hands
    out (an FP8Window with `fp8`)."""
    B, L, H, D = x.shape
    w = fp8_window(x) if fp8 else None
    buf = torch.zeros(B, H, L + extra, D, dtype=torch.float8_e4m3fn if fp8 else x.dtype, device=x.device)
    buf[:, :, :L] = (w.data if fp8 else x).transpose(1, 2)
    view = buf[:, :, :L].transpose(1, 2)
    return FP8Window(view, w.scale) if fp8 else view


def layouts(k, v):
    yield "contiguous", k, v
    yield "heads-first", heads_first(k, 37), heads_first(v, 37)
    yield "fp8-window", heads_first(k, 37, True), heads_first(v, 37, True)


def section(name, fn):
    print(f"\n== {name}", flush=True)
    try:
        fn()
    except Exception:  # report and go on: one call should bring back every section it can
        traceback.print_exc(limit=4)
        print(f"{name}: FAILED", flush=True)


def versions():
    cudnn = attention_cudnn._frontend()
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(DEV)} "
          f"sm_{''.join(map(str, torch.cuda.get_device_capability(DEV)))}")
    print(f"torch's cuDNN {torch.backends.cudnn.version()}; nvidia-cudnn-frontend {cudnn.__version__}, "
          f"backend {cudnn.backend_version_string()} ({cudnn.backend_version()})")
    print(f"libcudnn loaded from {attention_cudnn._loaded_libcudnn()}")


def correctness():
    print(f"{'shape B,H,Lq,Lk,D':<24} {'layout':<12} {'err':>7} {'emul':>7} {'vs emul (periodic K)':>21}")
    for i, shape in enumerate(SHAPES):
        q, k, v = inputs(*shape, seed=100 + i)
        qp, kp, vp = inputs(*shape, seed=200 + i, period=16)
        for (name, kk, vv), (_, kkp, vvp) in zip(layouts(k, v), layouts(kp, vp), strict=True):
            ref = exact(q, kk, vv)
            err, emul = rel(attend(q, kk, vv), ref), rel(reference(q, kk, vv), ref)
            tight = rel(attend(qp, kkp, vvp), reference(qp, kkp, vvp))
            print(f"{str(shape):<24} {name:<12} {err:7.4f} {emul:7.4f} {tight:21.2e}")
    q, k, v = inputs(1, 2, 64, 300, 128, seed=7)
    print("V = 0 -> output all zero:", not attend(q, k, torch.zeros_like(v)).any().item())
    q[0, 3, 1, 5] = float("nan")
    nan_rows = torch.isnan(attend(q, k, v)).any(dim=-1).nonzero().tolist()
    print(f"a NaN in q[0, 3, 1, 5] -> NaN output rows (b, i, h): {nan_rows[:6]}{' ...' if len(nan_rows) > 6 else ''}")
    for key, entry in list(attention_cudnn._GRAPHS.items())[:1]:
        print(f"graph {key[1]}: workspace {entry.workspace} B, Amax_S declared: {entry.amax_s_declared}")


def timed(fn, n=20, warmup=3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(n):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def steady():
    B, H, Lq, Lk, D = STEADY
    flops = 4 * B * H * Lq * Lk * D
    q, k0, v0 = inputs(B, H, Lq, Lk, D, seed=1)
    k, v = heads_first(k0, 1024), heads_first(v0, 1024)  # BF16 cache views (the capacity is a bit larger)
    kw, vw = heads_first(k0, 1024, fp8=True), heads_first(v0, 1024, fp8=True)
    del k0, v0
    qw = fp8_window(q)
    sub_q = q[:, :512, :2]  # accuracy on 2 heads × 512 queries
    ref = exact(sub_q, k[:, :, :2], v[:, :, :2])  # the BF16 values every path starts from
    rows = [
        ("torch SDPA cuDNN BF16", lambda: sdpa(q, k, v, "cudnn")),
        ("cudnn-fp8, BF16 K/V", lambda: attend(q, k, v)),
        ("cudnn-fp8, FP8Window K/V", lambda: attend(q, kw, vw)),
        ("cuDNN sdpa_fp8 call only", lambda: attend_fp8(qw, kw, vw)),
    ]
    for name, fn in rows:
        try:
            out = fn()
            out = out.dequantize(q.dtype) if isinstance(out, FP8Window) else out
            err = rel(out[:, :512, :2], ref)
            ms = timed(fn)
            TABLE.append((name, ms, flops / ms / 1e9, err))
            print(f"{name}: {ms:.3f} ms, {flops / ms / 1e9:.0f} TFLOP/s, rel. err {err:.4f}", flush=True)
        except Exception:
            traceback.print_exc(limit=4)
            TABLE.append((name, float("nan"), float("nan"), float("nan")))


def main() -> int:
    reason = unavailable(DEV)
    if reason is not None:
        print(f"cudnn-fp8 unavailable: {reason}")
        return 1
    section("versions", versions)
    section("correctness (rel. error vs float64; cuDNN vs the emulation)", correctness)
    section(f"steady shape B, H, Lq, Lk, D = {STEADY}", steady)
    print(f"\n{'path':<28} {'ms':>8} {'TFLOP/s':>8} {'rel.err':>8}   (steady shape {STEADY}, "
          f"{torch.cuda.get_device_name(DEV)})")
    for name, ms, tflops, err in TABLE:
        print(f"{name:<28} {ms:8.3f} {tflops:8.0f} {err:8.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
