"""Post-training quantisation of a model, applied from outside (the model file knows nothing of it).

W4A4 / W8A8 quantise the 300 block Linears (self-attn q,k,v,o; cross-attn q,k,v,o; ffn.0; ffn.2); patch
embedding, text/time embeddings, head, norms and modulation stay in the compute dtype (spec 03). LoRA is merged
into the BF16 weights before this runs. Each Linear is replaced by a QuantLinear holding packed weights and the
BF16 weight is released, so weight memory really drops.

Which Linears (`quant_exclude`): the release picks them by exclusion, `model_quant_filtered_modules` (exact module
names or `re:` regular expressions) on top of a default list of embeddings, head and norms
(`model_quant_use_default_filtered_modules`, on by default), which leaves exactly the block Linears. Here the block
Linears are the starting set (`BLOCK_LINEARS`) and `quant_exclude`, in the release's pattern syntax, removes more.
Quantising the embeddings and head too (the release's default filter off) is not offered: the DiT reads their
weights' dtype as its compute dtype, which a packed QuantLinear does not have.

FP8 Linears with `act_scale=static` (longlive.quant.linear) get their activation scales here, from outside too:
`observing_act_amax` around a calibration run records max |x| per Linear, `freeze_act_scales` fixes each scale (the
maxima reduced over the SP group first, so every rank quantises alike), `act_saturation` reads what saturated since
`reset_act_saturation`.

A LoRA can also stay separate at runtime (`LoRALinear`, `attach_lora`): y = base(x) + scale·B(A(x)), over a plain
or a quantised Linear, so it works over a packed NVFP4 checkpoint too (the release merges whenever it quantises).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from longlive.filecheck import LORA, check_lora_targets, load_safetensors, load_torch
from longlive.model.checkpoint import CheckpointError
from longlive.quant.linear import ACT_SCALE_MARGIN, LinearQuantConfig, QuantLinear, check_act_scale, check_backend
from longlive.quant.nvfp4_checkpoint import load_nvfp4_generator, save_nvfp4_generator
from longlive.quant.tensors import NVFP4Tensor

BLOCK_LINEARS = r"^blocks\.\d+\.(self_attn\.(q|k|v|o|qkv)|cross_attn\.(q|k|v|o)|ffn\.(0|2))$"
DEFAULT_ACT_RULE = LinearQuantConfig.act_rule
"""The activation rule of inference PTQ (`act_rule`): TE's plain 6/448 `static_6` (longlive.quant.linear)."""


def excluded(name: str, patterns: list[str] | tuple[str, ...]) -> bool:
    """The release's `model_quant_filtered_modules` match: an exact module name, or `re:<regex>` searched in it."""
    return any(re.search(p[3:], name) if p.startswith("re:") else name == p for p in patterns)


def check_exclude_patterns(patterns: list[str] | tuple[str, ...]) -> None:
    """ValueError naming the first `re:` pattern that is not a regular expression (checked before any work)."""
    for p in patterns:
        if p.startswith("re:"):
            try:
                re.compile(p[3:])
            except re.error as exc:
                raise ValueError(f"quant_exclude pattern {p!r} is not a regular expression: {exc}") from None
        elif not p.strip():
            raise ValueError("quant_exclude patterns must not be empty")


def select_linears(model: nn.Module, include: str = BLOCK_LINEARS,
                   exclude: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Names of the nn.Linears PTQ replaces: matching `include` (searched) and no `exclude` pattern."""
    pattern = re.compile(include)
    return [n for n, m in model.named_modules()
            if isinstance(m, nn.Linear) and pattern.search(n) and not excluded(n, exclude)]


@dataclass
class PTQReport:
    quantised: list[str] = field(default_factory=list)
    bytes_before: int = 0
    bytes_after: int = 0

    def summary(self) -> dict[str, float]:
        return {"quantised_linears": len(self.quantised), "quantised_weights_gb_before": self.bytes_before / 1e9,
                "quantised_weights_gb_after": self.bytes_after / 1e9}


def quantize_model(model: nn.Module, cfg: LinearQuantConfig, *, include: str = BLOCK_LINEARS,
                   exclude: list[str] | tuple[str, ...] = (), device: torch.device | str | None = None) -> PTQReport:
    """Replace every Linear whose qualified name matches `include` and no `exclude` pattern by a QuantLinear, in
    place."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    check_backend(cfg.fmt, cfg.backend, device)
    check_act_scale(cfg.act_scale, linear_quant=cfg.fmt, act_quant=cfg.act_quant, linear_backend=cfg.backend)
    report = PTQReport()
    names = select_linears(model, include, exclude)
    if not names:
        raise ValueError(f"no Linear matches the quantisation filter {include!r} less the exclusions {list(exclude)}")
    for name in names:  # one at a time, so the BF16 weight is released before the next is quantised
        lin = model.get_submodule(name)
        report.bytes_before += sum(t.numel() * t.element_size() for t in (lin.weight, lin.bias) if t is not None)
        q = QuantLinear.from_linear(lin, cfg)
        report.bytes_after += q.packed_nbytes()
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, attr, q)
        report.quantised.append(name)
        del lin
    return report


def static_linears(model: nn.Module) -> list[tuple[str, QuantLinear]]:
    """(name, module) of every QuantLinear with act_scale=static, in module order (also inside a LoRALinear)."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, QuantLinear) and m.cfg.act_scale == "static"]


@contextmanager
def observing_act_amax(model: nn.Module) -> Iterator[list[tuple[str, QuantLinear]]]:
    """Within the block, every static FP8 Linear records max |x| of its inputs (computing with dynamic scales
    meanwhile); any earlier scale is forgotten. Freeze with `freeze_act_scales` after the calibration run."""
    lins = static_linears(model)
    if not lins:
        raise ValueError("act_scale=static: the model has no FP8 Linears with static activation scales to calibrate "
                         "(a packed NVFP4 generator checkpoint keeps its own NVFP4 Linears whatever the precision)")
    for _, m in lins:
        m.start_calibration()
    try:
        yield lins
    finally:
        for _, m in lins:
            m.act_calibrating = False


def freeze_act_scales(model: nn.Module, margin: float = ACT_SCALE_MARGIN, group=None) -> int:
    """Fix every static Linear's scale from what it observed (longlive.quant.linear); `group`: an SP process group
    whose ranks take the maximum of their maxima first (one all-reduce). Returns how many Linears were frozen. A Linear
    the calibration never reached is an error naming it (its scale would be a guess)."""
    lins = static_linears(model)
    unseen = [n for n, m in lins if m.act_observed == 0]
    if unseen:
        raise RuntimeError(f"act_scale=static: the calibration run never reached {unseen[0]} ({len(unseen)} Linears "
                           f"unseen), so it has no activation range to freeze")
    if group is not None and lins:
        amax = torch.cat([m.act_amax for _, m in lins])
        dist.all_reduce(amax, op=dist.ReduceOp.MAX, group=group)
        for (_, m), a in zip(lins, amax.split(1), strict=True):
            m.act_amax.copy_(a)
    for _, m in lins:
        m.freeze_act_scale(margin)
    return len(lins)


def reset_act_saturation(model: nn.Module) -> None:
    """Zero the saturation counts of every static Linear (e.g. right before a timed run)."""
    for _, m in static_linears(model):
        m.act_saturated.zero_()
        m.act_elements = 0


def act_saturation(model: nn.Module) -> float | None:
    """Share of the activation elements quantised statically since `reset_act_saturation` whose |x · inv| exceeded
    448 (clamped), over every static Linear; None unless each of them was counted (none are under torch.compile:
    module docstring of longlive.quant.linear; the text K/V projections, outside the compiled blocks, would be a
    biased remainder). One host sync."""
    lins = [m for _, m in static_linears(model)]
    if not lins or any(m.act_elements == 0 for m in lins):
        return None
    total = sum(m.act_elements for m in lins)
    return int(torch.cat([m.act_saturated for m in lins]).sum().item()) / total


def model_weight_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer (packed weights included): what the weights occupy in memory."""
    seen, total = set(), 0
    for t in (*model.parameters(), *model.buffers()):
        if t.data_ptr() in seen or t.device.type == "meta":
            continue
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
    return total


def merge_lora(model: nn.Module, lora: dict[str, torch.Tensor], scale: float = 1.0, *, source: str = "LoRA"
               ) -> list[str]:
    """W ← W + scale · B·A for every Linear with a PEFT-style pair `<name>.lora_A.weight` / `<name>.lora_B.weight`.

    Done in float32 on the BF16 weights before any quantisation (spec 01). Returns the merged module names.
    Accepts PEFT's `base_model.model.` prefix and the generator's `model.` prefix.
    """
    merged = []
    pairs = lora_pairs(lora)
    check_lora_targets(model, pairs, source)  # every target exists before any weight changes (source: the file)
    for name, (a, b) in pairs.items():
        lin = model.get_submodule(name)
        if not isinstance(lin, nn.Linear):
            raise ValueError(f"LoRA target {name} is {type(lin).__name__}, not an nn.Linear (merge before quantising)")
        A, B = a.float(), b.float()
        if A.shape[1] != lin.in_features or B.shape[0] != lin.out_features or A.shape[0] != B.shape[1]:
            raise ValueError(f"LoRA shapes A{list(A.shape)} B{list(B.shape)} do not fit {name} "
                             f"[{lin.out_features}, {lin.in_features}]")
        with torch.no_grad():
            lin.weight.copy_((lin.weight.float() + scale * (B.to(lin.weight.device) @ A.to(lin.weight.device)))
                             .to(lin.weight.dtype))
        merged.append(name)
    return merged


def lora_pairs(lora: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{module name: (A, B)} of a PEFT-style adapter (the key forms `merge_lora` accepts)."""
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in lora.items():
        m = re.match(r"^(?:base_model\.model\.)?(?:model\.)?(.+)\.lora_([AB])(?:\.default)?\.weight$", key)
        if m is None:
            raise ValueError(f"not a LoRA key: {key!r} (expected <module>.lora_A.weight / <module>.lora_B.weight)")
        pairs.setdefault(m.group(1), {})[m.group(2)] = t
    out = {}
    for name, ab in sorted(pairs.items()):
        if set(ab) != {"A", "B"}:
            raise ValueError(f"LoRA for {name} has only lora_{next(iter(ab))}")
        out[name] = (ab["A"], ab["B"])
    return out


class LoRALinear(nn.Module):
    """A Linear (plain or quantised) with its LoRA adapter kept separate: y = base(x) + scale·B(A(x)).

    The adapter runs in the compute dtype beside the base weights, so one base serves with or without it and a
    packed NVFP4 base keeps its packed weights (`lora_mode=runtime`)."""

    def __init__(self, base: nn.Module, A: torch.Tensor, B: torch.Tensor, scale: float,
                 dtype: torch.dtype, device: torch.device):
        super().__init__()
        self.base = base
        self.in_features, self.out_features = base.in_features, base.out_features
        if A.shape[1] != self.in_features or B.shape[0] != self.out_features or A.shape[0] != B.shape[1]:
            raise ValueError(f"LoRA shapes A{list(A.shape)} B{list(B.shape)} do not fit a Linear "
                             f"[{self.out_features}, {self.in_features}]")
        self.lora_A = nn.Parameter(A.detach().to(device, dtype), requires_grad=False)
        self.lora_B = nn.Parameter(B.detach().to(device, dtype), requires_grad=False)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        return y + self.scale * F.linear(F.linear(x.to(self.lora_A.dtype), self.lora_A), self.lora_B).to(y.dtype)

    def extra_repr(self) -> str:
        return f"rank={self.lora_A.shape[0]}, scale={self.scale:g}"


def attach_lora(model: nn.Module, lora: dict[str, torch.Tensor], scale: float = 1.0, *, source: str = "LoRA"
                ) -> list[str]:
    """Wrap every Linear the adapter names in a `LoRALinear` (runtime LoRA, no merge); returns the wrapped names.
    The adapter's dtype follows the model's parameters."""
    param = next(model.parameters())
    wrapped = []
    pairs = lora_pairs(lora)
    check_lora_targets(model, pairs, source)  # every target exists before any module is wrapped
    for name, (A, B) in pairs.items():
        lin = model.get_submodule(name)
        if not isinstance(lin, (nn.Linear, QuantLinear)):
            raise ValueError(f"LoRA target {name} is {type(lin).__name__}, not a Linear")
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr,
                LoRALinear(lin, A, B, scale, param.dtype, param.device))
        wrapped.append(name)
    return wrapped


def lora_scale(payload: dict) -> float:
    """alpha / rank from the file's metadata; without it the spec's alpha = rank (scale 1)."""
    rank, alpha = payload.get("lora_rank"), payload.get("lora_alpha")
    if rank is None or alpha is None:
        return 1.0
    return float(alpha) / float(rank)


def load_lora(path: str | Path) -> dict:
    """Read a LoRA file → `{generator_lora, critic_lora, step, lora_rank, lora_alpha}` (missing fields None/0).

    A bare adapter state dict (e.g. PEFT's own file loaded to a dict) is accepted as the generator adapter.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"LoRA file not found: {path}")
    if path.suffix == ".safetensors":  # format and integrity checked before loading (longlive.filecheck)
        obj: dict = {"generator_lora": load_safetensors(path, LORA)}
    else:
        obj = load_torch(path, LORA, mmap=False)
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a dict, got {type(obj).__name__}")
    if "generator_lora" not in obj and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        obj = {"generator_lora": obj}
    if "generator_lora" not in obj:
        raise ValueError(f"{path}: no generator_lora (keys: {sorted(obj)[:5]})")
    return {"generator_lora": obj["generator_lora"], "critic_lora": obj.get("critic_lora"),
            "step": int(obj.get("step", 0)), "lora_rank": obj.get("lora_rank"), "lora_alpha": obj.get("lora_alpha")}


# -- the published NVFP4 generator layout (model_4o6.pt) ------------------------------------------------------
def nvfp4_generator_parts(model: nn.Module) -> tuple[dict, dict[str, torch.Tensor]]:
    """Split a PTQ'd NVFP4 model into ({linear name: NVFP4Tensor}, {every other tensor incl. Linear biases})."""
    quantised, other = {}, {}
    for name, mod in model.named_modules():
        if isinstance(mod, QuantLinear):
            w = mod._weight()
            if not isinstance(w, NVFP4Tensor):
                raise ValueError(f"{name} holds {type(w).__name__}; only NVFP4 models export to model_4o6 layout")
            quantised[name] = NVFP4Tensor(*(t.detach().cpu() for t in (w.values, w.scales, w.amax, w.global_scale)),
                                          w.shape, w.rule, w.block)
            if mod.bias is not None:
                other[f"{name}.bias"] = mod.bias.detach().cpu()
    qnames = set(quantised)
    for key, t in model.state_dict().items():
        owner = key.rsplit(".", 1)[0]
        if owner not in qnames and not key.split(".")[-1].startswith("w_"):
            other[key] = t.detach().cpu()
    return quantised, other


def save_nvfp4_model(model: nn.Module, path, rule: str) -> None:
    quantised, other = nvfp4_generator_parts(model)
    save_nvfp4_generator(path, quantised, other, rule)


def load_nvfp4_model(model: nn.Module, path, *, backend: str = "emulated", act_quant: bool = True,
                     act_rule: str = "static_6") -> dict:
    """Install a published-layout NVFP4 generator into `model` (built in BF16): packed QuantLinears for the
    quantised Linears, strict load of everything else. Errors name the first missing or unexpected key."""
    quantised, other, meta = load_nvfp4_generator(path)
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    check_backend("nvfp4", backend, device)
    for name, q in sorted(quantised.items()):
        try:
            lin = model.get_submodule(name)
        except AttributeError:
            raise CheckpointError(f"checkpoint quantises model.{name}, which the model does not have") from None
        if not isinstance(lin, nn.Linear) or tuple(q.shape) != (lin.out_features, lin.in_features):
            raise CheckpointError(f"checkpoint model.{name} is NVFP4 {list(q.shape)} but the model has "
                                  f"{type(lin).__name__} {[lin.out_features, lin.in_features]}")
        q = type(q)(*(t.to(device) for t in (q.values, q.scales, q.amax, q.global_scale)), q.shape, q.rule, q.block)
        bias = other.pop(f"{name}.bias", None)
        cfg = LinearQuantConfig(fmt="nvfp4", backend=backend, weight_rule=q.rule, act_quant=act_quant,
                                act_rule=act_rule)
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr,
                QuantLinear(q, bias.to(device) if bias is not None else None, cfg, dtype))
    expected = {k: v for k, v in model.state_dict().items() if not k.split(".")[-1].startswith("w_")
                and k.rsplit(".", 1)[0] not in quantised}
    for key, ref in expected.items():
        if key not in other:
            raise CheckpointError(f"checkpoint is missing key model.{key}")
        if tuple(other[key].shape) != tuple(ref.shape):
            raise CheckpointError(f"checkpoint key model.{key} has shape {list(other[key].shape)} but the model "
                                  f"expects {list(ref.shape)}")
    extra = sorted(set(other) - set(expected))
    if extra:
        raise CheckpointError(f"checkpoint has unexpected key model.{extra[0]}")
    with torch.no_grad():
        for key, ref in expected.items():
            ref.copy_(other[key])
    return meta
