"""Low-precision *training* of the 300 block Linears (spec 03), applied from outside the model.

Every Linear GEMM is written as A · Bᵀ with both operands quantised along the reduction dimension:

    FPROP  y  = x · Wᵀ        A = x  [M, K]   B = W  [N, K]
    DGRAD  dx = g · W         A = g  [M, N]   B = Wᵀ [K, N]
    WGRAD  dW = gᵀ · x        A = gᵀ [N, M]   B = xᵀ [K, M]      (M = tokens)
    bias   db = Σ_tokens g     high precision (fp32 accumulate), never quantised

Recipes (by name, `get_training_recipe`):

- `bf16`: no quantisation (F.linear in the input dtype on the cast of the FP32 master weight).
- `fp8`: real FP8 GEMMs via `torch._scaled_mm` (compute capability ≥ 8.9). All operands E4M3 with row-wise
  (per-row-of-the-operand) FP32 scales along the reduction dim: x per token, W per output channel (FPROP),
  grad-out per token (DGRAD, **E4M3**, not E5M2: per-row current scaling leaves E5M2's extra range unused and
  `_scaled_mm` row-wise scaling takes E4M3 × E4M3), Wᵀ per input channel, gᵀ per output channel and xᵀ per input
  channel (WGRAD). x is quantised column-wise (xᵀ per feature over tokens) already in the forward and only that
  FP8 copy is saved, as TransformerEngine does. BF16 GEMM outputs.
- `fp8-emulated`: the same quantisation points through the reference quantiser, quantise→dequantise, FP32 GEMM.
  Any device; the numerics of `fp8` up to GEMM accumulation order and its BF16 output rounding.
- `nvfp4`: the release's NVFP4 recipe, emulated (real numerics, FP32 GEMM speed): FPROP x 1×16 NVFP4 (`mse`)
  × W 16×16 NVFP4 (`static_6`, the AR-training weight rule); DGRAD grad-out 1×16 NVFP4 (`mse`) with stochastic
  rounding × Wᵀ (the 16×16 tiles make Wᵀ's quantisation the transpose of W's, so the forward's packed weight is
  reused); WGRAD gᵀ and xᵀ quantised 1×16 along tokens after the 16×16 random Hadamard transform along tokens,
  gᵀ with stochastic rounding (the RHT cancels in gᵀT·(xᵀT)ᵀ = gᵀx because T is orthonormal). Saved for
  backward: the NVFP4 (RHT, column-wise) activation and the packed weight; no high-precision activation.
- `nvfp4-te` (TransformerEngine `NVFP4BlockScaling`, compute capability ≥ 10.0) is out of scope: clear error.

Stochastic-rounding draws: per backward, `torch.rand((M, N))` for DGRAD's g then `torch.rand((N, Mp))` for
WGRAD's gᵀ (Mp = M rounded up to 16; zero tokens pad M), from the layer's generator if set, else the global RNG.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from longlive.quant import kernels
from longlive.quant.hadamard import random_hadamard_transform
from longlive.quant.linear import BackendUnavailable, check_backend
from longlive.quant.nvfp4 import dequantize_nvfp4, quantize_nvfp4
from longlive.quant.recipes import BLOCK_LINEARS
from longlive.quant.tensors import FP8Tensor, NVFP4Tensor

RECIPES = ("bf16", "fp8", "fp8-emulated", "nvfp4")
_PAD = 16


@dataclass(frozen=True)
class TrainingRecipe:
    """What is quantised where. fmt: none | fp8 | nvfp4; emulated: quantise→dequantise + FP32 GEMM.

    quantize=False keeps the data flow (transposes, padding, RHT) but makes every quantiser the identity: a
    debugging / test switch showing the recipe's plumbing is exact.
    hadamard: True = the default 16-sign vector, int = seeded signs, False/None = no RHT (nvfp4 WGRAD only).
    """

    name: str
    fmt: str = "none"
    emulated: bool = True
    act_rule: str = "mse"
    weight_rule: str = "static_6"
    grad_rule: str = "mse"
    stochastic: bool = True
    hadamard: bool | int | None = True
    quantize: bool = True


def get_training_recipe(name: str, **overrides) -> TrainingRecipe:
    """The recipe called `name` (see module docstring), with dataclass field overrides."""
    if name == "nvfp4-te":
        raise BackendUnavailable(
            "training recipe 'nvfp4-te' (TransformerEngine NVFP4BlockScaling, compute capability ≥ 10.0) is out of "
            "scope here; use 'nvfp4' (the release's NVFP4 recipe, emulated) or 'fp8' for real low-precision speed"
        )
    base = {
        "bf16": TrainingRecipe("bf16"),
        "fp8": TrainingRecipe("fp8", fmt="fp8", emulated=False),
        "fp8-emulated": TrainingRecipe("fp8-emulated", fmt="fp8", emulated=True),
        "nvfp4": TrainingRecipe("nvfp4", fmt="nvfp4", emulated=True),
    }
    if name not in base:
        raise ValueError(f"unknown training recipe {name!r}; choose one of {', '.join(RECIPES)} (or nvfp4-te)")
    return replace(base[name], **overrides)


def check_training_recipe(recipe: TrainingRecipe, device: torch.device | str) -> None:
    """Raise BackendUnavailable (before any work) where `device` cannot run `recipe`."""
    if recipe.fmt == "fp8" and not recipe.emulated:
        try:
            check_backend("fp8", "fp8", device)
        except BackendUnavailable as e:
            raise BackendUnavailable(
                f"training recipe 'fp8' runs real FP8 GEMMs: {e}. Use training recipe 'fp8-emulated' for the same "
                "FP8 numerics with high-precision GEMMs"
            ) from None


# -- quantisation points -----------------------------------------------------------------------------------
def _pad_tokens(t: torch.Tensor, rows: int) -> torch.Tensor:
    """Zero-pad the token (first) dim to `rows`: zero tokens change no amax and contribute nothing to a GEMM."""
    return t if t.shape[0] == rows else torch.cat((t, t.new_zeros(rows - t.shape[0], *t.shape[1:])), 0)


def _fp8_row(t: torch.Tensor, recipe: TrainingRecipe) -> FP8Tensor | torch.Tensor:
    """E4M3 with one FP32 scale per row (along the reduction dim); identity when quantisation is off."""
    return kernels.quantize_fp8(t.contiguous(), granularity="row") if recipe.quantize else t.float()


def _fp8_hp(q: FP8Tensor | torch.Tensor) -> torch.Tensor:
    return kernels.dequantize_fp8(q, torch.float32) if isinstance(q, FP8Tensor) else q


def _nv(t: torch.Tensor, recipe: TrainingRecipe, *, rule: str, block=(1, 16), stochastic: bool = False,
        noise: torch.Tensor | None = None, hadamard: bool | int | None = None) -> NVFP4Tensor | torch.Tensor:
    """NVFP4 of the 2-D `t` (rotated by the RHT along its last dim when `hadamard`); identity (still rotated)
    when quantisation is off. The result stays in the rotated domain."""
    h = hadamard if hadamard not in (None, False) else None
    if not recipe.quantize:
        return random_hadamard_transform(t, None if h is True else h) if h is not None else t.float()
    if not stochastic and h is None:
        return kernels.quantize_nvfp4(t.contiguous(), block=block, rule=rule)
    return quantize_nvfp4(t, block=block, rule=rule, stochastic=stochastic, noise=noise, hadamard=h)


def _nv_hp(q: NVFP4Tensor | torch.Tensor) -> torch.Tensor:
    """Dequantise to fp32 (rotated domain kept: WGRAD's two rotations cancel in the GEMM)."""
    if not isinstance(q, NVFP4Tensor):
        return q
    return kernels.dequantize_nvfp4(q, torch.float32) if q.block == (1, 16) and q.values.is_cuda else \
        dequantize_nvfp4(q, torch.float32)


def _rand(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    return torch.rand(shape, generator=generator, device=device, dtype=torch.float32)


def _scaled_mm_abt(a: FP8Tensor, b: FP8Tensor) -> torch.Tensor:
    """A · Bᵀ for row-wise E4M3 A [m, k], B [n, k] (k, m, n multiples of 16) → BF16 via torch._scaled_mm."""
    return torch._scaled_mm(a.data, b.data.t(), scale_a=a.scale.float().reshape(-1, 1),
                            scale_b=b.scale.float().reshape(1, -1), out_dtype=torch.bfloat16)


def _unpack(q) -> tuple[list[torch.Tensor], tuple]:
    """A quantised container (or a plain tensor, when quantisation is off) → (tensors, metadata) for
    save_for_backward."""
    if isinstance(q, FP8Tensor):
        return [q.data, q.scale], ("fp8", q.shape, q.granularity)
    if isinstance(q, NVFP4Tensor):
        return [q.values, q.scales, q.amax, q.global_scale], ("nvfp4", q.shape, q.rule, q.block)
    return [q], ("plain",)


def _repack(tensors, meta: tuple):
    kind, *rest = meta
    if kind == "fp8":
        return FP8Tensor(*tensors, *rest)
    if kind == "nvfp4":
        return NVFP4Tensor(*tensors, *rest)
    return tensors[0]


# -- autograd functions ------------------------------------------------------------------------------------
class _FP8LinearFn(torch.autograd.Function):
    """FP8 Linear (real `_scaled_mm` or emulated); saves the column-wise FP8 activation and the weight."""

    @staticmethod
    def forward(ctx, x, weight, bias, recipe: TrainingRecipe):
        lead, dt = x.shape[:-1], x.dtype
        x2 = x.reshape(-1, x.shape[-1])
        m = x2.shape[0]
        mp = -(-m // _PAD) * _PAD
        xp = _pad_tokens(x2, mp)
        w = weight.to(dt)
        xq, wq = _fp8_row(xp, recipe), _fp8_row(w, recipe)
        xtq = _fp8_row(xp.t(), recipe)  # column-wise copy for WGRAD: each feature scaled over the tokens
        if recipe.emulated:
            y = _fp8_hp(xq) @ _fp8_hp(wq).t()
        else:
            y = _scaled_mm_abt(xq, wq)
        y = y[:m].to(dt)
        if bias is not None:
            y = y + bias.to(dt)
        ctx.recipe, ctx.m, ctx.mp, ctx.xdtype, ctx.has_bias = recipe, m, mp, dt, bias is not None
        ctx.bias_dtype = bias.dtype if bias is not None else None
        # The column-wise FP8 copy (1 byte/element) goes through save_for_backward as plain tensors, so activation
        # checkpointing can drop and recompute it (tensors stashed as ctx attributes would live until backward).
        tensors, ctx.xt_meta = _unpack(xtq)
        ctx.save_for_backward(weight, *tensors)
        return y.reshape(*lead, -1)

    @staticmethod
    def backward(ctx, gy):
        weight, *tensors = ctx.saved_tensors
        xtq = _repack(tensors, ctx.xt_meta)  # a local: anything put on ctx lives as long as the whole graph
        r, m, mp, dt = ctx.recipe, ctx.m, ctx.mp, ctx.xdtype
        g = _pad_tokens(gy.reshape(-1, gy.shape[-1]).to(dt), mp)
        gq, wtq = _fp8_row(g, r), _fp8_row(weight.to(dt).t(), r)
        gtq = _fp8_row(g.t(), r)
        if r.emulated:
            dx = _fp8_hp(gq) @ _fp8_hp(wtq).t()
            dw = _fp8_hp(gtq) @ _fp8_hp(xtq).t()
        else:
            dx = _scaled_mm_abt(gq, wtq)
            dw = _scaled_mm_abt(gtq, xtq)
        db = gy.reshape(-1, gy.shape[-1]).float().sum(0).to(ctx.bias_dtype) if ctx.has_bias else None
        return dx[:m].to(dt).reshape(*gy.shape[:-1], -1), dw.to(weight.dtype), db, None


class _NVFP4LinearFn(torch.autograd.Function):
    """The release's NVFP4 training recipe, emulated; saves only packed NVFP4 tensors."""

    @staticmethod
    def forward(ctx, x, weight, bias, recipe: TrainingRecipe, generator):
        lead, dt = x.shape[:-1], x.dtype
        x2 = x.reshape(-1, x.shape[-1])
        m = x2.shape[0]
        mp = -(-m // _PAD) * _PAD
        xq = _nv(x2, recipe, rule=recipe.act_rule)
        wq = _nv(weight.to(dt), recipe, rule=recipe.weight_rule, block=(16, 16))
        # WGRAD operand quantised now from the high-precision x (tokens on the last dim, RHT along them).
        xtq = _nv(_pad_tokens(x2, mp).t(), recipe, rule=recipe.act_rule, hadamard=recipe.hadamard)
        y = (_nv_hp(xq) @ _nv_hp(wq).t()).to(dt)
        if bias is not None:
            y = y + bias.to(dt)
        ctx.recipe, ctx.gen, ctx.m, ctx.mp, ctx.xdtype = recipe, generator, m, mp, dt
        ctx.has_bias, ctx.bias_dtype, ctx.wdtype = bias is not None, getattr(bias, "dtype", None), weight.dtype
        # packed operands through save_for_backward (see _FP8LinearFn): checkpointing can then free them
        (tx, mx), (tw, mw) = _unpack(xtq), _unpack(wq)
        ctx.meta = (len(tx), mx, mw)
        ctx.save_for_backward(*tx, *tw)
        return y.reshape(*lead, -1)

    @staticmethod
    def backward(ctx, gy):
        saved, (n, mx, mw) = ctx.saved_tensors, ctx.meta
        xtq, wq = _repack(saved[:n], mx), _repack(saved[n:], mw)  # locals, not ctx attributes (see _FP8LinearFn)
        r, m, mp, dt = ctx.recipe, ctx.m, ctx.mp, ctx.xdtype
        g = gy.reshape(-1, gy.shape[-1]).to(dt)
        n = g.shape[1]
        sr = r.stochastic and r.quantize
        noise_d = _rand((m, n), ctx.gen, g.device) if sr else None
        noise_w = _rand((n, mp), ctx.gen, g.device) if sr else None
        gq = _nv(g, r, rule=r.grad_rule, stochastic=sr, noise=noise_d)
        dx = _nv_hp(gq) @ _nv_hp(wq)  # g · W  (= A·Bᵀ with B = Wᵀ, whose 16×16 quantisation is wqᵀ)
        gtq = _nv(_pad_tokens(g, mp).t(), r, rule=r.grad_rule, stochastic=sr, noise=noise_w, hadamard=r.hadamard)
        dw = _nv_hp(gtq) @ _nv_hp(xtq).t()
        db = g.float().sum(0).to(ctx.bias_dtype) if ctx.has_bias else None
        return dx.to(dt).reshape(*gy.shape[:-1], -1), dw.to(ctx.wdtype), db, None, None


# -- module and model swap ---------------------------------------------------------------------------------
class QuantTrainLinear(nn.Module):
    """Linear with an FP32 master weight (+ bias) whose GEMMs run under a training recipe.

    Compute dtype = the input's dtype: the weight is cast to it (the BF16 copy FSDP mixed precision makes) and
    re-quantised from that cast every forward. `generator` (optional, on the weight's device) drives the
    stochastic rounding of the NVFP4 gradients; None uses the global RNG.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, recipe: TrainingRecipe,
                 generator: torch.Generator | None = None, device=None):
        super().__init__()
        self.in_features, self.out_features, self.recipe, self.generator = in_features, out_features, recipe, generator
        _check_shape(in_features, out_features, recipe)
        self.weight = nn.Parameter(torch.empty(out_features, in_features, device=device, dtype=torch.float32))
        self.bias = nn.Parameter(torch.zeros(out_features, device=device, dtype=torch.float32)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """nn.Linear's default initialisation (so a directly constructed layer is usable)."""
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)
        if self.bias is not None:
            bound = self.in_features**-0.5
            nn.init.uniform_(self.bias, -bound, bound)

    @classmethod
    def from_linear(cls, lin: nn.Linear, recipe: TrainingRecipe,
                    generator: torch.Generator | None = None) -> QuantTrainLinear:
        """Wrap `lin`'s parameters: FP32 ones are shared (optimiser state stays valid), others become FP32 copies."""
        mod = cls.__new__(cls)
        nn.Module.__init__(mod)
        _check_shape(lin.in_features, lin.out_features, recipe)
        mod.in_features, mod.out_features, mod.recipe, mod.generator = (lin.in_features, lin.out_features, recipe,
                                                                        generator)
        mod.weight = _fp32_param(lin.weight)
        mod.bias = _fp32_param(lin.bias) if lin.bias is not None else None
        return mod

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.recipe
        if r.fmt == "none":
            return F.linear(x, self.weight.to(x.dtype), self.bias.to(x.dtype) if self.bias is not None else None)
        if r.fmt == "fp8":
            return _FP8LinearFn.apply(x, self.weight, self.bias, r)
        if r.fmt == "nvfp4":
            return _NVFP4LinearFn.apply(x, self.weight, self.bias, r, self.generator)
        raise ValueError(f"unknown training format {r.fmt!r}")

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, recipe={self.recipe.name}"


def _fp32_param(p: nn.Parameter) -> nn.Parameter:
    return p if p.dtype == torch.float32 else nn.Parameter(p.detach().float(), requires_grad=p.requires_grad)


def _check_shape(k: int, n: int, recipe: TrainingRecipe) -> None:
    if recipe.fmt != "none" and (k % _PAD or n % _PAD):
        raise ValueError(f"recipe {recipe.name!r} needs Linear in/out features that are multiples of {_PAD} "
                         f"(FP8 GEMMs / NVFP4 1×16 blocks along every reduction dim), got in={k}, out={n}")


@dataclass
class TrainingPrecisionReport:
    recipe: str
    swapped: list[str] = field(default_factory=list)
    fp32_copies: int = 0  # Linears whose non-FP32 weight got a new FP32 master (not shared with the optimiser)

    def summary(self) -> dict:
        return {"training_recipe": self.recipe, "training_quantised_linears": len(self.swapped)}


def prepare_training_precision(model: nn.Module, name: str | TrainingRecipe, *, include: str = BLOCK_LINEARS,
                               device: torch.device | str | None = None,
                               generator: torch.Generator | None = None) -> TrainingPrecisionReport:
    """Swap every nn.Linear whose qualified name matches `include` for a QuantTrainLinear, in place.

    Call before building the optimiser (FP32 parameters are shared, so an existing optimiser also still works).
    Raises before any change if the device cannot run the recipe (real `fp8` needs CUDA with cc ≥ 8.9).
    """
    recipe = name if isinstance(name, TrainingRecipe) else get_training_recipe(name)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    check_training_recipe(recipe, device)
    pattern = re.compile(include)
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and pattern.search(n)]
    if not names:
        raise ValueError(f"no Linear matches the training-precision filter {include!r}")
    for n in names:  # validate every shape before changing anything
        lin = model.get_submodule(n)
        _check_shape(lin.in_features, lin.out_features, recipe)
    report = TrainingPrecisionReport(recipe.name)
    for n in names:
        lin = model.get_submodule(n)
        q = QuantTrainLinear.from_linear(lin, recipe, generator)
        report.fp32_copies += q.weight is not lin.weight
        parent, _, attr = n.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, q)
        report.swapped.append(n)
    return report


__all__ = [
    "RECIPES",
    "QuantTrainLinear",
    "TrainingPrecisionReport",
    "TrainingRecipe",
    "check_training_recipe",
    "get_training_recipe",
    "prepare_training_precision",
]
