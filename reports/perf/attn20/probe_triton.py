"""int8-fp8 (our Triton kernel, INT8 Q·Kᵀ + FP8 P·V) on one Hopper GPU (issue 20): versions, quick GPU checks,
and the steady 5B shape timed against torch's cuDNN and FlashAttention BF16 SDPA.
Run from the repo root: `PYTHONPATH=. python reports/perf/attn20/probe_triton.py` (with OUT=dir it also writes
dir/probe_triton.json).

Checks (small shapes, fresh N(0, 1) inputs): the kernel against `attention_triton.reference` run on the CPU with the
same key tile (bound 2e-3) and against float64 attention (bound 5 %), with K/V as contiguous BF16, as strided views
of heads-first BF16 buffers, as FP8Windows of heads-first E4M3 buffers, and with a keys-contiguous V read as
stored; every tile config; pre-pass codes against the reference quantisers; a NaN-poisoned output buffer fully
overwritten.
Timing: 1 × 24 heads × 7,040 queries × 28,160 keys × head_dim 128, non-causal, CUDA events, median of 20 after
3 warm-ups; TFLOP/s = 4·B·H·Lq·Lk·D / time (pre-pass rows: the same FLOP count, for scale only). K/V are strided
views of heads-first caches (BF16, or E4M3 FP8Windows). Rows: torch SDPA cuDNN / flash BF16, the flash-attn
package if installed, cudnn-fp8 if it is available, int8-fp8 end to end (FP8Window and BF16 K/V), its pre-pass
alone, its kernel alone for each tile config (V transposed to keys-contiguous, and V read as stored), and the
autotuned kernel. Accuracy at the steady shape: 2 heads × 512 queries against float64 on the BF16 values (and the
kernel against its reference there). The table is printed last.
"""

from __future__ import annotations

import json
import math
import os
import sys
import traceback

import torch

from longlive.model.attention import FP8Window, sdpa
from longlive.quant import attention_cudnn
from longlive.quant import attention_triton as at
from longlive.quant.fp8 import fp8_window

DEV = torch.device("cuda")
STEADY = (1, 24, 7040, 28160, 128)  # B, H, Lq, Lk, D
SHAPES = [(1, 2, 200, 1000, 128), (2, 3, 130, 333, 64), (1, 4, 64, 77, 32), (1, 2, 1, 257, 128)]
TIGHT, LOOSE = 2e-3, 0.05
TABLE: list[dict] = []
FAILED: list[str] = []


def exact(q, k, v):
    k = k.dequantize(torch.float64) if isinstance(k, FP8Window) else k.double()
    v = v.dequantize(torch.float64) if isinstance(v, FP8Window) else v.double()
    s = torch.einsum("bqhd,bkhd->bhqk", q.double(), k) / math.sqrt(q.shape[-1])
    return torch.einsum("bhqk,bkhd->bqhd", s.softmax(dim=-1), v)


def rel(a, b) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def inputs(B, H, Lq, Lk, D, seed):
    g = torch.Generator(device="cpu").manual_seed(seed)
    return tuple(torch.randn(B, L, H, D, generator=g).to(DEV, torch.bfloat16) for L in (Lq, Lk, Lk))


def heads_first(x, extra=0, fp8=False):
    """x [B, L, H, D] as the strided view of a heads-first [B, H, L + extra, D] cache buffer (NaN beyond L), an
    FP8Window with `fp8`."""
    B, L, H, D = x.shape
    w = fp8_window(x) if fp8 else None
    buf = torch.full((B, H, L + extra, D), float("nan"), device=x.device).to(torch.float8_e4m3fn if fp8 else x.dtype)
    buf[:, :, :L] = (w.data if fp8 else x).transpose(1, 2)
    view = buf[:, :, :L].transpose(1, 2)
    return FP8Window(view, w.scale) if fp8 else view


def keys_contiguous(w: FP8Window) -> FP8Window:
    """The window stored [B, H, D, L] (keys contiguous, 16-byte rows): what the FP8 MMA wants, read as stored."""
    B, L, H, D = w.shape
    buf = torch.zeros(B, H, D, -(-L // 16) * 16, device=w.data.device).to(torch.float8_e4m3fn)
    buf[..., :L] = w.data.permute(0, 2, 3, 1)
    return FP8Window(buf[..., :L].permute(0, 3, 1, 2), w.scale)


def cpu(x):
    return FP8Window(x.data.cpu(), x.scale.cpu()) if isinstance(x, FP8Window) else x.cpu()


def check(name: str, ok: bool, detail: str) -> None:
    print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}", flush=True)
    if not ok:
        FAILED.append(name)


def section(name, fn):
    print(f"\n== {name}", flush=True)
    try:
        fn()
    except Exception:  # report and go on: one call should bring back every section it can
        traceback.print_exc(limit=6)
        print(f"{name}: FAILED", flush=True)
        FAILED.append(name)


def versions():
    import triton  # the probe needs Triton; the package imports it only on first use

    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, Triton {triton.__version__}, "
          f"{torch.cuda.get_device_name(DEV)} sm_{''.join(map(str, torch.cuda.get_device_capability(DEV)))}")
    print(f"quantisation blocks: q {at.Q_BLOCK} queries, k {at.K_BLOCK} keys; default tile {at.DEFAULT_CONFIG}; "
          f"configs {', '.join(map(str, at.CONFIGS))}")


def correctness():
    for i, shape in enumerate(SHAPES):
        B, H, Lq, Lk, D = shape
        q, k, v = inputs(*shape, seed=100 + i)
        kh, vh = heads_first(k, 37), heads_first(v, 37)
        kw, vw = heads_first(k, 37, fp8=True), heads_first(v, 37, fp8=True)
        for layout, kk, vv in (("contiguous", k, v), ("heads-first", kh, vh), ("fp8-window", kw, vw),
                               ("fp8, V keys-contiguous", kw, keys_contiguous(vw))):
            out = at.attend(q, kk, vv)
            ref = at.reference(q.cpu(), cpu(kk), cpu(vv), tile_n=at.DEFAULT_CONFIG.block_n)
            tight, loose = rel(out.cpu(), ref), rel(out, exact(q, kk, vv))
            check(f"{shape} {layout}", tight <= TIGHT and loose <= LOOSE,
                  f"vs reference {tight:.2e}, vs float64 {loose:.4f}")
    q, k, v = inputs(1, 2, 300, 1000, 128, seed=7)
    for cfg in at.CONFIGS:
        out = at.attend(q, k, v, config=cfg).cpu()
        err = rel(out, at.reference(q.cpu(), k.cpu(), v.cpu(), tile_n=cfg.block_n))
        check(f"config {cfg}", err <= TIGHT, f"vs reference with tile {cfg.block_n}: {err:.2e}")
    out = at.attend(q, k, v, config="autotune").cpu()
    best = at._kernels()["attn_tuned"].best_config
    err = rel(out, at.reference(q.cpu(), k.cpu(), v.cpu(), tile_n=best.kwargs["BLOCK_N"]))
    check("autotune", err <= TIGHT, f"chose {best}; vs reference {err:.2e}")
    vw = heads_first(v, 5, fp8=True)
    err = rel(at.attend(q, k, vw, v_transpose=False), at.attend(q, k, vw))
    check("V read as stored (MMA transposes)", err <= 1e-3, f"vs V transposed first: {err:.2e}")
    prep = at.prepare(q, k, v)
    q8, sq = at.quantize_int8_blocks(q.cpu().float().transpose(1, 2), at.Q_BLOCK)
    k8, sk = at.quantize_int8_blocks(k.cpu().float().transpose(1, 2) - prep.mean.view(1, 2, 1, 128).cpu(),
                                     at.K_BLOCK)
    same = (torch.equal(prep.q8.view(1, 2, -1, 128).cpu(), q8)
            and torch.equal(prep.k8.view(1, 2, -1, 128).cpu()[:, :, : k8.shape[2]], k8)
            and torch.equal(prep.sk.view(1, 2, -1).cpu()[..., : sk.shape[-1]], sk)
            and torch.equal(prep.v8.view(torch.uint8), fp8_window(v).data.view(torch.uint8)))
    check("pre-pass codes", same, "INT8 q / k and E4M3 v equal to the reference quantisers'")
    poison = torch.full_like(q, float("nan"))
    out = at.attend(q, k, v, out=poison)
    check("output fully written", bool(torch.isfinite(out).all()) and torch.equal(out, at.attend(q, k, v)),
          "a NaN-filled out= buffer comes back finite and equal to a fresh call")


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


def flash_attn_row(q, k, v):
    """The flash-attn package (FA3's Hopper interface first, then FA2), if installed."""
    try:
        from flash_attn_interface import flash_attn_func  # FA3 (Hopper build)

        name = "flash-attn 3 BF16"
    except ImportError:
        try:
            from flash_attn import flash_attn_func

            name = "flash-attn 2 BF16"
        except ImportError:
            print("flash-attn not installed: no row")
            return None

    def call():
        out = flash_attn_func(q, k, v)
        return out[0] if isinstance(out, tuple) else out

    return name, call


def steady():
    B, H, Lq, Lk, D = STEADY
    flops = 4 * B * H * Lq * Lk * D
    q, k0, v0 = inputs(B, H, Lq, Lk, D, seed=1)
    k, v = heads_first(k0, 1024), heads_first(v0, 1024)  # BF16 cache views (capacity a bit larger)
    kw, vw = heads_first(k0, 1024, fp8=True), heads_first(v0, 1024, fp8=True)
    del k0, v0
    sub = (slice(None), slice(0, 512), slice(0, 2))  # accuracy on 2 heads × 512 queries
    ref = exact(q[sub], k[:, :, :2], v[:, :, :2])
    emul = at.reference(q[sub].cpu(), cpu(FP8Window(kw.data[:, :, :2], kw.scale)),
                        cpu(FP8Window(vw.data[:, :, :2], vw.scale)), tile_n=at.DEFAULT_CONFIG.block_n)
    tight = rel(at.attend(q, kw, vw)[sub].cpu(), emul)
    check("steady: kernel vs reference (2 heads × 512 queries)", tight <= TIGHT, f"{tight:.2e}")
    prep_fp8 = at.prepare(q, kw, vw)
    prep_stored = at.prepare(q, kw, vw, v_transpose=False)
    rows = [
        ("torch SDPA cuDNN BF16", lambda: sdpa(q, k, v, "cudnn"), True),
        ("torch SDPA flash BF16", lambda: sdpa(q, k, v, "flash"), True),
    ]
    fa = flash_attn_row(q, k, v)
    if fa is not None:
        rows.append((*fa, True))
    if attention_cudnn.unavailable(DEV) is None:
        rows.append(("cudnn-fp8, FP8Window K/V", lambda: attention_cudnn.attend(q, kw, vw), True))
    rows += [
        ("int8-fp8, FP8Window K/V", lambda: at.attend(q, kw, vw), True),
        ("int8-fp8, BF16 K/V", lambda: at.attend(q, k, v), True),
        ("pre-pass, FP8Window K/V", lambda: at.prepare(q, kw, vw), False),
        ("pre-pass, FP8Window K/V, no V transpose", lambda: at.prepare(q, kw, vw, v_transpose=False), False),
        ("pre-pass, BF16 K/V", lambda: at.prepare(q, k, v), False),
    ]
    rows += [(f"kernel {cfg}", lambda cfg=cfg: at.launch(prep_fp8, q.shape, q.dtype, cfg), True)
             for cfg in at.CONFIGS]
    rows += [(f"kernel {at.DEFAULT_CONFIG}, V as stored",
              lambda: at.launch(prep_stored, q.shape, q.dtype, at.DEFAULT_CONFIG), True),
             ("kernel autotuned", lambda: at.launch(prep_fp8, q.shape, q.dtype, "autotune"), True)]
    for name, fn, has_out in rows:
        try:
            out = fn()
            err = rel(out[sub], ref) if has_out else float("nan")
            ms = timed(fn)
            TABLE.append({"path": name, "ms": ms, "tflops": flops / ms / 1e9, "rel_err": err})
            print(f"{name}: {ms:.3f} ms, {flops / ms / 1e9:.0f} TFLOP/s, rel. err {err:.4f}", flush=True)
        except Exception:
            traceback.print_exc(limit=4)
            TABLE.append({"path": name, "ms": float("nan"), "tflops": float("nan"), "rel_err": float("nan")})
    print(f"autotuned config: {at._kernels()['attn_tuned'].best_config}")


def main() -> int:
    reason = at.unavailable(DEV)
    if reason is not None:
        print(f"int8-fp8 unavailable: {reason}")
        return 1
    section("versions", versions)
    section("GPU checks", correctness)
    section(f"steady shape B, H, Lq, Lk, D = {STEADY}", steady)
    print(f"\n{'path':<44} {'ms':>8} {'TFLOP/s':>8} {'rel.err':>8}   (steady shape {STEADY}, "
          f"{torch.cuda.get_device_name(DEV)})")
    for row in TABLE:
        print(f"{row['path']:<44} {row['ms']:8.3f} {row['tflops']:8.0f} {row['rel_err']:8.4f}")
    print(f"\nchecks failed: {', '.join(FAILED) if FAILED else 'none'}")
    if os.environ.get("OUT"):
        path = os.path.join(os.environ["OUT"], "probe_triton.json")
        with open(path, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(DEV), "steady": STEADY, "rows": TABLE,
                       "failed": FAILED}, f, indent=1)
        print(f"wrote {path}")
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
