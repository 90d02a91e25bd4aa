"""Peak memory: torch allocator peaks and NVML device memory (spec 05, "Memory")."""

from __future__ import annotations

import pynvml
import torch

GB = 1e9


def reset_peaks(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def device_used_gb(device: torch.device | str) -> float | None:
    """Memory in use on the whole GPU per NVML (all processes), or None without NVML."""
    dev = torch.device(device)
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    pynvml.nvmlInit()
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        return pynvml.nvmlDeviceGetMemoryInfo(handle).used / GB
    finally:
        pynvml.nvmlShutdown()


def peaks(device: torch.device | str) -> dict[str, float | None]:
    """peak_allocated_gb / peak_reserved_gb since the last reset, and NVML device_used_gb now."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return {"peak_allocated_gb": None, "peak_reserved_gb": None, "device_used_gb": None}
    torch.cuda.synchronize(dev)
    return {
        "peak_allocated_gb": torch.cuda.max_memory_allocated(dev) / GB,
        "peak_reserved_gb": torch.cuda.max_memory_reserved(dev) / GB,
        "device_used_gb": device_used_gb(dev),
    }
