"""Stage 2: DMD few-step distillation with LoRA (spec 04, "Stage 2"), single process.

Three block-causal scores: the frozen teacher (real score, CFG 3.0 against a negative prompt), a LoRA critic (fake
score, no CFG) and the LoRA generator (student). They are three copies of the base model — the teacher is the base
itself, generator and critic are deep copies with their own PEFT adapter. That is the simplest arrangement that
keeps every forward independent (no adapter switching inside autograd); a shared base with PEFT multi-adapters
would save two copies of the base weights at the full size.

The generator is trained on its own rollouts (self forcing): block by block through a KV cache covering the whole
rollout, each block denoised on the 4-step UniPC schedule; one random exit step (shared by the blocks) runs with
gradients, earlier steps without, later ones are skipped; the block's output is x̂0 at the exit step and the cache
is refreshed with it at t = 0 (without gradients, so a block's gradient flows only through its own exit step).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from longlive.infer.scheduler import FlowUniPC
from longlive.model.attention import block_causal_mask_fn, resolve_backend, sdpa
from longlive.quant.linear import LinearQuantConfig
from longlive.quant.recipes import quantize_model
from longlive.train.lora import add_lora, lora_state_dict, save_lora
from longlive.train.teacher_forcing import MaskedAttention
from longlive.train.trainer import apply_activation_checkpointing

NUM_TRAIN_TIMESTEPS = 1000


@dataclass
class DMDConfig:
    """Stage-2 hyper-parameters; defaults are the spec's (rollout length in blocks of the preset's chunk)."""

    num_blocks: int = 4  # blocks per rollout (spec: 4 blocks of 8 latents = 32)
    steps: int = 4  # UniPC steps per block
    shift: float = 5.0  # both the UniPC grid and the DMD timestep shift
    guidance_scale: float = 3.0  # r = r_c + s·(r_c − r_u)
    min_t: float = 20.0
    max_t: float = 980.0
    gen_every: int = 5  # generator updates on steps 0, 5, 10, … ; the critic on every step
    lr_generator: float = 1e-5  # the release's configs/train_dmd.yaml: training.lr (the generator's LoRA)
    lr_critic: float = 2e-6     # ... and training.lr_critic
    betas: tuple[float, float] = (0.0, 0.999)  # the release's beta1/beta2 for both optimisers
    weight_decay: float = 0.0
    max_grad_norm: float | None = 10.0
    lora_rank: int = 128
    alpha: float = 128.0
    save_every: int = 0  # 0: save only when save() is called
    seed: int = 0
    # Frozen base weights of each network: "none" (as given), or packed "nvfp4" / "fp8" weight-only (activations stay
    # in the compute dtype so gradients flow through them) — the Table 2 memory ladder.
    quant_generator: str = "none"
    quant_teacher: str = "none"
    quant_critic: str = "none"
    activation_checkpointing: bool = False  # recompute each block in backward (generator and critic)
    attn: str = "auto"  # rollout attention backend (auto: cuDNN/flash on CUDA, math on CPU)

    def __post_init__(self) -> None:
        for name in ("quant_generator", "quant_teacher", "quant_critic"):
            if getattr(self, name) not in QUANT_FROZEN:
                raise ValueError(f"{name}={getattr(self, name)!r}; choose one of {', '.join(QUANT_FROZEN)}")
    extra: dict = field(default_factory=dict)


# -- timesteps and noise -----------------------------------------------------------------------------------------


def sample_dmd_t(batch: int, cfg: DMDConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """t [B] float32: uniform integer in [0, 1000), shift-warped like the sigma grid, clamped to [min_t, max_t]."""
    u = torch.randint(0, NUM_TRAIN_TIMESTEPS, (batch,), generator=generator).double() / NUM_TRAIN_TIMESTEPS
    if cfg.shift != 1.0:
        u = cfg.shift * u / (1 + (cfg.shift - 1) * u)
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


def rollout(
    generator: nn.Module, text_kv: list, noise: torch.Tensor, *, num_blocks: int, steps: int = 4, shift: float = 5.0,
    exit_step: int, grad: bool, trace: list | None = None, shots: ShotPlan | None = None,
) -> torch.Tensor:
    """Generate num_blocks blocks from noise [B, C, F, H, W] → x̂0 [B, C, F, H, W] float32.

    Steps before `exit_step` run without gradients, the exit step with gradients when `grad`, later steps are
    skipped. `trace` (optional) receives (block, step, grad_enabled, timestep) per forward, step −1 being the
    t = 0 cache refresh — for tests and debugging. With `shots`, text_kv stacks the prompts (batch 1) and block b
    uses prompt shots.block_prompt[b] at its shot's RoPE offset.
    """
    cfg = generator.cfg
    cf = cfg.chunk_frames
    B = noise.shape[0]
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
        sched = FlowUniPC(steps, shift)
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


# -- the trainer --------------------------------------------------------------------------------------------------


QUANT_FROZEN = ("none", "nvfp4", "fp8")


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


class DMDTrainer:
    """Alternating critic / generator updates with separate AdamW optimisers over the two LoRA adapters.

    prompt_iter yields text embeddings [B, Lt, text_dim] (prompts are encoded outside; DMD reads no video).
    negative_embed is the CFG negative prompt's embedding (default: all-zero, the padded empty prompt).
    """

    def __init__(self, base_model: nn.Module, cfg: DMDConfig, prompt_iter: Iterator[torch.Tensor],
                 out_dir: str | Path, *, negative_embed: torch.Tensor | None = None):
        self.cfg = cfg
        self.prompts = prompt_iter
        self.out_dir = Path(out_dir)
        self.device = next(base_model.parameters()).device
        mcfg = base_model.cfg
        self.chunk = mcfg.chunk_frames
        with torch.random.fork_rng(devices=[]):  # PEFT draws lora_A from the global RNG
            torch.manual_seed(cfg.seed)
            self.generator = add_lora(_frozen_copy(base_model, cfg.quant_generator), cfg.lora_rank, cfg.alpha)
            self.critic = add_lora(_frozen_copy(base_model, cfg.quant_critic), cfg.lora_rank, cfg.alpha)
        self.teacher = _quantise_frozen(base_model, cfg.quant_teacher).requires_grad_(False).eval()
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
        self.gen_opt = torch.optim.AdamW(self.gen_params, lr=cfg.lr_generator, betas=cfg.betas,
                                         weight_decay=cfg.weight_decay)
        self.critic_opt = torch.optim.AdamW(self.critic_params, lr=cfg.lr_critic, betas=cfg.betas,
                                            weight_decay=cfg.weight_decay)
        self.rng = torch.Generator("cpu").manual_seed(cfg.seed)
        self.global_step = 0

    # -- pieces --------------------------------------------------------------------------------------------------
    def _noise(self, batch: int) -> torch.Tensor:
        mcfg = self.teacher.cfg
        h, w = mcfg.latent_hw
        shape = (batch, mcfg.in_channels, self.cfg.num_blocks * self.chunk, h, w)
        return torch.randn(shape, generator=self.rng).to(self.device)

    def _exit_step(self) -> int:
        return int(torch.randint(0, self.cfg.steps, (1,), generator=self.rng))

    def _rollout(self, text_kv: list, batch: int, grad: bool, shots: ShotPlan | None = None
                 ) -> tuple[torch.Tensor, int]:
        exit_step = self._exit_step()
        x = rollout(self.generator, text_kv, self._noise(batch), num_blocks=self.cfg.num_blocks,
                    steps=self.cfg.steps, shift=self.cfg.shift, exit_step=exit_step, grad=grad, shots=shots)
        return x, exit_step

    def generator_loss(self, cond: torch.Tensor, shots: ShotPlan | None = None) -> tuple[torch.Tensor, dict]:
        """DMD loss on an on-policy rollout whose exit step carries the gradient."""
        B = 1 if shots is not None else cond.shape[0]
        x, exit_step = self._rollout(self.generator.text_kv(cond), B, grad=True, shots=shots)
        t = sample_dmd_t(B, self.cfg, self.rng).to(self.device)
        with torch.no_grad():
            x_t = noise_like(x.detach(), t, torch.randn(x.shape, generator=self.rng).to(self.device))
            fake = predict_x0(self.critic, x_t, t, self.critic.text_kv(cond), shots)
            r_c = predict_x0(self.teacher, x_t, t, self.teacher.text_kv(cond), shots)
            r_u = predict_x0(self.teacher, x_t, t, self.teacher.text_kv(self.negative), shots)
            real = r_c + self.cfg.guidance_scale * (r_c - r_u)
            g = dmd_gradient(x, fake, real, self.chunk)
        loss = dmd_loss(x, g)
        return loss, {"exit_step": exit_step, "dmd_t": t.tolist(), "grad_norm_g": float(g.abs().mean())}

    def critic_loss(self, cond: torch.Tensor, shots: ShotPlan | None = None) -> torch.Tensor:
        """Flow-matching MSE of the critic on a separate, detached rollout: v̂ vs ε − x."""
        B = 1 if shots is not None else cond.shape[0]
        with torch.no_grad():
            x, _ = self._rollout(self.generator.text_kv(cond), B, grad=False, shots=shots)
        t = sample_dmd_t(B, self.cfg, self.rng).to(self.device)
        eps = torch.randn(x.shape, generator=self.rng).to(self.device)
        x_t = noise_like(x, t, eps)
        Fr = x.shape[2]
        tt = t.view(B, 1).expand(B, Fr).contiguous()
        v = self.critic(x_t, tt, attn_fn=block_causal_attn(self.critic, Fr),
                        **scoring_kwargs(self.critic, self.critic.text_kv(cond), shots))
        return F.mse_loss(v.float(), (eps - x).float())

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
        for a multi-shot rollout: each change of prompt between blocks is a scene cut."""
        item = next(self.prompts)
        if not isinstance(item, dict):
            return _as_batch(item).to(self.device), None
        embeds, plan = _as_batch(item["prompts_embeds"]).to(self.device), tuple(int(p) for p in item["block_prompt"])
        if len(plan) != self.cfg.num_blocks or min(plan) < 0 or max(plan) >= embeds.shape[0]:
            raise ValueError(f"block_prompt {list(plan)} must give one of the {embeds.shape[0]} prompts for each of "
                             f"the {self.cfg.num_blocks} blocks")
        return embeds, ShotPlan(plan)

    # -- the loop ------------------------------------------------------------------------------------------------
    def step(self) -> dict:
        """One iteration: a generator update when step % gen_every == 0, then a critic update (every step)."""
        cond, shots = self._next_prompts()
        out: dict = {"step": self.global_step, "generator_loss": None, "generator_updated": False}
        if self.global_step % self.cfg.gen_every == 0:
            loss, info = self.generator_loss(cond, shots)
            out["generator_grad_norm"] = self._update(loss, self.gen_params, self.gen_opt)
            out.update(generator_loss=float(loss.detach()), generator_updated=True, **info)
        closs = self.critic_loss(cond, shots)
        out["critic_grad_norm"] = self._update(closs, self.critic_params, self.critic_opt)
        out["critic_loss"] = float(closs.detach())
        for k in ("generator_loss", "critic_loss"):
            if out[k] is not None and not math.isfinite(out[k]):
                raise FloatingPointError(f"{k} is {out[k]} at step {self.global_step}")
        self.global_step += 1
        if self.cfg.save_every and self.global_step % self.cfg.save_every == 0:
            self.save()
        return out

    def save(self, path: str | Path | None = None) -> Path:
        """LoRA weights of both adapters as `{generator_lora, critic_lora, step}` (atomic)."""
        path = Path(path) if path is not None else self.out_dir / "lora.pt"
        return save_lora(path, lora_state_dict(self.generator), lora_state_dict(self.critic), self.global_step,
                         lora_rank=self.cfg.lora_rank, alpha=self.cfg.alpha)
