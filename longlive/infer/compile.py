"""torch.compile applied from outside the model (the torchtitan habit): one compiled graph per DiT block.

What it buys at the 5B shapes: the block's float32 residual stream, adaLN modulation, LayerNorms, RMSNorm, RoPE,
dtype casts and gates are ~20 small elementwise kernels per block in eager mode (≈ 40 % of the device time
in reports/foundation-5b's profile); inductor fuses them into a handful. Under compilation the quantisers take
their PyTorch reference path (`longlive.quant.kernels`), so FP8 activation quantisation fuses into the kernel
that produces the activation instead of being a separate Triton launch.

What stays eager: attention over the KV cache (`dit.cached_attention`, `torch.compiler.disable`), because the
cache's slot bookkeeping is Python and the window length changes while it fills; and everything outside the
blocks (patch embedding, time embedding, head), which is < 1 % of the work. The compiled graphs see only the
chunk's own tokens, whose shape never changes, so one set of graphs serves every layer and every chunk;
`compile_and_warm` still runs each window length once so that nothing else (cuDNN plans) is first met while timed.

`torch._dynamo` / `torch._inductor` are reached as attributes of `torch` (loaded on first use), so importing this
module does not cost their ~3 s import: most cells never compile.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from longlive.infer.pipeline import GenerationSpec, generate
from longlive.model import dit
from longlive.names import COMPILE_MODES
from longlive.vae.layers import (
    CausalStack,
    DupUp3D,
    Resample,
    ResidualBlock,
    RMSNorm,
    dup_up,
    head_pixels,
    residual_block_steady,
    rms_silu,
    rms_silu_pad,
    upsample_steady,
)


def compile_blocks(model: nn.Module, mode: str = "default") -> nn.Module:
    """Compile every block of a `CausalWanModel` in place (idempotent); mode 'none' is a no-op."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"unknown compile mode {mode!r}; choose one of {', '.join(COMPILE_MODES)}")
    if mode == "none":
        return model
    # 30 blocks share one code object; their graphs are shared too (parameters are graph inputs), but the
    # window-length variants and the layer index add guard entries: leave room so nothing falls back to eager.
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    if mode.startswith("max-autotune"):
        # Autotune the fused pointwise/reduction kernels, but keep the GEMMs on cuBLAS: in torch 2.11 every Triton
        # FP8 `_scaled_mm` template fails to compile and the compile aborts, and the Triton BF16 GEMMs never beat
        # nvjet at these shapes (reports/perf, session 4).
        torch._inductor.config.max_autotune_gemm_backends = "ATEN"
    if not getattr(dit.cached_attention, "_longlive_eager_island", False):  # the attention over the KV cache
        dit.cached_attention = torch.compiler.disable(dit.cached_attention)   # stays eager (model.dit)
        dit.cached_attention._longlive_eager_island = True
    for blk in model.blocks:
        if not getattr(blk, "_longlive_compiled", False):
            blk.compile(mode=None if mode == "default" else mode, dynamic=False)
            blk._longlive_compiled = True
    model.compile_mode = mode
    return model


def compile_vae(vae: nn.Module) -> nn.Module:
    """Compile the pointwise work around a Wan VAE's convolutions into the passes that must exist anyway.
    Inference only; idempotent. Every RMSNorm → SiLU is one kernel, which also writes the next conv's causal pad
    and cache tail where a stream has one; each residual block of a running stream is one graph (the convs'
    biases fused into the passes after them). On the decoder, past a stream's first pass: each up-resample is one
    graph, its nearest ×2 + 3×3 conv done as four 2×2 parity convs on the small input (`layers.subpixel_up`: 16/36
    of the multiply-adds, no upsampled tensor) with the time conv's pad, bias and interleave and the output's bias
    in the passes around them; the DupUp3D shortcut writes its channels-last output in one kernel; the head's conv
    output gets its bias, clamp and unpatchify in one pass.

    The causal caches and the attention stay eager, and cuDNN runs every convolution; one compiled function per
    kind of block, specialised per activation shape (a handful each)."""
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    fused, fused_pad = torch.compile(rms_silu, dynamic=False), torch.compile(rms_silu_pad, dynamic=False)
    block = torch.compile(residual_block_steady, dynamic=False)
    up, dup = torch.compile(upsample_steady, dynamic=False), torch.compile(dup_up, dynamic=False)
    for m in vae.modules():
        if isinstance(m, RMSNorm):
            m.fused, m.fused_pad = fused, fused_pad
        elif isinstance(m, ResidualBlock):
            m.fused = block
        elif isinstance(m, Resample) and m.up:
            m.fused = up
        elif isinstance(m, DupUp3D):
            m.fused = dup
    decoder = getattr(vae, "decoder", None)
    if isinstance(decoder, CausalStack):
        decoder.fused_head = torch.compile(head_pixels, dynamic=False)
    return vae


def compile_and_warm(model: nn.Module, mode: str, embeds: list, *, kv_quant: str = "none", sp=None,
                     seed: int = 0, relative_rope: bool = False) -> float | None:
    """`compile_blocks`, then one 1-step generation over window/chunk + 1 chunks, so every window length has
    compiled before anything is timed. Returns the seconds this took (None for mode 'none', which does nothing).
    Every SP rank must call it (the warm-up runs the all-to-alls). relative_rope: warm the graph of that mode (keys
    cached unrotated), so the timed run does not recompile."""
    if mode == "none":
        return None
    cfg = model.cfg
    t0 = time.perf_counter()
    compile_blocks(model, mode)
    warm = GenerationSpec(prompts=["warm-up"], frames=(cfg.window_frames // cfg.chunk_frames + 1) * cfg.chunk_frames,
                          steps=1, seed=seed, warmup_chunks=0, kv_quant=kv_quant, relative_rope=relative_rope)
    generate(model, warm, embeds[:1], sp=sp)
    return time.perf_counter() - t0
