"""Streaming autoregressive generation: the chunk loop of spec 02, readable in one sitting.

Per chunk: pick the prompt (a scene-cut prefix starts a new shot and shifts temporal RoPE by
shot·8), roll the KV cache, denoise with a fresh scheduler, re-run once at timestep 0 so the cache holds
clean K/V, pin the chunk if it opened a shot, hand the latents to the decoder.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from longlive.bench.timers import ChunkStats, Clock
from longlive.infer.scheduler import make_scheduler
from longlive.model.dit import CausalWanModel
from longlive.model.kv_cache import STORAGES, CacheGeometry, KVCache

SCENE_CUT_PREFIX = "The scene transitions. "


@dataclass
class GenerationSpec:
    """What to generate. `frames` counts latent frames and must be a multiple of the chunk size."""

    prompts: list[str]
    frames: int
    steps: int = 4
    seed: int = 0
    switch_chunks: list[int] | None = None  # chunk index at which each prompt after the first begins
    shift: float = 5.0
    scheduler: str = "unipc"
    batch: int = 1
    multishot_sink: bool = True
    clean_recache_at_cut: bool = False
    kv_storage: str | None = None  # None: the model's dtype; or fp8 / nvfp4 (quantised KV cache)
    warmup_chunks: int = 4


@dataclass
class ChunkPlan:
    prompt: int
    shot: int
    cut: bool


@dataclass
class GenerationResult:
    latents: torch.Tensor  # [B, C, F, H, W] float32
    stats: ChunkStats
    plans: list[ChunkPlan]
    windows: list[list[int]] = field(default_factory=list)  # latent frames each chunk attended
    kv_cache_bytes: int = 0   # everything the cache holds (packed slots + dequantisation scratch)
    kv_packed_bytes: int = 0  # the stored K/V alone (equal to kv_cache_bytes for a dense cache)


def plan_chunks(prompts: list[str], num_chunks: int, switch_chunks: list[int] | None) -> list[ChunkPlan]:
    """Which prompt each chunk uses and where shots begin (prompts starting with the scene-cut prefix)."""
    if not prompts:
        raise ValueError("at least one prompt is needed")
    if switch_chunks is None:  # spread prompts evenly over the video
        switch_chunks = [round(i * num_chunks / len(prompts)) for i in range(1, len(prompts))]
    if len(switch_chunks) != len(prompts) - 1:
        raise ValueError(f"{len(prompts)} prompts need {len(prompts) - 1} switch chunks, got {len(switch_chunks)}")
    starts = [0, *switch_chunks]
    if any(b <= a for a, b in zip(starts, starts[1:], strict=False)) or starts[-1] >= num_chunks:
        raise ValueError(f"switch chunks {switch_chunks} must increase strictly and lie in 1..{num_chunks - 1}")
    plans, shot = [], 0
    for c in range(num_chunks):
        p = max(i for i, s in enumerate(starts) if s <= c)
        cut = c == starts[p] and c > 0 and prompts[p].startswith(SCENE_CUT_PREFIX)
        shot += cut
        plans.append(ChunkPlan(prompt=p, shot=shot, cut=cut))
    return plans


def video_frames(latent_frames: int, t_stride: int = 4) -> int:
    """T latents decode to 1 + 4(T−1) frames."""
    return 1 + t_stride * (latent_frames - 1)


@torch.no_grad()
def generate(
    model: CausalWanModel,
    spec: GenerationSpec,
    prompt_embeds: list[torch.Tensor],
    *,
    image_latent: torch.Tensor | None = None,
    on_chunk: Callable[[int, torch.Tensor], None] | None = None,
    on_progress: Callable[[int, int, float], None] | None = None,
    sp=None,
    sync_each_step: bool = False,
) -> GenerationResult:
    """Generate spec.frames latent frames chunk by chunk.

    prompt_embeds: one [B or 1, text_len, text_dim] tensor per prompt. image_latent [B, C, 1, H, W]
    conditions latent 0 (I2V). on_chunk(c, latents) receives each finished chunk (e.g. a decoder);
    on_progress(c, n, ms) reports the previous chunk's device time without stalling the queue.
    sp: a `longlive.parallel.sp_infer.SPContext`; this rank then denoises its frames of each chunk with a
    head-sharded cache and every rank receives the full chunk.
    """
    cfg = model.cfg
    device = next(model.parameters()).device
    cf = cfg.chunk_frames
    if spec.frames <= 0 or spec.frames % cf:
        raise ValueError(f"frames={spec.frames} must be a positive multiple of the chunk size {cf} latent frames")
    if len(prompt_embeds) != len(spec.prompts):
        raise ValueError(f"{len(spec.prompts)} prompts but {len(prompt_embeds)} embeddings")
    n_chunks = spec.frames // cf
    plans = plan_chunks(spec.prompts, n_chunks, spec.switch_chunks)
    h, w = cfg.latent_hw
    B = spec.batch
    geo = CacheGeometry(cf, cfg.window_frames, cfg.sink_frames, cfg.tokens_per_frame, spec.multishot_sink)
    dtype_name = {v: k for k, v in STORAGES.items()}[next(model.parameters()).dtype]
    heads = cfg.num_heads // (sp.size if sp is not None else 1)
    lo, hi = sp.frame_range(cf) if sp is not None else (0, cf)  # this rank's frames of every chunk
    cache = KVCache.allocate(geo, cfg.num_layers, B, heads, cfg.head_dim,
                             storage=spec.kv_storage or dtype_name, device=device,
                             compute_dtype=next(model.parameters()).dtype)
    text_kvs = [model.text_kv(e.to(device)) for e in prompt_embeds]

    # Noise for the whole video, drawn once on the CPU from the seed: identical on every device.
    gen = torch.Generator("cpu").manual_seed(spec.seed)
    noise = torch.randn((B, spec.frames, cfg.in_channels, h, w), generator=gen).permute(0, 2, 1, 3, 4)
    noise = noise.to(device)
    if image_latent is not None:
        image_latent = image_latent.to(device=device, dtype=torch.float32)

    latents = torch.empty((B, cfg.in_channels, spec.frames, h, w), device=device)
    clock, windows, frames_per_chunk = Clock(device), [], []
    for c, plan in enumerate(plans):
        clock.mark()  # marks 2c / 2c+1 bracket chunk c's device work only (decoding happens outside)
        cache.begin_chunk(c, clear_to_sink=plan.cut and spec.clean_recache_at_cut)
        windows.append(cache.window_frames())
        offset = c * cf + plan.shot * cfg.shot_rope_offset + lo
        kv = text_kvs[plan.prompt]
        x = noise[:, :, c * cf + lo : c * cf + hi].clone()
        sched = make_scheduler(spec.scheduler, spec.steps, spec.shift)
        t = torch.empty((B, hi - lo), device=device)
        cond = image_latent is not None and c == 0 and lo == 0  # latent 0 lives on the first SP rank
        call = {"text_kv": kv, "frame_offset": offset}
        if sp is None:
            call["cache"] = cache
        else:
            call["attn_fn"] = sp.attn_fn(cache, model.attn_backend)
        for step_t in sched.timesteps:
            t.fill_(step_t)
            if cond:
                x[:, :, :1] = image_latent
                t[:, 0] = 0
            x, _ = sched.step(model(x, t, **call), x)
            if sync_each_step and x.is_cuda:  # let a decode thread launch (see wan_vae.StreamingDecoder)
                torch.cuda.current_stream(x.device).synchronize()
        if cond:
            x[:, :, :1] = image_latent
        cache.committing = True  # the clean re-run's K/V are the ones the cache keeps
        model(x, t.zero_(), **call)
        cache.committing = False
        if plan.cut and spec.multishot_sink:
            cache.pin_current()
        if sp is not None:
            x = sp.gather_frames(x)
        latents[:, :, c * cf : (c + 1) * cf] = x
        clock.mark()
        frames_per_chunk.append(video_frames(cf) if c == 0 else 4 * cf)
        if on_chunk is not None:
            on_chunk(c, x)
        if on_progress is not None and c > 0:
            on_progress(c - 1, n_chunks, clock.interval_ms(2 * c - 2))
    chunk_ms = clock.intervals_ms()[::2]
    if on_progress is not None:
        on_progress(n_chunks - 1, n_chunks, chunk_ms[-1])
    stats = ChunkStats(chunk_ms=chunk_ms, chunk_frames=frames_per_chunk, warmup_chunks=spec.warmup_chunks)
    return GenerationResult(latents=latents, stats=stats, plans=plans, windows=windows,
                            kv_cache_bytes=cache.storage.nbytes(),
                            kv_packed_bytes=getattr(cache.storage, "packed_nbytes", cache.storage.nbytes)())
