"""Fast paths: the Triton kernels where they apply (CUDA tensor, Triton present, supported configuration),
the PyTorch reference otherwise. The kernels are tested bit-exact against the reference on the GPU, so this
choice changes speed, never numbers; `active_kernels()` records which one ran for the result manifest.
"""

from __future__ import annotations

import torch

from longlive.quant import fp8, nvfp4
from longlive.quant.tensors import FP8Tensor, NVFP4Tensor
from longlive.quant.triton_kernels import (
    dequantize_fp8_triton,
    dequantize_nvfp4_triton,
    quantize_fp8_rowwise_triton,
    quantize_nvfp4_triton,
    triton_available,
)

TRITON_NVFP4_RULES = ("static_6", "mse")
_used: set[str] = set()


def _triton(x: torch.Tensor) -> bool:
    """Use the Triton kernel? Not under torch.compile: there the PyTorch reference is the fast path, because
    inductor fuses it into the kernel that produced x (longlive.infer.compile)."""
    if not x.is_cuda or torch.compiler.is_compiling():
        return False
    return triton_available()


def active_kernels() -> list[str]:
    return sorted(_used)


def _record(name: str) -> None:
    if torch.compiler.is_compiling():
        name = name.replace("torch:", "inductor:")  # traced once; the compiled graph runs it from then on
    _used.add(name)


def quantize_nvfp4(x: torch.Tensor, *, block: tuple[int, int] = (1, 16), rule: str = "static_6") -> NVFP4Tensor:
    if _triton(x) and tuple(block) == (1, 16) and rule in TRITON_NVFP4_RULES:
        _used.add("triton:nvfp4_quant")
        return quantize_nvfp4_triton(x, rule=rule)
    _record("torch:nvfp4_quant")
    return nvfp4.quantize_nvfp4(x, block=block, rule=rule)


def dequantize_nvfp4(q: NVFP4Tensor, dtype: torch.dtype) -> torch.Tensor:
    if _triton(q.values):
        _used.add("triton:nvfp4_dequant")
        return dequantize_nvfp4_triton(q, dtype)
    _record("torch:nvfp4_dequant")
    return nvfp4.dequantize_nvfp4(q, dtype)


def quantize_fp8(x: torch.Tensor, granularity: str = "row") -> FP8Tensor:
    if _triton(x) and granularity == "row":
        _used.add("triton:fp8_quant")
        return quantize_fp8_rowwise_triton(x)
    _record("torch:fp8_quant")
    return fp8.quantize_fp8(x, granularity=granularity)


def dequantize_fp8(q: FP8Tensor, dtype: torch.dtype) -> torch.Tensor:
    if _triton(q.data):
        _used.add("triton:fp8_dequant")
        return dequantize_fp8_triton(q, dtype)
    _record("torch:fp8_dequant")
    return fp8.dequantize_fp8(q, dtype)
