"""Quantised Linear layers with explicit backends (recorded in every result; never a silent fallback).

- `emulated`: weights stay packed (memory really drops); each forward dequantises them and, for W4A4/W8A8,
  quantises→dequantises the activations too, then runs a high-precision GEMM. Numerics are real, GEMM speed
  is not. Any device. The honest NVFP4 path on Hopper.
- `fp8`: real FP8 GEMMs through `torch._scaled_mm` with row-wise scales (activations per token, weights per
  output channel), compute capability ≥ 8.9.
- `te`: TransformerEngine `te.Linear` under `te.autocast` with a recipe (`Float8CurrentScaling`,
  `Float8BlockScaling` on Hopper; `NVFP4BlockScaling` on ≥ 10.0). Optional extra; untested on hardware here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from longlive.names import LINEAR_BACKENDS, LINEAR_QUANT
from longlive.quant import kernels
from longlive.quant.tensors import FP8Tensor, NVFP4Tensor

BACKENDS = LINEAR_BACKENDS
FORMATS = tuple(f for f in LINEAR_QUANT if f != "none")
TE_RECIPES = {"fp8": "Float8CurrentScaling", "fp8_block": "Float8BlockScaling", "nvfp4": "NVFP4BlockScaling"}


class BackendUnavailable(ValueError):
    """The machine cannot run the requested backend; the message says why and what to use instead."""


def check_backend(fmt: str, backend: str, device: torch.device | str) -> None:
    """Raise BackendUnavailable (before any work) unless `backend` can run `fmt` on `device`."""
    device = torch.device(device)
    if fmt not in FORMATS:
        raise ValueError(f"unknown quantised format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if backend not in BACKENDS:
        raise ValueError(f"unknown linear backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    cc = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
    where = f"compute capability {cc[0]}.{cc[1]}" if cc else device.type
    if backend == "fp8":
        if fmt != "fp8":
            raise BackendUnavailable(
                f"linear backend 'fp8' runs FP8 GEMMs only, not {fmt}; use backend 'emulated' for {fmt} numerics"
                + (" or 'te' (NVFP4BlockScaling) on compute capability ≥ 10.0" if fmt == "nvfp4" else "")
            )
        if cc is None or cc < (8, 9):
            raise BackendUnavailable(
                f"linear backend 'fp8' needs a CUDA GPU with compute capability ≥ 8.9 for torch._scaled_mm; this is "
                f"{where}. Use backend 'emulated' for FP8 numerics without FP8 GEMMs"
            )
    if backend == "te":
        try:
            import transformer_engine.pytorch  # noqa: F401  # optional extra: te backend probe
        except ImportError:
            raise BackendUnavailable(
                "linear backend 'te' needs TransformerEngine: pip install 'longlive[te]' (optional extra; not "
                "installed here). Use backend 'fp8' (Hopper) or 'emulated' instead"
            ) from None
        if cc is None:
            raise BackendUnavailable(f"linear backend 'te' needs a CUDA GPU; this is {where}")
        if fmt == "nvfp4" and cc < (10, 0):
            raise BackendUnavailable(
                f"TransformerEngine NVFP4BlockScaling needs compute capability ≥ 10.0; this is {where}. Use backend "
                "'emulated' for NVFP4 numerics on Hopper, or fp8 for real low-precision speed"
            )


# The release's NVFP4 inference config quantises weights with the 4-over-6 `mse` rule (spec 03); activations keep
# TE's plain 6/448 rule (`act_rule`).
DEFAULT_WEIGHT_RULE = "mse"


@dataclass(frozen=True)
class LinearQuantConfig:
    fmt: str = "nvfp4"                   # fp8 | nvfp4
    backend: str = "emulated"            # emulated | fp8 | te
    weight_rule: str = DEFAULT_WEIGHT_RULE  # nvfp4 rule for weights: the release's 4-over-6 `mse` by default
    weight_block: tuple[int, int] = (1, 16)
    act_quant: bool = True               # W4A4 / W8A8; False = weight-only
    act_rule: str = "static_6"           # TE's NVFP4BlockScaling default (plain 6/448) for inference
    fp8_granularity: str = "row"         # weights per output channel, activations per token


def quantize_weight(w: torch.Tensor, cfg: LinearQuantConfig) -> NVFP4Tensor | FP8Tensor:
    if cfg.fmt == "nvfp4":
        return kernels.quantize_nvfp4(w, block=cfg.weight_block, rule=cfg.weight_rule)
    return kernels.quantize_fp8(w, granularity=cfg.fp8_granularity)


def dequantize(q: NVFP4Tensor | FP8Tensor, dtype: torch.dtype) -> torch.Tensor:
    if isinstance(q, NVFP4Tensor):
        return kernels.dequantize_nvfp4(q, dtype)
    return kernels.dequantize_fp8(q, dtype)


def fake_quant_activations(x: torch.Tensor, cfg: LinearQuantConfig) -> torch.Tensor:
    """Quantise→dequantise activations per token along K (1×16 NVFP4 blocks or FP8 per row)."""
    flat = x.reshape(-1, x.shape[-1])
    if cfg.fmt == "nvfp4":
        y = kernels.dequantize_nvfp4(kernels.quantize_nvfp4(flat, block=(1, 16), rule=cfg.act_rule), x.dtype)
    else:
        y = kernels.dequantize_fp8(kernels.quantize_fp8(flat, granularity="row"), x.dtype)
    return y.view_as(x)


class QuantLinear(nn.Module):
    """A Linear whose weight is stored quantised (packed) and whose GEMM runs on an explicit backend."""

    def __init__(self, weight: NVFP4Tensor | FP8Tensor, bias: torch.Tensor | None, cfg: LinearQuantConfig,
                 compute_dtype: torch.dtype = torch.bfloat16):
        super().__init__()
        self.cfg = cfg
        self.out_features, self.in_features = weight.shape
        self.compute_dtype = compute_dtype
        self.qweight = weight
        # Packed tensors as buffers so .to(device) and state_dict see them; the container is rebuilt from them.
        for name in _fields(weight):
            self.register_buffer(f"w_{name}", getattr(weight, name), persistent=False)
        self.bias = nn.Parameter(bias.detach().to(compute_dtype), requires_grad=False) if bias is not None else None
        self._te = None

    @classmethod
    def from_linear(cls, lin: nn.Linear, cfg: LinearQuantConfig) -> QuantLinear:
        if cfg.backend == "te":
            return _TELinear(lin, cfg)  # TE requantises BF16 weights itself
        return cls(quantize_weight(lin.weight.detach(), cfg), lin.bias, cfg, lin.weight.dtype)

    def _weight(self) -> NVFP4Tensor | FP8Tensor:
        for name in _fields(self.qweight):
            setattr(self.qweight, name, getattr(self, f"w_{name}"))
        return self.qweight

    def packed_nbytes(self) -> int:
        return self._weight().nbytes() + (self.bias.numel() * self.bias.element_size() if self.bias is not None else 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.compute_dtype)
        w = self._weight()
        if self.cfg.backend == "fp8":
            return _scaled_mm_rowwise(x, w, self.bias)
        if self.cfg.act_quant:
            x = fake_quant_activations(x, self.cfg)
        return F.linear(x, dequantize(w, self.compute_dtype), self.bias)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, fmt={self.cfg.fmt}, backend={self.cfg.backend}"


def _fields(q) -> tuple[str, ...]:
    return ("values", "scales", "amax", "global_scale") if isinstance(q, NVFP4Tensor) else ("data", "scale")


def _scaled_mm_rowwise(x: torch.Tensor, w: FP8Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """FP8 × FP8 → BF16 with per-token activation scales and per-output-channel weight scales."""
    flat = x.reshape(-1, x.shape[-1])
    xq = kernels.quantize_fp8(flat, granularity="row")
    out = torch._scaled_mm(
        xq.data, w.data.t(), scale_a=xq.scale.float().reshape(-1, 1), scale_b=w.scale.float().reshape(1, -1),
        bias=bias, out_dtype=torch.bfloat16,
    )
    return out.view(*x.shape[:-1], -1)


class _TELinear(nn.Module):
    """TransformerEngine Linear under te.autocast with the configured recipe (requantises BF16 weights)."""

    def __init__(self, lin: nn.Linear, cfg: LinearQuantConfig):
        super().__init__()
        import transformer_engine.common.recipe as te_recipe  # optional extra: TransformerEngine ([te])
        import transformer_engine.pytorch as te  # optional extra: TransformerEngine ([te])

        self.cfg = cfg
        self.out_features, self.in_features = lin.weight.shape
        self.inner = te.Linear(self.in_features, self.out_features, bias=lin.bias is not None,
                               params_dtype=torch.bfloat16, device=lin.weight.device)
        with torch.no_grad():
            self.inner.weight.copy_(lin.weight)
            if lin.bias is not None:
                self.inner.bias.copy_(lin.bias)
        name = TE_RECIPES["nvfp4" if cfg.fmt == "nvfp4" else ("fp8_block" if cfg.fp8_granularity.startswith("block")
                                                               else "fp8")]
        self.recipe = getattr(te_recipe, name)()
        self._autocast = getattr(te, "autocast", None) or te.fp8_autocast

    def packed_nbytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.inner.parameters())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kw = {"recipe": self.recipe} if self._autocast.__name__ == "autocast" else {"fp8_recipe": self.recipe}
        with self._autocast(enabled=True, **kw):
            return self.inner(x.to(torch.bfloat16))
