"""What one video is (`VideoRequest`) and the cheap checks that run before anything heavy (`validate`).

`longlive.infer.assemble` builds and runs a request; `longlive generate`, `fidelity` and the runner's `infer`
workload all make a `VideoRequest`, whose field names are the run spec's (docs/architecture.md).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from longlive.experiments.rules import (
    check_decode,
    check_device_present,
    check_exchange,
    check_finite,
    check_frames,
    check_geometry,
    check_one_of,
    check_prompts,
    check_release_options,
    check_seed,
    check_size,
    check_sp,
    check_steps,
    check_vae_type,
)
from longlive.filecheck import GENERATOR_ANY, LORA, TINY_TEXT, UMT5, VAE, check_image, check_present, check_weights
from longlive.infer.decode import DECODE_MODES
from longlive.infer.training_weights import check_ema
from longlive.model.attention import BACKENDS
from longlive.model.presets import ModelConfig, get_preset
from longlive.names import COMPILE_MODES, EXCHANGE, KV_QUANT, LINEAR_QUANT
from longlive.quant.kv import DEFAULT_KV_RULE
from longlive.quant.linear import DEFAULT_WEIGHT_RULE, check_act_scale, check_backend
from longlive.quant.recipes import DEFAULT_ACT_RULE
from longlive.text.prompts import DEFAULT_NEGATIVE_PROMPT, SCENE_CUT_PREFIX
from longlive.vae.lightvae import FILES as LIGHTVAE_FILES
from longlive.vae.lightvae import LIGHTVAE
from longlive.weights import WeightPaths, default_paths, require

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
    act_scale: str = "dynamic"        # FP8 activations: dynamic (per token) | static (calibrated at build, per tensor)
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
    vae_type: str = "wan"             # the decoder of a Wan2.2-VAE preset: wan | mg_lightvae | mg_lightvae_v2
    vae_pruning: float | None = None  # a random-weight MG-LightVAE's rate (None: the type's file rate, 0.5 / 0.75)

    @property
    def torch_dtype(self) -> torch.dtype:
        if self.dtype is not None:
            if self.dtype not in DTYPES:
                raise ValueError(f"unknown dtype {self.dtype!r}; choose one of {', '.join(DTYPES)}")
            return DTYPES[self.dtype]
        return torch.bfloat16 if torch.device(self.device).type == "cuda" else torch.float32


def sized_config(cfg: ModelConfig, height: int | None, width: int | None) -> ModelConfig:
    """The config at the request's pixel size (the release's `image_or_video_shape` [B, F, C, H/16, W/16] in pixels).
    Each side must be a positive multiple of the VAE stride × the patch, so the latent splits into whole patches."""
    check_size(cfg, height, width, cli=True)
    over = {k: v for k, v in (("height", height), ("width", width)) if v is not None}
    return cfg.with_overrides(**over) if over else cfg


def request_config(req: VideoRequest) -> ModelConfig:
    """The preset's config at the request's size, with its window, sink and shot RoPE offset, checked as a cache
    geometry."""
    return check_geometry(sized_config(get_preset(req.model), req.height, req.width), req.window_frames,
                          req.sink_frames, req.shot_rope_offset, req.multishot_sink, cli=True)


def vae_paths(req: VideoRequest, paths: WeightPaths | None) -> WeightPaths | None:
    """`paths` with the VAE file of the request's `vae_type`: the published MG-LightVAE file beside Wan2.2_VAE.pth
    under the weights root (vae_type wan: unchanged)."""
    if paths is None or req.vae_type == "wan":
        return paths
    return dataclasses.replace(paths, vae=paths.vae.with_name(LIGHTVAE_FILES[req.vae_type]))


def check_vae(req: VideoRequest, cfg: ModelConfig) -> None:
    """vae_type / vae_pruning of a request, by the run spec's rule (a VAE file is loaded unless random weights
    without --vae)."""
    check_vae_type(req.vae_type, req.vae_pruning, cfg.vae, checkpoint=req.vae is not None or not req.random_weights,
                   image=req.image is not None, cli=True)


def validate(req: VideoRequest, *, launched: bool = True):
    """All cheap checks before anything heavy, by the run spec's rules (`longlive.experiments.rules`), named by
    generate's flags. `launched=False`: the SP ranks are not started yet (the caller starts them). Returns (the
    preset's config with the request's overrides, default weight paths or None)."""
    cfg = request_config(req)
    check_frames(req.frames, cfg, cli=True)
    check_steps(req.steps, cli=True)
    check_seed(req.seed, cli=True)
    check_one_of("attn", req.attn, tuple(BACKENDS), cli=True)
    check_device_present("device", req.device, cli=True)
    req.torch_dtype  # noqa: B018  (validates dtype)
    check_decode(req.decode, DECODE_CHOICES, req.sp, req.device, req.vae_device, cli=True)
    if req.vae_device is not None:
        check_device_present("vae_device", req.vae_device, cli=True)
    check_finite("timestep_shift", req.timestep_shift, cli=True, meaning="the sigma grid's shift; 5 by default")
    check_finite("guidance_scale", req.guidance_scale, cli=True, strict=False, meaning="1: no guidance")
    check_prompts(req.prompts, req.switch_at, req.frames // cfg.chunk_frames, req.scene_cut_prefix, cfg.chunk_frames,
                  cli=True)
    check_sp(req.sp, cfg, cli=True)
    check_exchange(req.exchange, EXCHANGE, req.sp, cli=True)
    if req.sp > 1:
        if req.relative_rope:
            raise ValueError("--relative-rope is not implemented under sequence parallelism (sp > 1): give --sp 1 or "
                             "drop --relative-rope")
        if launched and int(os.environ.get("WORLD_SIZE", "1")) != req.sp:
            raise ValueError(f"sp={req.sp} runs as {req.sp} processes under torchrun (WORLD_SIZE={req.sp}); "
                             f"`longlive generate --sp {req.sp}` launches them for you")
    check_one_of("compile", req.compile, COMPILE_MODES, cli=True)
    check_one_of("kv_quant", req.kv_quant, KV_QUANT, cli=True)
    check_one_of("linear_quant", req.linear_quant, LINEAR_QUANT, cli=True)
    if req.linear_quant != "none":
        check_backend(req.linear_quant, req.linear_backend, req.device)
    check_act_scale(req.act_scale, linear_quant=req.linear_quant, act_quant=req.act_quant,
                    linear_backend=req.linear_backend, cli=True)
    check_vae(req, cfg)
    if req.image is not None and not Path(req.image).is_file():
        problem = "is a folder, not an image file" if Path(req.image).is_dir() else "the image file does not exist"
        raise FileNotFoundError(f"--image {req.image}: {problem}; give the path of a PNG or JPEG first frame")
    if req.image is not None:
        check_image(req.image, "--image")  # opened, verified and decoded before any work
    if req.lora is not None:
        check_weights(require(req.lora, "--lora"), LORA)  # format and integrity (longlive.filecheck)
    check_release_options(lora_mode=req.lora_mode, lora=req.lora, fuse_qkv=req.fuse_qkv, ema=req.ema,
                          random_weights=req.random_weights, act_rule=req.act_rule, kv_rule=req.kv_rule,
                          linear_quant=req.linear_quant, act_quant=req.act_quant, kv_quant=req.kv_quant,
                          quant_exclude=req.quant_exclude, cli=True)
    if req.random_weights:
        return cfg, None
    paths = vae_paths(req, default_paths(cfg))
    check_present([(req.checkpoint or paths.generator, GENERATOR_ANY),
                   (req.vae or paths.vae, VAE if req.vae_type == "wan" else LIGHTVAE),
                   (req.text_encoder or paths.text, TINY_TEXT if cfg.text_encoder == "tiny" else UMT5)])
    if req.ema:
        check_ema(require(req.checkpoint or paths.generator, "--ema: generator checkpoint"))
    if cfg.name == "tiny":  # our own weights are optional: seeded random ones otherwise
        return cfg, paths
    require(req.checkpoint or paths.generator, "generator checkpoint")
    require(req.vae or paths.vae, "VAE checkpoint" if req.vae_type == "wan" else f"{req.vae_type} checkpoint")
    require(req.text_encoder or paths.text, "umT5 text encoder checkpoint")
    require(req.tokenizer or paths.tokenizer, "umT5 tokenizer folder")
    return cfg, paths
