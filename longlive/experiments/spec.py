"""The typed run spec: one dataclass per config group and one for the whole run, registered in Hydra's ConfigStore.

`config.yaml` lists `run_spec` first in its defaults, so every YAML preset and every command-line override is
merged into these dataclasses: an unknown key or a value of the wrong type stops the sweep when it is composed,
before any cell runs, with Hydra's message naming the key. `check_spec` then checks the value sets
(`longlive.names`) and every other rule of `longlive.experiments.rules`, the same functions `longlive generate`
checks its request with. A field's name is its override, its result column and its report label.

Workloads receive a `RunSpec` (`from_config` turns a cell's resolved config back into one).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from longlive.eval.drift import check_window_quality
from longlive.experiments.rules import (
    DEVICE_TYPES,
    check_at_least,
    check_decode,
    check_device_string,
    check_exchange,
    check_finite,
    check_frames,
    check_gates,
    check_geometry,
    check_prompts,
    check_release_options,
    check_seed,
    check_size,
    check_sp,
    check_steps,
    check_vae_type,
)
from longlive.model.attention import BACKENDS
from longlive.model.presets import ModelConfig, get_preset
from longlive.names import (
    COMPILE_MODES,
    DECODE,
    DMD_ADAPTERS,
    DMD_QUANTISED,
    DTYPES,
    ER_REPLACEMENTS,
    ER_STORE_DTYPES,
    ER_TARGETS,
    EXCHANGE,
    INFERENCE_WORKLOADS,
    KV_QUANT,
    LINEAR_BACKENDS,
    LINEAR_QUANT,
    TRAIN_LAYOUTS,
    TRAINING_WORKLOADS,
    check_choice,
)
from longlive.quant.kv import DEFAULT_KV_RULE
from longlive.quant.linear import check_act_scale
from longlive.quant.nvfp4 import RULES as NVFP4_RULES
from longlive.text.prompts import DEFAULT_NEGATIVE_PROMPT, SCENE_CUT_PREFIX

DEFAULT_PROMPTS = ("A red ball bounces across a blue floor",
                   f"{SCENE_CUT_PREFIX}A green square slides to the right over a grey floor")
"""A run's prompts unless given: two shots, so a default sweep exercises a scene cut."""
UNREPEATED_WORKLOADS = ("tiny_default", "attn_error")
"""Workloads whose rows hold no timed metric (runner.schema.TIMED_METRICS): `repeats` must stay 1."""


@dataclass
class ModelSpec:
    name: str = "tiny"  # a preset of longlive.model.presets


@dataclass
class PrecisionSpec:
    name: str = "fp32"                     # the named precision (precision/<name>.yaml)
    dtype: str = "fp32"                    # parameters and activations: fp32 | bf16 | fp16
    linear_quant: str = "none"             # DiT block Linears: none | fp8 | nvfp4
    linear_backend: str | None = None   # emulated | fp8 | te (None without linear_quant)
    act_quant: bool = True                 # False: weight-only
    weight_rule: str | None = None      # NVFP4 weight scale rule (None: longlive.quant.linear's default)
    act_rule: str | None = None         # NVFP4 activation scale rule of PTQ (None: longlive.quant.recipes' default)
    act_scale: str = "dynamic"             # FP8 activations: dynamic (per token) | static (calibrated, per tensor)


@dataclass
class KVQuantSpec:
    name: str = "none"  # none | fp8 | nvfp4


@dataclass
class DecodeSpec:
    mode: str = "streaming"            # a decode mode of longlive.infer.decode (none: latents only)
    vae_device: str | None = None   # decode=device: the VAE's own GPU


@dataclass
class HardwareSpec:
    name: str = "cpu"
    device: str = "cpu"                # cpu | cuda
    gpu_name: str | None = None     # a cell asking for a GPU kind runs only where that kind is present
    min_gpus: int = 0


@dataclass
class WorkloadSpec:
    name: str = "infer"  # a registered workload (longlive.workloads)


@dataclass
class QualitySpec:
    metrics: list[str] = field(default_factory=lambda: ["temporal_flickering"])
    vbench_dimensions: list[str] = field(default_factory=list)
    # fidelity against the cell that differs from this one only in these fields (latent rel. error, PSNR)
    reference: dict[str, Any] = field(default_factory=dict)
    add_reference: bool = False          # run the reference cell first when the matrix does not hold it
    # quality over time (longlive.eval.drift): these metrics per window of window_seconds, drift last − first window
    window_metrics: list[str] | None = None  # None: the windowable ones among `metrics`; []: none
    window_seconds: float = 2.0          # VBench-Long's clip length


@dataclass
class ErrorRecyclingSpec:
    """The knobs of `longlive.train.error_recycling.ErrorRecyclingConfig`, same names and defaults (the release's
    train_ar.yaml `error_recycling:` values; a test keeps the two equal)."""

    num_buckets: int = 50          # num_buckets
    capacity: int = 500            # buffer_size_per_bucket
    p_clean: float = 0.2           # clean_prob
    p_context: float = 0.9         # context_inject_prob
    p_latent: float = 0.9          # latent_inject_prob
    p_noise: float = 0.01          # noise_inject_prob
    p_clean_record: float = 0.1    # clean_buffer_update_prob
    scale_min: float = 0.7         # 1 − modulate_factor (0.3)
    scale_max: float = 1.3         # 1 + modulate_factor
    start_step: int = 0            # start_step
    replacement: str = "random"    # replacement_strategy
    store_dtype: str = "bfloat16"  # host dtype of bank entries (longlive)
    target: str = "clean"          # what the loss regresses on a perturbed input (longlive)


@dataclass
class RunSpec:
    """Everything one cell (or one `longlive generate`) is: a config group per component, plain fields for the rest."""

    model: ModelSpec = field(default_factory=ModelSpec)
    precision: PrecisionSpec = field(default_factory=PrecisionSpec)
    kv_quant: KVQuantSpec = field(default_factory=KVQuantSpec)
    decode: DecodeSpec = field(default_factory=DecodeSpec)
    hardware: HardwareSpec = field(default_factory=HardwareSpec)
    workload: WorkloadSpec = field(default_factory=WorkloadSpec)
    quality: QualitySpec = field(default_factory=QualitySpec)
    experiment: str = "adhoc"
    # generation
    steps: int = 4                       # denoising steps per chunk (+1 clean re-run)
    frames: int = 16                     # latent frames (a multiple of the model's chunk)
    seed: int = 0
    prompts: list[str] = field(default_factory=lambda: list(DEFAULT_PROMPTS))
    switch_at: list[int] | None = None
    random_weights: bool = False
    lora: str | None = None              # a LoRA file merged into the generator at build (before quantising)
    attn: str = "auto"
    compile: str = "none"
    fuse_qkv: bool = False               # one q/k/v GEMM per self-attention (before quantising)
    guidance_scale: float = 1.0          # classifier-free guidance (1: off; else 2 forwards per step, 2 KV caches)
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT  # the unconditional text (the release's default; read when guided)
    timestep_shift: float = 5.0          # the sigma grid's shift
    window_frames: int | None = None     # attention window in latent frames (None: the model preset's)
    sink_frames: int | None = None       # global sink in latent frames (None: the preset's; 0: none)
    shot_rope_offset: int | None = None  # temporal RoPE positions skipped per scene cut (None: the preset's)
    scene_cut_prefix: str = SCENE_CUT_PREFIX  # a prompt starting with it opens a shot
    relative_rope: bool = False          # temporal RoPE positions within the window (the release's use_relative_rope)
    height: int | None = None            # pixel height (None: the preset's; a multiple of VAE stride × patch)
    width: int | None = None             # pixel width (None: the preset's)
    lora_mode: str = "merge"             # merge: `lora` into the weights at build; runtime: a separate adapter
    ema: bool = False                    # the generator checkpoint's EMA weights
    quant_exclude: list[str] = field(default_factory=list)  # block Linears (names / re:<regex>) PTQ leaves alone
    kv_rule: str = DEFAULT_KV_RULE       # NVFP4 scale rule of kv_quant=nvfp4
    vae_type: str = "wan"                # the decoder: wan (Wan2.2 VAE) | mg_lightvae | mg_lightvae_v2 (pruned)
    vae_pruning: float | None = None     # random-weight MG-LightVAE's rate (None: the type's, 0.5 / 0.75)
    # parallelism
    sp: int = 1
    dp: int = 1
    exchange: str = "none"
    # training (workload=train) and DMD (workload=dmd)
    train_layout: str = "balanced"
    error_recycling: bool = False
    error_recycling_config: ErrorRecyclingSpec = field(default_factory=ErrorRecyclingSpec)
    i2v: bool = False                    # latent 0 = clean conditioning image (release i2v / independent_first_frame)
    tf_window: bool = False              # teacher forcing through the inference KV window (sink + newest chunks)
    train_iters: int = 3
    batch_size: int = 1                  # samples per forward pass (sp = 1; release batch_size 1)
    grad_accum: int = 1                  # passes per optimiser step (release gradient_accumulation_steps 1)
    weight_decay: float = 0.0            # AdamW (release weight_decay 0.0)
    betas: list[float] = field(default_factory=lambda: [0.0, 0.999])  # AdamW (release beta1 0.0, beta2 0.999)
    ema_decay: float = 0.99              # release ema_weight 0.99
    ema_start: int = 100                 # release ema_start_step (spec 04: 100)
    keep_checkpoints: int = 2            # newest training checkpoints kept, 0 = all (release max_checkpoints 50)
    dmd_quantised: str = "none"
    dmd_iters: int = 2
    lora_rank: int = 128
    # DMD knobs (workload=dmd and `longlive dmd`): the names of longlive.train.dmd.DMDConfig and of the flags, the
    # release's defaults; frames = rollout latents, steps / timestep_shift = the rollout grid, betas / weight_decay
    # above = the generator's AdamW
    min_frames: int | None = None        # shortest rollout, drawn per rollout (release min_num_training_frames)
    denoising_step_list: list[int] | None = None  # rollout model timesteps (None: the grid of steps)
    real_guidance_scale: float = 3.0     # teacher CFG
    fake_guidance_scale: float = 0.0     # critic CFG (0: conditional only)
    ts_schedule: bool = False            # DMD timesteps bounded by the exit step's interval (below / above)
    ts_schedule_max: bool = False
    min_score_timestep: int = 0
    dfake_gen_update_ratio: int = 5      # critic updates per generator update
    adapter: str = "lora"                # lora | none (full fine-tuning)
    lora_alpha: float = 128.0
    lora_dropout: float = 0.0
    apply_to_critic: bool = True         # the critic gets a LoRA too (else it trains every weight)
    lr: float = 1e-5                     # learning rate (train: the AR model; dmd: the generator)
    lr_critic: float = 2e-6
    betas_critic: list[float] = field(default_factory=lambda: [0.0, 0.999])
    # training data read from the release's folder layout (`longlive train --data folder:PATH`), its option names
    max_chunks_per_shot: int = 0         # after k chunks of one video, skip 1 s and start a virtual shot (0: off)
    min_latent_frames: int = 0           # with allow_padding: refuse samples with fewer real latent frames (0: any)
    allow_padding: bool = False          # pad a sample whose videos run out (last frame, last prompt)
    uniform_prompt: bool = False         # every chunk of a sample from its first video (one caption)
    # the vae_decode workload: latent chunks decoded (the first is the warm start of the causal caches)
    decode_chunks: int = 4
    roofline: bool = True                # infer: measure GEMM / attention ceilings in the cell's process
    profile: bool = False                # infer: profile a window-filling run after the timed one (profile.txt)
    train_minutes: float = 14.0          # tiny_default: the wall-clock budget of the whole tiny recipe
    repeats: int = 1                     # timed runs of the cell; timed metrics: median and interval (measure.spread)
    gates: list[Any] = field(default_factory=list)  # quality gates per cell family, applied when rows are read
    cell_timeout_s: int = 1800
    results_dir: str | None = None    # `python -m longlive.runner.hydra_app`: where rows go
    force: bool = False                  # hydra_app: redo a finished cell
    matrices: list[Any] = field(default_factory=list)


def register() -> None:
    """Put the schema into Hydra's ConfigStore (idempotent; `config.yaml` names it first in its defaults)."""
    cs = ConfigStore.instance()
    cs.store(name="run_spec", node=RunSpec)


def check_spec(spec: RunSpec) -> None:
    """Every field's value (types were checked by OmegaConf at composition), by the rules `generate` uses too; the
    generation rules (frames, sp, decode, prompts, window) apply to cells that generate, the frame rule also to
    training. What this machine lacks (GPUs, backends) is not checked here: the workload's `check` skips with why."""
    check_choice("kv_quant", spec.kv_quant.name, KV_QUANT)
    check_choice("precision.linear_quant", spec.precision.linear_quant, LINEAR_QUANT)
    check_choice("precision.dtype", spec.precision.dtype, DTYPES)
    if spec.precision.linear_quant != "none":
        check_choice("precision.linear_backend", spec.precision.linear_backend, LINEAR_BACKENDS)
    check_choice("exchange", spec.exchange, EXCHANGE)
    check_choice("compile", spec.compile, COMPILE_MODES)
    check_choice("attn", spec.attn, tuple(BACKENDS))
    check_choice("hardware.device", spec.hardware.device, DEVICE_TYPES)
    check_choice("train_layout", spec.train_layout, TRAIN_LAYOUTS)
    check_choice("dmd_quantised", spec.dmd_quantised, DMD_QUANTISED)
    check_choice("adapter", spec.adapter, DMD_ADAPTERS)
    check_choice("kv_rule", spec.kv_rule, NVFP4_RULES)
    if spec.precision.act_rule is not None:
        check_choice("precision.act_rule", spec.precision.act_rule, NVFP4_RULES)
    check_act_scale(spec.precision.act_scale, linear_quant=spec.precision.linear_quant,
                    act_quant=spec.precision.act_quant, linear_backend=spec.precision.linear_backend,
                    field="precision.act_scale")
    check_steps(spec.steps)
    check_seed(spec.seed)
    check_window_quality(spec.quality.window_metrics, spec.quality.metrics, spec.quality.window_seconds)
    check_gates(spec.gates)
    generates, frames_in_chunks = spec.workload.name in INFERENCE_WORKLOADS, spec.workload.name in TRAINING_WORKLOADS
    if generates or frames_in_chunks:
        check_frames(spec.frames, get_preset(spec.model.name))
    for name in ("frames", "sp", "dp", "repeats", "train_iters", "dmd_iters", "lora_rank", "decode_chunks",
                 "dfake_gen_update_ratio"):
        check_at_least(name, getattr(spec, name), 1)
    if spec.repeats > 1 and spec.workload.name in UNREPEATED_WORKLOADS:
        raise ValueError(f"repeats={spec.repeats}: workload {spec.workload.name} has no timed metric to repeat (each "
                         "repeat would rerun it whole); give repeats=1")
    check_training_knobs(spec)
    for name in ("max_chunks_per_shot", "min_latent_frames"):
        check_at_least(name, getattr(spec, name), 0, meaning="0: off")
    check_vae_type(spec.vae_type, spec.vae_pruning, get_preset(spec.model.name).vae,
                   checkpoint=not spec.random_weights and spec.workload.name != "vae_decode")
    if spec.vae_type != "wan" and spec.workload.name in TRAINING_WORKLOADS:
        raise ValueError(f"vae_type={spec.vae_type!r} picks the decoder of generation and of the vae_decode workload; "
                         f"{spec.workload.name} encodes with the preset's VAE: drop vae_type")
    if spec.min_latent_frames and not spec.allow_padding:
        raise ValueError(f"min_latent_frames={spec.min_latent_frames} only applies with allow_padding=true")
    check_finite("timestep_shift", spec.timestep_shift, meaning="the sigma grid's shift; 5 by default")
    check_finite("guidance_scale", spec.guidance_scale, strict=False, meaning="1: no guidance")
    if generates:
        check_generation(spec, get_preset(spec.model.name))


def check_generation(spec: RunSpec, cfg: ModelConfig) -> None:
    """The rules of a cell that generates a video (the fields `longlive generate` takes as flags)."""
    check_sp(spec.sp, cfg)
    check_exchange(spec.exchange, EXCHANGE, spec.sp)
    check_device_string("hardware.device", spec.hardware.device)
    check_decode(spec.decode.mode, DECODE, spec.sp, spec.hardware.device, spec.decode.vae_device)
    if spec.relative_rope and spec.sp > 1:
        raise ValueError(f"relative_rope=true is not implemented under sequence parallelism (sp={spec.sp}): give "
                         "sp=1 or relative_rope=false")
    check_size(cfg, spec.height, spec.width)
    cfg = check_geometry(cfg, spec.window_frames, spec.sink_frames, spec.shot_rope_offset)
    check_prompts(list(spec.prompts), list(spec.switch_at) if spec.switch_at is not None else None,
                  spec.frames // cfg.chunk_frames, spec.scene_cut_prefix, cfg.chunk_frames,
                  default=tuple(spec.prompts) == DEFAULT_PROMPTS)
    check_release_options(lora_mode=spec.lora_mode, lora=spec.lora, fuse_qkv=spec.fuse_qkv, ema=spec.ema,
                          random_weights=spec.random_weights, act_rule=spec.precision.act_rule, kv_rule=spec.kv_rule,
                          linear_quant=spec.precision.linear_quant, act_quant=spec.precision.act_quant,
                          kv_quant=spec.kv_quant.name, quant_exclude=list(spec.quant_exclude))


def check_training_knobs(spec: RunSpec) -> None:
    """Ranges of the optimiser, EMA, retention and error-recycling fields (the same rules TrainConfig enforces)."""
    for name in ("batch_size", "grad_accum"):
        if getattr(spec, name) < 1:
            raise ValueError(f"{name}={getattr(spec, name)} must be ≥ 1")
    for name in ("ema_start", "keep_checkpoints"):
        if getattr(spec, name) < 0:
            raise ValueError(f"{name}={getattr(spec, name)} must be ≥ 0 (keep_checkpoints 0 keeps all)")
    if len(spec.betas) != 2 or not all(0.0 <= b < 1.0 for b in spec.betas):
        raise ValueError(f"betas={list(spec.betas)} must be two AdamW coefficients in [0, 1), e.g. [0.0, 0.999]")
    if spec.weight_decay < 0 or not 0.0 <= spec.ema_decay <= 1.0:
        raise ValueError(f"weight_decay={spec.weight_decay} must be ≥ 0 and ema_decay={spec.ema_decay} in [0, 1]")
    er = spec.error_recycling_config
    for name in ("p_clean", "p_context", "p_latent", "p_noise", "p_clean_record"):
        if not 0.0 <= getattr(er, name) <= 1.0:
            raise ValueError(f"error_recycling_config.{name}={getattr(er, name)} must lie in [0, 1]")
    for name, low in (("num_buckets", 1), ("capacity", 1), ("start_step", 0)):
        if getattr(er, name) < low:
            raise ValueError(f"error_recycling_config.{name}={getattr(er, name)} must be ≥ {low}")
    if er.scale_min > er.scale_max:
        raise ValueError(f"error_recycling_config.scale_min={er.scale_min} > scale_max={er.scale_max}; give "
                         "scale_min ≤ scale_max")
    check_choice("error_recycling_config.replacement", er.replacement, ER_REPLACEMENTS)
    check_choice("error_recycling_config.store_dtype", er.store_dtype, ER_STORE_DTYPES)
    check_choice("error_recycling_config.target", er.target, ER_TARGETS)


def from_config(config: dict[str, Any]) -> RunSpec:
    """A cell's resolved config (plain dict) → a checked RunSpec."""
    merged = OmegaConf.merge(OmegaConf.structured(RunSpec), {k: v for k, v in config.items() if k != "hydra"})
    spec = OmegaConf.to_object(merged)
    check_spec(spec)
    return spec


register()
