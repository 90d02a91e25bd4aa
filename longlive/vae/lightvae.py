"""MG-LightVAE, the release's pruned streaming decoder (`vae_type` mg_lightvae / mg_lightvae_v2).

What it is (read in the release's LightVAE wrapper and in Matrix-Game 3.0's `vae2_2.py`, which it comes from): the
Wan2.2 VAE with both base widths scaled by (1 − rate) — encoder 160 → round(160·(1 − rate)), decoder 256 →
round(256·(1 − rate)), Python's `round` (half to even), at least 1. Every stage width follows from its base ×
(1, 2, 4, 4). What touches the latent or the pixels keeps its width: z = 48 (the encoder head's 2z, the 1×1 `conv1` /
`conv2`, the input of `decoder.conv1`), the 12 patchified RGB channels and the Wan2.2 latent mean/std. So the pruned
VAE here is our `WanVAE` built from a scaled `VAEConfig` (`lightvae_config`): streaming with `CausalCache`,
`compile_vae`, channels-last and the tile decode apply unchanged, and rate 0 is the full Wan2.2 VAE.

The files are `MG-LightVAE.pth` (rate 0.5) and `MG-LightVAE_v2.pth` (0.75): `_v2` is another file at another rate,
the same graph. They hold diffusers `AutoencoderKLWan` key names (`decoder.up_blocks.{i}.resnets.{j}.conv1`, ...),
possibly nested under `state_dict` / `gen_model` / `generator`, plus the training-only
`dynamic_feature_projection_heads.*`, which are dropped. The rate is read off the file — the output channels of
`decoder.conv_in` against the full decoder's 1,024, rounded to 6 decimals — as the release does. The release then
loads with `strict=False` and falls back to 0.75 where it finds no rate; we load strictly (every key and every
shape, one error listing what is missing, unexpected or mis-shaped, and the layout expected) and never guess a rate.

Matrix-Game encodes conditioning images with the full Wan2.2 encoder, not this pruned one, and the release's
LongLive wrapper only decodes: `vae_type` is a decoder choice (`longlive.infer.video` refuses it with `--image`).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from longlive.filecheck import LEGACY, SAFETENSORS, ZIP, Layout, load_safetensors, load_torch

from .config import VAEConfig, get_vae_config
from .loading import build_vae
from .wan_vae import WanVAE

FILES = {"mg_lightvae": "MG-LightVAE.pth", "mg_lightvae_v2": "MG-LightVAE_v2.pth"}
"""The published file of each pruned `vae_type`, under the weights root (Matrix-Game 3.0's names)."""

NOMINAL_PRUNING = {"mg_lightvae": 0.5, "mg_lightvae_v2": 0.75}
"""The rate of each published file (Matrix-Game sets these; the release reads them off the file): the width of a
randomly initialised MG-LightVAE when `vae_pruning` is not given."""

NESTS = ("state_dict", "gen_model", "generator")
"""Wrapper keys a training checkpoint may nest its state dict under, descended in this order (as the release does)."""

DROPPED = ("dynamic_feature_projection_heads.",)
"""Training-only entries of the published files (distillation heads), left out as the release leaves them out."""

RATE_DECIMALS = 6

LIGHTVAE = Layout(
    "an MG-LightVAE checkpoint (MG-LightVAE.pth / MG-LightVAE_v2.pth: a torch .pth archive of a diffusers "
    "AutoencoderKLWan state dict of the Wan2.2 VAE at widths × (1 − rate) — encoder.conv_in, encoder.down_blocks.{i}"
    ".resnets.{j} / .downsampler, encoder.mid_block, encoder.norm_out / conv_out, quant_conv, post_quant_conv, "
    "decoder.conv_in, decoder.mid_block, decoder.up_blocks.{i}.resnets.{j} / .upsampler, decoder.norm_out / "
    "conv_out; Wan's own key names are read too — possibly nested under state_dict / gen_model / generator; or a "
    ".safetensors file)",
    (ZIP, LEGACY, SAFETENSORS),
)


# ---- widths ---------------------------------------------------------------------------------------


def check_rate(rate: object, what: str = "pruning rate") -> float:
    """The rate as a float, or a ValueError: a finite number in [0, 1) (the fraction of channels pruned)."""
    ok = isinstance(rate, int | float) and not isinstance(rate, bool) and math.isfinite(rate) and 0.0 <= rate < 1.0
    if not ok:
        raise ValueError(f"{what} {rate!r} must be a number in [0, 1): the fraction of channels pruned (0: the full "
                         f"Wan2.2 VAE; MG-LightVAE 0.5, MG-LightVAE_v2 0.75)")
    return float(rate)


def pruned_width(width: int, rate: float) -> int:
    """A base width after pruning, rounded as the release rounds it (Python's round: half to even; at least 1)."""
    return max(1, int(round(width * (1.0 - rate))))


def base_config(base: str | VAEConfig = "wan2.2") -> VAEConfig:
    """The unpruned Wan2.2-graph config a pruned one scales (the published Wan2.2 VAE, or a small one in tests)."""
    cfg = get_vae_config(base)
    if not isinstance(cfg, VAEConfig) or cfg.arch != "wan2.2" or cfg.pruning:
        raise ValueError(f"MG-LightVAE prunes an unpruned Wan2.2-graph VAE; {getattr(cfg, 'name', cfg)!r} is not one")
    return cfg


def lightvae_config(rate: float, base: str | VAEConfig = "wan2.2") -> VAEConfig:
    """`base` with both base widths pruned by `rate` (z, stride, latent stats unchanged). Rate 0 gives the base's
    widths: the full Wan2.2 VAE."""
    cfg = base_config(base)
    rate = check_rate(rate)
    return dataclasses.replace(cfg, name=f"{cfg.name}@pruning={rate:g}", enc_dim=pruned_width(cfg.enc_dim, rate),
                               dec_dim=pruned_width(cfg.dec_dim, rate), pruning=rate)


def full_decoder_width(base: str | VAEConfig = "wan2.2") -> int:
    """Output channels of `decoder.conv1` unpruned (1,024 for Wan2.2): what the rate is read against."""
    cfg = base_config(base)
    return cfg.dec_dim * cfg.dim_mult[-1]


# ---- key names: diffusers AutoencoderKLWan ↔ Wan ----------------------------------------------------

_RESNET = {"norm1": "residual.0", "conv1": "residual.2", "norm2": "residual.3", "conv2": "residual.6",
           "conv_shortcut": "shortcut"}  # a residual block's parts: diffusers name → Wan's Sequential index


def _resnet_to_wan(rest: str) -> str:
    head, dot, leaf = rest.partition(".")
    return f"{_RESNET[head]}.{leaf}" if dot and head in _RESNET else rest


def _resnet_to_diffusers(rest: str) -> str:
    for ours, theirs in _RESNET.items():
        if rest.startswith(theirs + "."):
            return ours + rest[len(theirs):]
    return rest


Rule = tuple[re.Pattern[str], Callable[[re.Match[str], int], str]]


def _rules(table: Iterable[tuple[str, Callable[[re.Match[str], int], str]]]) -> list[Rule]:
    return [(re.compile(pattern), fn) for pattern, fn in table]


_HALF = r"(?P<half>encoder|decoder)"
_TO_WAN = _rules([
    (r"quant_conv\.(?P<rest>.+)", lambda m, n: f"conv1.{m['rest']}"),
    (r"post_quant_conv\.(?P<rest>.+)", lambda m, n: f"conv2.{m['rest']}"),
    (_HALF + r"\.conv_in\.(?P<rest>.+)", lambda m, n: f"{m['half']}.conv1.{m['rest']}"),
    (_HALF + r"\.norm_out\.(?P<rest>.+)", lambda m, n: f"{m['half']}.head.0.{m['rest']}"),
    (_HALF + r"\.conv_out\.(?P<rest>.+)", lambda m, n: f"{m['half']}.head.2.{m['rest']}"),
    (_HALF + r"\.mid_block\.resnets\.(?P<j>[01])\.(?P<rest>.+)",
     lambda m, n: f"{m['half']}.middle.{2 * int(m['j'])}.{_resnet_to_wan(m['rest'])}"),
    (_HALF + r"\.mid_block\.attentions\.0\.(?P<rest>.+)", lambda m, n: f"{m['half']}.middle.1.{m['rest']}"),
    (r"encoder\.down_blocks\.(?P<i>\d+)\.resnets\.(?P<j>\d+)\.(?P<rest>.+)",
     lambda m, n: f"encoder.downsamples.{m['i']}.downsamples.{m['j']}.{_resnet_to_wan(m['rest'])}"),
    (r"encoder\.down_blocks\.(?P<i>\d+)\.downsampler\.(?P<rest>.+)",
     lambda m, n: f"encoder.downsamples.{m['i']}.downsamples.{n}.{m['rest']}"),
    (r"decoder\.up_blocks\.(?P<i>\d+)\.resnets\.(?P<j>\d+)\.(?P<rest>.+)",
     lambda m, n: f"decoder.upsamples.{m['i']}.upsamples.{m['j']}.{_resnet_to_wan(m['rest'])}"),
    (r"decoder\.up_blocks\.(?P<i>\d+)\.upsampler\.(?P<rest>.+)",
     lambda m, n: f"decoder.upsamples.{m['i']}.upsamples.{n + 1}.{m['rest']}"),
])  # fmt: skip


def _down_to_diffusers(m: re.Match[str], n: int) -> str:
    j = int(m["j"])  # blocks 0..n-1 are residual blocks, block n the resampler
    tail = f"resnets.{j}.{_resnet_to_diffusers(m['rest'])}" if j < n else f"downsampler.{m['rest']}"
    return f"encoder.down_blocks.{m['i']}.{tail}"


def _up_to_diffusers(m: re.Match[str], n: int) -> str:
    j = int(m["j"])  # blocks 0..n are residual blocks, block n + 1 the resampler
    tail = f"resnets.{j}.{_resnet_to_diffusers(m['rest'])}" if j <= n else f"upsampler.{m['rest']}"
    return f"decoder.up_blocks.{m['i']}.{tail}"


_TO_DIFFUSERS = _rules([
    (r"conv1\.(?P<rest>.+)", lambda m, n: f"quant_conv.{m['rest']}"),
    (r"conv2\.(?P<rest>.+)", lambda m, n: f"post_quant_conv.{m['rest']}"),
    (_HALF + r"\.conv1\.(?P<rest>.+)", lambda m, n: f"{m['half']}.conv_in.{m['rest']}"),
    (_HALF + r"\.head\.0\.(?P<rest>.+)", lambda m, n: f"{m['half']}.norm_out.{m['rest']}"),
    (_HALF + r"\.head\.2\.(?P<rest>.+)", lambda m, n: f"{m['half']}.conv_out.{m['rest']}"),
    (_HALF + r"\.middle\.(?P<j>[02])\.(?P<rest>.+)",
     lambda m, n: f"{m['half']}.mid_block.resnets.{int(m['j']) // 2}.{_resnet_to_diffusers(m['rest'])}"),
    (_HALF + r"\.middle\.1\.(?P<rest>.+)", lambda m, n: f"{m['half']}.mid_block.attentions.0.{m['rest']}"),
    (r"encoder\.downsamples\.(?P<i>\d+)\.downsamples\.(?P<j>\d+)\.(?P<rest>.+)", _down_to_diffusers),
    (r"decoder\.upsamples\.(?P<i>\d+)\.upsamples\.(?P<j>\d+)\.(?P<rest>.+)", _up_to_diffusers),
])  # fmt: skip


def _apply(rules: list[Rule], key: str, num_res_blocks: int) -> str:
    for pattern, fn in rules:
        m = pattern.fullmatch(key)
        if m:
            return fn(m, num_res_blocks)
    return key


def to_wan_key(key: str, num_res_blocks: int = 2) -> str | None:
    """The Wan name of a file key (None: a training-only entry, dropped). Keys already in Wan's names, and keys of
    neither layout, come back unchanged (the strict check then names the latter)."""
    if key.startswith(DROPPED):
        return None
    return _apply(_TO_WAN, key, num_res_blocks)


def to_diffusers_key(key: str, num_res_blocks: int = 2) -> str:
    """The diffusers AutoencoderKLWan name of one of our (Wan) parameter names: the inverse of `to_wan_key`."""
    return _apply(_TO_DIFFUSERS, key, num_res_blocks)


def diffusers_state(vae: WanVAE) -> dict[str, Tensor]:
    """`vae`'s weights under the MG-LightVAE files' key names (a file in that layout, e.g. for tests)."""
    n = vae.config.num_res_blocks
    return {to_diffusers_key(k, n): v for k, v in vae.state_dict().items()}


# ---- reading and strict loading -------------------------------------------------------------------


def unwrap(state: Any, source: str) -> dict[str, Tensor]:
    """The flat tensor dict inside a checkpoint, descending `NESTS` where present."""
    for key in NESTS:
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
    if not isinstance(state, Mapping) or not state:
        raise ValueError(f"{source}: holds no state dict (a {type(state).__name__}); expected {LIGHTVAE.description}")
    bad = [str(k) for k, v in state.items() if not isinstance(v, Tensor)]
    if bad:
        raise ValueError(f"{source}: {len(bad)} entries are not tensors ({', '.join(bad[:3])}); expected "
                         f"{LIGHTVAE.description}")
    return dict(state)


def to_wan_state(state: Mapping[str, Tensor], num_res_blocks: int, source: str,
                 ) -> tuple[dict[str, Tensor], dict[str, str]]:
    """(the state under Wan's names, Wan name → the file's name): training-only entries dropped; two file keys
    landing on one Wan name are an error."""
    out: dict[str, Tensor] = {}
    names: dict[str, str] = {}
    for key, value in state.items():
        wan = to_wan_key(key, num_res_blocks)
        if wan is None:
            continue
        if wan in out:
            raise ValueError(f"{source}: keys {names[wan]!r} and {key!r} are the same weight ({wan!r} in Wan's names); "
                             f"a checkpoint holds each weight once. Expected {LIGHTVAE.description}")
        out[wan], names[wan] = value, key
    return out, names


def infer_pruning(state: Mapping[str, Tensor], base: str | VAEConfig = "wan2.2", source: str = "checkpoint") -> float:
    """The rate of a Wan-named state, read off `decoder.conv1`'s output channels against the unpruned decoder's (the
    release's rule), checked to be a width the pruned graph has."""
    full = full_decoder_width(base)
    w = state.get("decoder.conv1.weight")
    if w is None or w.dim() != 5:
        raise ValueError(f"{source}: cannot read the pruning rate: no 5-D decoder.conv_in.weight (Wan's "
                         f"decoder.conv1.weight), whose output channels against the full {full} give it (the release "
                         f"would fall back to 0.75; we do not guess). Expected {LIGHTVAE.description}")
    out = int(w.shape[0])
    rate = round(1.0 - out / full, RATE_DECIMALS) if 1 <= out <= full else None
    cfg = lightvae_config(rate, base) if rate is not None and rate < 1.0 else None
    if cfg is None or cfg.dec_dim * cfg.dim_mult[-1] != out:
        raise ValueError(f"{source}: decoder.conv_in has {out} output channels, which no pruning rate gives (the full "
                         f"decoder has {full}; a rate gives dim_mult[-1]·round(base·(1 − rate))). Expected "
                         f"{LIGHTVAE.description}")
    return rate


def _few(items: list[str], n: int = 5) -> str:
    return ", ".join(items[:n]) + (f" (+{len(items) - n} more)" if len(items) > n else "")


def check_lightvae_state(vae: WanVAE, state: Mapping[str, Tensor], names: Mapping[str, str], source: str) -> None:
    """Every key and shape of `vae` against a Wan-named state: one ValueError listing the missing keys (in the file's
    layout), the unexpected and the mis-shaped ones (as the file spells them), and the layout expected."""
    expected = vae.state_dict()
    cfg = vae.config
    n = cfg.num_res_blocks
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if not (missing or unexpected or shapes):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key(s): {_few([to_diffusers_key(k, n) for k in missing])}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s): {_few([names.get(k, k) for k in unexpected])}")
    if shapes:
        parts.append(f"{len(shapes)} key(s) with the wrong shape: " + _few(
            [f"{names.get(k, k)} {list(state[k].shape)} (expected {list(expected[k].shape)})" for k in shapes]))
    raise ValueError(f"{source}: does not load strictly as the MG-LightVAE at pruning rate {cfg.pruning:g} (read off "
                     f"decoder.conv_in; encoder base width {cfg.enc_dim}, decoder {cfg.dec_dim}): "
                     + "; ".join(parts) + f". Expected {LIGHTVAE.description}")


def lightvae_from_state(state: Mapping[str, Tensor], source: str = "checkpoint", base: str | VAEConfig = "wan2.2",
                        device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> WanVAE:
    """The MG-LightVAE of a flat state dict in the files' layout: rate read off it, every key and shape checked,
    weights assigned (the file's dtype unless `dtype`), on `device` (default CPU), in eval mode and frozen."""
    cfg = base_config(base)
    wan, names = to_wan_state(state, cfg.num_res_blocks, source)
    config = lightvae_config(infer_pruning(wan, cfg, source), cfg)
    vae = build_vae(config, device="meta")
    check_lightvae_state(vae, wan, names, source)
    vae.load_state_dict(wan, strict=True, assign=True)
    vae.reset_latent_stats()
    vae.to(device=device if device is not None else "cpu", dtype=dtype)
    return vae.eval().requires_grad_(False)


def read_lightvae(path: str | Path) -> dict[str, Tensor]:
    """The flat state dict of an MG-LightVAE file (torch archive or safetensors), after `longlive.filecheck`'s checks
    of its container."""
    path = Path(path)
    raw = load_safetensors(path, LIGHTVAE) if path.suffix == ".safetensors" else load_torch(path, LIGHTVAE)
    return unwrap(raw, str(path))


def load_lightvae(path: str | Path, base: str | VAEConfig = "wan2.2", device: str | torch.device | None = None,
                  dtype: torch.dtype | None = None) -> WanVAE:
    """Build the MG-LightVAE a file holds (its rate read off it) and load it strictly (`lightvae_from_state`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MG-LightVAE checkpoint not found: {path} (expected {LIGHTVAE.description})")
    return lightvae_from_state(read_lightvae(path), str(path), base, device, dtype)


def lightvae_for(vae_type: str, path: str | Path | None, *, pruning: float | None = None, explicit: bool = False,
                 device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                 seed: int = 0) -> tuple[WanVAE, str | None]:
    """(VAE, note or None) for a pruned `vae_type`: the file at `path` (its own rate), else seeded random weights at
    `pruning` (the type's nominal rate when None) — an error instead if the path was given explicitly, or if both a
    file and a rate are given (a file's rate is its own)."""
    if vae_type not in FILES:
        raise ValueError(f"vae_type {vae_type!r} is not a pruned VAE; one of {', '.join(FILES)}")
    if path is not None and Path(path).exists():
        if pruning is not None:
            raise ValueError(f"vae_pruning={pruning} applies to random weights only: {path} gives its own rate")
        return load_lightvae(path, device=device, dtype=dtype), None
    if explicit:
        raise FileNotFoundError(f"MG-LightVAE checkpoint not found: expected {path}")
    rate = NOMINAL_PRUNING[vae_type] if pruning is None else check_rate(pruning, "vae_pruning")
    torch.manual_seed(seed)
    vae = build_vae(lightvae_config(rate), device=device, dtype=dtype)
    return vae, f"vae: {vae_type} at pruning rate {rate:g}, seeded random weights (no checkpoint)"
