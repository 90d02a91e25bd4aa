"""What one video is (`VideoRequest`) and the cheap checks that run before anything heavy (`validate`).

`longlive.infer.assemble` builds and runs a request; `longlive generate`, `fidelity` and the runner's `infer`
workload all make a `VideoRequest`, whose field names are the run spec's (docs/architecture.md).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from longlive.infer.decode import DECODE_MODES
from longlive.infer.pipeline import chunk_texts
from longlive.infer.training_weights import check_ema
from longlive.model.attention import BACKENDS
from longlive.model.kv_cache import CacheGeometry
from longlive.model.presets import ModelConfig, get_preset
from longlive.names import COMPILE_MODES, EXCHANGE, KV_QUANT, LINEAR_QUANT, LORA_MODES
from longlive.parallel.groups import check_sp
from longlive.quant.kv import DEFAULT_KV_RULE
from longlive.quant.linear import DEFAULT_WEIGHT_RULE, check_backend
from longlive.quant.nvfp4 import RULES as NVFP4_RULES
from longlive.quant.recipes import DEFAULT_ACT_RULE, check_exclude_patterns
from longlive.text.prompts import DEFAULT_NEGATIVE_PROMPT, SCENE_CUT_PREFIX
from longlive.weights import default_paths, require

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
DEFAULT_PROMPT = "A red ball bounces across a blue floor"
DECODE_CHOICES = ("none", *DECODE_MODES)
"""decode: a registered decode mode, or none (latents only: no VAE, latents.safetensors written)."""


@dataclass
class VideoRequest:
    model: str  # a preset of longlive.model.presets
    frames: int
    prompts: list[str] = field(default_factory=lambda: [DEFAULT_PROMPT])
    steps: int = 4
    seed: int = 0
    switch_at: list[int] | None = None
    device: str = "cpu"
    vae_device: str | None = None
    precision: str | None = None  # the named precision the fields below come from (recorded in rows)
    dtype: str | None = None  # None: bf16 on GPU, fp32 on CPU
    attn: str = "auto"
    decode: str = "streaming"
    checkpoint: Path | None = None
    lora: Path | None = None          # a LoRA file (generator adapter) merged at build, before fuse and quantise
    vae: Path | None = None
    text_encoder: Path | None = None
    tokenizer: Path | None = None
    random_weights: bool = False
    image: Path | None = None
    multishot_sink: bool = True
    clean_recache: bool = False
    cache_dir: Path = Path(".cache") / "prompt_embeddings"
    warmup_chunks: int | None = None  # None: until the window is full
    progress: bool = True
    save_latents: bool = False
    linear_quant: str = "none"        # block Linears: none | fp8 | nvfp4 (PTQ at load)
    linear_backend: str = "emulated"  # emulated | fp8 | te (explicit; recorded in results)
    weight_rule: str = DEFAULT_WEIGHT_RULE  # NVFP4 weight rule (the release's 4-over-6 `mse`)
    act_quant: bool = True            # W4A4 / W8A8 (False: weight-only)
    kv_quant: str = "none"            # none | fp8 | nvfp4
    sp: int = 1                       # sequence-parallel ranks (run under torchrun; `longlive generate` does it)
    exchange: str = "none"            # SP all-to-all compression of K/V: none | fp8 | nvfp4
    compile: str = "none"             # torch.compile of the DiT blocks: none | default | max-autotune-no-cudagraphs
    fuse_qkv: bool = False            # one q/k/v GEMM per self-attention (longlive.model.fuse), before quantising
    # the release's sampling options (README, "release key → longlive field")
    guidance_scale: float = 1.0       # classifier-free guidance; ≠ 1: two forwards per step and a second KV cache
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT  # the unconditional branch's text (read only when guided)
    timestep_shift: float = 5.0       # σ' = s·σ / (1 + (s−1)·σ) of the sigma grid
    window_frames: int | None = None  # attention window in latent frames (None: the preset's)
    sink_frames: int | None = None    # global sink in latent frames (None: the preset's; 0: none, and no shot pin)
    shot_rope_offset: int | None = None  # temporal RoPE positions skipped at each scene cut (None: the preset's)
    scene_cut_prefix: str = SCENE_CUT_PREFIX  # a prompt starting with it opens a shot
    relative_rope: bool = False       # temporal RoPE positions within the window (the release's use_relative_rope)
    # the release's weight, size and quantisation options (README, "release key → longlive field")
    height: int | None = None         # pixel height (None: the preset's); a multiple of the VAE stride × patch
    width: int | None = None          # pixel width (None: the preset's); a multiple of the VAE stride × patch
    lora_mode: str = "merge"          # merge: W + scale·B·A at build; runtime: a separate adapter (LoRALinear)
    ema: bool = False                 # load the checkpoint's EMA weights (longlive training checkpoint, generator_ema)
    act_rule: str = DEFAULT_ACT_RULE  # NVFP4 activation scale rule of PTQ
    quant_exclude: list[str] = field(default_factory=list)  # block Linears (names / re:<regex>) kept unquantised
    kv_rule: str = DEFAULT_KV_RULE    # NVFP4 scale rule of the quantised KV cache (kv_quant=nvfp4)

    @property
    def torch_dtype(self) -> torch.dtype:
        if self.dtype is not None:
            if self.dtype not in DTYPES:
                raise ValueError(f"unknown dtype {self.dtype!r}; choose one of {', '.join(DTYPES)}")
            return DTYPES[self.dtype]
        return torch.bfloat16 if torch.device(self.device).type == "cuda" else torch.float32


GEOMETRY = ("window_frames", "sink_frames", "shot_rope_offset")
"""Request fields that override the preset's `ModelConfig`: the loop, the compile warm-up, the roofline and the
profile all read them from the model's config, so an override reaches every one."""


def sized_config(cfg: ModelConfig, height: int | None, width: int | None) -> ModelConfig:
    """The config at the request's pixel size (the release's `image_or_video_shape` [B, F, C, H/16, W/16] in pixels).
    Each side must be a positive multiple of the VAE stride × the patch, so the latent splits into whole patches."""
    for side, value, stride, patch in (("height", height, cfg.vae_stride[1], cfg.patch_size[1]),
                                       ("width", width, cfg.vae_stride[2], cfg.patch_size[2])):
        if value is not None and (value <= 0 or value % (stride * patch)):
            raise ValueError(f"--{side} {value} is not a positive multiple of {stride * patch} (the {cfg.name} VAE "
                             f"stride {stride} × patch {patch}): the latent must split into whole patches")
    over = {k: v for k, v in (("height", height), ("width", width)) if v is not None}
    return cfg.with_overrides(**over) if over else cfg


def check_release_options(req: VideoRequest) -> None:
    """The LoRA mode, EMA and quantisation-rule options: known values, and no option that would silently do
    nothing (a rule without the format it belongs to)."""
    if req.lora_mode not in LORA_MODES:
        raise ValueError(f"unknown --lora-mode {req.lora_mode!r}; choose one of {', '.join(LORA_MODES)}")
    if req.lora_mode == "runtime" and req.lora is None:
        raise ValueError("--lora-mode runtime keeps a LoRA file's adapter separate: give the file with --lora")
    if req.lora_mode == "runtime" and req.fuse_qkv:
        raise ValueError("--lora-mode runtime wraps q, k and v separately, which --fuse-qkv replaces by one Linear: "
                         "use --lora-mode merge with --fuse-qkv")
    if req.ema and req.random_weights:
        raise ValueError("--ema loads a checkpoint's EMA weights; --random-weights loads none")
    for flag, rule in (("--act-rule", req.act_rule), ("--kv-rule", req.kv_rule)):
        if rule not in NVFP4_RULES:
            raise ValueError(f"unknown {flag} {rule!r}; choose one of {', '.join(NVFP4_RULES)}")
    if req.act_rule != DEFAULT_ACT_RULE and (req.linear_quant == "fp8" or not req.act_quant):
        raise ValueError(f"--act-rule {req.act_rule} is the NVFP4 activation rule: it needs NVFP4 Linears with "
                         f"quantised activations (linear_quant={req.linear_quant}, act_quant={req.act_quant})")
    if req.kv_rule != DEFAULT_KV_RULE and req.kv_quant != "nvfp4":
        raise ValueError(f"--kv-rule {req.kv_rule} is the NVFP4 KV-cache rule: it needs --kv-quant nvfp4 (got "
                         f"{req.kv_quant}; FP8 has one rule)")
    check_exclude_patterns(req.quant_exclude)
    if req.quant_exclude and req.linear_quant == "none":
        raise ValueError("--quant-exclude chooses block Linears PTQ leaves alone: give a precision with fp8 or nvfp4 "
                         "Linears (--precision)")


def request_config(req: VideoRequest) -> ModelConfig:
    """The preset's config at the request's size, with its window, sink and shot RoPE offset, checked as a cache
    geometry."""
    cfg = sized_config(get_preset(req.model), req.height, req.width)
    over = {k: getattr(req, k) for k in GEOMETRY if getattr(req, k) is not None}
    if not over:
        return cfg
    for k, v in over.items():
        if v < (1 if k == "window_frames" else 0):
            raise ValueError(f"--{k.replace('_', '-')} {v} must be ≥ {1 if k == 'window_frames' else 0}")
    cfg = cfg.with_overrides(**over)
    try:
        CacheGeometry(cfg.chunk_frames, cfg.window_frames, cfg.sink_frames, cfg.tokens_per_frame,
                      req.multishot_sink and cfg.sink_frames > 0)
    except ValueError as exc:
        raise ValueError(f"--window-frames {cfg.window_frames} --sink-frames {cfg.sink_frames}: {exc}") from None
    return cfg


def validate(req: VideoRequest):
    """All cheap checks before anything heavy. Returns (the preset's config with the request's overrides, default
    weight paths or None)."""
    cfg = request_config(req)
    if req.frames <= 0 or req.frames % cfg.chunk_frames:
        raise ValueError(
            f"--frames {req.frames} is not a multiple of the {req.model} chunk of {cfg.chunk_frames} latent frames"
        )
    if req.decode not in DECODE_CHOICES:
        raise ValueError(f"unknown --decode {req.decode!r}; choose one of {', '.join(DECODE_CHOICES)}")
    if req.decode == "tiles" and (req.sp < 2 or req.vae_device):
        raise ValueError(f"decode=tiles splits each chunk's decode over the SP ranks: it needs sp >= 2 (got sp="
                         f"{req.sp}) and each rank's own GPU (got vae_device={req.vae_device!r})")
    if req.attn not in BACKENDS:
        raise ValueError(f"unknown --attn {req.attn!r}; choose one of {', '.join(BACKENDS)}")
    req.torch_dtype  # noqa: B018  (validates dtype)
    for dev in filter(None, (req.device, req.vae_device)):
        d = torch.device(dev)
        if d.type == "cuda" and (not torch.cuda.is_available() or (d.index or 0) >= torch.cuda.device_count()):
            raise ValueError(f"device {dev} is not available on this machine")
    if req.steps < 1:
        raise ValueError(f"--steps {req.steps} must be ≥ 1")
    if not (math.isfinite(req.timestep_shift) and req.timestep_shift > 0):
        raise ValueError(f"--timestep-shift {req.timestep_shift} must be a finite number > 0")
    if not (math.isfinite(req.guidance_scale) and req.guidance_scale >= 0):
        raise ValueError(f"--guidance-scale {req.guidance_scale} must be a finite number ≥ 0 (1: no guidance)")
    chunk_texts(req.prompts, req.frames // cfg.chunk_frames, req.switch_at, req.scene_cut_prefix)
    if req.sp > 1:
        check_sp(cfg, req.sp)
        if req.relative_rope:
            raise ValueError("--relative-rope is not implemented under sequence parallelism (sp > 1)")
        if req.exchange not in EXCHANGE:
            raise ValueError(f"unknown --exchange {req.exchange!r}; choose one of {', '.join(EXCHANGE)}")
        if int(os.environ.get("WORLD_SIZE", "1")) != req.sp:
            raise ValueError(f"sp={req.sp} runs as {req.sp} processes under torchrun (WORLD_SIZE={req.sp}); "
                             f"`longlive generate --sp {req.sp}` launches them for you")
    if req.compile not in COMPILE_MODES:
        raise ValueError(f"unknown --compile {req.compile!r}; choose one of {', '.join(COMPILE_MODES)}")
    if req.kv_quant not in KV_QUANT:
        raise ValueError(f"unknown --kv-quant {req.kv_quant!r}; choose one of {', '.join(KV_QUANT)}")
    if req.linear_quant not in LINEAR_QUANT:
        raise ValueError(f"unknown linear_quant {req.linear_quant!r}; choose one of {', '.join(LINEAR_QUANT)}")
    if req.linear_quant != "none":
        check_backend(req.linear_quant, req.linear_backend, req.device)
    if req.image is not None:
        require(req.image, "--image")
    if req.lora is not None:
        require(req.lora, "--lora")
    check_release_options(req)
    if req.random_weights:
        return cfg, None
    paths = default_paths(cfg)
    if req.ema:
        check_ema(require(req.checkpoint or paths.generator, "--ema: generator checkpoint"))
    if cfg.name == "tiny":  # our own weights are optional: seeded random ones otherwise
        return cfg, paths
    require(req.checkpoint or paths.generator, "generator checkpoint")
    require(req.vae or paths.vae, "VAE checkpoint")
    require(req.text_encoder or paths.text, "umT5 text encoder checkpoint")
    require(req.tokenizer or paths.tokenizer, "umT5 tokenizer folder")
    return cfg, paths
