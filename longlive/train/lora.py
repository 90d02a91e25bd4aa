"""LoRA adapters on the 300 block Linears through PEFT, their file format and the merge into a generator (spec 01/04).

The adapters are injected in place (`peft.inject_adapter_in_model`) rather than wrapped in a PeftModel, so the
model keeps its own forward signature (x, t, context|text_kv, cache=..., frame_offset=...) and every inference
and training path runs on it unchanged. LoRA files hold `{generator_lora, critic_lora, step}` with each adapter in
PEFT's saved-adapter key format (`base_model.model.<module>.lora_{A,B}.weight`, as `save_pretrained` writes);
`lora_rank` / `lora_alpha` ride along so the merge knows the scale alpha/rank (spec: 128/128 = 1).
The merge is W + (alpha/rank)·B·A into the BF16 generator, before any quantisation.
"""

from __future__ import annotations

import argparse
import re
import warnings
from pathlib import Path

import torch
import torch.nn as nn
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model, set_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from peft.tuners.lora.layer import Linear as LoraLinear

from longlive.filecheck import GENERATOR, check_lora_targets, check_weights
from longlive.model.checkpoint import load_generator, read_generator_file, save_generator
from longlive.model.dit import build_model
from longlive.model.presets import PRESETS
from longlive.output import atomic_path, check_out_file
from longlive.quant.linear import QuantLinear
from longlive.quant.recipes import BLOCK_LINEARS, load_lora, lora_pairs, lora_scale, merge_lora

PEFT_PREFIX = "base_model.model."
DEFAULT_RANK = 128
DEFAULT_ALPHA = 128
MERGED_FORMAT = "longlive_generator_merged_lora"
_KEY = re.compile(r"^(?:base_model\.model\.)?(?:model\.)?(?P<mod>.+)\.lora_(?P<ab>[AB])(?:\.[^.]+)?\.weight$")


class QuantLoraLinear(LoraLinear):
    """PEFT's LoRA Linear over a frozen QuantLinear (packed NVFP4/FP8 weight): y = Q(W)x + s·B·A·x.

    PEFT reads the base layer's device and dtype from `.weight`, which a packed layer has not; the adapter lives on
    the packed buffers' device in float32 (trainable precision), the base keeps its compute dtype. Merging is not
    offered: a LoRA is merged into the BF16 weights before quantisation (spec 04), never into packed ones.
    """

    def _get_base_layer_device_and_dtype(self, base_layer):
        buf = next(iter(base_layer.buffers()))
        return buf.device, torch.float32

    def merge(self, *args, **kwargs):
        raise ValueError("cannot merge a LoRA into a quantised (packed) Linear; merge into the BF16 "
                         "checkpoint first, then quantise")


def target_modules(model: nn.Module, target: str = BLOCK_LINEARS) -> list[str]:
    """Qualified names of the Linear modules (nn.Linear or a frozen QuantLinear) matching `target`."""
    pattern = re.compile(target)
    names = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, QuantLinear)) and pattern.search(n)]
    if not names:
        raise ValueError(f"no nn.Linear matches the LoRA target {target!r}")
    return names


def add_lora(model: nn.Module, lora_rank: int = DEFAULT_RANK, alpha: float = DEFAULT_ALPHA, target: str = BLOCK_LINEARS,
             adapter_name: str = "default", dropout: float = 0.0) -> nn.Module:
    """Inject LoRA (B = 0, so the model starts as the base) into `model` in place and return it.

    Only the LoRA weights stay trainable (PEFT freezes the rest). Names are listed explicitly so PEFT's suffix
    matching cannot pick up a Linear outside the blocks. Block Linears already quantised (QuantLinear, e.g. the
    NVFP4 frozen networks of DMD, Table 2) get a float32 adapter over the packed weight.
    """
    cfg = LoraConfig(r=lora_rank, lora_alpha=alpha, target_modules=target_modules(model, target), lora_dropout=dropout,
                     bias="none", init_lora_weights=True)
    if not any(isinstance(m, QuantLinear) for m in model.modules()):
        return inject_adapter_in_model(cfg, model, adapter_name=adapter_name)
    cfg._register_custom_module({QuantLinear: QuantLoraLinear})
    with warnings.catch_warnings():  # PEFT warns about any layer type it does not know; this one is registered
        warnings.filterwarnings("ignore", message="Unsupported layer type")
        return inject_adapter_in_model(cfg, model, adapter_name=adapter_name)


def lora_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The PEFT LoRA layers of a model by qualified name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, LoraLayer)}


def lora_state_dict(model: nn.Module, adapter_name: str = "default") -> dict[str, torch.Tensor]:
    """The adapter in PEFT's saved format: `base_model.model.<module>.lora_{A,B}.weight` (detached, on CPU)."""
    sd = get_peft_model_state_dict(model, adapter_name=adapter_name)
    return {PEFT_PREFIX + k: v.detach().cpu().clone() for k, v in sd.items()}


def normalise_lora_keys(lora: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Any PEFT spelling (with/without `base_model.model.`, `model.`, adapter name) → `<module>.lora_X.weight`."""
    out = {}
    for key, t in lora.items():
        m = _KEY.match(key)
        if m is None:
            raise ValueError(f"not a LoRA key: {key!r} (expected <module>.lora_A.weight / <module>.lora_B.weight)")
        out[f"{m['mod']}.lora_{m['ab']}.weight"] = t
    return out


def load_lora_weights(model: nn.Module, lora: dict[str, torch.Tensor], adapter_name: str = "default") -> None:
    """Load an adapter state dict (any accepted spelling) into a model that already has LoRA injected; strict."""
    sd = normalise_lora_keys(lora)
    expected = {f"{n}.lora_{ab}.weight" for n in lora_modules(model) for ab in "AB"}
    if set(sd) != expected:
        missing, extra = sorted(expected - set(sd)), sorted(set(sd) - expected)
        raise ValueError(f"LoRA keys do not match the model: missing {missing[:3]}, unexpected {extra[:3]}")
    set_peft_model_state_dict(model, sd, adapter_name=adapter_name)


def save_lora(path: str | Path, generator_lora: dict[str, torch.Tensor],
              critic_lora: dict[str, torch.Tensor] | None = None, step: int = 0, *,
              lora_rank: int | None = None, alpha: float | None = None) -> Path:
    """Write `{generator_lora, critic_lora, step}` atomically (temp file, then rename) so a crash never truncates.

    lora_rank/alpha default to what the A matrices say and alpha = rank (the spec's scale 1).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if lora_rank is None:
        a = next((v for k, v in generator_lora.items() if ".lora_A" in k), None)
        lora_rank = int(a.shape[0]) if a is not None else None
    payload = {"generator_lora": {k: v.detach().cpu() for k, v in generator_lora.items()},
               "critic_lora": None if critic_lora is None else {k: v.detach().cpu() for k, v in critic_lora.items()},
               "step": int(step), "lora_rank": lora_rank,
               "lora_alpha": alpha if alpha is not None else lora_rank}
    with atomic_path(path) as tmp:  # a failed save (full disk) leaves the old file and no temp file
        torch.save(payload, str(tmp))
    return path


def infer_config(sd: dict[str, torch.Tensor], preset: str | None = None):
    """The ModelConfig of a generator state dict: the named preset, else the preset whose shapes match."""
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
        return PRESETS[preset]
    layers = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    pe = sd["patch_embedding.weight"]
    shapes = (pe.shape[0], pe.shape[1], layers, sd["blocks.0.ffn.0.weight"].shape[0],
              sd["text_embedding.0.weight"].shape[1])
    for cfg in PRESETS.values():
        if (cfg.dim, cfg.in_channels, cfg.num_layers, cfg.ffn_dim, cfg.text_dim) == shapes:
            return cfg
    raise ValueError(f"no preset has dim/in_channels/layers/ffn_dim/text_dim = {shapes}; pass preset=")


def merge_lora_into_checkpoint(base_ckpt: str | Path, lora_path: str | Path, out_ckpt: str | Path,
                               which: str = "generator_lora", *, preset: str | None = None,
                               scale: float | None = None) -> Path:
    """Load a published-layout generator, merge W + (alpha/rank)·B·A from the LoRA file, save with merged_lora.

    The model is rebuilt and loaded strictly, so a checkpoint that does not fit its preset fails loudly here
    rather than at inference. Merging happens in float32 in the checkpoint's own dtype (recipes.merge_lora).
    """
    check_weights(base_ckpt, GENERATOR)  # the base's format and integrity, before the LoRA or any model
    payload = load_lora(lora_path)  # checked the same way (longlive.filecheck)
    lora = payload.get(which)
    if not lora:
        raise ValueError(f"{lora_path} has no {which!r} adapter")
    lora = normalise_lora_keys(lora)
    sd, _ = read_generator_file(base_ckpt)
    if "patch_embedding.weight" not in sd or not any(k.startswith("blocks.") for k in sd):
        raise ValueError(f"--base {base_ckpt}: holds no generator weights (no model.patch_embedding.weight or "
                         f"blocks.*): expected {GENERATOR.description}")
    cfg = infer_config(sd, preset)
    dtype = sd["patch_embedding.weight"].dtype
    model = build_model(cfg, device="meta", dtype=dtype, init=False)
    check_lora_targets(model, lora_pairs(lora), f"--lora {lora_path} ({which})")  # before loading the weights
    load_generator(model, base_ckpt)
    s = lora_scale(payload) if scale is None else scale
    merged = merge_lora(model, lora, scale=s, source=f"--lora {lora_path} ({which})")
    if not merged:
        raise ValueError(f"{lora_path}: {which} holds no LoRA pairs")
    return save_generator(model, out_ckpt, checkpoint_format=MERGED_FORMAT, merged_lora=True)


# -- CLI hook (wired into longlive/cli.py by the lead) ------------------------------------------------------------


def add_lora_parser(subparsers) -> argparse.ArgumentParser:
    """`lora merge --base CKPT --lora LORA --out OUT [--which generator_lora] [--model P] [--scale S]`."""
    p = subparsers.add_parser("lora", help="LoRA utilities (merge a trained adapter into a generator)")
    sub = p.add_subparsers(dest="lora_cmd", required=True)
    m = sub.add_parser("merge", help="merge W + (alpha/rank)·B·A into a generator checkpoint (before quantising)")
    m.add_argument("--base", required=True, help="generator checkpoint in the published layout")
    m.add_argument("--lora", required=True, help="LoRA file {generator_lora, critic_lora, step}")
    m.add_argument("--out", required=True, help="merged generator checkpoint to write")
    m.add_argument("--which", default="generator_lora", choices=("generator_lora", "critic_lora"))
    m.add_argument("--model", default=None, help="model preset (default: inferred from the checkpoint's shapes)")
    m.add_argument("--scale", type=float, default=None, help="override alpha/rank")
    p.set_defaults(func=cmd_lora)
    return p


def cmd_lora(args: argparse.Namespace) -> int:
    if args.lora_cmd == "merge":
        check_out_file(args.out)
        out = merge_lora_into_checkpoint(args.base, args.lora, args.out, args.which, preset=args.model,
                                         scale=args.scale)
        print(f"merged {args.which} from {args.lora} into {args.base} -> {out}")
        return 0
    raise ValueError(f"unknown lora command {args.lora_cmd!r}")
