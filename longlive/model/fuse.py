"""Inference transforms that fuse a block's projections (applied from outside the model, like compile and PTQ).

`fuse_qkv` replaces each self-attention's q, k and v Linears by one Linear with their weights stacked, so a chunk's
tokens are read once and multiplied in one [tokens, dim] × [dim, 3·dim] GEMM instead of three of a third the
width, and an FP8 model quantises the block's normed input once instead of three times. In BF16/FP32 and with
row-wise FP8 the outputs are the same up to the GEMM's summation order (the same rows of the same products). NVFP4
is not: the fused weight has one tensor scale over q, k and v together, so its block scales, and its rounding,
differ from the unfused model's.

Order: fuse after loading and after any LoRA merge (those address q, k, v by name), and before quantisation, so
the fused Linear is the one that gets quantised (`BLOCK_LINEARS` names it). A fused model's state dict has
`self_attn.qkv.*` in place of q / k / v: it is for running, not for saving as a release checkpoint.
"""

from __future__ import annotations

import torch
from torch import nn

from longlive.model.dit import SelfAttention


@torch.no_grad()
def fuse_qkv(model: nn.Module) -> int:
    """Fuse every `SelfAttention`'s q, k, v into `qkv` in place (idempotent); returns how many were fused."""
    n = 0
    for attn in model.modules():
        if not isinstance(attn, SelfAttention) or attn.qkv is not None:
            continue
        parts = (attn.q, attn.k, attn.v)
        if not all(type(p) is nn.Linear for p in parts):
            raise TypeError("fuse_qkv needs plain nn.Linear q/k/v: fuse before quantising or adding LoRA "
                            f"(got {', '.join(type(p).__name__ for p in parts)})")
        w = torch.cat([p.weight for p in parts])
        fused = nn.Linear(w.shape[1], w.shape[0], bias=attn.q.bias is not None, device=w.device, dtype=w.dtype)
        fused.weight.copy_(w)
        if fused.bias is not None:
            fused.bias.copy_(torch.cat([p.bias for p in parts]))
        fused.requires_grad_(attn.q.weight.requires_grad)
        attn.qkv = fused
        attn.q = attn.k = attn.v = None
        n += 1
    return n
