"""Bandwidth of the Triton NVFP4 / FP8 kernels and of the PyTorch reference at the 5B shapes, against the device
copy bandwidth measured in the same run (spec 03 / 05). Prints a table; writes JSON with a manifest.

    python -m longlive.bench.quant_kernels --out quant_kernels.json [--sweep] [--no-ref]
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from longlive.measure.manifest import manifest
from longlive.measure.timers import percentile

TIMING_DEFINITION = (
    "per call: CUDA-event time of one call of the Python wrapper (allocation, the amax/global-scale launches and "
    "the kernel included), after a read of a 1 GiB buffer that evicts L2 (inputs come from HBM, and the eviction "
    "leaves no dirty lines); warm-up calls first (compilation excluded); median (p10/p90 also given) over the "
    "repeats. GB/s = bytes / median time with bytes = each input read once + each output written once (the "
    "NVFP4 quantise with amax computed from x reads x twice: once for amax, once to quantise; its GB/s still "
    "counts one read). Copy ceiling: dst.copy_(src) of 2 GiB, bytes = read + write."
)

# (rows, cols) of the 2-D views at the 5B preset (spec 01/05): activations of the 300 block Linears, weights, KV.
SHAPES: dict[str, tuple[int, int]] = {
    "act_7040x3072": (7040, 3072),
    "act_7040x14336": (7040, 14336),
    "w_3072x3072": (3072, 3072),
    "w_14336x3072": (14336, 3072),
    "kv_7040x3072": (7040, 3072),
}

# (label, op, kwargs) per shape kind
CASES: dict[str, list[tuple[str, str, dict[str, Any]]]] = {
    "act": [
        ("nvfp4 quant static_6 1x16 (amax computed)", "nvfp4_q", {"rule": "static_6", "block": (1, 16)}),
        ("nvfp4 quant mse 1x16 (amax computed)", "nvfp4_q", {"rule": "mse", "block": (1, 16)}),
        ("nvfp4 quant static_6 1x16 (amax given)", "nvfp4_q", {"rule": "static_6", "block": (1, 16), "given": True}),
        ("nvfp4 quant mse 1x16 (amax given)", "nvfp4_q", {"rule": "mse", "block": (1, 16), "given": True}),
        ("nvfp4 dequant -> bf16", "nvfp4_dq", {}),
        ("fp8 row quant", "fp8_q", {}),
        ("fp8 row dequant -> bf16", "fp8_dq", {}),
    ],
    "w": [
        ("nvfp4 quant static_6 1x16 (amax computed)", "nvfp4_q", {"rule": "static_6", "block": (1, 16)}),
        ("nvfp4 quant static_6 16x16 (amax computed)", "nvfp4_q", {"rule": "static_6", "block": (16, 16)}),
        ("nvfp4 quant mse 16x16 (amax computed)", "nvfp4_q", {"rule": "mse", "block": (16, 16)}),
        ("nvfp4 dequant -> bf16", "nvfp4_dq", {}),
        ("fp8 row quant", "fp8_q", {}),
        ("fp8 row dequant -> bf16", "fp8_dq", {}),
    ],
    "kv": [
        ("nvfp4 quant mse 1x16 (amax computed)", "nvfp4_q", {"rule": "mse", "block": (1, 16)}),
        ("nvfp4 dequant -> bf16", "nvfp4_dq", {}),
        ("fp8 row quant", "fp8_q", {}),
        ("fp8 row dequant -> bf16", "fp8_dq", {}),
    ],
}

# Tile sweeps (--sweep), each checked for identical output against the default tile:
# (shape name, rule, block, [configs]) for the NVFP4 quantise; (shape name, [configs]) for the FP8 row quantise.
NVFP4_SWEEP: list[tuple[str, str, tuple[int, int], list[dict[str, int]]]] = [
    ("act_7040x3072", "static_6", (1, 16), [
        {"BLOCK_R": 4, "BLOCK_C": 256, "num_warps": 4},
        {"BLOCK_R": 8, "BLOCK_C": 256, "num_warps": 4},
        {"BLOCK_R": 16, "BLOCK_C": 256, "num_warps": 8},
    ]),
    ("act_7040x3072", "mse", (1, 16), [
        {"BLOCK_R": 2, "BLOCK_C": 256, "num_warps": 2},
        {"BLOCK_R": 4, "BLOCK_C": 128, "num_warps": 2},
        {"BLOCK_R": 4, "BLOCK_C": 256, "num_warps": 2},
        {"BLOCK_R": 4, "BLOCK_C": 256, "num_warps": 4},
        {"BLOCK_R": 8, "BLOCK_C": 256, "num_warps": 4},
    ]),
    ("w_14336x3072", "mse", (16, 16), [
        {"BLOCK_R": 16, "BLOCK_C": 32, "num_warps": 2},
        {"BLOCK_R": 16, "BLOCK_C": 64, "num_warps": 2},
        {"BLOCK_R": 16, "BLOCK_C": 64, "num_warps": 4},
        {"BLOCK_R": 16, "BLOCK_C": 128, "num_warps": 4},
    ]),
]
FP8_SWEEP: list[tuple[str, list[tuple[int, int, bool, int]]]] = [
    ("act_7040x3072", [(1, 4096, True, 8), (1, 1024, False, 4), (1, 512, False, 2), (1, 1024, False, 2)]),
    ("act_7040x14336", [(1, 16384, True, 16), (1, 2048, False, 8), (1, 2048, False, 4), (1, 1024, False, 4)]),
]


class Timer:
    """CUDA-event timing of single calls, each after an L2-evicting read."""

    def __init__(self, flush_bytes: int = 1 << 30):
        self.flush = torch.ones(flush_bytes // 4, dtype=torch.float32, device="cuda")

    def __call__(self, fn: Callable[[], Any], warmup: int, repeats: int) -> list[float]:
        for _ in range(warmup):
            fn()
        torch.cuda.synchronize()
        times = []
        for _ in range(repeats):
            self.flush.sum()
            a = torch.cuda.Event(enable_timing=True)
            b = torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
        return times


def summarise(times: list[float], nbytes: int, copy_gbps: float | None) -> dict[str, float | None]:
    med = statistics.median(times)
    gbps = nbytes / (med * 1e-3) / 1e9
    return {
        "ms_median": med,
        "ms_p10": percentile(times, 10),
        "ms_p90": percentile(times, 90),
        "gbps": gbps,
        "frac_copy": gbps / copy_gbps if copy_gbps else None,
    }


def copy_bandwidth(timer: Timer, nbytes: int = 2 << 30, repeats: int = 20) -> dict[str, float]:
    src = torch.randn(nbytes // 4, device="cuda")
    dst = torch.empty_like(src)
    times = timer(lambda: dst.copy_(src), warmup=3, repeats=repeats)
    out = summarise(times, 2 * nbytes, None)
    out["bytes"] = 2 * nbytes
    return {k: v for k, v in out.items() if v is not None}


def random_input(shape: tuple[int, int], dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Gaussian values with a log-normal magnitude per 16-element block (realistic spread of block scales)."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(shape, device="cuda", generator=g)
    x.view(-1, 16).mul_(torch.exp(1.5 * torch.randn(x.numel() // 16, 1, device="cuda", generator=g)))
    return x.to(dtype)


def case_callables(op: str, kw: dict[str, Any], x: torch.Tensor) -> tuple[Callable, Callable, int]:
    """(triton fn, reference fn, bytes) for one case on input x."""
    from longlive.quant.fp8 import dequantize_fp8, quantize_fp8
    from longlive.quant.nvfp4 import dequantize_nvfp4, quantize_nvfp4
    from longlive.quant.triton_kernels import (
        dequantize_fp8_triton,
        dequantize_nvfp4_triton,
        quantize_fp8_rowwise_triton,
        quantize_nvfp4_triton,
    )

    rows, cols = x.shape
    n, es = x.numel(), x.element_size()
    if op == "nvfp4_q":
        amax = x.abs().amax().float().reshape(1) if kw.get("given") else None
        rule, block = kw["rule"], kw["block"]
        return (
            lambda: quantize_nvfp4_triton(x, rule=rule, block=block, amax=amax),
            lambda: quantize_nvfp4(x, rule=rule, block=block, amax=amax),
            n * es + n // 2 + n // 16 + 8,
        )
    if op == "nvfp4_dq":
        q = quantize_nvfp4_triton(x)
        return (lambda: dequantize_nvfp4_triton(q), lambda: dequantize_nvfp4(q), n // 2 + n // 16 + 4 + 2 * n)
    if op == "fp8_q":
        return (lambda: quantize_fp8_rowwise_triton(x), lambda: quantize_fp8(x, "row"), n * es + n + 4 * rows)
    if op == "fp8_dq":
        q = quantize_fp8_rowwise_triton(x)
        return (lambda: dequantize_fp8_triton(q), lambda: dequantize_fp8(q), n + 4 * rows + 2 * n)
    raise ValueError(op)


def run(repeats: int, ref_repeats: int, with_ref: bool, sweep: bool, seed: int) -> dict[str, Any]:
    timer = Timer()
    copy = copy_bandwidth(timer)
    cgb = copy["gbps"]
    rows_out: list[dict[str, Any]] = []
    for sname, shape in SHAPES.items():
        x = random_input(shape, torch.bfloat16, seed)
        for label, op, kw in CASES[sname.split("_")[0]]:
            tri, ref, nbytes = case_callables(op, kw, x)
            impls = [("triton", tri, 5, repeats)] + ([("torch_ref", ref, 2, ref_repeats)] if with_ref else [])
            for impl, fn, w, r in impls:
                row = {"shape_name": sname, "shape": list(shape), "dtype": "bf16", "kernel": label, "impl": impl,
                       "bytes": nbytes, **summarise(timer(fn, w, r), nbytes, cgb)}
                rows_out.append(row)
                print(f"{sname:16s} {label:44s} {impl:9s} {row['ms_median'] * 1e3:9.1f} us "
                      f"{row['gbps']:8.0f} GB/s {row['frac_copy']:6.1%}", flush=True)
            del tri, ref
        del x
        torch.cuda.empty_cache()
    sweep_rows: list[dict[str, Any]] = []
    if sweep:
        sweep_rows = run_sweeps(timer, repeats, cgb, seed + 1)
    return {"copy": copy, "rows": rows_out, "sweep": sweep_rows}


def run_sweeps(timer: Timer, repeats: int, cgb: float, seed: int) -> list[dict[str, Any]]:
    """Time the tile configs of NVFP4_SWEEP / FP8_SWEEP (amax given); each output is compared with the default's."""
    from longlive.quant.triton_kernels import quantize_fp8_rowwise_triton, quantize_nvfp4_triton

    out: list[dict[str, Any]] = []
    for sname, rule, block, cfgs in NVFP4_SWEEP:
        x = random_input(SHAPES[sname], torch.bfloat16, seed)
        amax = x.abs().amax().float().reshape(1)
        nbytes = x.numel() * 2 + x.numel() // 2 + x.numel() // 16 + 8
        ref = quantize_nvfp4_triton(x, rule=rule, block=block, amax=amax)
        for cfg in cfgs:
            def fn(x: torch.Tensor = x, amax: torch.Tensor = amax, rule: str = rule, block: tuple = block,
                   cfg: dict = cfg) -> Any:
                return quantize_nvfp4_triton(x, rule=rule, block=block, amax=amax, config=cfg)
            q = fn()
            same = torch.equal(q.values, ref.values) and torch.equal(q.scales.view(torch.uint8),
                                                                     ref.scales.view(torch.uint8))
            row = {"kernel": "nvfp4_quant", "shape_name": sname, "rule": rule, "block": list(block), "config": cfg,
                   "amax": "given", "same_as_default": same, **summarise(timer(fn, 3, repeats), nbytes, cgb)}
            out.append(row)
            print(f"sweep nvfp4 {sname} {rule} {block} {cfg} {row['ms_median'] * 1e3:8.1f} us "
                  f"{row['gbps']:6.0f} GB/s same={same}", flush=True)
    for sname, cfgs8 in FP8_SWEEP:
        x = random_input(SHAPES[sname], torch.bfloat16, seed)
        nbytes = x.numel() * 3 + 4 * x.shape[0]
        ref8 = quantize_fp8_rowwise_triton(x)
        for cfg8 in cfgs8:
            def fn8(x: torch.Tensor = x, cfg8: tuple = cfg8) -> Any:
                return quantize_fp8_rowwise_triton(x, config=cfg8)
            q8 = fn8()
            same = torch.equal(q8.data.view(torch.uint8), ref8.data.view(torch.uint8)) and torch.equal(q8.scale,
                                                                                                       ref8.scale)
            row = {"kernel": "fp8_row_quant", "shape_name": sname, "config": list(cfg8), "same_as_default": same,
                   **summarise(timer(fn8, 3, repeats), nbytes, cgb)}
            out.append(row)
            print(f"sweep fp8 {sname} {cfg8} {row['ms_median'] * 1e3:8.1f} us {row['gbps']:6.0f} GB/s same={same}",
                  flush=True)
    return out


def table(res: dict[str, Any]) -> str:
    """Markdown table: Triton vs reference per case, GB/s and fraction of the copy bandwidth."""
    c = res["copy"]
    lines = [f"copy_ (2 GiB): {c['gbps']:.0f} GB/s ({c['ms_median']:.3f} ms)", "",
             "| shape | kernel | MB moved | Triton µs | Triton GB/s | of copy | torch ref µs | ref GB/s | speed-up |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    by = {(r["shape_name"], r["kernel"], r["impl"]): r for r in res["rows"]}
    for (sname, kernel, impl), r in by.items():
        if impl != "triton":
            continue
        ref = by.get((sname, kernel, "torch_ref"))
        refs = (f"{ref['ms_median'] * 1e3:.0f} | {ref['gbps']:.0f} | {ref['ms_median'] / r['ms_median']:.0f}×"
                if ref else "— | — | —")
        lines.append(f"| {sname} | {kernel} | {r['bytes'] / 1e6:.1f} | {r['ms_median'] * 1e3:.1f} | {r['gbps']:.0f} "
                     f"| {r['frac_copy']:.0%} | {refs} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="JSON output path")
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--ref-repeats", type=int, default=7)
    ap.add_argument("--no-ref", action="store_true", help="skip the PyTorch reference")
    ap.add_argument("--sweep", action="store_true", help="also time NVFP4 quantise tile configs (7040x3072)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("quant_kernels benchmark needs a CUDA GPU")
    res = run(args.repeats, args.ref_repeats, not args.no_ref, args.sweep, args.seed)
    cfg = {"repeats": args.repeats, "ref_repeats": args.ref_repeats, "sweep": args.sweep, "shapes": SHAPES}
    out = {"manifest": manifest(config=cfg, seed=args.seed), "timing_definition": TIMING_DEFINITION, **res}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print()
    print(table(res))


if __name__ == "__main__":
    main()
