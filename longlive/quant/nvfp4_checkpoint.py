"""NVFP4 generator checkpoints (`model_4o6.pt`, checkpoint_format "longlive_generator_nvfp4"; spec 01).

Per quantised Linear `X` (no `X.weight`):
  X.quantized_weight_values         uint8 [rows, cols/2]  (low nibble = even column); a FourOverSix-style file may
                                    instead hold the zero-padded [padded_rows, padded_cols/2], which is accepted
  X.quantized_weight_scale_factors  float8_e4m3fn 1-D, length padded_rows · padded_cols / 16, in the cuBLAS blocked
                                    128×4 layout (`swizzle.to_blocked`) of the [rows, cols/16] scale matrix
  X.quantized_weight_amax           fp32 [1]: the tensor amax (NOT the scale; g = amax / (D·M) by rule)
  X.quantized_weight_metadata       int32 [orig_rows, orig_cols, padded_rows, padded_cols], padded_rows =
                                    round_up(rows, 128), padded_cols = round_up(cols, 64) (elements; 64 = 4 blocks)
  X.bias                            bf16 (an ordinary tensor, like every non-quantised weight)
The scale rule lives only in the top-level `quantization` dict (key `weight_scale_rule`; `scale_rule` / `rule` are
also read). File: a torch pickle {"generator": state dict with `model.`-prefixed keys, "checkpoint_format",
"checkpoint_version": 1, "dtype": "bfloat16", "merged_lora", "quantization"}.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from longlive.filecheck import NVFP4_GENERATOR, load_torch
from longlive.model.checkpoint import NVFP4_FORMAT, PREFIX, CheckpointError

from .nvfp4 import BLOCK, RULES, global_scale_from_amax
from .swizzle import from_blocked, round_up, to_blocked
from .tensors import NVFP4Tensor

CHECKPOINT_VERSION = 1
SUFFIXES = ("values", "scale_factors", "amax", "metadata")
Q = ".quantized_weight_"
RULE_KEYS = ("weight_scale_rule", "scale_rule", "rule")
ROW_PAD, COL_PAD = 128, 4 * BLOCK


def padded_shape(rows: int, cols: int) -> tuple[int, int]:
    """(padded_rows, padded_cols) recorded in the metadata: rows to 128, columns to 64 elements."""
    return round_up(rows, ROW_PAD), round_up(cols, COL_PAD)


def encode_linear(name: str, q: NVFP4Tensor) -> dict[str, torch.Tensor]:
    """The four checkpoint buffers of one quantised Linear `name` (2-D NVFP4Tensor)."""
    if len(q.shape) != 2:
        raise CheckpointError(f"{name}: NVFP4 checkpoint weights must be 2-D, got shape {list(q.shape)}")
    rows, cols = q.shape
    pr, pc = padded_shape(rows, cols)
    if tuple(q.values.shape) != (rows, cols // 2) or tuple(q.scales.shape) != (rows, cols // BLOCK):
        raise CheckpointError(
            f"{name}: NVFP4 tensor buffers {list(q.values.shape)} / {list(q.scales.shape)} disagree with its shape "
            f"{list(q.shape)}"
        )
    sf = q.scales.detach().cpu().contiguous()
    padded = torch.zeros(rows, pc // BLOCK, dtype=torch.uint8)
    padded[:, : cols // BLOCK] = sf.view(torch.uint8)
    blocked = to_blocked(padded.view(torch.float8_e4m3fn))
    assert blocked.numel() == pr * pc // BLOCK
    return {
        f"{name}{Q}values": q.values.detach().cpu().to(torch.uint8).contiguous(),
        f"{name}{Q}scale_factors": blocked,
        f"{name}{Q}amax": q.amax.detach().cpu().to(torch.float32).reshape(1).clone(),
        f"{name}{Q}metadata": torch.tensor([rows, cols, pr, pc], dtype=torch.int32),
    }


def decode_linear(
    name: str, buffers: dict[str, torch.Tensor], rule: str, *, block: tuple[int, int] = (1, 16)
) -> NVFP4Tensor:
    """Validate the four buffers of Linear `name` and build its NVFP4Tensor (errors name the offending key)."""
    key = {s: f"{name}{Q}{s}" for s in SUFFIXES}
    meta, values, sfs, amax = (buffers[key[s]] for s in ("metadata", "values", "scale_factors", "amax"))
    if meta.dtype != torch.int32 or tuple(meta.shape) != (4,):
        raise CheckpointError(f"{key['metadata']}: expected int32 [4], got {meta.dtype} {list(meta.shape)}")
    rows, cols, pr, pc = (int(v) for v in meta.tolist())
    if rows <= 0 or cols <= 0 or cols % BLOCK or pr < rows or pc < cols or pr % ROW_PAD or pc % COL_PAD:
        raise CheckpointError(
            f"{key['metadata']}: invalid [orig_rows, orig_cols, padded_rows, padded_cols] = {[rows, cols, pr, pc]} "
            f"(need positive sizes, cols % {BLOCK} == 0, padded rows a multiple of {ROW_PAD} and padded cols a "
            f"multiple of {COL_PAD}, each ≥ the original)"
        )
    if values.dtype != torch.uint8:
        raise CheckpointError(f"{key['values']}: expected uint8, got {values.dtype}")
    if tuple(values.shape) == (pr, pc // 2):
        values = values[:rows, : cols // 2]
    elif tuple(values.shape) != (rows, cols // 2):
        raise CheckpointError(
            f"{key['values']}: shape {list(values.shape)} disagrees with metadata {[rows, cols, pr, pc]} "
            f"(expected [{rows}, {cols // 2}] or padded [{pr}, {pc // 2}])"
        )
    if sfs.dtype != torch.float8_e4m3fn or sfs.ndim != 1 or sfs.numel() != pr * pc // BLOCK:
        raise CheckpointError(
            f"{key['scale_factors']}: expected 1-D float8_e4m3fn of length {pr}·{pc}/{BLOCK} = {pr * pc // BLOCK}, "
            f"got {sfs.dtype} {list(sfs.shape)}"
        )
    if amax.dtype != torch.float32 or amax.numel() != 1:
        raise CheckpointError(f"{key['amax']}: expected fp32 [1], got {amax.dtype} {list(amax.shape)}")
    amax = amax.reshape(1).clone()
    if not bool(torch.isfinite(amax).all()) or float(amax) < 0:
        raise CheckpointError(f"{key['amax']}: amax must be finite and ≥ 0, got {float(amax)}")
    scales = from_blocked(sfs.contiguous(), pr, pc // BLOCK)[:rows, : cols // BLOCK].contiguous()
    return NVFP4Tensor(
        values=values.contiguous(),
        scales=scales,
        amax=amax,
        global_scale=global_scale_from_amax(amax, rule),
        shape=(rows, cols),
        rule=rule,
        block=tuple(block),  # type: ignore[arg-type]
    )


def _check_rule(rule: str) -> None:
    if rule not in RULES:
        raise CheckpointError(f"unknown NVFP4 scale rule {rule!r}; expected one of {RULES}")


def split_nvfp4_state_dict(
    sd: dict[str, torch.Tensor], rule: str, *, block: tuple[int, int] = (1, 16)
) -> tuple[dict[str, NVFP4Tensor], dict[str, torch.Tensor]]:
    """Split a flat NVFP4 state dict into ({linear name: NVFP4Tensor}, {other name: tensor}); names kept as given.

    Raises CheckpointError naming the first key with a missing sibling buffer, a `.weight` next to quantised
    buffers, an unknown `quantized_weight_*` buffer, or a wrong dtype/shape/metadata.
    """
    _check_rule(rule)
    names: list[str] = []
    for k in sd:
        if k.endswith(f"{Q}values"):
            names.append(k[: -len(f"{Q}values")])
    name_set = set(names)
    for k in sd:
        if Q in k:
            base, suffix = k.split(Q, 1)
            if suffix not in SUFFIXES:
                raise CheckpointError(f"unexpected quantised buffer {k} (known: {', '.join(SUFFIXES)})")
            if base not in name_set:
                raise CheckpointError(f"{k} has no matching {base}{Q}values")
    quantised: dict[str, NVFP4Tensor] = {}
    for name in names:
        for s in SUFFIXES:
            if f"{name}{Q}{s}" not in sd:
                raise CheckpointError(f"checkpoint is missing key {name}{Q}{s} (quantised Linear {name})")
        if f"{name}.weight" in sd:
            raise CheckpointError(f"{name}.weight must not be present next to the quantised buffers of {name}")
        quantised[name] = decode_linear(name, sd, rule, block=block)
    other = {k: v for k, v in sd.items() if Q not in k}
    return quantised, other


def build_nvfp4_state_dict(
    quantised: dict[str, NVFP4Tensor], other: dict[str, torch.Tensor], rule: str
) -> dict[str, torch.Tensor]:
    """Flat state dict: the four buffers per quantised Linear plus every other tensor (floating ones cast to BF16)."""
    _check_rule(rule)
    sd: dict[str, torch.Tensor] = {}
    for name, q in quantised.items():
        if q.rule != rule:
            raise CheckpointError(f"{name}: quantised with rule {q.rule!r} but the checkpoint rule is {rule!r}")
        if f"{name}.weight" in other:
            raise CheckpointError(f"{name}.weight is given both quantised and as a plain tensor")
        sd.update(encode_linear(name, q))
    for k, v in other.items():
        if k in sd:
            raise CheckpointError(f"key {k} is given twice")
        v = v.detach().cpu()
        sd[k] = v.to(torch.bfloat16) if v.is_floating_point() else v
    return sd


def quantization_metadata(rule: str, block: tuple[int, int] = (1, 16)) -> dict[str, Any]:
    d = 256 if rule in ("mse", "mae", "abs_max") else 448
    m = 4 if rule == "static_4" else 6
    return {
        "format": "nvfp4",
        "backend": "longlive-reference",
        "materialized": True,
        "dtype": "bfloat16",
        "weight_scale_rule": rule,
        "weight_block": list(block),
        "scale_layout": "cublas_blocked_128x4",
        "global_scale": f"amax/({m}*{d})",
    }


def save_nvfp4_generator(
    path: str | Path,
    quantised: dict[str, NVFP4Tensor],
    other: dict[str, torch.Tensor],
    rule: str,
    *,
    merged_lora: bool = True,
    block: tuple[int, int] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write `model_4o6.pt`-style NVFP4 generator atomically (temp file + rename); keys get the `model.` prefix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = build_nvfp4_state_dict(quantised, other, rule)
    sd = {k if k.startswith(PREFIX) else PREFIX + k: v for k, v in sd.items()}
    if block is None:
        blocks = {tuple(q.block) for q in quantised.values()}
        block = blocks.pop() if len(blocks) == 1 else (1, 16)
    payload: dict[str, Any] = {
        "generator": sd,
        "checkpoint_format": NVFP4_FORMAT,
        "checkpoint_version": CHECKPOINT_VERSION,
        "dtype": "bfloat16",
        "merged_lora": merged_lora,
        "quantization": quantization_metadata(rule, block),
    }
    if extra:
        payload.update({k: v for k, v in extra.items() if k not in payload})
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, str(tmp))
    tmp.replace(path)
    return path


def _strip(key: str) -> str:
    key = key.replace("_fsdp_wrapped_module.", "").replace("_orig_mod.", "")
    return key[len(PREFIX) :] if key.startswith(PREFIX) else key


def recorded_rule(quantization: dict[str, Any] | None) -> str | None:
    """The scale rule recorded in a checkpoint's `quantization` dict, or None."""
    for k in RULE_KEYS:
        if quantization and quantization.get(k) is not None:
            return str(quantization[k])
    return None


def load_nvfp4_generator(
    path: str | Path, *, rule: str | None = None
) -> tuple[dict[str, NVFP4Tensor], dict[str, torch.Tensor], dict[str, Any]]:
    """Read an NVFP4 generator → (quantised Linears, other tensors, metadata); names without `model.`.

    The rule comes from the file's `quantization` metadata; `rule` is needed only when the file records none, and an
    explicit rule that conflicts with the recorded one is an error (a wrong rule rescales every weight by 448/256).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"NVFP4 generator checkpoint not found: {path}")
    obj = load_torch(path, NVFP4_GENERATOR, mmap=False)  # format and integrity checked first; weights only
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict, got {type(obj).__name__}")
    meta = {k: v for k, v in obj.items() if not isinstance(v, torch.Tensor) and k not in ("generator", "generator_ema")}
    if meta.get("checkpoint_format") != NVFP4_FORMAT:
        raise CheckpointError(
            f"{path}: checkpoint_format is {meta.get('checkpoint_format')!r}, expected {NVFP4_FORMAT!r}"
        )
    sd = next((obj[k] for k in ("generator", "generator_ema", "model") if isinstance(obj.get(k), dict)), None)
    if sd is None:
        sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    meta.pop("model", None)
    quant = meta.get("quantization") if isinstance(meta.get("quantization"), dict) else {}
    found = recorded_rule(quant)
    if found is None and rule is None:
        raise CheckpointError(
            f"{path}: the `quantization` metadata records no scale rule (looked for {', '.join(RULE_KEYS)}); "
            "pass rule=... explicitly (the release's model_4o6.pt used 'mse')"
        )
    if found is not None and rule is not None and found != rule:
        raise CheckpointError(f"{path}: explicit rule {rule!r} conflicts with the recorded rule {found!r}")
    use = found or rule
    assert use is not None
    _check_rule(use)
    blk = quant.get("weight_block") or quant.get("block") or (1, 16)
    # FourOverSix can also store transposed copies (quantized_weight_transposed_*): redundant, not loaded.
    ignored = [k for k in sd if f"{Q}transposed_" in k]
    sd = {k: v for k, v in sd.items() if k not in set(ignored)}
    try:
        quantised, other = split_nvfp4_state_dict(sd, use, block=tuple(blk))  # errors name the file's keys
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    meta["rule"] = use
    meta["ignored_keys"] = ignored
    return {_strip(k): v for k, v in quantised.items()}, {_strip(k): v for k, v in other.items()}, meta


__all__ = [
    "build_nvfp4_state_dict",
    "decode_linear",
    "encode_linear",
    "load_nvfp4_generator",
    "save_nvfp4_generator",
    "split_nvfp4_state_dict",
]
