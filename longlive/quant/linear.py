"""Quantised Linear layers with explicit backends (recorded in every result; never a silent fallback).

- `emulated`: weights stay packed (memory really drops); each forward dequantises them and, for W4A4/W8A8,
  quantises→dequantises the activations too, then runs a high-precision GEMM. Numerics are real, GEMM speed
  is not. Any device. The honest NVFP4 path on Hopper.
- `fp8`: real FP8 GEMMs through `torch._scaled_mm` with row-wise scales (activations per token, weights per
  output channel), compute capability ≥ 8.9.
- `te`: TransformerEngine `te.Linear` under `te.autocast` with a recipe (`Float8CurrentScaling`,
  `Float8BlockScaling` on Hopper; `NVFP4BlockScaling` on ≥ 10.0). Optional extra; untested on hardware here.

FP8 activation scales (`act_scale`, emulated and fp8 backends): `dynamic` quantises each token row by its own amax
(a reduction per activation before the cast). `static` gives each Linear one per-tensor scale, observed on a
calibration run and then frozen, so quantising is a pointwise multiply, clamp and cast that inductor fuses into the
activation's producer. Static arithmetic (fp32, IEEE round-to-nearest):
  calibration: amax   = max |x| over every finite element the Linear saw (x in the compute dtype; NaN/±Inf ignored)
  freeze:      scale  = (amax · margin) / 448, inv = 1 / scale; scale 1 (and inv 1) if amax is 0 or inv overflows
  forward:     data   = e4m3(clamp(x · inv, ±448))    (RNE cast; NaN stays NaN, ±Inf saturates to ±448)
               y      = (data · scale) @ (w_data · w_scale)ᵀ + bias   (w row-wise, as in the dynamic path)
The multiply by the frozen reciprocal (not a division) rounds the same in eager PyTorch and in inductor's Triton,
whose fp32 `/` is approximate, so a compiled run quantises exactly as an eager one. Saturation (|x · inv| > 448) is
counted on the device in eager mode only; under torch.compile the count would be another reduction over the
activation, the pass static scaling removes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from longlive.names import ACT_SCALE, LINEAR_BACKENDS, LINEAR_QUANT
from longlive.quant import kernels
from longlive.quant.formats import E4M3_MAX
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


ACT_SCALE_MARGIN = 2.0
"""Headroom of a static activation scale over the calibrated amax: values up to margin × the largest one seen do not
saturate. It costs only resolution at the bottom of E4M3's range (one binade more of subnormals), while saturating
an outlier costs its whole excess."""


def check_act_scale(act_scale: str, *, linear_quant: str, act_quant: bool, linear_backend: str | None,
                    field: str = "act_scale", cli: bool = False) -> None:
    """ValueError (before any work) unless `act_scale` is known and, when static, applies: FP8 Linears with quantised
    activations on the emulated or fp8 backend. `cli`: name the fields by their `longlive generate` flags."""
    name = "--act-scale" if cli else field
    said = f"--act-scale {act_scale}" if cli else f"{field}={act_scale!r}"
    if act_scale not in ACT_SCALE:
        raise ValueError(f"{said} is not one of {', '.join(ACT_SCALE)}")
    if act_scale != "static":
        return
    if linear_quant != "fp8" or not act_quant:
        fix = ("give --precision fp8 (or fp8-emulated) without --weight-only, or --act-scale dynamic" if cli else
               f"give precision=fp8-static (or an fp8 precision with act_quant=true), or {field}=dynamic")
        raise ValueError(f"{said} calibrates per-tensor FP8 activation scales: it needs FP8 block Linears with "
                         f"quantised activations, not linear_quant={linear_quant}, act_quant={act_quant}; {fix}")
    if linear_backend not in ("emulated", "fp8"):
        raise ValueError(f"{said} runs on linear_backend fp8 or emulated, not {linear_backend!r} (TransformerEngine "
                         f"scales activations itself); give {name} dynamic or another fp8 precision")


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
    act_scale: str = "dynamic"           # FP8 activations: dynamic (per token) | static (calibrated per tensor)


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
        if cfg.act_scale == "static":
            check_act_scale(cfg.act_scale, linear_quant=cfg.fmt, act_quant=cfg.act_quant, linear_backend=cfg.backend)
            dev = weight.device
            # device state (not in the state dict): observed amax, frozen scale and its reciprocal, saturated count
            self.register_buffer("act_amax", torch.zeros(1, device=dev), persistent=False)
            self.register_buffer("act_fp8_scale", torch.ones(1, device=dev), persistent=False)
            self.register_buffer("act_fp8_inv_scale", torch.ones(1, device=dev), persistent=False)
            self.register_buffer("act_saturated", torch.zeros(1, dtype=torch.int64, device=dev), persistent=False)
            # the scale written out once per row for torch._scaled_mm's [M, 1] operand (`_scaled_mm_static`)
            self.register_buffer("act_fp8_scale_rows", torch.ones(0, 1, device=dev), persistent=False)
            self.act_rows = 0       # most rows (tokens) one calibration forward had
            self.act_calibrating = False
            self.act_frozen = False
            self.act_observed = 0   # forwards seen while calibrating
            self.act_elements = 0   # activation elements quantised statically in eager mode since the last reset
            self.act_margin: float | None = None

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
        if self.cfg.act_scale == "static":
            if not self.act_calibrating:
                return self._static_forward(x, w)
            self._observe(x)  # calibrating: record amax, compute with today's dynamic numerics
        if self.cfg.backend == "fp8":
            return _scaled_mm_rowwise(x, w, self.bias)
        if self.cfg.act_quant:
            x = fake_quant_activations(x, self.cfg)
        return F.linear(x, dequantize(w, self.compute_dtype), self.bias)

    # -- static activation scales (act_scale=static; module docstring) ---------------------------------------
    def start_calibration(self) -> None:
        """Forget any scale; from now on every forward records max |x| (and computes with dynamic scales)."""
        self.act_amax.zero_()
        self.act_observed, self.act_calibrating, self.act_frozen, self.act_margin = 0, True, False, None
        self.act_rows = 0

    def _observe(self, x: torch.Tensor) -> None:
        a = x.detach().abs().nan_to_num_(nan=0.0, posinf=0.0).amax().float().reshape(1)  # finite elements only
        torch.maximum(self.act_amax, a, out=self.act_amax)  # on the device: no host sync
        self.act_observed += 1
        self.act_rows = max(self.act_rows, x.numel() // x.shape[-1])

    def freeze_act_scale(self, margin: float = ACT_SCALE_MARGIN) -> None:
        """scale = (amax · margin) / 448 and its reciprocal, fixed from now on (module docstring)."""
        if self.act_observed == 0:
            raise RuntimeError("freezing a static activation scale that saw no calibration forward")
        amax = self.act_amax.float()
        scale = (amax * margin) / torch.tensor(E4M3_MAX, dtype=torch.float32, device=amax.device)
        inv = torch.ones_like(scale) / scale
        bad = ~(scale > 0) | ~torch.isfinite(inv)
        self.act_fp8_scale.copy_(torch.where(bad, torch.ones_like(scale), scale))
        self.act_fp8_inv_scale.copy_(torch.where(bad, torch.ones_like(inv), inv))
        self.register_buffer("act_fp8_scale_rows", self.act_fp8_scale.reshape(1, 1).expand(self.act_rows, 1)
                             .contiguous(), persistent=False)
        self.act_calibrating, self.act_frozen, self.act_margin = False, True, margin

    def _static_forward(self, x: torch.Tensor, w: FP8Tensor) -> torch.Tensor:
        if not self.act_frozen:
            raise RuntimeError(f"a QuantLinear with act_scale=static ({self.extra_repr()}) ran before calibration: "
                               "calibrate it first (longlive.quant.recipes.observing_act_amax, then "
                               "freeze_act_scales; the assembler does this at build)")
        flat = x.reshape(-1, x.shape[-1])
        y = flat * self.act_fp8_inv_scale  # fp32 (a [1] tensor promotes): one rounding, the same compiled or eager
        if not torch.compiler.is_compiling():
            self.act_saturated += (y.abs() > E4M3_MAX).sum()
            self.act_elements += y.numel()
        data = y.clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
        if self.cfg.backend == "fp8":
            rows = self.act_fp8_scale_rows
            scale_a = rows[: data.shape[0]] if data.shape[0] <= rows.shape[0] else self.act_fp8_scale
            out = _scaled_mm_static(data, scale_a, w, self.bias)
        else:
            x_hat = (data.float() * self.act_fp8_scale).to(self.compute_dtype)
            out = F.linear(x_hat, dequantize(w, self.compute_dtype), self.bias)
        return out.view(*x.shape[:-1], -1)

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


def _scaled_mm_static(data: torch.Tensor, scale: torch.Tensor, w: FP8Tensor, bias: torch.Tensor | None
                      ) -> torch.Tensor:
    """E4M3 activations [M, K] with one per-tensor scale × row-wise FP8 weights → BF16 [M, N].

    `torch._scaled_mm` pairs tensor-wise scales with tensor-wise ones and row-wise with row-wise only (torch 2.11 to
    2.13), and a row-wise scale_a must be a contiguous float32 [M, 1] (an expanded view is refused), so the one scale
    is given per row, exactly the per-tensor product: `scale` is either that [M, 1] column already (QuantLinear keeps
    one, written at freeze, so no kernel fills it per call) or the one-element scale, written out here.
    """
    if scale.shape != (data.shape[0], 1):
        scale = scale.float().reshape(1, 1).expand(data.shape[0], 1).contiguous()
    return torch._scaled_mm(data, w.data.t(), scale_a=scale, scale_b=w.scale.float().reshape(1, -1), bias=bias,
                            out_dtype=torch.bfloat16)


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
