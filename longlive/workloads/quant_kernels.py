"""The `quant_kernels` workload: bandwidth of the Triton NVFP4 / FP8 (de)quantise kernels and of the PyTorch reference
at the 5B shapes, against the device copy bandwidth measured in the same process (spec 03 / 05)
(`longlive sweep +experiment=quant_kernels`).

The measurement (moved here from the former `python -m longlive.bench.quant_kernels`, numerically unchanged; its
tile sweep was not moved) times every case of CASES on every shape of SHAPES. The row's headline columns are the
Triton GB/s of each case at one shape per kind (HEADLINE_SHAPES); the full table, reference included, is in
metrics_extra["kernels"] and in the cell's kernels.txt.
"""

from __future__ import annotations

import importlib.util
import statistics
from collections.abc import Callable
from typing import Any

import torch

from longlive.experiments.spec import RunSpec
from longlive.measure.timers import percentile
from longlive.quant.fp8 import dequantize_fp8, quantize_fp8
from longlive.quant.nvfp4 import dequantize_nvfp4, quantize_nvfp4
from longlive.quant.triton_kernels import (
    dequantize_fp8_triton,
    dequantize_nvfp4_triton,
    quantize_fp8_rowwise_triton,
    quantize_nvfp4_triton,
)
from longlive.workloads import CellContext
from longlive.workloads.checks import hardware_reason

TIMING_DEFINITION = (
    "per call: CUDA-event time of one call of the Python wrapper (allocation, the amax/global-scale launches and "
    "the kernel included), after a read of a 1 GiB buffer that evicts L2 (inputs come from HBM, and the eviction "
    "leaves no dirty lines); warm-up calls first (compilation excluded); median (p10/p90 also given) over the "
    "repeats. GB/s = bytes / median time with bytes = each input read once + each output written once (the "
    "NVFP4 quantise with amax computed from x reads x twice: once for amax, once to quantise; its GB/s still "
    "counts one read). Copy ceiling: dst.copy_(src) of 2 GiB, bytes = read + write."
)

MODEL = "wan2.2-ti2v-5b"
"""The preset whose shapes SHAPES are; a cell naming another model would mislabel its row."""

# (rows, cols) of the 2-D views at the 5B preset (spec 01/05): activations of the 300 block Linears, weights, KV.
SHAPES: dict[str, tuple[int, int]] = {
    "act_7040x3072": (7040, 3072),
    "act_7040x14336": (7040, 14336),
    "w_3072x3072": (3072, 3072),
    "w_14336x3072": (14336, 3072),
    "kv_7040x3072": (7040, 3072),
}

# (label, op, kwargs, headline column) per shape kind; the column is `<name>_gbps` at HEADLINE_SHAPES[kind].
CASES: dict[str, list[tuple[str, str, dict[str, Any], str]]] = {
    "act": [
        ("nvfp4 quant static_6 1x16 (amax computed)", "nvfp4_q", {"rule": "static_6", "block": (1, 16)},
         "nvfp4_quant_act"),
        ("nvfp4 quant mse 1x16 (amax computed)", "nvfp4_q", {"rule": "mse", "block": (1, 16)},
         "nvfp4_quant_act_mse"),
        ("nvfp4 quant static_6 1x16 (amax given)", "nvfp4_q", {"rule": "static_6", "block": (1, 16), "given": True},
         "nvfp4_quant_act_amax_given"),
        ("nvfp4 quant mse 1x16 (amax given)", "nvfp4_q", {"rule": "mse", "block": (1, 16), "given": True},
         "nvfp4_quant_act_mse_amax_given"),
        ("nvfp4 dequant -> bf16", "nvfp4_dq", {}, "nvfp4_dequant_act"),
        ("fp8 row quant", "fp8_q", {}, "fp8_quant_act"),
        ("fp8 row dequant -> bf16", "fp8_dq", {}, "fp8_dequant_act"),
    ],
    "w": [
        ("nvfp4 quant static_6 1x16 (amax computed)", "nvfp4_q", {"rule": "static_6", "block": (1, 16)},
         "nvfp4_quant_weight"),
        ("nvfp4 quant static_6 16x16 (amax computed)", "nvfp4_q", {"rule": "static_6", "block": (16, 16)},
         "nvfp4_quant_weight_16x16"),
        ("nvfp4 quant mse 16x16 (amax computed)", "nvfp4_q", {"rule": "mse", "block": (16, 16)},
         "nvfp4_quant_weight_mse_16x16"),
        ("nvfp4 dequant -> bf16", "nvfp4_dq", {}, "nvfp4_dequant_weight"),
        ("fp8 row quant", "fp8_q", {}, "fp8_quant_weight"),
        ("fp8 row dequant -> bf16", "fp8_dq", {}, "fp8_dequant_weight"),
    ],
    "kv": [
        ("nvfp4 quant mse 1x16 (amax computed)", "nvfp4_q", {"rule": "mse", "block": (1, 16)}, "nvfp4_quant_kv_mse"),
        ("nvfp4 dequant -> bf16", "nvfp4_dq", {}, "nvfp4_dequant_kv"),
        ("fp8 row quant", "fp8_q", {}, "fp8_quant_kv"),
        ("fp8 row dequant -> bf16", "fp8_dq", {}, "fp8_dequant_kv"),
    ],
}

HEADLINE_SHAPES = {"act": "act_7040x3072", "w": "w_14336x3072", "kv": "kv_7040x3072"}
"""The shape per kind whose Triton GB/s become the row's flat columns (every shape is in metrics_extra)."""

MAIN_CASE = ("act_7040x3072", "nvfp4 quant static_6 1x16 (amax computed)")
"""The activation quantise every NVFP4 W4A4 Linear runs (act_rule static_6): it also gets reference columns."""

REPEATS, REF_REPEATS, WITH_REF = 50, 7, True
"""Timed calls per case for Triton and for the PyTorch reference (the former bench's defaults)."""


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
    """Median / p10 / p90 ms of `times`, GB/s of `nbytes` at the median, and that as a fraction of the copy GB/s."""
    med = statistics.median(times)
    gbps = nbytes / (med * 1e-3) / 1e9
    return {
        "ms_median": med,
        "ms_p10": percentile(times, 10),
        "ms_p90": percentile(times, 90),
        "gbps": gbps,
        "frac_copy": gbps / copy_gbps if copy_gbps else None,
    }


def case_bytes(op: str, rows: int, numel: int, element_size: int) -> int:
    """Bytes one call moves: each input read once, each output written once (NVFP4: packed nibbles n/2, one E4M3
    scale per 16 values, fp32 global scale; FP8 rows: one byte per value, one fp32 scale per row; dequantise writes
    bf16). The amax an NVFP4 quantise computes from x is not counted as a second read (TIMING_DEFINITION)."""
    n, es = numel, element_size
    if op == "nvfp4_q":
        return n * es + n // 2 + n // 16 + 8
    if op == "nvfp4_dq":
        return n // 2 + n // 16 + 4 + 2 * n
    if op == "fp8_q":
        return n * es + n + 4 * rows
    if op == "fp8_dq":
        return n + 4 * rows + 2 * n
    raise ValueError(op)


def copy_bandwidth(timer: Timer, nbytes: int = 2 << 30, repeats: int = 20) -> dict[str, float]:
    """The ceiling the kernels are compared with: dst.copy_(src) of `nbytes`, read + write counted."""
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
    nbytes = case_bytes(op, x.shape[0], x.numel(), x.element_size())
    if op == "nvfp4_q":
        amax = x.abs().amax().float().reshape(1) if kw.get("given") else None
        rule, block = kw["rule"], kw["block"]
        return (
            lambda: quantize_nvfp4_triton(x, rule=rule, block=block, amax=amax),
            lambda: quantize_nvfp4(x, rule=rule, block=block, amax=amax),
            nbytes,
        )
    if op == "nvfp4_dq":
        q = quantize_nvfp4_triton(x)
        return (lambda: dequantize_nvfp4_triton(q), lambda: dequantize_nvfp4(q), nbytes)
    if op == "fp8_q":
        return (lambda: quantize_fp8_rowwise_triton(x), lambda: quantize_fp8(x, "row"), nbytes)
    if op == "fp8_dq":
        q = quantize_fp8_rowwise_triton(x)
        return (lambda: dequantize_fp8_triton(q), lambda: dequantize_fp8(q), nbytes)
    raise ValueError(op)


def measure_kernels(repeats: int, ref_repeats: int, with_ref: bool, seed: int) -> dict[str, Any]:
    """Copy ceiling, then every case of CASES on every shape of SHAPES (Triton, and the reference when asked):
    {"copy": {...}, "rows": [one dict per (shape, case, impl)]}."""
    timer = Timer()
    copy = copy_bandwidth(timer)
    cgb = copy["gbps"]
    rows_out: list[dict[str, Any]] = []
    for sname, shape in SHAPES.items():
        x = random_input(shape, torch.bfloat16, seed)
        for label, op, kw, _ in CASES[sname.split("_")[0]]:
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
    return {"copy": copy, "rows": rows_out}


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


def headline(res: dict[str, Any]) -> dict[str, float | None]:
    """The row's flat columns from a measurement: copy_gbps, `<case>_gbps` of the Triton kernel at HEADLINE_SHAPES,
    and the main case's reference GB/s, Triton's fraction of copy and its speed-up over the reference."""
    by = {(r["shape_name"], r["kernel"], r["impl"]): r for r in res["rows"]}
    cols: dict[str, float | None] = {"copy_gbps": res["copy"]["gbps"]}
    for kind, sname in HEADLINE_SHAPES.items():
        for label, _, _, name in CASES[kind]:
            cols[f"{name}_gbps"] = by[(sname, label, "triton")]["gbps"]
    tri, ref = by[(*MAIN_CASE, "triton")], by.get((*MAIN_CASE, "torch_ref"))
    cols["nvfp4_quant_act_frac_copy"] = tri["frac_copy"]
    cols["nvfp4_quant_act_ref_gbps"] = ref["gbps"] if ref else None
    cols["nvfp4_quant_act_speedup"] = ref["ms_median"] / tri["ms_median"] if ref else None
    return cols


def timing_definitions(columns: list[str]) -> dict[str, str]:
    """Per column: where it was measured (shape, case, impl) and TIMING_DEFINITION."""
    where = {"copy_gbps": "copy_gbps: dst.copy_(src) of 2 GiB, (read + write) / median time"}
    for kind, sname in HEADLINE_SHAPES.items():
        for label, _, _, name in CASES[kind]:
            where[f"{name}_gbps"] = f"{name}_gbps: Triton '{label}' on bf16 {sname}"
    main = f"'{MAIN_CASE[1]}' on bf16 {MAIN_CASE[0]}"
    where["nvfp4_quant_act_frac_copy"] = f"nvfp4_quant_act_frac_copy: Triton GB/s of {main} / copy_gbps"
    where["nvfp4_quant_act_ref_gbps"] = f"nvfp4_quant_act_ref_gbps: the PyTorch reference of {main}"
    where["nvfp4_quant_act_speedup"] = (f"nvfp4_quant_act_speedup: median time of the PyTorch reference / of Triton, "
                                        f"{main}")
    return {c: f"{where[c]}. {TIMING_DEFINITION}" for c in columns}


class QuantKernelsWorkload:
    """Triton NVFP4 / FP8 kernel bandwidth at the 5B shapes against the copy ceiling and the PyTorch reference."""

    name = "quant_kernels"

    def check(self, spec: RunSpec) -> str | None:
        if spec.sp * spec.dp != 1:
            raise ValueError(f"quant_kernels times one GPU; got sp={spec.sp}, dp={spec.dp}")
        if spec.model.name != MODEL:
            raise ValueError(f"quant_kernels times the {MODEL} shapes; model={spec.model.name} would mislabel the row")
        if spec.precision.dtype != "bf16":
            raise ValueError(f"quant_kernels quantises bf16 inputs; precision={spec.precision.name} has dtype "
                             f"{spec.precision.dtype} (use precision=bf16)")
        reason = hardware_reason(spec)  # invalid settings above fail on every machine; these skips are this one's
        if reason:
            return reason
        if spec.hardware.device != "cuda":
            return f"quant_kernels times CUDA kernels; hardware={spec.hardware.name} is not a CUDA device"
        if importlib.util.find_spec("triton") is None:
            return "missing extra: triton (the kernels timed are Triton's)"
        return None

    def run(self, spec: RunSpec, ctx: CellContext) -> dict[str, Any]:
        res = measure_kernels(REPEATS, REF_REPEATS, WITH_REF, spec.seed)
        text = table(res)
        print(f"\n{text}", flush=True)
        (ctx.out / "kernels.txt").write_text(f"{text}\n\n{TIMING_DEFINITION}\n")
        cols = headline(res)
        return {
            **cols,
            "timing_definition": timing_definitions(list(cols)),
            "metrics_extra": {"kernels": res["rows"], "copy": res["copy"], "gpu": torch.cuda.get_device_name(0),
                              "config": {"repeats": REPEATS, "ref_repeats": REF_REPEATS, "with_ref": WITH_REF,
                                         "shapes": SHAPES, "headline_shapes": HEADLINE_SHAPES}},
            "artifacts": {"kernels": "kernels.txt"},
        }
