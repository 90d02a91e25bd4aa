"""Stage-1 AR teacher-forcing trainer (spec 04): AdamW + clip + EMA, resumable, FSDP2/AC applied from outside.

Determinism is by construction: each step's noise and per-block timestep indices come from a fresh generator
seeded by (seed, step, rank), and the data iterator's position is checkpointed, so a run killed and resumed from
its latest checkpoint continues on exactly the loss trajectory of an uninterrupted run (bit-identical on CPU).

Distributed: pass `sp_group` (an SP process group of consecutive ranks) for Balanced/traditional SP and
`fsdp_mesh` (a DeviceMesh or process group over the whole world) for FSDP2 (NCCL on GPU, gloo on CPU). Without
FSDP (disabled, or a world of one) gradients are averaged over the world by hand, so the global-mean semantics
stay.

Error recycling (`error_recycling=True`, knobs in `error_recycling_config`; `longlive.train.error_recycling`) runs
on one process, data parallel and under Balanced / traditional SP: the ranks of an SP group keep identical banks
and draw the injection from one generator seeded by the group's first rank (`longlive.train.balanced`); one copy of
the banks per SP group is checkpointed, so resume stays bit-identical.

Fine-tuning (`checkpoint`): the generator starts from weights in any layout the project loads
(`longlive.train.checkpoint.read_generator_weights`), strictly checked before any training work; a run directory that
already holds a checkpoint resumes from it instead (resume takes precedence, logged). Gradient accumulation
(`grad_accum`) runs grad_accum × batch_size samples per optimiser step; micro-step m trains samples
m·batch_size … (m+1)·batch_size − 1 with the draws a batch of that many samples gives them, so grad_accum = 2 at
batch 1 equals batch 2 in one pass (within float tolerance).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import resource
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import distribute_tensor
from torch.utils.checkpoint import checkpoint
from tqdm import tqdm

from longlive.experiments.rules import check_at_least, check_device_string, check_frames, check_seed
from longlive.measure.roofline import linear_macs_per_token_layer, training_metrics
from longlive.model import dit
from longlive.model.presets import get_preset
from longlive.names import TRAIN_LAYOUTS
from longlive.parallel.groups import init_parallel
from longlive.quant.training import get_training_recipe, prepare_training_precision
from longlive.train.balanced import local_frame_range, sp_loss
from longlive.train.checkpoint import (
    capture_rng,
    check_generator_weights,
    checkpoint_path,
    list_checkpoints,
    load_generator_weights,
    load_latest,
    prune_checkpoints,
    restore_rng,
    save_checkpoint,
)
from longlive.train.data import FolderOptions, build_train_data
from longlive.train.error_recycling import RELEASE_KEYS, ErrorRecycler, ErrorRecyclingConfig
from longlive.train.teacher_forcing import (
    LOSS_WEIGHTINGS,
    TIMESTEP_DENSITIES,
    batched_teacher_forcing_loss,
    sample_t_index,
    teacher_forcing_loss,
    tf_window_of,
)
from longlive.train.validation import start_validation

log = logging.getLogger("longlive.train")

SP_LAYOUTS = TRAIN_LAYOUTS
LR_SCHEDULES = ("constant", "cosine")
BASE_PRECISIONS = ("fp32", "bf16")


@dataclass
class TrainConfig:
    """Stage-1 hyper-parameters; defaults follow the release (spec 04) except the step count."""

    train_steps: int = 600
    lr: float = 1e-5
    # Samples per forward pass (single process, single-prompt samples only): one batched forward pass
    # (`batched_teacher_forcing_loss`); the release trains one sample per GPU (training.batch_size 1).
    batch_size: int = 1
    # Forward/backward passes per optimiser step, gradients summed (the release's gradient_accumulation_steps: 1, 4 in
    # its NVFP4 64 s config): grad_accum × batch_size samples per step and data-parallel rank.
    grad_accum: int = 1
    # Fine-tuning: initial generator weights (published BF16 file, NVFP4 model_4o6.pt, safetensors shards, or a
    # longlive train run / step_*.pt; the release's checkpoints.generator_ckpt); None = the model as passed in.
    # Ignored when the run directory already holds a checkpoint to resume from.
    checkpoint: str | None = None
    checkpoint_ema: bool = False  # start from its EMA weights (a longlive run's ema, the release's generator_ema)
    # The release trains at a constant lr; from-scratch runs (the tiny default) want warm-up and a cosine decay.
    # The lr is a pure function of the step, so a resumed run continues the same schedule.
    lr_schedule: str = "constant"  # constant | cosine
    warmup_steps: int = 0
    lr_min_ratio: float = 0.1  # cosine ends at lr · lr_min_ratio
    # Probability of training a sample on the empty (all-zero) prompt, which makes CFG against that prompt
    # meaningful (DMD's real score uses it). The draw is per (seed, step, data-parallel replica).
    text_dropout: float = 0.0
    loss_weighting: str = "wan"  # LOSS_WEIGHTINGS: the release's w(t), or "uniform" for from-scratch training
    timestep_density: str = "table"  # TIMESTEP_DENSITIES: uniform over the shifted table (release), or σ uniform
    betas: tuple[float, float] = (0.0, 0.999)  # AdamW (the release's beta1, beta2)
    weight_decay: float = 0.0  # AdamW, decoupled (the release's weight_decay)
    grad_clip: float = 10.0
    ema_decay: float = 0.99  # the release's ema_weight
    ema_start: int = 100  # the release's ema_start_step: before it the EMA copies the weights
    log_every: int = 1
    ckpt_every: int = 100
    # Newest checkpoints kept (0 = all); older ones are removed once a new one is durably written. The release keeps
    # max_checkpoints 50 generator files; ours hold weights, EMA, optimiser and error banks (≈ 5× a generator file
    # in fp32 at 5B), hence 2.
    keep_checkpoints: int = 2
    seed: int = 0
    train_layout: str = "none"
    activation_checkpointing: bool = False
    fsdp: bool = False
    precision: str = "fp32"
    attn: str = "auto"
    resume: bool = True
    progress: bool = True
    peak_tflops: float | None = None  # for MFU in the summary; None → no MFU reported
    # Error recycling (spec 04; longlive.train.error_recycling): off by default, release knobs in the nested config.
    # Works on one process, data parallel and under SP (the ranks of an SP group keep identical banks).
    error_recycling: bool = False
    error_recycling_config: ErrorRecyclingConfig = field(default_factory=ErrorRecyclingConfig)
    # I2V (the release's algorithm.i2v / independent_first_frame): latent 0 of every sample is the clean conditioning
    # image, as `generate --image` treats it — never noised, t = 0, no loss (longlive.train.teacher_forcing). sp = 1.
    i2v: bool = False
    # Teacher forcing through the inference KV window (longlive.train.teacher_forcing.TFWindow): each block's clean
    # context is the sink plus the newest chunks it would attend at generation, not the whole history (the release).
    # Clips no longer than the window are unchanged; longer ones teach the sink distances of long videos. sp = 1.
    tf_window: bool = False
    # Validation (longlive.train.validation): every validate_every optimiser steps (0 = off; the release's
    # evaluation.interval) generate the prompt set (None = the preset's default: the tiny task's two captions) at
    # validation_frames latents (None = the model's window; the release's evaluation.num_frames 32) with the EMA
    # (validation_ema; the release's evaluation.use_ema) or live weights; strips + metrics in <out>/validation/,
    # TensorBoard in <out>/tb/, wandb too when installed and asked for. I2V runs give one image, or one per prompt.
    validate_every: int = 0
    validation_prompts: list[str] | None = None
    validation_images: list[str] = field(default_factory=list)
    validation_frames: int | None = None
    validation_ema: bool = True
    validation_strict: bool = False  # a failed validation stops the run (default: logged, training goes on)
    wandb: bool = False
    wandb_project: str = "longlive"
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        if self.train_layout not in SP_LAYOUTS:
            raise ValueError(f"unknown train_layout {self.train_layout!r}; choose one of {', '.join(SP_LAYOUTS)}")
        if isinstance(self.error_recycling_config, dict):
            self.error_recycling_config = ErrorRecyclingConfig(**self.error_recycling_config)
        if self.train_steps < 0 or self.ckpt_every < 1 or self.log_every < 1:
            raise ValueError("train_steps must be ≥ 0 and ckpt_every / log_every ≥ 1")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"unknown lr_schedule {self.lr_schedule!r}; choose one of {', '.join(LR_SCHEDULES)}")
        if self.warmup_steps < 0 or not 0.0 <= self.lr_min_ratio <= 1.0:
            raise ValueError("warmup_steps must be ≥ 0 and lr_min_ratio in [0, 1]")
        if self.loss_weighting not in LOSS_WEIGHTINGS:
            raise ValueError(f"unknown loss_weighting {self.loss_weighting!r}; choose one of "
                             f"{', '.join(LOSS_WEIGHTINGS)}")
        if self.timestep_density not in TIMESTEP_DENSITIES:
            raise ValueError(f"unknown timestep_density {self.timestep_density!r}; choose one of "
                             f"{', '.join(TIMESTEP_DENSITIES)}")
        for name in ("batch_size", "grad_accum"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        for name in ("ema_start", "keep_checkpoints"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be ≥ 0 (keep_checkpoints 0 keeps all), got {getattr(self, name)}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas={list(self.betas)} must be two AdamW coefficients in [0, 1), e.g. 0.0 0.999")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay={self.weight_decay} must be ≥ 0")
        if not 0.0 <= self.ema_decay <= 1.0:
            raise ValueError(f"ema_decay={self.ema_decay} must lie in [0, 1] (the release: 0.99)")
        if self.checkpoint_ema and not self.checkpoint:
            raise ValueError("checkpoint_ema=True needs checkpoint (a longlive training run, a step_*.pt or a file "
                             "with generator_ema)")
        if not 0.0 <= self.text_dropout < 1.0:
            raise ValueError(f"text_dropout must be in [0, 1), got {self.text_dropout}")
        if self.validate_every < 0 or (self.validation_frames is not None and self.validation_frames < 1):
            raise ValueError(f"validate_every={self.validate_every} must be ≥ 0 (0 = off) and validation_frames "
                             f"(given: {self.validation_frames}) ≥ 1")

    def lr_at(self, step: int) -> float:
        """The learning rate of step `step` (0-based): linear warm-up, then constant or cosine to lr·lr_min_ratio."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        if self.lr_schedule == "constant":
            return self.lr
        span = max(1, self.train_steps - self.warmup_steps - 1)
        frac = min(1.0, (step - self.warmup_steps) / span)
        return self.lr * (self.lr_min_ratio + (1 - self.lr_min_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# -- transforms applied from outside the model --------------------------------------------------------------------


def apply_activation_checkpointing(model: nn.Module) -> nn.Module:
    """Recompute every block's activations in backward (non-reentrant torch.utils.checkpoint).

    Patches each block's forward in place instead of wrapping the module, so parameter names (and hence
    checkpoints and FSDP's per-block sharding) are unchanged. Idempotent.
    """
    for blk in model.blocks:
        if getattr(blk, "_longlive_ac", False):
            continue
        inner = blk.forward

        def forward(*args, _inner=inner, **kwargs):
            return checkpoint(_inner, *args, use_reentrant=False, **kwargs)

        blk.forward = forward
        blk._longlive_ac = True
    return model


def apply_fsdp(model: nn.Module, mesh_or_group, *, param_dtype: torch.dtype = torch.bfloat16) -> bool:
    """FSDP2: fully_shard each block, then the root; params cast to `param_dtype` for compute, fp32 reduce.

    A 2-D DeviceMesh (replicate, shard) gives hybrid sharding as in the release. Returns False (and logs why)
    with a world of one, where sharding means nothing. On CPU it shards over gloo (how CI tests this path).
    """
    dev = next(model.parameters()).device
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    if world == 1:
        log.info("FSDP skipped: world size is 1")
        return False
    mesh = mesh_or_group
    if mesh is None:
        mesh = DeviceMesh.from_group(dist.group.WORLD, dev.type)
    elif not isinstance(mesh, DeviceMesh):
        mesh = DeviceMesh.from_group(mesh, dev.type)
    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    for blk in model.blocks:
        fully_shard(blk, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)
    log.info("FSDP2 applied on %d ranks (param %s, reduce fp32)", world, param_dtype)
    return True


def prepare_precision(model: nn.Module, name: str) -> nn.Module:
    """fp32/bf16 are handled by the trainer (autocast or FSDP mixed precision); the low-precision recipes are
    swapped in by `longlive.quant.training.prepare_training_precision`."""
    if name in BASE_PRECISIONS:
        return model
    report = prepare_training_precision(model, name, device=next(model.parameters()).device)  # swaps in place
    log.info("training precision %s: %s", name, report)
    return model


# -- data ---------------------------------------------------------------------------------------------------------


class RandomLatentData:
    """Stand-in data (`--data random`): random latents + random prompt embeddings, one sample per step.

    Sample i is drawn from a generator seeded by (seed, i), or always sample 0 with fixed=True (overfitting tests),
    and the position is in state_dict, so resuming reproduces the stream exactly.
    """

    def __init__(self, model_cfg, frames: int, *, seed: int = 0, fixed: bool = False, num_prompts: int = 2,
                 rank: int = 0):
        if frames % model_cfg.chunk_frames:
            raise ValueError(f"frames={frames} must be whole blocks of {model_cfg.chunk_frames}")
        self.cfg, self.frames, self.seed, self.fixed, self.num_prompts = model_cfg, frames, seed, fixed, num_prompts
        self.rank = rank
        self.index = 0

    def __iter__(self) -> RandomLatentData:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        i = 0 if self.fixed else self.index
        self.index += 1
        g = torch.Generator().manual_seed(mix_seed(self.seed, i, self.rank, 0x5EED))
        c = self.cfg
        h, w = c.latent_hw
        x0 = torch.randn(1, c.in_channels, self.frames, h, w, generator=g)
        pe = torch.randn(self.num_prompts, c.text_len, c.text_dim, generator=g)
        blocks = self.frames // c.chunk_frames
        fp = (torch.arange(blocks) % self.num_prompts).repeat_interleave(c.chunk_frames)
        return {"x0": x0, "prompts_embeds": pe, "frame_prompt": fp}

    def state_dict(self) -> dict[str, int]:
        return {"index": self.index}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.index = int(state["index"])


def unpack_sample(sample: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x0 [1,C,F,H,W], prompts_embeds [P,Lt,D], frame_prompt [F]) from a dict or an object with attributes."""

    def get(*names: str) -> Any:
        for n in names:
            if isinstance(sample, dict) and n in sample:
                return sample[n]
            if not isinstance(sample, dict) and hasattr(sample, n):
                return getattr(sample, n)
        have = list(sample) if isinstance(sample, dict) else type(sample).__name__
        raise KeyError(f"training sample lacks {names[0]!r} (have {have})")

    x0 = get("x0", "latents")
    if x0.dim() == 4:
        x0 = x0.unsqueeze(0)
    return x0, get("prompts_embeds", "prompt_embeds", "context"), torch.as_tensor(get("frame_prompt"))


def valid_frames_of(sample: Any, frames: int) -> int:
    """The sample's real latent frames: its `num_valid_latent_frames` (a folder sample padded under allow_padding),
    else all of them."""
    v = sample.get("num_valid_latent_frames") if isinstance(sample, dict) else getattr(
        sample, "num_valid_latent_frames", None)
    return frames if v is None else int(v)


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (splitmix-style), so (seed, step, rank) never collide for small values."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF


# -- the trainer --------------------------------------------------------------------------------------------------


def memory_gb(device: torch.device) -> float:
    """Peak allocated GPU memory (torch) on CUDA; current process RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e9
    except (OSError, ValueError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def train_flops_per_step(model_cfg, frames: int, tokens_per_frame: int) -> float:
    """Useful FLOPs of one teacher-forcing step: 3 × forward (fwd + 2× bwd), AC recompute not counted.

    Forward on L = 2·F·tpf tokens: GEMMs + masked self-attention at the mask density (N+1)/(4N) + cross-attention.
    """
    L = 2 * frames * tokens_per_frame
    n = max(1, frames // model_cfg.chunk_frames)
    layers, d = model_cfg.num_layers, model_cfg.dim
    fwd = (2.0 * linear_macs_per_token_layer(model_cfg) * L * layers + 4.0 * L * L * d * layers * (n + 1) / (4 * n)
           + 4.0 * L * model_cfg.text_len * d * layers)
    return 3.0 * fwd


class ARTrainer:
    """Teacher-forcing fine-tune of all parameters with AdamW, grad clipping, fp32 EMA and atomic checkpoints."""

    def __init__(self, model: nn.Module, cfg: TrainConfig, data_iter: Iterable, out_dir: str | os.PathLike, *,
                 device: torch.device | str | None = None, sp_group=None, fsdp_mesh=None):
        self.cfg = cfg
        self.out_dir = Path(out_dir)
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.distributed = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.distributed else 0
        self.world = dist.get_world_size() if self.distributed else 1
        self.sp_group = sp_group
        self.sp = dist.get_world_size(sp_group) if (sp_group is not None and self.distributed) else 1
        self.sp_rank = dist.get_rank(sp_group) if self.sp > 1 else 0
        if self.sp > 1 and cfg.train_layout == "none":
            raise ValueError(f"an SP group of {self.sp} ranks was given but train_layout is 'none'")
        if self.sp > 1 and cfg.batch_size > 1:
            raise ValueError(f"batch_size {cfg.batch_size} is for single-process training; with sequence parallelism "
                             f"(sp={self.sp}) each SP group trains one sample per step")
        if self.sp == 1 and cfg.train_layout != "none":
            log.info("train_layout=%s ignored: no SP group with more than one rank", cfg.train_layout)
        if self.sp > 1 and cfg.tf_window:
            raise ValueError(f"tf_window is single-process / data-parallel only (sp={self.sp}): the SP masks are the "
                             f"release's whole-history ones; run tf_window with sp=1")
        self.tf_window = tf_window_of(model.cfg) if cfg.tf_window else None
        if self.sp > 1 and cfg.i2v:
            raise ValueError(f"i2v is single-process / data-parallel only (sp={self.sp}): the SP losses do not "
                             f"condition latent 0; run i2v with sp=1")
        self.is_main = self.rank == 0
        self.recycler: ErrorRecycler | None = None
        if cfg.error_recycling:
            self.recycler = ErrorRecycler(cfg.error_recycling_config)
        if cfg.checkpoint:
            if cfg.resume and list_checkpoints(self.out_dir):
                log.info("resuming from %s: it takes precedence over checkpoint=%s (initial weights not loaded)",
                         self.out_dir, cfg.checkpoint)
            else:  # before precision recipes and FSDP change the module tree: the published names still apply
                what = load_generator_weights(model, cfg.checkpoint, ema=cfg.checkpoint_ema)
                log.info("initial generator weights: %s", what)

        model = prepare_precision(model.to(self.device), cfg.precision)
        if cfg.activation_checkpointing:
            apply_activation_checkpointing(model)
        self.fsdp = False
        if cfg.fsdp:
            # low-precision recipes run BF16 around their quantised GEMMs
            dtype = torch.float32 if cfg.precision == "fp32" else torch.bfloat16
            self.fsdp = apply_fsdp(model, fsdp_mesh, param_dtype=dtype)
        elif self.world > 1:
            log.info("FSDP disabled by config: gradients are all-reduced by hand over %d ranks", self.world)
        self.model = model
        self.named_params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.params = [p for _, p in self.named_params]
        fused = self.device.type == "cuda" and all(p.is_cuda for p in self.params)
        self.optim = torch.optim.AdamW(self.params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay,
                                       **({"fused": True} if fused else {}))
        self.ema = [p.detach().float().clone() for p in self.params]
        self.data_src = data_iter
        self.data: Iterator = data_iter if hasattr(data_iter, "__next__") else iter(data_iter)
        self.step = 0
        self.step_seconds: list[float] = []
        self.tokens_per_step = 0
        self.flops_per_step = 0.0
        if cfg.resume:
            self._try_resume()

    # -- one step ----------------------------------------------------------------------------------------------
    def _generator(self, step: int, rank: int) -> torch.Generator:
        return torch.Generator().manual_seed(mix_seed(self.cfg.seed, step, rank))

    def _sample_generator(self, step: int, rank: int, index: int) -> torch.Generator:
        """t and ε of sample `index` of a step (batch and accumulation micro-steps alike): sample 0 draws from
        (seed, step, rank), as a step of one sample always has; sample b > 0 from (seed, step, rank, tag, b)."""
        if index == 0:
            return self._generator(step, rank)
        return torch.Generator().manual_seed(mix_seed(self.cfg.seed, step, rank, 0xBA7C, index))

    def _recycle_generator(self, step: int, index: int) -> torch.Generator:
        """Error-recycling draws of sample `index`, seeded by the SP group's first rank: every rank of a group
        plans the same injection (at sp = 1 the rank itself)."""
        parts = (self.cfg.seed, step, self.rank - self.sp_rank, 0xE22) + ((index,) if index else ())
        return torch.Generator().manual_seed(mix_seed(*parts))

    def drops_text(self, step: int, index: int = 0) -> bool:
        """Whether sample `index` of step `step` trains on the empty prompt: one draw per sample, shared by its SP
        group (seeded by the group's first rank) so every rank of a sample agrees."""
        if self.cfg.text_dropout <= 0:
            return False
        parts = (self.cfg.seed, step, self.rank - self.sp_rank, 0x7D) + ((index,) if index else ())
        g = torch.Generator().manual_seed(mix_seed(*parts))
        return torch.rand((), generator=g).item() < self.cfg.text_dropout

    def _batched_loss(self, samples: list, step: int, recycle: bool, first: int = 0) -> torch.Tensor:
        """`batched_teacher_forcing_loss` over single-prompt samples, the step's samples first, first + 1, …
        (`_sample_generator`: sample 0 draws exactly what a batch of one draws)."""
        xs, pes, valid = [], [], []
        for b, smp in enumerate(samples):
            x0, pe, fp = unpack_sample(smp)
            if pe.shape[0] != 1 or bool((torch.as_tensor(fp) != 0).any()):
                raise ValueError(f"batch_size {len(samples)} takes single-prompt samples; sample {b} has "
                                 f"{pe.shape[0]} prompts (train multi-prompt samples with batch_size 1)")
            xs.append(x0)
            valid.append(valid_frames_of(smp, x0.shape[2]))
            pes.append(torch.zeros_like(pe) if self.drops_text(step, first + b) else pe)
        mc = self.model.cfg
        x0 = torch.cat(xs).to(self.device)
        frames = x0.shape[2]
        tpf = (x0.shape[3] // mc.patch_size[1]) * (x0.shape[4] // mc.patch_size[2])
        self.tokens_per_step = 2 * frames * tpf * len(samples)
        self.flops_per_step = train_flops_per_step(mc, frames, tpf) * len(samples)
        t_idx, noise = [], []
        for b in range(len(samples)):
            g = self._sample_generator(step, self.rank, first + b)
            t_idx.append(sample_t_index(frames // mc.chunk_frames, g, self.cfg.timestep_density))
            noise.append(torch.randn(xs[b].shape, generator=g))
        rec = self.recycler if recycle else None
        if rec is not None:
            rec.set_step(step)
        gens = [self._recycle_generator(step, first + b) for b in range(len(samples))] if rec else None
        return batched_teacher_forcing_loss(self.model, x0, torch.cat(pes).to(self.device),
                                            noise=torch.cat(noise).to(self.device, x0.dtype),
                                            t_index=torch.stack(t_idx), attn=self.cfg.attn, recycler=rec,
                                            recycle_generators=gens, loss_weighting=self.cfg.loss_weighting,
                                            i2v=self.cfg.i2v, valid_frames=valid, window=self.tf_window)

    def compute_loss(self, sample: Any, step: int, *, recycle: bool = True, index: int = 0) -> torch.Tensor:
        """The step's loss: teacher forcing on one process, or this rank's Balanced/traditional SP loss.

        index: the (first) sample's position in the step (gradient accumulation: `_sample_generator`). With error
        recycling on (and `recycle`), the injection is drawn from its own generator seeded by (seed, step, the SP
        group's first rank, tag), so the step's t and ε are the same draws as without recycling, and the banks
        record this step's errors. recycle=False evaluates the plain loss and leaves the banks untouched (probes).
        """
        if isinstance(sample, list):
            return self._batched_loss(sample, step, recycle, first=index)
        x0, pe, fp = unpack_sample(sample)
        mc = self.model.cfg
        chunk = mc.chunk_frames
        frames = x0.shape[2]
        tpf = (x0.shape[3] // mc.patch_size[1]) * (x0.shape[4] // mc.patch_size[2])
        self.tokens_per_step = 2 * frames * tpf
        self.flops_per_step = train_flops_per_step(mc, frames, tpf)
        dev = self.device
        pe = pe.to(dev)
        if self.drops_text(step, index):
            pe = torch.zeros_like(pe)
        rec = self.recycler if recycle else None
        if rec is not None:
            rec.set_step(step)
        rg = self._recycle_generator(step, index) if rec else None
        valid = valid_frames_of(sample, frames)
        if self.sp == 1:
            g = self._sample_generator(step, self.rank, index)
            t_index = sample_t_index(frames // chunk, g, self.cfg.timestep_density)
            noise = torch.randn(x0.shape, generator=g).to(dev, x0.dtype)
            return teacher_forcing_loss(self.model, x0.to(dev), pe, fp, noise=noise, t_index=t_index,
                                        attn=self.cfg.attn, recycler=rec, recycle_generator=rg,
                                        loss_weighting=self.cfg.loss_weighting, i2v=self.cfg.i2v,
                                        valid_frames=valid, window=self.tf_window)
        if valid != frames:
            raise ValueError(f"a padded sample ({valid} of {frames} latent frames real, allow_padding) is masked from "
                             f"the loss only at sp = 1; train padded data with --sp 1 or without --allow-padding")
        if self.cfg.train_layout == "balanced":
            # per-rank timesteps/noise for this rank's own frames, seeded by base seed + global rank (spec 04)
            lo, hi = local_frame_range(frames, self.sp_rank, self.sp)
            g = self._sample_generator(step, self.rank, index)
            t_index = sample_t_index((hi - lo) // chunk, g, self.cfg.timestep_density)
            xl = x0[:, :, lo:hi]
            noise = torch.randn(xl.shape, generator=g).to(dev, x0.dtype)
            return sp_loss("balanced", self.model, xl.to(dev), pe, fp[lo:hi], noise_local=noise, t_index_local=t_index,
                           group=self.sp_group, sp=self.sp, attn=self.cfg.attn,
                           loss_weighting=self.cfg.loss_weighting, recycler=rec, recycle_generator=rg)
        # traditional takes the GLOBAL sample, identical on every rank of the SP group: seed by the group's first rank
        g = self._sample_generator(step, self.rank - self.sp_rank, index)
        t_index = sample_t_index(frames // chunk, g, self.cfg.timestep_density)
        noise = torch.randn(x0.shape, generator=g).to(dev, x0.dtype)
        return sp_loss("traditional", self.model, x0.to(dev), pe, fp, noise=noise, t_index=t_index,
                       group=self.sp_group, sp=self.sp, attn=self.cfg.attn,
                       loss_weighting=self.cfg.loss_weighting, recycler=rec, recycle_generator=rg)

    @torch.no_grad()
    def update_ema(self, step: int) -> None:
        """Before `ema_start` the EMA tracks the weights exactly; from it on, ema ← d·ema + (1−d)·θ (fp32)."""
        if step < self.cfg.ema_start:
            for e, p in zip(self.ema, self.params, strict=True):
                e.copy_(p.detach().float())
        else:
            torch._foreach_lerp_(self.ema, [p.detach().float() for p in self.params], 1.0 - self.cfg.ema_decay)

    def _average_grads(self) -> None:
        """Without FSDP, average gradients over the world by hand (same global-mean semantics as FSDP)."""
        if self.fsdp or self.world == 1:
            return
        for p in self.params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad)
            p.grad.div_(self.world)

    def train_step(self) -> dict[str, float]:
        """One optimiser step: grad_accum forward/backward passes of batch_size samples each (each pass's loss
        scaled by 1/grad_accum, so the gradient is that of the mean over all the step's samples), then average,
        clip, AdamW, EMA."""
        step = self.step
        n, accum = self.cfg.batch_size, self.cfg.grad_accum
        autocast = self.cfg.precision == "bf16" and not self.fsdp
        loss = torch.zeros((), device=self.device)
        for m in range(accum):
            sample = next(self.data) if n == 1 else [next(self.data) for _ in range(n)]
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=autocast):
                part = self.compute_loss(sample, step, index=m * n)
            (part / accum).backward()
            loss = loss + part.detach().float() / accum
        self.tokens_per_step *= accum
        self.flops_per_step *= accum
        self._average_grads()
        gn = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
        gn = gn.full_tensor() if hasattr(gn, "full_tensor") else gn
        lr = self.cfg.lr_at(step)
        for group in self.optim.param_groups:
            group["lr"] = lr
        self.optim.step()
        self.optim.zero_grad(set_to_none=True)
        self.update_ema(step)
        self.step = step + 1
        loss_v = loss.detach().float()
        if self.world > 1:
            dist.all_reduce(loss_v)
            loss_v /= self.world
        return {"loss": loss_v.item(), "grad_norm": float(gn), "lr": lr}

    # -- the loop ----------------------------------------------------------------------------------------------
    def run(self, until: int | None = None) -> dict[str, Any]:
        """Train from the current step to cfg.train_steps (or stop early at `until`, leaving the lr schedule, which is
        defined over cfg.train_steps, untouched); returns (and writes) the summary."""
        cfg = self.cfg
        self.out_dir.mkdir(parents=True, exist_ok=True)
        bar = tqdm(total=cfg.train_steps, initial=self.step, desc="train", unit="it",
                   disable=not (cfg.progress and self.is_main))
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        stop = cfg.train_steps if until is None else min(until, cfg.train_steps)
        validation = start_validation(self)  # None unless validate_every > 0
        while self.step < stop:
            t0 = time.perf_counter()
            m = self.train_step()
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            dt = time.perf_counter() - t0
            self.step_seconds.append(dt)
            mem = memory_gb(self.device)
            rec = {"step": self.step, "loss": m["loss"], "grad_norm": m["grad_norm"], "lr": m["lr"], "step_s": dt,
                   "mem_gb": mem, "mem_kind": "cuda_peak_allocated" if self.device.type == "cuda" else "rss"}
            if self.is_main and (self.step % cfg.log_every == 0 or self.step == cfg.train_steps):
                with open(self.out_dir / "metrics.jsonl", "a") as f:
                    f.write(json.dumps(rec) + "\n")
            bar.set_postfix(loss=f"{m['loss']:.4f}", mem=f"{mem:.2f}GB")
            bar.update(1)
            if self.step % cfg.ckpt_every == 0 or self.step == stop:
                self.save()
            if validation is not None:
                validation.after_step(rec)
        bar.close()
        if validation is not None:
            validation.close()
        return self._summary()

    def _summary(self) -> dict[str, Any]:
        s: dict[str, Any] = {"train_steps": self.step, "steps_this_run": len(self.step_seconds), "fsdp": self.fsdp,
                             "sp": self.sp, "world": self.world, "device": str(self.device),
                             "tokens_per_step": self.tokens_per_step, "flops_per_step": self.flops_per_step}
        if len(self.step_seconds) > 1:
            tm = training_metrics(self.step_seconds, self.tokens_per_step, self.flops_per_step,
                                  self.cfg.peak_tflops or 1.0)
            if self.cfg.peak_tflops is None:
                tm.pop("mfu")
            s.update(tm)
        if self.is_main:
            (self.out_dir / "summary.json").write_text(json.dumps(s, indent=2) + "\n")
        return s

    # -- checkpoints -------------------------------------------------------------------------------------------
    def _model_state(self) -> dict[str, torch.Tensor]:
        if self.fsdp:
            return get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return {k: v.detach().cpu() for k, v in self.model.state_dict().items()}

    def _optim_state(self) -> dict[str, Any]:
        if self.fsdp:
            return get_optimizer_state_dict(self.model, self.optim,
                                            options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return self.optim.state_dict()

    def _ema_state(self) -> dict[str, torch.Tensor]:
        out = {}
        for (n, _), e in zip(self.named_params, self.ema, strict=True):
            out[n] = (e.full_tensor() if hasattr(e, "full_tensor") else e).cpu()
        return out

    def _recycler_states(self) -> list[dict[str, Any] | None] | None:
        """The error banks by global rank, gathered to rank 0 (None elsewhere): each data-parallel replica records
        its own errors; the ranks of an SP group hold identical banks, so only its first rank's are kept (None at
        the others' places)."""
        mine = self.recycler.state_dict() if self.sp_rank == 0 else None
        if self.world == 1:
            return [mine]
        got: list[Any] = [None] * self.world if self.is_main else None
        dist.gather_object(mine, got, dst=0)
        return got

    def save(self) -> Path | None:
        """Collective under FSDP (every rank gathers); rank 0 writes atomically and prunes old checkpoints."""
        state = {
            "step": self.step, "model": self._model_state(), "ema": self._ema_state(), "optim": self._optim_state(),
            "rng": capture_rng(), "config": self.cfg.to_dict(),
            "data": self.data_src.state_dict() if hasattr(self.data_src, "state_dict") else None,
            "world": self.world,
        }
        if self.recycler is not None:
            state["error_recycling"] = self._recycler_states()
        path = None
        if self.is_main:
            path = save_checkpoint(checkpoint_path(self.out_dir, self.step), state)
            prune_checkpoints(self.out_dir, self.cfg.keep_checkpoints)
        if self.distributed:
            dist.barrier()
        return path

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore everything a step depends on; the data stream is restored or, lacking state_dict, fast-forwarded."""
        if self.fsdp:
            opts = StateDictOptions(full_state_dict=True, broadcast_from_rank0=False)
            set_model_state_dict(self.model, state["model"], options=opts)
            set_optimizer_state_dict(self.model, self.optim, state["optim"], options=opts)
        else:
            self.model.load_state_dict(state["model"])
            self.optim.load_state_dict(state["optim"])
        with torch.no_grad():
            for (n, _), e in zip(self.named_params, self.ema, strict=True):
                src = state["ema"][n]
                if hasattr(e, "device_mesh"):
                    src = distribute_tensor(src.to(e.device), e.device_mesh, e.placements)
                    e.copy_(src)
                else:
                    e.copy_(src.to(e.device))
        if self.recycler is not None:
            banks = state.get("error_recycling")
            if banks is None:
                log.warning("checkpoint has no error-recycling banks: error recycling resumes with empty banks")
            elif len(banks) != self.world:
                log.warning("checkpoint holds error banks of %d ranks, this run has %d: resuming with empty banks",
                            len(banks), self.world)
            elif banks[self.rank - self.sp_rank] is None:
                log.warning("checkpoint holds no error banks for this SP group (saved with another SP layout): "
                            "resuming with empty banks")
            else:
                self.recycler.load_state_dict(banks[self.rank - self.sp_rank])
        restore_rng(state["rng"])
        self.step = int(state["step"])
        if state.get("data") is not None and hasattr(self.data_src, "load_state_dict"):
            self.data_src.load_state_dict(state["data"])
        else:
            skip = self.step * self.cfg.batch_size * self.cfg.grad_accum
            log.info("data iterator has no state_dict: fast-forwarding %d samples", skip)
            for _ in range(skip):
                next(self.data)

    def _try_resume(self) -> None:
        state = load_latest(self.out_dir)
        if state is None:
            return
        free = ("steps", "train_steps", "resume", "progress")  # "steps": checkpoints written before the rename
        old = {k: v for k, v in state.get("config", {}).items() if k not in free}
        new = {k: v for k, v in self.cfg.to_dict().items() if k not in free}
        diff = {k: (old.get(k), new.get(k)) for k in new if old.get(k) != new.get(k) and k in old}
        if diff:
            log.warning("resuming with a changed config: %s", diff)
        self.load_state(state)
        self._truncate_metrics()
        log.info("resumed from step %d in %s", self.step, self.out_dir)

    def _truncate_metrics(self) -> None:
        """Drop metric lines written after the checkpoint we resume from (a killed run logged them, then died)."""
        f = self.out_dir / "metrics.jsonl"
        if not (self.is_main and f.exists()):
            return
        keep = [ln for ln in f.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= self.step]
        f.write_text("".join(ln + "\n" for ln in keep))


# -- CLI ----------------------------------------------------------------------------------------------------------


def add_train_parser(subparsers) -> argparse.ArgumentParser:
    """`longlive train`: Stage-1 teacher-forcing fine-tune (the lead wires this into longlive/cli.py)."""
    p = subparsers.add_parser("train", help="Stage-1 AR teacher-forcing fine-tune (resumable)")
    p.add_argument("--model", default="tiny")
    p.add_argument("--train-steps", type=int, default=600,
                   help="optimiser steps (denoising steps are `generate --steps`)")
    p.add_argument("--out", default=None, help="run directory: metrics.jsonl, summary.json, checkpoints/ (required "
                   "except with --tiny-default)")
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--lr-schedule", choices=list(LR_SCHEDULES), default="constant")
    p.add_argument("--warmup-steps", type=int, default=0)
    p.add_argument("--text-dropout", type=float, default=0.0,
                   help="probability of training a sample on the empty prompt (for CFG against it)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision", default=None, help="fp32 | bf16 | a longlive.quant.training recipe "
                                                      "(default: bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--data", default="random", help="random | procedural | folder:PATH (random = internal stand-in: "
                                                     "random latents + random prompt embeddings)")
    p.add_argument("--frames", type=int, default=None, help="latent frames per sample (default: 2 blocks)")
    p.add_argument("--max-chunks-per-shot", type=int, default=0, help="folder data: after k chunks of one video skip "
                   "1 s and start a virtual shot (the release's max_chunks_per_shot; 0: off)")
    p.add_argument("--min-latent-frames", type=int, default=0, help="folder data with --allow-padding: refuse "
                   "samples with fewer real latent frames (a multiple of the chunk; 0: any)")
    p.add_argument("--allow-padding", action=argparse.BooleanOptionalAction, default=False, help="folder data: pad "
                   "a sample whose videos run out with its last frame and prompt instead of refusing it")
    p.add_argument("--uniform-prompt", action=argparse.BooleanOptionalAction, default=False, help="folder data: "
                   "every chunk of a sample from its first video (one caption)")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--ckpt-every", type=int, default=100)
    p.add_argument("--log-every", type=int, default=1)
    p.add_argument("--ema-start", type=int, default=100, help="EMA tracks the weights exactly before this step "
                   "(release: ema_start_step, 100 in spec 04's AR recipe)")
    p.add_argument("--ema-decay", type=float, default=0.99, help="EMA decay from --ema-start on (release: ema_weight "
                   "0.99)")
    p.add_argument("--checkpoint", default=None, help="initial generator weights (fine-tuning; release: "
                   "checkpoints.generator_ckpt, default none = seeded init): a model_bf16.pt-style file, an NVFP4 "
                   "model_4o6.pt (dequantised for training), a folder of *.safetensors shards, or a longlive train run "
                   "directory / step_*.pt; a --out that already holds a checkpoint resumes from it instead")
    p.add_argument("--checkpoint-ema", action=argparse.BooleanOptionalAction, default=False,
                   help="start from the checkpoint's EMA weights (a longlive training checkpoint's ema, or the "
                   "release's generator_ema)")
    p.add_argument("--batch-size", type=int, default=1, help="samples per forward pass, single-prompt samples, "
                   "sp = 1 (release: batch_size 1 per GPU)")
    p.add_argument("--grad-accum", type=int, default=1, help="forward/backward passes per optimiser step (release: "
                   "gradient_accumulation_steps 1; 4 in its NVFP4 64 s config)")
    p.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay (release: weight_decay 0.0)")
    p.add_argument("--betas", type=float, nargs=2, default=[0.0, 0.999], metavar=("BETA1", "BETA2"),
                   help="AdamW betas (release: beta1 0.0, beta2 0.999)")
    p.add_argument("--keep-checkpoints", type=int, default=2, help="newest checkpoints kept, 0 = all (release: "
                   "max_checkpoints 50 generator files; ours also hold optimiser, EMA and error banks, hence 2)")
    p.add_argument("--sp", type=int, default=1, help="sequence-parallel degree (launch with torchrun)")
    p.add_argument("--train-layout", choices=["balanced", "traditional"], default="balanced")
    p.add_argument("--fsdp", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--activation-checkpointing", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--error-recycling", action=argparse.BooleanOptionalAction, default=False,
                   help="spec 04 error recycling with the release knobs (--error-recycling-config); any --sp")
    er = ErrorRecyclingConfig()
    p.add_argument("--error-recycling-config", nargs="+", default=[], metavar="KEY=VALUE",
                   help="error recycling knobs, defaults = release (its train_ar.yaml key): " + "; ".join(
                       f"{f.name}={getattr(er, f.name)}" + (f" ({RELEASE_KEYS[f.name]})" if f.name in RELEASE_KEYS
                                                           else "") for f in dataclasses.fields(er)))
    p.add_argument("--i2v", action=argparse.BooleanOptionalAction, default=False, help="image-to-video: latent 0 "
                   "of each sample is the clean conditioning image (never noised, t = 0, no loss), as `generate "
                   "--image` conditions it (the release's i2v / independent_first_frame); sp = 1 only")
    p.add_argument("--tf-window", action=argparse.BooleanOptionalAction, default=False, help="teacher forcing "
                   "through the inference KV window: each block sees the sink and the newest chunks it attends at "
                   "generation, not its whole history (use with --frames longer than the window); sp = 1 only")
    p.add_argument("--validate-every", type=int, default=0, help="generate the validation prompts every N optimiser "
                   "steps into OUT/validation/step_N/ (strips, metrics.json) and OUT/tb/ (TensorBoard); 0: off")
    p.add_argument("--validation-prompt", action="append", dest="validation_prompts", default=None,
                   metavar="PROMPT", help="a validation prompt, one video each (repeat; default for --model tiny: "
                   "the tiny task's two captions)")
    p.add_argument("--validation-image", action="append", dest="validation_images", default=[], metavar="PATH",
                   help="conditioning image of the validation videos: one for all, or one per prompt (needed by --i2v)")
    p.add_argument("--validation-frames", type=int, default=None,
                   help="latent frames per validation video (default: the model's attention window)")
    p.add_argument("--validation-ema", action=argparse.BooleanOptionalAction, default=True,
                   help="validate the EMA weights (equal to the live ones before --ema-start) or the live ones")
    p.add_argument("--validation-strict", action=argparse.BooleanOptionalAction, default=False,
                   help="a failed validation stops the run (default: it is logged and training goes on)")
    p.add_argument("--wandb", action=argparse.BooleanOptionalAction, default=False,
                   help="also log to Weights & Biases when the wandb package is installed (optional extra)")
    p.add_argument("--wandb-project", default="longlive")
    p.add_argument("--device", default=None)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_train)
    return p


def build_data(spec: str, model_cfg, frames: int, seed: int, rank: int = 0, ranks: int = 1,
               cache_dir: str | os.PathLike = Path(".cache") / "train", options: FolderOptions | None = None,
               sp_group=None, progress: bool = True):
    """Resolve --data: `random` (the internal stand-in) here, `procedural` and `folder:PATH` through
    `longlive.train.data.build_train_data` (latents and embeddings cached under cache_dir; folder `options`; the SP
    group shares each encode in halo windows). rank / ranks: this process's data-parallel rank and their number."""
    if spec == "random":
        if options not in (None, FolderOptions()):
            raise ValueError(f"{options}: folder options, for --data folder:PATH only (not --data random)")
        return RandomLatentData(model_cfg, frames, seed=seed, rank=rank)
    if spec == "procedural" or spec.startswith("folder:"):
        return build_train_data(spec, model_cfg=model_cfg, frames=frames, seed=seed, rank=rank, ranks=ranks,
                                cache_dir=cache_dir, options=options, sp_group=sp_group, progress=progress)
    raise ValueError(f"unknown --data {spec!r}; use random, procedural or folder:PATH")


def parse_error_recycling_config(items: list[str]) -> ErrorRecyclingConfig:
    """`--error-recycling-config KEY=VALUE …` → ErrorRecyclingConfig (values typed by the field's default)."""
    defaults = ErrorRecyclingConfig()
    names = [f.name for f in dataclasses.fields(defaults)]
    kw: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in names:
            raise ValueError(f"--error-recycling-config {item!r}: expected KEY=VALUE with KEY one of "
                             f"{', '.join(names)}")
        kind = type(getattr(defaults, key))
        try:
            kw[key] = kind(value)
        except ValueError:
            raise ValueError(f"--error-recycling-config {key}={value!r} is not a {kind.__name__}") from None
    return ErrorRecyclingConfig(**kw)


def check_train_args(args: argparse.Namespace) -> None:
    """The run spec's rules (`longlive.experiments.rules`) over train's flags, before data, model or any work, so
    `train` refuses what `generate` and `sweep` refuse, in the same words."""
    mc = get_preset(args.model)
    if args.device is not None:
        check_device_string("device", args.device, cli=True)
    check_seed(args.seed, cli=True)
    check_at_least("train_steps", args.train_steps, 0, cli=True, meaning="optimiser steps")
    check_at_least("sp", args.sp, 1, cli=True, meaning="sequence-parallel ranks; 1: none")
    if args.frames is not None:
        check_frames(args.frames, mc, cli=True)
    frames = args.frames or 2 * mc.chunk_frames
    if args.sp > 1 and frames % (args.sp * mc.chunk_frames):
        raise ValueError(f"--frames {frames} with --sp {args.sp}: SP training splits each chunk's frames over the "
                         f"ranks, so frames must be a multiple of sp × chunk = {args.sp * mc.chunk_frames}; give "
                         f"--frames {args.sp * mc.chunk_frames} or a multiple")
    if args.precision is not None and args.precision not in ("fp32", "bf16"):
        get_training_recipe(args.precision)  # an unknown name is a ValueError listing the recipes


def cmd_train(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    check_train_args(args)
    mc = get_preset(args.model)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    frames = args.frames or 2 * mc.chunk_frames
    er_config = parse_error_recycling_config(args.error_recycling_config)
    if args.error_recycling_config and not args.error_recycling:
        raise ValueError("--error-recycling-config sets knobs of error recycling, which is off: add --error-recycling")
    resumes = args.resume and args.out is not None and bool(list_checkpoints(args.out))
    if args.checkpoint and not resumes:  # strict key/shape check on a meta model, before data, model or any work
        log.info("--checkpoint: %s matches the %s model", check_generator_weights(
            dit.build_model(mc, device="meta"), args.checkpoint, ema=args.checkpoint_ema), args.model)
    sp_group, rank = None, 0
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 or args.sp > 1:
        pd = init_parallel(args.sp, device=str(device) if args.device else None)
        device, sp_group, rank = pd.device, pd.sp_group, pd.rank
    cfg = TrainConfig(train_steps=args.train_steps, lr=args.lr, seed=args.seed, precision=precision, resume=args.resume,
                      ckpt_every=args.ckpt_every, log_every=args.log_every, ema_start=args.ema_start,
                      train_layout=args.train_layout if args.sp > 1 else "none", fsdp=args.fsdp,
                      activation_checkpointing=args.activation_checkpointing, progress=not args.no_progress,
                      error_recycling=args.error_recycling, error_recycling_config=er_config,
                      lr_schedule=args.lr_schedule, warmup_steps=args.warmup_steps, text_dropout=args.text_dropout,
                      checkpoint=args.checkpoint, checkpoint_ema=args.checkpoint_ema, batch_size=args.batch_size,
                      grad_accum=args.grad_accum, weight_decay=args.weight_decay, betas=tuple(args.betas),
                      ema_decay=args.ema_decay, keep_checkpoints=args.keep_checkpoints,
                      i2v=args.i2v, tf_window=args.tf_window, validate_every=args.validate_every,
                      validation_prompts=args.validation_prompts,
                      validation_images=args.validation_images, validation_frames=args.validation_frames,
                      validation_ema=args.validation_ema, validation_strict=args.validation_strict,
                      wandb=args.wandb, wandb_project=args.wandb_project)
    # every rank of an SP group must see the same sample: seed the data by the data-parallel rank. Data first: a bad
    # --data fails before the model is built.
    dp = max(1, int(os.environ.get("WORLD_SIZE", "1")) // max(1, args.sp))
    data = build_data(args.data, mc, frames, args.seed, rank=rank // max(1, args.sp), ranks=dp,
                      cache_dir=Path(args.out) / "data_cache", sp_group=sp_group, progress=not args.no_progress,
                      options=FolderOptions(args.max_chunks_per_shot, args.min_latent_frames, args.allow_padding,
                                            args.uniform_prompt))
    model = dit.build_model(mc, device=device, seed=args.seed)  # through the module: tests patch dit.build_model
    summary = ARTrainer(model, cfg, data, args.out, device=device, sp_group=sp_group).run()
    if rank == 0:
        shown = {k: (round(v, 6) if isinstance(v, float) and math.isfinite(v) else v) for k, v in summary.items()}
        print(json.dumps(shown))
    return 0
