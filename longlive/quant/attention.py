"""Low-precision self-attention backends (names.ATTN_LOWP), registered into `longlive.model.attention` by name.

Importing this module installs them (the assembler and the workload checks do); the model never imports it.

- `cudnn-fp8` (`attention_cudnn`): cuDNN's FP8 SDPA through the `nvidia-cudnn-frontend` package — E4M3 Q, K, V and
  output with per-tensor FP32 scales.
- `int8-fp8` (`attention_triton`): a Triton kernel of our own with split precision — Q·Kᵀ in INT8 with per-block
  scales after K smoothing (the keys' mean is subtracted, which leaves the softmax unchanged), P·V in FP8.

Both take K/V as compute-dtype tensors (quantised per call) or as `FP8Window`s read from an FP8 KV cache as stored.
Their `-emulated` twins (`names.ATTN_EMULATED`) run each module's `reference`, the same arithmetic in PyTorch, on any
device: the tiny model's quality under FP8 attention can then be measured on a CPU (`attn_lowp_tiny_emulated`).
"""

from __future__ import annotations

from longlive.model.attention import register_backend
from longlive.quant import attention_cudnn, attention_triton

register_backend("cudnn-fp8", attention_cudnn.attend, attention_cudnn.unavailable)
register_backend("int8-fp8", attention_triton.attend, attention_triton.unavailable)


def _anywhere(device: object) -> None:
    """An emulated backend runs on every device."""
    return None


register_backend("cudnn-fp8-emulated", attention_cudnn.reference, _anywhere)
register_backend("int8-fp8-emulated", attention_triton.reference, _anywhere)
