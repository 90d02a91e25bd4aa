"""Post-training quantisation of a model, applied from outside (the model file knows nothing of it).

W4A4 / W8A8 quantise the 300 block Linears (self-attn q,k,v,o; cross-attn q,k,v,o; ffn.0; ffn.2); patch
embedding, text/time embeddings, head, norms and modulation stay in the compute dtype (spec 03). LoRA is merged
into the BF16 weights before this runs. Each Linear is replaced by a QuantLinear holding packed weights and the
BF16 weight is released, so weight memory really drops.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from longlive.quant.linear import LinearQuantConfig, QuantLinear, check_backend

BLOCK_LINEARS = r"^blocks\.\d+\.(self_attn\.(q|k|v|o)|cross_attn\.(q|k|v|o)|ffn\.(0|2))$"


@dataclass
class PTQReport:
    quantised: list[str] = field(default_factory=list)
    bytes_before: int = 0
    bytes_after: int = 0

    def summary(self) -> dict[str, float]:
        return {"quantised_linears": len(self.quantised), "quantised_weights_gb_before": self.bytes_before / 1e9,
                "quantised_weights_gb_after": self.bytes_after / 1e9}


def quantize_model(model: nn.Module, cfg: LinearQuantConfig, *, include: str = BLOCK_LINEARS,
                   device: torch.device | str | None = None) -> PTQReport:
    """Replace every Linear whose qualified name matches `include` by a QuantLinear, in place."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    check_backend(cfg.fmt, cfg.backend, device)
    pattern = re.compile(include)
    report = PTQReport()
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and pattern.search(n)]
    if not names:
        raise ValueError(f"no Linear matches the quantisation filter {include!r}")
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


def model_weight_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer (packed weights included): what the weights occupy in memory."""
    seen, total = set(), 0
    for t in (*model.parameters(), *model.buffers()):
        if t.data_ptr() in seen or t.device.type == "meta":
            continue
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
    return total


def merge_lora(model: nn.Module, lora: dict[str, torch.Tensor], scale: float = 1.0) -> list[str]:
    """W ← W + scale · B·A for every Linear with a PEFT-style pair `<name>.lora_A.weight` / `<name>.lora_B.weight`.

    Done in float32 on the BF16 weights before any quantisation (spec 01). Returns the merged module names.
    Accepts PEFT's `base_model.model.` prefix and the generator's `model.` prefix.
    """
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in lora.items():
        m = re.match(r"^(?:base_model\.model\.)?(?:model\.)?(.+)\.lora_([AB])(?:\.default)?\.weight$", key)
        if m is None:
            raise ValueError(f"not a LoRA key: {key!r} (expected <module>.lora_A.weight / <module>.lora_B.weight)")
        pairs.setdefault(m.group(1), {})[m.group(2)] = t
    merged = []
    for name, ab in sorted(pairs.items()):
        if set(ab) != {"A", "B"}:
            raise ValueError(f"LoRA for {name} has only lora_{next(iter(ab))}")
        lin = model.get_submodule(name)
        if not isinstance(lin, nn.Linear):
            raise ValueError(f"LoRA target {name} is {type(lin).__name__}, not an nn.Linear (merge before quantising)")
        A, B = ab["A"].float(), ab["B"].float()
        if A.shape[1] != lin.in_features or B.shape[0] != lin.out_features or A.shape[0] != B.shape[1]:
            raise ValueError(f"LoRA shapes A{list(A.shape)} B{list(B.shape)} do not fit {name} "
                             f"[{lin.out_features}, {lin.in_features}]")
        with torch.no_grad():
            lin.weight.copy_((lin.weight.float() + scale * (B.to(lin.weight.device) @ A.to(lin.weight.device)))
                             .to(lin.weight.dtype))
        merged.append(name)
    return merged
