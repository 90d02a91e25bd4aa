"""Stage 2: DMD few-step distillation with LoRA (spec 04, "Stage 2"), single process.

Three block-causal scores: the frozen teacher (real score, CFG against a negative prompt), the critic (fake score) and
the generator (student); generator and critic train a PEFT LoRA each (the release's `adapter` section) or every
parameter (`adapter=none`, the release without that section). By default all three start from one base model — the
teacher is the base itself, generator and critic are deep copies — which keeps every forward independent (no adapter
switching inside autograd); separate real-score and fake-score networks (the release's `real_score_ckpt` /
`fake_score_ckpt`) replace the teacher and the critic's base.

The generator is trained on its own rollouts (self forcing): block by block through a KV cache covering the whole
rollout, each block denoised on the UniPC grid of `steps` (or the model timesteps of `denoising_step_list`); one random
exit step (shared by the blocks) runs with gradients, earlier steps without, later ones are skipped; the block's output
is x̂0 at the exit step and the cache is refreshed with it at t = 0 (without gradients, so a block's gradient flows only
through its own exit step). The rollout length is drawn per rollout in whole blocks from [min_frames, frames].

`DMDTrainer.run` is the loop behind `longlive dmd`: a progress bar, one metrics.jsonl line per step, atomic resumable
checkpoints (`longlive.train.checkpoint`) that also export the adapter, and summary.json at the end.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from longlive.infer.scheduler import FlowUniPC, flow_sigmas, flow_timesteps
from longlive.model.attention import block_causal_mask_fn, resolve_backend, sdpa
from longlive.model.checkpoint import save_generator
from longlive.model.presets import ModelConfig
from longlive.names import DMD_ADAPTERS, check_choice
from longlive.output import write_text_atomic
from longlive.quant.linear import LinearQuantConfig
from longlive.quant.recipes import quantize_model
from longlive.train.checkpoint import (
    capture_rng,
    checkpoint_path,
    load_latest,
    prune_checkpoints,
    restore_rng,
    save_checkpoint,
)
from longlive.train.lora import add_lora, load_lora_weights, lora_modules, lora_state_dict, save_lora
from longlive.train.teacher_forcing import MaskedAttention
from longlive.train.trainer import apply_activation_checkpointing, memory_gb

NUM_TRAIN_TIMESTEPS = 1000
QUANT_FROZEN = ("none", "nvfp4", "fp8")
LORA_FILE = "lora.pt"
GENERATOR_FILE = "generator.pt"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
DMD_SPEC_FIELDS = ("frames", "min_frames", "steps", "denoising_step_list", "timestep_shift", "real_guidance_scale",
                   "fake_guidance_scale", "ts_schedule", "ts_schedule_max", "min_score_timestep",
                   "dfake_gen_update_ratio", "adapter", "lora_rank", "lora_alpha", "lora_dropout", "apply_to_critic",
                   "lr", "lr_critic", "betas", "betas_critic", "weight_decay", "seed")
"""The DMDConfig fields that are run-spec fields too, under the same names (the `dmd` workload reads them there)."""


@dataclass
class DMDConfig:
    """Stage-2 knobs. A field's name is its `longlive dmd` flag and its run-spec field; the defaults are the release's
    configs/train_dmd.yaml (the release key is in each comment)."""

    frames: int | None = None  # rollout latents (training.num_training_frames, 32; None: the preset's window, 32 at 5B)
    min_frames: int | None = None  # shortest rollout (training.min_num_training_frames; None: = frames)
    steps: int = 4  # UniPC steps per block (inference.sampling_steps)
    # the rollout's model timesteps, strictly decreasing in (0, 1000] (the release's denoising_step_list); None: the
    # grid of `steps`, the one `longlive generate --steps` runs
    denoising_step_list: tuple[int, ...] | None = None
    timestep_shift: float = 5.0  # the rollout grid's and the DMD timesteps' shift (model_kwargs.timestep_shift)
    real_guidance_scale: float = 3.0  # teacher: r = r_c + s·(r_c − r_u) (algorithm.real_guidance_scale)
    fake_guidance_scale: float = 0.0  # critic: f = f_c + s·(f_c − f_u); 0: conditional only (fake_guidance_scale)
    ts_schedule: bool = False  # DMD / critic t drawn no lower than the exit step's next timestep (ts_schedule)
    ts_schedule_max: bool = False  # ... and no higher than the exit step's timestep (ts_schedule_max)
    min_score_timestep: int = 0  # lower end of the t draw without ts_schedule (min_score_timestep)
    min_t: float = 20.0  # clamp of the shifted t (the release's min_step = 0.02 · 1000)
    max_t: float = 980.0  # (max_step = 0.98 · 1000)
    dfake_gen_update_ratio: int = 5  # the generator updates on steps 0, r, 2r, …; the critic on every step
    lr: float = 1e-5  # generator (training.lr)
    lr_critic: float = 2e-6  # critic (training.lr_critic)
    betas: tuple[float, float] = (0.0, 0.999)  # generator AdamW (training.beta1, beta2)
    betas_critic: tuple[float, float] = (0.0, 0.999)  # critic AdamW (training.beta1_critic, beta2_critic)
    weight_decay: float = 0.0  # both optimisers (training.weight_decay)
    max_grad_norm: float | None = 10.0  # both (max_grad_norm_generator / max_grad_norm_critic)
    adapter: str = "lora"  # lora | none (full fine-tuning: the release without its `adapter` section)
    lora_rank: int = 128  # adapter.rank
    lora_alpha: float = 128.0  # adapter.alpha (merge scale alpha / rank)
    lora_dropout: float = 0.0  # adapter.dropout (the trainable networks run in train mode, so it acts)
    apply_to_critic: bool = True  # adapter.apply_to_critic (False: the critic trains every parameter)
    train_steps: int = 5000  # optimiser steps (training.max_iters)
    ckpt_every: int = 50  # resumable checkpoint + adapter export every N steps (training.log_iters)
    keep_checkpoints: int = 50  # newest checkpoints kept, ≤ 0 keeps all (training.max_checkpoints)
    resume: bool = True  # continue from the newest checkpoint in the out dir
    progress: bool = True
    seed: int = 0  # logging.seed (the release draws a random seed for 0; here 0 is a seed like any other)
    # Frozen base weights of each network: "none" (as given), or packed "nvfp4" / "fp8" weight-only (activations stay
    # in the compute dtype so gradients flow through them) — the Table 2 memory ladder.
    quant_generator: str = "none"
    quant_teacher: str = "none"
    quant_critic: str = "none"
    activation_checkpointing: bool = False  # recompute each block in backward (generator and critic)
    attn: str = "auto"  # rollout attention backend (auto: cuDNN/flash on CUDA, math on CPU)
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Every check that needs no model, so a bad knob fails before anything is built."""
        for name in ("quant_generator", "quant_teacher", "quant_critic"):
            if getattr(self, name) not in QUANT_FROZEN:
                raise ValueError(f"{name}={getattr(self, name)!r}; choose one of {', '.join(QUANT_FROZEN)}")
        check_choice("adapter", self.adapter, DMD_ADAPTERS)
        self.betas, self.betas_critic = tuple(self.betas), tuple(self.betas_critic)
        if self.denoising_step_list is not None:
            self.denoising_step_list = check_step_list(self.denoising_step_list)
            if len(self.denoising_step_list) != self.steps:
                raise ValueError(f"denoising_step_list {list(self.denoising_step_list)} has "
                                 f"{len(self.denoising_step_list)} timesteps but steps={self.steps}")
        positive = {"steps": self.steps, "dfake_gen_update_ratio": self.dfake_gen_update_ratio,
                    "lora_rank": self.lora_rank, "ckpt_every": self.ckpt_every, "frames": self.frames,
                    "min_frames": self.min_frames}
        for name, value in positive.items():
            if value is not None and value < 1:
                raise ValueError(f"{name}={value} must be ≥ 1")
        if self.frames is not None and self.min_frames is not None and self.min_frames > self.frames:
            raise ValueError(f"min_frames={self.min_frames} is above frames={self.frames}")
        if not self.timestep_shift > 0:
            raise ValueError(f"timestep_shift={self.timestep_shift} must be > 0")
        if not 0 <= self.min_score_timestep < NUM_TRAIN_TIMESTEPS:
            raise ValueError(f"min_score_timestep={self.min_score_timestep} must be in [0, {NUM_TRAIN_TIMESTEPS})")
        if not 0 <= self.min_t <= self.max_t <= NUM_TRAIN_TIMESTEPS:
            raise ValueError(f"need 0 ≤ min_t ({self.min_t}) ≤ max_t ({self.max_t}) ≤ {NUM_TRAIN_TIMESTEPS}")
        if not (self.lr >= 0 and self.lr_critic >= 0 and self.weight_decay >= 0 and self.train_steps >= 0):
            raise ValueError(f"lr={self.lr}, lr_critic={self.lr_critic}, weight_decay={self.weight_decay} and "
                             f"train_steps={self.train_steps} must be ≥ 0")
        if not (self.lora_alpha > 0 and 0 <= self.lora_dropout < 1):
            raise ValueError(f"lora_alpha={self.lora_alpha} must be > 0 and lora_dropout={self.lora_dropout} in [0, 1)")
        if self.adapter == "none" and self.quant_generator != "none":
            raise ValueError(f"adapter=none trains every generator weight; packed quant_generator="
                             f"{self.quant_generator!r} weights cannot train (use adapter=lora)")
        if not self.critic_lora and self.quant_critic != "none":
            raise ValueError(f"the critic trains every weight (adapter={self.adapter}, apply_to_critic="
                             f"{self.apply_to_critic}); packed quant_critic={self.quant_critic!r} weights cannot train")

    @property
    def critic_lora(self) -> bool:
        return self.adapter == "lora" and self.apply_to_critic

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def check_step_list(steps: Any) -> tuple[int, ...]:
    """A denoising step list as integer model timesteps, strictly decreasing in (0, 1000]; ValueError otherwise."""
    try:
        values = [int(v) for v in steps]
        integral = all(float(v) == float(s) for v, s in zip(values, steps, strict=True))
    except (TypeError, ValueError):
        values, integral = [], False
    decreasing = all(a > b for a, b in zip(values, values[1:], strict=False))
    if not (values and integral and decreasing and all(0 < v <= NUM_TRAIN_TIMESTEPS for v in values)):
        raise ValueError(f"denoising_step_list {steps!r} is not a step list: it must be strictly decreasing integer "
                         f"model timesteps in (0, {NUM_TRAIN_TIMESTEPS}], e.g. {flow_timesteps(4)} (4 steps) or "
                         f"{flow_timesteps(2)} (2 steps)")
    return tuple(values)


def rollout_sigmas(cfg: DMDConfig) -> list[float]:
    """The rollout's sigma grid (then a final 0). A step list equal to the grid of its length is that grid exactly, so
    the LoRA trains on what `longlive generate --steps N` runs; any other list is σ = t / 1000, t = 1000 standing for
    the grid's top sigma (at σ = 1 UniPC's log-SNR is infinite)."""
    if cfg.denoising_step_list is None or list(cfg.denoising_step_list) == flow_timesteps(cfg.steps,
                                                                                          cfg.timestep_shift):
        return flow_sigmas(cfg.steps, cfg.timestep_shift)
    top = flow_sigmas(1, cfg.timestep_shift)[0]
    return [min(t / NUM_TRAIN_TIMESTEPS, top) for t in cfg.denoising_step_list] + [0.0]


def generate_steps(cfg: DMDConfig) -> int | None:
    """The `longlive generate --steps` whose grid this rollout trains on (None: a list generation does not run)."""
    if cfg.denoising_step_list is None:
        return cfg.steps
    return cfg.steps if list(cfg.denoising_step_list) == flow_timesteps(cfg.steps, cfg.timestep_shift) else None


def resolve_frames(cfg: DMDConfig, model_cfg: ModelConfig) -> tuple[int, int]:
    """(min_frames, frames) in latents for this preset: whole blocks of its chunk; frames defaults to its window."""
    frames = cfg.frames if cfg.frames is not None else model_cfg.window_frames
    low = cfg.min_frames if cfg.min_frames is not None else frames
    cf = model_cfg.chunk_frames
    for name, value in (("frames", frames), ("min_frames", low)):
        if value % cf:
            raise ValueError(f"{name}={value} must be whole blocks of the {model_cfg.name} chunk ({cf} latents)")
    if low > frames:
        raise ValueError(f"min_frames={low} is above frames={frames}")
    return low, frames


# -- timesteps and noise -----------------------------------------------------------------------------------------


def sample_dmd_t(batch: int, cfg: DMDConfig, generator: torch.Generator | None = None, *, low: int | None = None,
                 high: int = NUM_TRAIN_TIMESTEPS) -> torch.Tensor:
    """t [B] float32: a uniform integer in [low, high) (low: cfg.min_score_timestep), shift-warped like the sigma
    grid, clamped to [min_t, max_t]."""
    low = cfg.min_score_timestep if low is None else low
    u = torch.randint(low, max(high, low + 1), (batch,), generator=generator).double() / NUM_TRAIN_TIMESTEPS
    shift = cfg.timestep_shift
    if shift != 1.0:
        u = shift * u / (1 + (shift - 1) * u)
    return (u * NUM_TRAIN_TIMESTEPS).clamp(cfg.min_t, cfg.max_t).float()


def noise_like(x: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """x_t = (1−σ)·x + σ·ε with σ = t/1000 per sample."""
    s = (t.float() / NUM_TRAIN_TIMESTEPS).view(-1, 1, 1, 1, 1).to(x.device)
    return (1 - s) * x.float() + s * noise.float()


# -- the on-policy rollout ----------------------------------------------------------------------------------------


class RolloutCache:
    """Append-only per-layer K/V of committed blocks, detached; attention over [committed ; this forward].

    The inference KVCache writes in place into preallocated buffers, which autograd cannot differentiate through
    once a slot is overwritten; training builds the window by concatenation instead. The window holds the whole
    rollout, so nothing is evicted (spec: window 32 = the 32-latent rollout).
    """

    def __init__(self, num_layers: int, backend: str = "math"):
        self.k: list[list[torch.Tensor]] = [[] for _ in range(num_layers)]
        self.v: list[list[torch.Tensor]] = [[] for _ in range(num_layers)]
        self.backend = backend
        self.commit = False

    def attn_fn(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer: int,
                upto: int | None = None) -> torch.Tensor:
        """Attend over the first `upto` committed blocks (all when None) and this forward's own K/V."""
        past_k, past_v = self.k[layer][:upto], self.v[layer][:upto]
        ks = torch.cat([*past_k, k.to(q.dtype)], dim=1) if past_k else k
        vs = torch.cat([*past_v, v.to(q.dtype)], dim=1) if past_v else v
        if self.commit:
            self.k[layer].append(k.detach())
            self.v[layer].append(v.detach())
        return sdpa(q, ks.to(q.dtype), vs.to(q.dtype), self.backend)

    def upto(self, blocks: int):
        """attn_fn pinned to the first `blocks` committed blocks: an activation-checkpointed block recomputed in
        backward (after later blocks were committed) must attend to exactly what its forward saw."""
        return lambda q, k, v, layer: self.attn_fn(q, k, v, layer, upto=blocks)

    @property
    def frames_cached(self) -> int:
        return len(self.k[0])


@dataclass(frozen=True)
class ShotPlan:
    """Which prompt each rollout block uses; a change of prompt is a scene cut that opens a new shot and shifts
    temporal RoPE by shot · shot_rope_offset (spec 02), in the rollout and in the teacher / critic scoring alike."""

    block_prompt: tuple[int, ...]

    @property
    def shots(self) -> list[int]:
        out, shot = [], 0
        for b, p in enumerate(self.block_prompt):
            shot += int(b > 0 and p != self.block_prompt[b - 1])
            out.append(shot)
        return out

    def frame_offset(self, block: int, chunk: int, rope_offset: int) -> int:
        return block * chunk + self.shots[block] * rope_offset

    def frame_positions(self, chunk: int, rope_offset: int) -> list[int]:
        return [self.frame_offset(b, chunk, rope_offset) + i for b in range(len(self.block_prompt)) for i in
                range(chunk)]

    def frame_prompt(self, chunk: int) -> torch.Tensor:
        return torch.tensor(self.block_prompt).repeat_interleave(chunk)


def _select(text_kv: list, prompt: int) -> list:
    """One prompt's per-layer (K, V) out of a stack of prompts."""
    return [(k[prompt : prompt + 1], v[prompt : prompt + 1]) for k, v in text_kv]


def rollout_scheduler(steps: int, timestep_shift: float, sigmas: list[float] | None = None) -> FlowUniPC:
    """UniPC over the grid of `steps` or over explicit sigmas (a denoising step list, `rollout_sigmas`)."""
    if sigmas is None:
        return FlowUniPC(steps, timestep_shift)
    sched = FlowUniPC(len(sigmas) - 1, timestep_shift)
    sched.sigmas = list(sigmas)
    sched.timesteps = [int(s * NUM_TRAIN_TIMESTEPS) for s in sched.sigmas[:-1]]
    return sched


def rollout(
    generator: nn.Module, text_kv: list, noise: torch.Tensor, *, num_blocks: int, steps: int = 4,
    timestep_shift: float = 5.0, exit_step: int, grad: bool, trace: list | None = None,
    shots: ShotPlan | None = None, sigmas: list[float] | None = None,
) -> torch.Tensor:
    """Generate num_blocks blocks from noise [B, C, F, H, W] → x̂0 [B, C, F, H, W] float32.

    Steps before `exit_step` run without gradients, the exit step with gradients when `grad`, later steps are
    skipped. `trace` (optional) receives (block, step, grad_enabled, timestep) per forward, step −1 being the
    t = 0 cache refresh — for tests and debugging. With `shots`, text_kv stacks the prompts (batch 1) and block b
    uses prompt shots.block_prompt[b] at its shot's RoPE offset. `sigmas` (a denoising step list's grid, final 0
    included) replaces the grid of `steps` / `timestep_shift`.
    """
    cfg = generator.cfg
    cf = cfg.chunk_frames
    B = noise.shape[0]
    steps = steps if sigmas is None else len(sigmas) - 1
    if shots is not None and (B != 1 or len(shots.block_prompt) != num_blocks):
        raise ValueError(f"a shot plan needs batch 1 and one prompt per block ({num_blocks}), got batch {B} and "
                         f"{len(shots.block_prompt)} prompts")
    if noise.shape[2] != num_blocks * cf:
        raise ValueError(f"noise has {noise.shape[2]} frames; {num_blocks} blocks need {num_blocks * cf}")
    if not 0 <= exit_step < steps:
        raise ValueError(f"exit_step {exit_step} outside [0, {steps})")
    cache = RolloutCache(cfg.num_layers, getattr(generator, "attn_backend", "math"))
    outputs = []
    for b in range(num_blocks):
        x = noise[:, :, b * cf : (b + 1) * cf].float()
        sched = rollout_scheduler(steps, timestep_shift, sigmas)
        if shots is None:
            call = {"text_kv": text_kv, "frame_offset": b * cf, "attn_fn": cache.upto(b)}
        else:
            call = {"text_kv": _select(text_kv, shots.block_prompt[b]), "attn_fn": cache.upto(b),
                    "frame_offset": shots.frame_offset(b, cf, cfg.shot_rope_offset)}
        x0 = None
        for i, ts in enumerate(sched.timesteps):
            t = torch.full((B, cf), float(ts), device=x.device)
            if i < exit_step:
                with torch.no_grad():
                    x, _ = sched.step(generator(x, t, **call), x)
                if trace is not None:
                    trace.append((b, i, False, ts))
                continue
            with torch.set_grad_enabled(grad):
                v = generator(x, t, **call)
                x0 = x.float() - sched.sigmas[i] * v.float()
                if trace is not None:
                    trace.append((b, i, torch.is_grad_enabled(), ts))
            break
        outputs.append(x0)
        cache.commit = True  # refresh: the clean output's K/V at t = 0 are what later blocks attend to
        with torch.no_grad():
            generator(x0.detach(), torch.zeros((B, cf), device=x.device), **call)
        cache.commit = False
        if trace is not None:
            trace.append((b, -1, False, 0))
    return torch.cat(outputs, dim=2)


# -- scores and losses --------------------------------------------------------------------------------------------


def block_causal_attn(model: nn.Module, frames: int):
    """attn_fn for a whole-sequence forward under the block-causal mask (teacher and critic see the rollout)."""
    cfg = model.cfg
    tpf = cfg.tokens_per_frame
    masked = MaskedAttention(block_causal_mask_fn(tpf, cfg.chunk_frames), frames * tpf, attn="auto",
                             cache_key=("dmd_block_causal", tpf, cfg.chunk_frames))
    return lambda q, k, v, layer: masked(q, k, v)


def scoring_kwargs(model: nn.Module, text_kv: list, shots: ShotPlan | None) -> dict:
    """Forward kwargs of a whole-rollout score: per-frame prompts (when text_kv stacks several) and shot RoPE."""
    if shots is None:
        return {"text_kv": text_kv}
    cf, off = model.cfg.chunk_frames, model.cfg.shot_rope_offset
    kw = {"text_kv": text_kv, "frame_positions": shots.frame_positions(cf, off)}
    if text_kv[0][0].shape[0] > 1:
        kw["frame_prompt"] = shots.frame_prompt(cf)
    return kw


def predict_x0(model: nn.Module, x_t: torch.Tensor, t: torch.Tensor, text_kv: list,
               shots: ShotPlan | None = None) -> torch.Tensor:
    """x̂0 = x_t − σ·v̂ from a block-causal forward over all frames; t [B] is shared by the frames."""
    B, _, Fr = x_t.shape[:3]
    tt = t.float().view(B, 1).expand(B, Fr).contiguous().to(x_t.device)
    v = model(x_t, tt, attn_fn=block_causal_attn(model, Fr), **scoring_kwargs(model, text_kv, shots))
    return x_t.float() - (t.float() / NUM_TRAIN_TIMESTEPS).view(-1, 1, 1, 1, 1).to(x_t.device) * v.float()


def dmd_gradient(x: torch.Tensor, fake: torch.Tensor, real: torch.Tensor, chunk_frames: int) -> torch.Tensor:
    """g = (f − r) / mean|x − r|, the mean taken per sample and per block (float64)."""
    B, C, Fr, H, W = x.shape
    diff = (x.detach().double() - real.double()).abs().view(B, C, Fr // chunk_frames, chunk_frames, H, W)
    norm = diff.mean(dim=(1, 3, 4, 5), keepdim=True)  # [B, 1, blocks, 1, 1, 1]
    g = (fake.double() - real.double()).view(B, C, Fr // chunk_frames, chunk_frames, H, W) / norm
    return torch.nan_to_num(g).view(B, C, Fr, H, W)


def dmd_loss(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """½·MSE(x, stopgrad(x − g)) in float64: its gradient w.r.t. x is g / numel."""
    x64 = x.double()
    return 0.5 * F.mse_loss(x64, (x64 - g).detach())


# -- prompts ------------------------------------------------------------------------------------------------------


class PromptCycle:
    """Prompt embeddings [P, Lt, D] served one at a time ([1, Lt, D]), reshuffled every epoch from the seed (the
    release's shuffled sampler over its prompt file). The position is the whole state, so a resume continues exactly."""

    def __init__(self, embeds: torch.Tensor, seed: int = 0):
        if embeds.dim() != 3 or embeds.shape[0] == 0:
            raise ValueError(f"expected prompt embeddings [P >= 1, Lt, D], got shape {tuple(embeds.shape)}")
        self.embeds, self.seed, self.position = embeds, seed, 0
        self._order: tuple[int, torch.Tensor] | None = None  # (epoch, permutation), recomputed once per epoch

    def __iter__(self) -> PromptCycle:
        return self

    def __next__(self) -> torch.Tensor:
        epoch, i = divmod(self.position, self.embeds.shape[0])
        if self._order is None or self._order[0] != epoch:
            g = torch.Generator().manual_seed(self.seed + epoch)
            self._order = (epoch, torch.randperm(self.embeds.shape[0], generator=g))
        self.position += 1
        return self.embeds[int(self._order[1][i])].unsqueeze(0)

    def state_dict(self) -> dict[str, int]:
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.position = int(state["position"])


# -- the trainer --------------------------------------------------------------------------------------------------


def _quantise_frozen(model: nn.Module, fmt: str) -> nn.Module:
    """Replace the block Linears of a frozen network by packed weight-only QuantLinears (in place)."""
    if fmt not in QUANT_FROZEN:
        raise ValueError(f"unknown frozen-network quantisation {fmt!r}; choose one of {', '.join(QUANT_FROZEN)}")
    if fmt != "none":
        quantize_model(model, LinearQuantConfig(fmt=fmt, backend="emulated", act_quant=False))
    return model


def _frozen_copy(model: nn.Module, fmt: str) -> nn.Module:
    return _quantise_frozen(copy.deepcopy(model), fmt)


def _as_batch(embed: torch.Tensor) -> torch.Tensor:
    return embed.unsqueeze(0) if embed.dim() == 2 else embed


def _trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """What a network trains: its LoRA adapter (PEFT's saved format), or every weight (full fine-tuning)."""
    if lora_modules(model):
        return lora_state_dict(model)
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def _load_trainable_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    if lora_modules(model):
        load_lora_weights(model, state)
    else:
        model.load_state_dict(state, strict=True)


class DMDTrainer:
    """Alternating critic / generator updates with separate AdamW optimisers over what each network trains.

    prompt_iter yields text embeddings [B, Lt, text_dim] (prompts are encoded outside; DMD reads no video).
    negative_embed is the CFG negative prompt's embedding (default: all-zero, the padded empty prompt). real_score /
    fake_score (same preset as the base) replace the teacher and the critic's starting weights.
    """

    def __init__(self, base_model: nn.Module, cfg: DMDConfig, prompt_iter: Iterator[torch.Tensor],
                 out_dir: str | Path, *, negative_embed: torch.Tensor | None = None,
                 real_score: nn.Module | None = None, fake_score: nn.Module | None = None):
        self.cfg = cfg
        self.prompts = prompt_iter
        self.out_dir = Path(out_dir)
        self.device = next(base_model.parameters()).device
        mcfg = base_model.cfg
        for name, net in (("real_score", real_score), ("fake_score", fake_score)):
            if net is not None and net.cfg != mcfg:
                raise ValueError(f"{name} is a {net.cfg.name} network; the generator is {mcfg.name}")
        self.chunk = mcfg.chunk_frames
        low, high = resolve_frames(cfg, mcfg)
        self.block_range = (low // self.chunk, high // self.chunk)
        self.sigmas = rollout_sigmas(cfg)
        with torch.random.fork_rng(devices=[]):  # PEFT draws lora_A from the global RNG
            torch.manual_seed(cfg.seed)
            self.generator = self._trainable(_frozen_copy(base_model, cfg.quant_generator), cfg.adapter == "lora")
            critic_base = fake_score if fake_score is not None else base_model
            self.critic = self._trainable(_frozen_copy(critic_base, cfg.quant_critic), cfg.critic_lora)
        teacher = real_score if real_score is not None else base_model
        self.teacher = _quantise_frozen(teacher, cfg.quant_teacher).requires_grad_(False).eval()
        backend = resolve_backend(cfg.attn, self.device)
        for m in (self.generator, self.critic, self.teacher):
            m.attn_backend = backend
        if cfg.activation_checkpointing:
            apply_activation_checkpointing(self.generator)
            apply_activation_checkpointing(self.critic)
        if negative_embed is None:
            negative_embed = torch.zeros(1, mcfg.text_len, mcfg.text_dim)
        self.negative = _as_batch(negative_embed).to(self.device)
        self.gen_params = [p for p in self.generator.parameters() if p.requires_grad]
        self.critic_params = [p for p in self.critic.parameters() if p.requires_grad]
        self.gen_opt = torch.optim.AdamW(self.gen_params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
        self.critic_opt = torch.optim.AdamW(self.critic_params, lr=cfg.lr_critic, betas=cfg.betas_critic,
                                            weight_decay=cfg.weight_decay)
        self.rng = torch.Generator("cpu").manual_seed(cfg.seed)
        self.global_step = 0
        self.updates = {"generator": 0, "critic": 0}
        self.step_seconds: list[float] = []

    def _trainable(self, model: nn.Module, lora: bool) -> nn.Module:
        """A LoRA over the frozen copy, or every weight trainable; train mode so LoRA dropout acts (the DiT itself
        has no dropout)."""
        if lora:
            model = add_lora(model, self.cfg.lora_rank, self.cfg.lora_alpha, dropout=self.cfg.lora_dropout)
        else:
            model.requires_grad_(True)
        return model.train()

    # -- pieces --------------------------------------------------------------------------------------------------
    def _blocks(self) -> int:
        """Rollout length in blocks: fixed, or uniform over the range (drawn only when it is a range, so a fixed
        length leaves the random stream as it was)."""
        low, high = self.block_range
        return high if low == high else int(torch.randint(low, high + 1, (1,), generator=self.rng))

    def _noise(self, batch: int, blocks: int) -> torch.Tensor:
        mcfg = self.teacher.cfg
        h, w = mcfg.latent_hw
        shape = (batch, mcfg.in_channels, blocks * self.chunk, h, w)
        return torch.randn(shape, generator=self.rng).to(self.device)

    def _exit_step(self) -> int:
        return int(torch.randint(0, len(self.sigmas) - 1, (1,), generator=self.rng))

    def _rollout(self, text_kv: list, batch: int, grad: bool, shots: ShotPlan | None = None
                 ) -> tuple[torch.Tensor, int]:
        blocks = self._blocks()
        plan = None if shots is None else ShotPlan(shots.block_prompt[:blocks])
        exit_step = self._exit_step()
        x = rollout(self.generator, text_kv, self._noise(batch, blocks), num_blocks=blocks, exit_step=exit_step,
                    grad=grad, shots=plan, sigmas=self.sigmas)
        return x, exit_step

    def _t(self, batch: int, exit_step: int) -> torch.Tensor:
        """DMD / critic timesteps; with ts_schedule(_max) bounded by the exit step's denoising interval."""
        t_from, t_to = (int(s * NUM_TRAIN_TIMESTEPS) for s in self.sigmas[exit_step : exit_step + 2])
        low = t_to if self.cfg.ts_schedule else self.cfg.min_score_timestep
        high = t_from if self.cfg.ts_schedule_max else NUM_TRAIN_TIMESTEPS
        return sample_dmd_t(batch, self.cfg, self.rng, low=low, high=high).to(self.device)

    @staticmethod
    def _plan(shots: ShotPlan | None, frames: int, chunk: int) -> ShotPlan | None:
        return None if shots is None else ShotPlan(shots.block_prompt[: frames // chunk])

    def generator_loss(self, cond: torch.Tensor, shots: ShotPlan | None = None) -> tuple[torch.Tensor, dict]:
        """DMD loss on an on-policy rollout whose exit step carries the gradient."""
        B = 1 if shots is not None else cond.shape[0]
        x, exit_step = self._rollout(self.generator.text_kv(cond), B, grad=True, shots=shots)
        plan = self._plan(shots, x.shape[2], self.chunk)
        t = self._t(B, exit_step)
        with torch.no_grad():
            x_t = noise_like(x.detach(), t, torch.randn(x.shape, generator=self.rng).to(self.device))
            fake = predict_x0(self.critic, x_t, t, self.critic.text_kv(cond), plan)
            if self.cfg.fake_guidance_scale != 0:
                f_u = predict_x0(self.critic, x_t, t, self.critic.text_kv(self.negative), plan)
                fake = fake + self.cfg.fake_guidance_scale * (fake - f_u)
            r_c = predict_x0(self.teacher, x_t, t, self.teacher.text_kv(cond), plan)
            r_u = predict_x0(self.teacher, x_t, t, self.teacher.text_kv(self.negative), plan)
            real = r_c + self.cfg.real_guidance_scale * (r_c - r_u)
            g = dmd_gradient(x, fake, real, self.chunk)
        loss = dmd_loss(x, g)
        return loss, {"exit_step": exit_step, "dmd_t": t.tolist(), "grad_norm_g": float(g.abs().mean()),
                      "rollout_frames": x.shape[2]}

    def critic_loss(self, cond: torch.Tensor, shots: ShotPlan | None = None) -> tuple[torch.Tensor, dict]:
        """Flow-matching MSE of the critic on a separate, detached rollout: v̂ vs ε − x."""
        B = 1 if shots is not None else cond.shape[0]
        with torch.no_grad():
            x, exit_step = self._rollout(self.generator.text_kv(cond), B, grad=False, shots=shots)
        plan = self._plan(shots, x.shape[2], self.chunk)
        t = self._t(B, exit_step)
        eps = torch.randn(x.shape, generator=self.rng).to(self.device)
        x_t = noise_like(x, t, eps)
        Fr = x.shape[2]
        tt = t.view(B, 1).expand(B, Fr).contiguous()
        v = self.critic(x_t, tt, attn_fn=block_causal_attn(self.critic, Fr),
                        **scoring_kwargs(self.critic, self.critic.text_kv(cond), plan))
        return F.mse_loss(v.float(), (eps - x).float()), {"critic_t": t.tolist(), "critic_rollout_frames": Fr}

    def _update(self, loss: torch.Tensor, params: list[torch.Tensor], opt: torch.optim.Optimizer) -> float:
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = float("nan")
        if self.cfg.max_grad_norm is not None:
            norm = float(torch.nn.utils.clip_grad_norm_(params, self.cfg.max_grad_norm))
        opt.step()
        opt.zero_grad(set_to_none=True)
        return norm

    def _next_prompts(self) -> tuple[torch.Tensor, ShotPlan | None]:
        """A prompt embedding [B, Lt, D] (one shot), or {"prompts_embeds": [P, Lt, D], "block_prompt": [blocks]}
        for a multi-shot rollout: each change of prompt between blocks is a scene cut (a shorter rollout uses the
        plan's first blocks)."""
        item = next(self.prompts)
        if not isinstance(item, dict):
            return _as_batch(item).to(self.device), None
        embeds, plan = _as_batch(item["prompts_embeds"]).to(self.device), tuple(int(p) for p in item["block_prompt"])
        blocks = self.block_range[1]
        if len(plan) != blocks or min(plan) < 0 or max(plan) >= embeds.shape[0]:
            raise ValueError(f"block_prompt {list(plan)} must give one of the {embeds.shape[0]} prompts for each of "
                             f"the {blocks} blocks")
        return embeds, ShotPlan(plan)

    # -- one step ------------------------------------------------------------------------------------------------
    def step(self) -> dict:
        """One iteration: a generator update when step % dfake_gen_update_ratio == 0, then a critic update (every
        step), as the release's loop."""
        cond, shots = self._next_prompts()
        out: dict = {"step": self.global_step, "generator_loss": None, "generator_updated": False}
        if self.global_step % self.cfg.dfake_gen_update_ratio == 0:
            loss, info = self.generator_loss(cond, shots)
            out["generator_grad_norm"] = self._update(loss, self.gen_params, self.gen_opt)
            out.update(generator_loss=float(loss.detach()), generator_updated=True, **info)
            self.updates["generator"] += 1
        closs, info = self.critic_loss(cond, shots)
        out["critic_grad_norm"] = self._update(closs, self.critic_params, self.critic_opt)
        out.update(critic_loss=float(closs.detach()), **info)
        self.updates["critic"] += 1
        for k in ("generator_loss", "critic_loss"):
            if out[k] is not None and not math.isfinite(out[k]):
                raise FloatingPointError(f"{k} is {out[k]} at step {self.global_step}")
        self.global_step += 1
        out.update(generator_updates=self.updates["generator"], critic_updates=self.updates["critic"])
        return out

    # -- outputs and checkpoints ---------------------------------------------------------------------------------
    def save(self, path: str | Path | None = None) -> Path:
        """The trained generator, atomically: with adapter=lora the LoRA file `{generator_lora, critic_lora, step,
        lora_rank, lora_alpha}` (what `generate --lora` and `lora merge` read), else the whole generator in the
        published layout (what `generate --checkpoint` reads)."""
        if self.cfg.adapter == "lora":
            path = Path(path) if path is not None else self.out_dir / LORA_FILE
            critic = lora_state_dict(self.critic) if self.cfg.critic_lora else None
            return save_lora(path, lora_state_dict(self.generator), critic, self.global_step,
                             lora_rank=self.cfg.lora_rank, alpha=self.cfg.lora_alpha)
        path = Path(path) if path is not None else self.out_dir / GENERATOR_FILE
        return save_generator(self.generator, path, checkpoint_format="longlive_generator_dmd")

    def state_dict(self) -> dict[str, Any]:
        """Everything a step depends on: trained weights, optimisers, RNGs, counters and the prompt position."""
        return {"step": self.global_step, "generator": _trainable_state(self.generator),
                "critic": _trainable_state(self.critic), "gen_opt": self.gen_opt.state_dict(),
                "critic_opt": self.critic_opt.state_dict(), "rng": self.rng.get_state(), "global_rng": capture_rng(),
                "updates": dict(self.updates), "config": self.cfg.to_dict(),
                "prompts": self.prompts.state_dict() if hasattr(self.prompts, "state_dict") else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _load_trainable_state(self.generator, state["generator"])
        _load_trainable_state(self.critic, state["critic"])
        self.gen_opt.load_state_dict(state["gen_opt"])
        self.critic_opt.load_state_dict(state["critic_opt"])
        self.rng.set_state(state["rng"])
        restore_rng(state["global_rng"])
        self.global_step, self.updates = int(state["step"]), dict(state["updates"])
        if state.get("prompts") is not None and hasattr(self.prompts, "load_state_dict"):
            self.prompts.load_state_dict(state["prompts"])
        else:  # one prompt item per step
            for _ in range(self.global_step):
                next(self.prompts)

    def save_checkpoint(self) -> Path:
        """A resumable checkpoint (atomic, pruned to keep_checkpoints), then the adapter export beside it."""
        path = save_checkpoint(checkpoint_path(self.out_dir, self.global_step), self.state_dict())
        prune_checkpoints(self.out_dir, self.cfg.keep_checkpoints)
        self.save()
        return path

    def resume(self) -> bool:
        """Continue from the newest checkpoint in out_dir (metric lines logged after it are dropped); True if one
        was found. A checkpoint of another adapter or rank fails loudly in the strict weight load."""
        state = load_latest(self.out_dir)
        if state is None:
            return False
        free = ("train_steps", "resume", "progress", "ckpt_every", "keep_checkpoints")
        old, new = state.get("config", {}), self.cfg.to_dict()
        changed = {k: (old[k], new[k]) for k in new if k in old and k not in free and old[k] != new[k]}
        if changed:
            tqdm.write(f"dmd: resuming {self.out_dir} with a changed config: {changed}")
        self.load_state_dict(state)
        metrics = self.out_dir / METRICS_FILE
        if metrics.exists():
            keep = []
            for line in metrics.read_text().splitlines():
                try:
                    if json.loads(line)["step"] < self.global_step:
                        keep.append(line)
                except (ValueError, KeyError):  # a line cut short by a crash
                    continue
            write_text_atomic(metrics, "".join(ln + "\n" for ln in keep))
        return True

    def _log(self, record: dict) -> None:
        """One metrics line per step, flushed and fsynced (a crash loses at most the line being written)."""
        with open(self.out_dir / METRICS_FILE, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def run(self) -> dict[str, Any]:
        """Train to cfg.train_steps from the newest checkpoint (cfg.resume) or from scratch; returns the summary,
        also written to summary.json."""
        cfg = self.cfg
        self.out_dir.mkdir(parents=True, exist_ok=True)
        resumed_from = self.global_step if cfg.resume and self.resume() else None
        start = self.global_step
        last: dict = {}
        last_generator_loss = None
        bar = tqdm(total=cfg.train_steps, initial=min(start, cfg.train_steps), desc="dmd", unit="step",
                   disable=not cfg.progress)
        while self.global_step < cfg.train_steps:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            t0 = time.perf_counter()
            out = self.step()
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            dt = time.perf_counter() - t0
            self.step_seconds.append(dt)
            last = {**out, "step_s": dt, "mem_gb": memory_gb(self.device),
                    "mem_kind": "cuda_peak_allocated" if self.device.type == "cuda" else "rss"}
            self._log(last)
            post = {"critic": f"{out['critic_loss']:.4f}"}
            if out["generator_loss"] is not None:
                last_generator_loss = out["generator_loss"]
                post["gen"] = f"{last_generator_loss:.4f}"
            bar.set_postfix(post)
            bar.update(1)
            if self.global_step % cfg.ckpt_every == 0 or self.global_step == cfg.train_steps:
                self.save_checkpoint()
        bar.close()
        output = self.out_dir / (LORA_FILE if cfg.adapter == "lora" else GENERATOR_FILE)
        if self.global_step == start or not output.exists():
            self.save()
        return self._summary(output, resumed_from, last_generator_loss, last.get("critic_loss"))

    def _summary(self, output: Path, resumed_from: int | None, generator_loss: float | None,
                 critic_loss: float | None) -> dict[str, Any]:
        """The run's totals (losses: the last of this run; None where it made no such update)."""
        s = {"train_steps": self.global_step, "steps_this_run": len(self.step_seconds), "resumed_from": resumed_from,
             "generator_updates": self.updates["generator"], "critic_updates": self.updates["critic"],
             "generator_loss": generator_loss, "critic_loss": critic_loss,
             "step_s_median": statistics.median(self.step_seconds) if self.step_seconds else None,
             "rollout_frames_range": [b * self.chunk for b in self.block_range],
             "denoising_step_list": [int(s * NUM_TRAIN_TIMESTEPS) for s in self.sigmas[:-1]],
             "generate_steps": generate_steps(self.cfg), "output": str(output), "adapter": self.cfg.adapter,
             "device": str(self.device), "config": self.cfg.to_dict()}
        write_text_atomic(self.out_dir / SUMMARY_FILE, json.dumps(s, indent=2, default=str) + "\n")
        return s
