"""The value sets of the run spec's fields, spelled once (ground floor: no project imports).

A field's name here is its config key, its `longlive generate` / `sweep` override and its result column
(docs/architecture.md, "One name per concept"); every layer that checks a value imports the set from here.
"""

from __future__ import annotations

KV_QUANT = ("none", "fp8", "nvfp4")
"""kv_quant: how the KV cache stores keys and values (none: the model's dtype)."""

LINEAR_QUANT = ("none", "fp8", "nvfp4")
"""linear_quant: the format of the DiT blocks' Linear layers (weights, and activations unless weight-only)."""

LINEAR_BACKENDS = ("emulated", "fp8", "te")
"""linear_backend: how quantised Linears compute (emulated numerics with BF16 GEMMs, torch._scaled_mm, TE)."""

ACT_SCALE = ("dynamic", "static")
"""act_scale: how FP8 Linears scale their activations. dynamic: per token, from each activation's amax (a reduction
per quantise); static: one per-tensor scale per Linear, calibrated on a short run and then frozen (no reduction)."""

ATTN = ("auto", "math", "flash", "efficient", "cudnn", "cudnn-fp8", "int8-fp8", "cudnn-fp8-emulated",
        "int8-fp8-emulated")
"""attn: the self-attention kernel. auto/math/flash/efficient/cudnn are PyTorch's SDPA kernels (BF16); cudnn-fp8
(cuDNN frontend's FP8 SDPA: E4M3 Q, K, V and output, per-tensor scales) and int8-fp8 (a Triton kernel: INT8
per-block Q·Kᵀ with K smoothing, FP8 P·V) are the low-precision backends of `longlive.quant.attention`, which
read an FP8 KV cache as it is stored (spec 03, "FP8 attention"); each `-emulated` twin is the same arithmetic in
PyTorch (the backend's reference), on any device, for fidelity questions where no sm_90 GPU is at hand."""

ATTN_LOWP = ("cudnn-fp8", "int8-fp8", "cudnn-fp8-emulated", "int8-fp8-emulated")
"""The `attn` values that run in low precision: they read FP8 K/V windows; all but ATTN_EMULATED need an sm_90 GPU."""

ATTN_EMULATED = ("cudnn-fp8-emulated", "int8-fp8-emulated")
"""Low-precision attention emulated in PyTorch: the kernels' arithmetic at PyTorch speed, any device."""

EXCHANGE = ("none", "fp8", "nvfp4")
"""exchange: compression of K and V in the sequence-parallel all-to-alls."""

TRAIN_LAYOUTS = ("none", "traditional", "balanced")
"""train_layout: how teacher forcing splits a sample over SP ranks (none: no SP)."""

COMPILE_MODES = ("none", "default", "max-autotune-no-cudagraphs")
"""compile: torch.compile mode of the DiT blocks (none: eager)."""

DMD_QUANTISED = ("none", "generator", "generator+real", "generator+real+critic")
"""dmd_quantised: which frozen DMD networks hold NVFP4 weights (Table 2's rungs)."""

DTYPES = ("fp32", "bf16", "fp16")
"""dtype: the parameter / activation dtype of a precision."""

DMD_ADAPTERS = ("lora", "none")
"""adapter: what DMD trains in the generator and critic (lora: a PEFT LoRA on the block Linears, the release's
`adapter` section; none: every weight, the release without that section)."""

ER_REPLACEMENTS = ("random", "oldest")
"""error_recycling_config.replacement: which entry a full error-bank bucket overwrites (the release: random)."""

ER_TARGETS = ("clean", "corrective")
"""error_recycling_config.target: what the loss regresses on a perturbed input (longlive.train.error_recycling)."""

ER_STORE_DTYPES = ("bfloat16", "float16", "float32")
"""error_recycling_config.store_dtype: the dtype error-bank entries are kept in (host memory)."""

LORA_MODES = ("merge", "runtime")
"""lora_mode: how a LoRA file reaches the generator (merge: into the weights at build; runtime: a separate adapter)."""

VAE_TYPES = ("wan", "mg_lightvae", "mg_lightvae_v2")
"""vae_type: the decoder of a preset whose VAE is Wan2.2 (the release's `vae_type`). wan: the published Wan2.2 VAE;
mg_lightvae / mg_lightvae_v2: Matrix-Game 3.0's MG-LightVAE, the same graph with every width pruned (the files
MG-LightVAE.pth at 0.5, MG-LightVAE_v2.pth at 0.75; longlive.vae.lightvae)."""

DECODE = ("none", "batch", "streaming", "async", "device", "tiles")
"""decode: when and where latents become frames (none: latents only); longlive.infer.decode registers the others."""

INFERENCE_WORKLOADS = ("infer", "quality")
"""Workloads that generate a video: their rows carry the inference axes (kv_quant, steps, decode, exchange) and a
fidelity reference, and their cells obey the generation rules (frames, prompts, sp, decode)."""

TRAINING_WORKLOADS = ("train", "dmd")
"""Workloads whose `frames` are latents per sample or rollout (whole chunks, as in generation)."""


def check_choice(field: str, value: object, allowed: tuple[str, ...]) -> None:
    """ValueError naming the field, the value and the allowed values, when `value` is not one of them."""
    if value not in allowed:
        raise ValueError(f"{field}={value!r} is not one of {', '.join(allowed)}")
