"""Where a run's device time goes: torch.profiler around any callable, the device time by kind of kernel, and the
top kernels, written as a text table next to the run's other artifacts (the `profile=true` field of a cell)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

KERNEL_KINDS = (  # first match wins; names as the CUDA profiler reports them
    ("communication (NCCL)", ("nccl",)),
    ("attention", ("fmha", "flash", "cudnn", "attention", "sdpa")),
    ("GEMM", ("triton_tem",)),  # inductor's Triton GEMM templates
    # every other inductor kernel, also those named after a GEMM whose output they consume (…fused__scaled_mm…)
    ("fused pointwise (inductor)", ("triton_",)),
    ("GEMM", ("nvjet", "gemm", "cutlass", "xmma", "sm90_", "scaled_mm", "wgmma")),
    ("copies", ("copy", "memcpy", "memset", "cat")),
)


def device_kernels(events: Iterable[Any]) -> list[tuple[str, float]]:
    """(name, self device µs) of the profiler's device-side events only: the CPU operators that launched them
    (aten::addmm, the Triton launchers) and GPU user annotations (nccl:all_to_all) report the same time again, so
    they are left out, as the profiler's own 'Self CUDA time total' leaves them out."""
    return [(e.key, e.self_device_time_total) for e in events
            if e.device_type != DeviceType.CPU and not getattr(e, "is_user_annotation", False)]


def device_time_breakdown(kernels: Iterable[tuple[str, float]]) -> dict[str, float]:
    """(kernel name, self device µs) pairs (`device_kernels`) → µs per kind of kernel (KERNEL_KINDS, else 'other'),
    largest first."""
    out: dict[str, float] = {}
    for name, us in kernels:
        if not us:
            continue
        low = name.lower()
        kind = next((k for k, keys in KERNEL_KINDS if any(x in low for x in keys)), "other")
        out[kind] = out.get(kind, 0.0) + float(us)
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def write_profile(prof: profile, path: Path, title: str) -> dict[str, float]:
    """The device time by kind of kernel, then the top 30 kernels, to `path`; returns ms per kind of kernel."""
    sort = "cuda_time_total" if torch.cuda.is_available() else "cpu_time_total"
    events = prof.key_averages()
    table = events.table(sort_by=sort, row_limit=30, max_name_column_width=70)
    shares = device_time_breakdown(device_kernels(events))
    total = sum(shares.values()) or 1.0
    summary = "\n".join(f"{k:<28} {v / 1e3:10.1f} ms {v / total:7.1%}" for k, v in shares.items())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{title}\ndevice time by kind of kernel (self time):\n{summary}\n\n{table}")
    return {k: v / 1e3 for k, v in shares.items()}


def profile_call(fn: Callable[[], Any], path: Path, title: str, *, record: bool = True) -> dict[str, float] | None:
    """Run `fn` under the profiler (CPU, plus CUDA when there is a GPU) and write its table to `path`; returns ms per
    kind of kernel. With `record=False` just run it: under SP every rank must take part in the collectives, but one
    records."""
    if not record:
        fn()
        return None
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=acts) as prof:
        fn()
    return write_profile(prof, path, title)
