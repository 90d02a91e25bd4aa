"""Attention backends selected by name (the run spec's `attn`; the model's `attn_backend` holds the resolved one).

Inference attention is a short-query / long-key non-causal SDPA call, so the choice is which kernel runs it:
PyTorch's SDPA kernels (cuDNN or flash on GPU, math on CPU) or a low-precision backend (`names.ATTN_LOWP`), which
`longlive.quant.attention` registers here from outside (`register_backend`), so the model never imports
quantisation. Low-precision backends take K/V either in the compute dtype or as an `FP8Window` (an FP8 KV cache's
window, read as stored). Cross-attention (512 text tokens, about 1 % of the FLOPs) always runs the BF16 kernel
(`sdpa_backend`). Training masks (block-causal) go through FlexAttention. Asking for a kernel the device cannot run
is an error, never a silent fallback.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from longlive.names import ATTN, ATTN_EMULATED, ATTN_LOWP

SDPA_BACKENDS: dict[str, SDPBackend] = {
    "math": SDPBackend.MATH,
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
}
BACKENDS = ATTN


@dataclass(frozen=True)
class FP8Window:
    """K or V of an attention window in E4M3 with one FP32 scale: the value is `data · scale`.

    `data` is [B, L, H, D] (usually a strided view of a heads-first [B, H, L, D] buffer, like the dense cache);
    `scale` is a one-element float32 tensor on the same device, so a scale computed on the device never needs a
    host sync. One scale for the whole window is what cuDNN's FP8 SDPA takes (per-tensor descales).
    """

    data: torch.Tensor
    scale: torch.Tensor

    @property
    def shape(self) -> torch.Size:
        return self.data.shape

    def dequantize(self, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
        return (self.data.to(torch.float32) * self.scale.reshape(())).to(dtype)


KV = torch.Tensor | FP8Window
LowpFn = Callable[[torch.Tensor, KV, KV], torch.Tensor]
"""A low-precision backend: (q [B, Lq, H, D] in the compute dtype, k, v [B, Lk, H, D] tensors or FP8Windows)
-> out [B, Lq, H, D] in q's dtype."""
Unavailable = Callable[[torch.device], "str | None"]
"""Why a backend cannot run on a device (a missing package, a GPU older than sm_90), or None."""

_LOWP: dict[str, tuple[LowpFn, Unavailable]] = {}


def register_backend(name: str, fn: LowpFn, unavailable: Unavailable) -> None:
    """Install a low-precision backend under its `names.ATTN_LOWP` name (done by `longlive.quant.attention`)."""
    if name not in ATTN_LOWP:
        raise ValueError(f"{name!r} is not a low-precision attention backend ({', '.join(ATTN_LOWP)})")
    _LOWP[name] = (fn, unavailable)


def reads_fp8(name: str) -> bool:
    """Whether the backend reads FP8 K/V, so an FP8 KV cache can hand it its window as stored."""
    return name in ATTN_LOWP


def sdpa_backend(name: str) -> str:
    """The PyTorch SDPA kernel for attention a low-precision backend does not take (cross-attention): cuDNN, or
    math for an emulated backend (which runs on any device)."""
    if name in ATTN_EMULATED:
        return "math"
    return "cudnn" if name in ATTN_LOWP else name


def unavailable_reason(name: str, device: torch.device | str) -> str | None:
    """Why backend `name` cannot run on `device`, or None (also for PyTorch's kernels on CUDA)."""
    device = torch.device(device)
    if name in ("cudnn", "flash", "efficient", *ATTN_LOWP) and name not in ATTN_EMULATED and device.type != "cuda":
        return f"attention backend {name!r} needs a CUDA device, but the model is on {device.type}"
    if name in ATTN_LOWP:
        if name not in _LOWP:
            return f"attention backend {name!r} is not registered (import longlive.quant.attention)"
        return _LOWP[name][1](device)
    return None


def resolve_backend(name: str, device: torch.device | str, dtype: torch.dtype | None = None) -> str:
    """Map `auto` to the fastest kernel for the device (and dtype: cuDNN and FlashAttention take no FP32, so FP32
    on CUDA gets the memory-efficient kernel) and validate explicit choices."""
    device = torch.device(device)
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if name == "auto":
        if device.type != "cuda":
            return "math"
        if dtype == torch.float32:
            return "efficient"
        major, _ = torch.cuda.get_device_capability(device)
        return "cudnn" if major >= 9 else "flash"
    reason = unavailable_reason(name, device)
    if reason is not None:
        twin = f"{name}-emulated"
        hint = f", or attn={twin} for its arithmetic in PyTorch" if twin in ATTN_EMULATED else ""
        raise ValueError(f"{reason}; use attn=auto" + (" (or math)" if device.type != "cuda" else "") + hint)
    if name in ATTN_LOWP and dtype == torch.float32:
        raise ValueError(f"attention backend {name!r} takes BF16/FP16 activations, not FP32; use attn=auto")
    return name


def sdpa(q: torch.Tensor, k: KV, v: KV, backend: str = "math") -> torch.Tensor:
    """Non-causal attention on [B, L, H, D] (keys/values may be strided views of a cache, or FP8Windows)."""
    if backend in _LOWP:
        return _LOWP[backend][0](q, k, v)
    if backend in ATTN_LOWP:
        raise ValueError(f"attention backend {backend!r} is not registered (import longlive.quant.attention)")
    k = k.dequantize(q.dtype) if isinstance(k, FP8Window) else k.to(q.dtype)
    v = v.dequantize(q.dtype) if isinstance(v, FP8Window) else v.to(q.dtype)
    qh, kh, vh = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    with sdpa_kernel([SDPA_BACKENDS[backend]]):
        out = F.scaled_dot_product_attention(qh, kh, vh)
    return out.transpose(1, 2)


def block_causal_mask_fn(tokens_per_frame: int, chunk_frames: int):
    """FlexAttention mask_mod: a query sees every key whose chunk is not later than its own chunk."""
    tokens_per_chunk = tokens_per_frame * chunk_frames

    def mask_mod(b, h, q_idx, kv_idx):
        return (kv_idx // tokens_per_chunk) <= (q_idx // tokens_per_chunk)

    return mask_mod


def flex_block_causal(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, tokens_per_frame: int, chunk_frames: int
) -> torch.Tensor:
    """Block-causal attention through FlexAttention on [B, L, H, D] (used by teacher-forcing training)."""
    # deferred: importing flex_attention loads torch._dynamo (about 1-3 s per process); only FlexAttention training
    # needs it (tests/test_layers.py lists it)
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    B, L, H, _ = q.shape
    mask = create_block_mask(
        block_causal_mask_fn(tokens_per_frame, chunk_frames), None, None, L, k.shape[1], device=q.device
    )
    out = flex_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), block_mask=mask)
    return out.transpose(1, 2)
