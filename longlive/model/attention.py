"""Attention backends selected by name (config key `attn_backend`).

Inference attention is a short-query / long-key non-causal SDPA call, so the choice is which SDPA kernel
runs it: cuDNN or flash on GPU, math on CPU. Training masks (block-causal) go through FlexAttention.
Asking for a kernel the device cannot run is an error, never a silent fallback.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

SDPA_BACKENDS: dict[str, SDPBackend] = {
    "math": SDPBackend.MATH,
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
}
BACKENDS = ("auto", *SDPA_BACKENDS)


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
    if name in ("cudnn", "flash", "efficient") and device.type != "cuda":
        raise ValueError(
            f"attention backend {name!r} needs a CUDA device, but the model is on {device.type}; "
            "use attn_backend=math (or auto)"
        )
    return name


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str = "math") -> torch.Tensor:
    """Non-causal attention on [B, L, H, D] tensors (keys/values may be strided views of a cache)."""
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
