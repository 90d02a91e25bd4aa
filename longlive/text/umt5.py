"""umT5-XXL text encoder: `transformers.UMT5EncoderModel` loaded from Wan's own checkpoint layout.

Wan ships the encoder as `models_t5_umt5-xxl-enc-bf16.pth` with its own key names (`token_embedding`,
`blocks.{i}.attn.q`, `blocks.{i}.ffn.gate.0`, ...). Rather than carrying a second T5 implementation we
rename those keys onto the `transformers` UMT5 encoder, which computes the same function: RMSNorm
without mean subtraction, unscaled attention with a per-layer bidirectional bucketed relative bias
(32 buckets, max distance 128), gated tanh-GELU FFN (Wan: `fc1(x) * gelu(gate(x))`, so `gate.0` is the
activated `wi_0` and `fc1` the linear `wi_1`), final RMSNorm.

The 5.68 B-parameter model is built on the meta device and the (memory-mapped) checkpoint tensors are
assigned into it, so the weights exist once in memory, not twice.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import transformers  # its classes load on first use (transformers' lazy module): ~3 s kept off every import
from torch import Tensor

from longlive.filecheck import UMT5, load_safetensors, load_torch

from .base import (
    PROMPT_CLEANING,
    UMT5TextEncoder,
    clean_prompt,
    config_fingerprint,
    dir_fingerprint,
    file_fingerprint,
)

WAN_T5_CHECKPOINT = "models_t5_umt5-xxl-enc-bf16.pth"
WAN_T5_TOKENIZER = "google/umt5-xxl"

#: `UMT5EncoderModel` ties `encoder.embed_tokens` to `shared`; the checkpoint holds the matrix once.
TIED_KEY = "encoder.embed_tokens.weight"
TIED_SOURCE = "shared.weight"


@dataclass(frozen=True)
class UMT5Spec:
    """Shapes of a umT5 encoder; the XXL one and test-sized ones go through the same code."""

    vocab_size: int
    dim: int
    ffn_dim: int
    num_heads: int
    num_layers: int
    text_len: int
    num_buckets: int = 32
    max_distance: int = 128
    eps: float = 1e-6

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads


UMT5_XXL = UMT5Spec(vocab_size=256384, dim=4096, ffn_dim=10240, num_heads=64, num_layers=24, text_len=512)


def umt5_config(spec: UMT5Spec) -> transformers.UMT5Config:
    """A `UMT5Config` for an encoder-only model with the given shapes (no hub config needed)."""
    if spec.dim % spec.num_heads:
        raise ValueError(f"dim {spec.dim} is not divisible by num_heads {spec.num_heads}")
    return transformers.UMT5Config(
        vocab_size=spec.vocab_size,
        d_model=spec.dim,
        d_kv=spec.head_dim,
        d_ff=spec.ffn_dim,
        num_layers=spec.num_layers,
        num_heads=spec.num_heads,
        relative_attention_num_buckets=spec.num_buckets,
        relative_attention_max_distance=spec.max_distance,
        layer_norm_epsilon=spec.eps,
        feed_forward_proj="gated-gelu",  # transformers maps this to gelu_new, the tanh approximation
        dropout_rate=0.0,
        is_encoder_decoder=False,
        use_cache=False,
        pad_token_id=0,
        eos_token_id=1,
    )


def build_umt5_model(spec: UMT5Spec, device: str | torch.device = "meta") -> transformers.UMT5EncoderModel:
    """Construct the encoder under a `torch.device` context (meta by default: no memory, no init cost)."""
    with torch.device(device):
        model = transformers.UMT5EncoderModel(umt5_config(spec))
    return model.eval()


# --- key map ---------------------------------------------------------------------------------------

_BLOCK_MAP = {
    "norm1.weight": "layer.0.layer_norm.weight",
    "attn.q.weight": "layer.0.SelfAttention.q.weight",
    "attn.k.weight": "layer.0.SelfAttention.k.weight",
    "attn.v.weight": "layer.0.SelfAttention.v.weight",
    "attn.o.weight": "layer.0.SelfAttention.o.weight",
    "pos_embedding.embedding.weight": "layer.0.SelfAttention.relative_attention_bias.weight",
    "norm2.weight": "layer.1.layer_norm.weight",
    "ffn.gate.0.weight": "layer.1.DenseReluDense.wi_0.weight",  # the GELU-activated branch
    "ffn.fc1.weight": "layer.1.DenseReluDense.wi_1.weight",  # the linear branch
    "ffn.fc2.weight": "layer.1.DenseReluDense.wo.weight",
}
_TOP_MAP = {"token_embedding.weight": TIED_SOURCE, "norm.weight": "encoder.final_layer_norm.weight"}
_BLOCK_INV = {v: k for k, v in _BLOCK_MAP.items()}
_TOP_INV = {v: k for k, v in _TOP_MAP.items()}
_WAN_BLOCK = re.compile(r"blocks\.(\d+)\.(.+)")
_HF_BLOCK = re.compile(r"encoder\.block\.(\d+)\.(.+)")


def wan_to_hf_key(key: str) -> str | None:
    """Map one Wan T5-encoder key to its `UMT5EncoderModel` name (None if it has no counterpart)."""
    if key in _TOP_MAP:
        return _TOP_MAP[key]
    m = _WAN_BLOCK.fullmatch(key)
    if m and m.group(2) in _BLOCK_MAP:
        return f"encoder.block.{m.group(1)}.{_BLOCK_MAP[m.group(2)]}"
    return None


def hf_to_wan_key(key: str) -> str | None:
    """Inverse of `wan_to_hf_key` (the tied `encoder.embed_tokens.weight` maps to the embedding)."""
    if key == TIED_KEY:
        key = TIED_SOURCE
    if key in _TOP_INV:
        return _TOP_INV[key]
    m = _HF_BLOCK.fullmatch(key)
    if m and m.group(2) in _BLOCK_INV:
        return f"blocks.{m.group(1)}.{_BLOCK_INV[m.group(2)]}"
    return None


def expected_shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """The model's loadable keys and shapes, the tied alias left out (it is filled from its source)."""
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if k != TIED_KEY}


def umt5_shapes(spec: UMT5Spec) -> dict[str, tuple[int, ...]]:
    """`expected_shapes` of the encoder for `spec`, from the key map and the spec alone (no model, no transformers
    model classes): so a checkpoint is checked before anything is built. A test holds it equal to the model's."""
    d, f, h = spec.dim, spec.ffn_dim, spec.num_heads
    block = {"layer.0.layer_norm.weight": (d,), "layer.0.SelfAttention.q.weight": (d, d),
             "layer.0.SelfAttention.k.weight": (d, d), "layer.0.SelfAttention.v.weight": (d, d),
             "layer.0.SelfAttention.o.weight": (d, d),
             "layer.0.SelfAttention.relative_attention_bias.weight": (spec.num_buckets, h),
             "layer.1.layer_norm.weight": (d,), "layer.1.DenseReluDense.wi_0.weight": (f, d),
             "layer.1.DenseReluDense.wi_1.weight": (f, d), "layer.1.DenseReluDense.wo.weight": (d, f)}
    assert set(block) == set(_BLOCK_MAP.values())
    out = {TIED_SOURCE: (spec.vocab_size, d)}
    for i in range(spec.num_layers):
        out.update({f"encoder.block.{i}.{k}": v for k, v in block.items()})
    out["encoder.final_layer_norm.weight"] = (d,)
    return out


def wan_umt5_shapes(spec: UMT5Spec = UMT5_XXL) -> dict[str, tuple[int, ...]]:
    """Every key and shape a Wan-layout checkpoint for `spec` must hold."""
    out = {}
    for k, shape in umt5_shapes(spec).items():
        wan = hf_to_wan_key(k)
        if wan is None:
            raise RuntimeError(f"model key {k!r} has no Wan name; the key map is out of date")
        out[wan] = shape
    return out


def match_state_dict(
    state: Mapping[str, object], expected: Mapping[str, tuple[int, ...]], what: str = "checkpoint"
) -> None:
    """Raise a ValueError naming the first extra, missing or mis-shaped key (checked in that order)."""
    for k, v in state.items():
        if k not in expected:
            raise ValueError(f"{what}: unexpected key {k!r} (not in the model)")
        if not isinstance(v, Tensor):
            raise ValueError(f"{what}: key {k!r} holds a {type(v).__name__}, not a tensor")
    for k in expected:
        if k not in state:
            raise ValueError(f"{what}: missing key {k!r}")
    for k, shape in expected.items():
        got = tuple(state[k].shape)  # type: ignore[union-attr]
        if got != shape:
            raise ValueError(f"{what}: key {k!r} has shape {list(got)}, the model expects {list(shape)}")


def convert_wan_t5_state_dict(state: Mapping[str, Tensor], model: torch.nn.Module) -> dict[str, Tensor]:
    """Rename a Wan-layout state dict onto `model`, strictly: every key consumed, every key filled.

    Unknown Wan names are reported by their Wan name; shape errors by Wan name and model name.
    """
    expected = expected_shapes(model)
    out: dict[str, Tensor] = {}
    for k, v in state.items():
        hf = wan_to_hf_key(k)
        if hf is None or hf not in expected:
            raise ValueError(f"umT5 checkpoint: unexpected key {k!r} (no counterpart in the model)")
        if not isinstance(v, Tensor):
            raise ValueError(f"umT5 checkpoint: key {k!r} holds a {type(v).__name__}, not a tensor")
        out[hf] = v
    for hf in expected:
        if hf not in out:
            raise ValueError(f"umT5 checkpoint: missing key {hf_to_wan_key(hf)!r} (model {hf!r})")
    for hf, shape in expected.items():
        if tuple(out[hf].shape) != shape:
            raise ValueError(
                f"umT5 checkpoint: key {hf_to_wan_key(hf)!r} has shape {list(out[hf].shape)}, "
                f"the model expects {list(shape)} (model {hf!r})"
            )
    return out


def load_state_dict_file(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read a `.pth` (weights only, memory-mapped) or `.safetensors` state dict onto the CPU, after checking the
    file's format and integrity (`longlive.filecheck`: a damaged file is named, not a torch traceback)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return load_safetensors(path, UMT5)
    state = load_torch(path, UMT5)
    if not isinstance(state, Mapping):
        raise ValueError(f"{path}: expected a state dict, found a {type(state).__name__}")
    return dict(state)


def assign_state_dict(model: torch.nn.Module, state: dict[str, Tensor]) -> None:
    """Put the tensors into the (meta) model by assignment, then re-tie the input embedding."""
    full = dict(state)
    if TIED_KEY in model.state_dict():
        full[TIED_KEY] = state[TIED_SOURCE]
    model.load_state_dict(full, strict=True, assign=True)
    if hasattr(model, "encoder"):
        model.encoder.embed_tokens.weight = model.shared.weight


def load_wan_umt5(
    checkpoint: str | os.PathLike,
    spec: UMT5Spec = UMT5_XXL,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> transformers.UMT5EncoderModel:
    """Load a Wan-layout umT5 encoder checkpoint strictly; dtype None keeps the stored dtype (bf16)."""
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(
            f"umT5 checkpoint not found: {path}. Put {WAN_T5_CHECKPOINT} from the Wan2.2-TI2V-5B "
            "(or Wan2.1) release there, or pass checkpoint=<that file or its folder>."
        )
    raw = load_state_dict_file(path)  # the file is checked and read before any model is built
    model = build_umt5_model(spec, "meta")
    state = convert_wan_t5_state_dict(raw, model)
    del raw
    if dtype is None:
        dtype = state[TIED_SOURCE].dtype
    assign_state_dict(model, state)
    del state
    # One conversion/copy at most; on CPU with the stored dtype this is a no-op on the mmap'd tensors.
    return model.to(device=torch.device(device or "cpu"), dtype=dtype).eval().requires_grad_(False)


# --- the text encoder --------------------------------------------------------------------------------


def resolve_paths(
    checkpoint: str | os.PathLike | None, tokenizer_dir: str | os.PathLike | None
) -> tuple[Path, Path]:
    """Find the checkpoint file and tokenizer folder; a release folder holds both (Wan's layout)."""
    if checkpoint is None:
        raise FileNotFoundError(
            f"umt5-xxl needs the Wan text-encoder weights: pass checkpoint=<path to {WAN_T5_CHECKPOINT}> "
            f"or the Wan2.2-TI2V-5B folder that holds it (and its {WAN_T5_TOKENIZER}/ tokenizer folder)."
        )
    ckpt = Path(checkpoint)
    if ckpt.is_dir():
        ckpt = ckpt / WAN_T5_CHECKPOINT
    if not ckpt.is_file():
        raise FileNotFoundError(
            f"umT5 checkpoint not found: {ckpt}. Put {WAN_T5_CHECKPOINT} from the Wan2.2-TI2V-5B release "
            "there, or pass checkpoint=<that file or its folder>."
        )
    tok = Path(tokenizer_dir) if tokenizer_dir is not None else ckpt.parent / WAN_T5_TOKENIZER
    if not tok.is_dir():
        raise FileNotFoundError(
            f"umT5 tokenizer folder not found: {tok}. Copy the {WAN_T5_TOKENIZER}/ folder of the "
            "Wan2.2-TI2V-5B release there (tokenizer_config.json, spiece.model and/or tokenizer.json), "
            "or pass tokenizer_dir=<folder>."
        )
    return ckpt, tok


def hf_tokenize_fn(tokenizer_dir: str | os.PathLike, max_len: int):
    """A tokenize function over a local Hugging Face tokenizer folder (never the hub)."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)

    def tokenize(prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        # Wan pads to the full length, truncates, and appends EOS (which counts as a real token).
        enc = tokenizer(
            [clean_prompt(p) for p in prompts],
            padding="max_length",
            truncation=True,
            max_length=max_len,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        return enc["input_ids"], enc["attention_mask"]

    return tokenize


def build_umt5_text_encoder(
    checkpoint: str | os.PathLike | None = None,
    *,
    tokenizer_dir: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    spec: UMT5Spec = UMT5_XXL,
    name: str = "umt5-xxl",
) -> UMT5TextEncoder:
    """The umT5 encoder from Wan's checkpoint + local tokenizer folder, as a `TextEncoder`.

    The tokenizer is checked before the 11 GB checkpoint is touched so a bad path fails fast.
    """
    ckpt, tok_dir = resolve_paths(checkpoint, tokenizer_dir)
    tokenize = hf_tokenize_fn(tok_dir, spec.text_len)
    model = load_wan_umt5(ckpt, spec, device=device, dtype=dtype)
    dtype_name = str(next(model.parameters()).dtype).removeprefix("torch.")
    identity = (
        f"{name}/{dtype_name}/ckpt={file_fingerprint(ckpt)}/tok={dir_fingerprint(tok_dir)}"
        f"/cfg={config_fingerprint([asdict(spec), PROMPT_CLEANING])}"
    )
    return UMT5TextEncoder(name, model, tokenize, spec.text_len, identity)
