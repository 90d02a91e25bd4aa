"""Streaming autoregressive generation: the chunk loop of spec 02, readable in one sitting.

Per chunk: pick the chunk's text (one whose text starts with the scene-cut prefix starts a new shot and shifts
temporal RoPE by shot·8), roll the KV cache, denoise with a fresh scheduler, re-run once at timestep 0 so the cache
holds clean K/V (with clean recache at a cut, only that re-run sees [global sink | this chunk]), pin the chunk if it
opened a shot, hand the latents to the decoder.

The prompt convention is the release's: a shot is (caption, first chunk). Its first chunk is conditioned on
"The scene transitions. <caption>", every later chunk of the shot on the bare caption, as in the release's
multi-shot training data. `chunk_texts` expands prompts + switch chunks into that per-chunk text; per-chunk text can
be given explicitly (`GenerationSpec.chunk_texts`), and then a chunk is a cut exactly when its text has the prefix.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from longlive.infer.scheduler import make_scheduler
from longlive.measure.timers import ChunkStats, Clock
from longlive.model.dit import CausalWanModel
from longlive.model.kv_cache import STORAGES, CacheGeometry
from longlive.quant.kv import allocate_cache
from longlive.text.prompts import SCENE_CUT_PREFIX, bare_caption


@dataclass
class GenerationSpec:
    """What to generate. `frames` counts latent frames and must be a multiple of the chunk size."""

    prompts: list[str]  # one per segment; a prompt with SCENE_CUT_PREFIX opens a shot (see chunk_texts)
    frames: int
    steps: int = 4
    seed: int = 0
    switch_chunks: list[int] | None = None  # chunk index at which each prompt after the first begins
    shift: float = 5.0
    scheduler: str = "unipc"
    batch: int = 1
    multishot_sink: bool = True
    clean_recache_at_cut: bool = False
    kv_quant: str = "none"  # none: K/V in the model's dtype; fp8 / nvfp4: a quantised KV cache
    warmup_chunks: int = 4
    chunk_texts: list[str] | None = None  # explicit text per chunk (then `prompts` and `switch_chunks` are unused)

    def plan(self, num_chunks: int) -> list[ChunkPlan]:
        texts = self.chunk_texts if self.chunk_texts is not None else chunk_texts(self.prompts, num_chunks,
                                                                                  self.switch_chunks)
        return plan_chunks(texts, num_chunks, self.texts)

    @property
    def texts(self) -> list[str]:
        """The distinct texts the chunks are conditioned on, in a fixed order: `generate` takes one embedding each.

        Without explicit chunk texts this does not depend on the length: every prompt as given, then the bare caption
        of each scene-cut prompt (used from the shot's second chunk on).
        """
        if self.chunk_texts is not None:
            return list(dict.fromkeys(self.chunk_texts))
        return conditioning_texts(self.prompts)


@dataclass
class ChunkPlan:
    text: str    # what this chunk is conditioned on
    prompt: int  # index of `text` in GenerationSpec.texts (which embedding)
    shot: int
    cut: bool


@dataclass
class GenerationResult:
    latents: torch.Tensor  # [B, C, F, H, W] float32
    stats: ChunkStats
    plans: list[ChunkPlan]
    windows: list[list[int]] = field(default_factory=list)  # latent frames each chunk's denoising steps attended
    rope_offsets: list[int] = field(default_factory=list)  # temporal RoPE position of each chunk's first latent
    pinned: list[int | None] = field(default_factory=list)  # the shot-sink chunk after each chunk (None: none)
    kv_cache_bytes: int = 0   # everything the cache holds (packed slots + dequantisation scratch)
    kv_packed_bytes: int = 0  # the stored K/V alone (equal to kv_cache_bytes for a dense cache)


def conditioning_texts(prompts: list[str]) -> list[str]:
    """Every prompt as given, then the bare caption of each scene-cut prompt (duplicates once)."""
    return list(dict.fromkeys([*prompts, *(bare_caption(p) for p in prompts if p.startswith(SCENE_CUT_PREFIX))]))


def chunk_texts(prompts: list[str], num_chunks: int, switch_chunks: list[int] | None) -> list[str]:
    """Per-chunk text from prompts and the chunk at which each prompt after the first begins (default: evenly spread).

    A prompt starting with SCENE_CUT_PREFIX is a shot: its first chunk gets the prompt as given, its later chunks the
    bare caption (the release's convention). Any other prompt conditions all of its chunks.
    """
    if not prompts:
        raise ValueError("at least one prompt is needed")
    if any(not p.strip() or not bare_caption(p).strip() for p in prompts):
        raise ValueError("prompts must not be empty (a scene-cut prompt needs a caption after the prefix)")
    if num_chunks < len(prompts):
        raise ValueError(f"{len(prompts)} prompts need at least {len(prompts)} chunks (one each); the video has "
                         f"{num_chunks}: give more frames or fewer prompts")
    if switch_chunks is None:  # spread prompts evenly over the video
        switch_chunks = [round(i * num_chunks / len(prompts)) for i in range(1, len(prompts))]
    if len(switch_chunks) != len(prompts) - 1:
        raise ValueError(f"{len(prompts)} prompts need {len(prompts) - 1} switch chunks, got {len(switch_chunks)}")
    starts = [0, *switch_chunks]
    if any(b <= a for a, b in zip(starts, starts[1:], strict=False)) or starts[-1] >= num_chunks:
        raise ValueError(f"switch chunks {switch_chunks} must increase strictly and lie in 1..{num_chunks - 1}")
    texts = []
    for p, (start, end) in enumerate(zip(starts, [*starts[1:], num_chunks], strict=True)):
        texts += [prompts[p]] + [bare_caption(prompts[p])] * (end - start - 1)
    return texts


def plan_chunks(texts: list[str], num_chunks: int, known: list[str] | None = None) -> list[ChunkPlan]:
    """Shots from per-chunk texts: a chunk after the first whose text starts with SCENE_CUT_PREFIX is a cut.

    known: the texts in embedding order (`GenerationSpec.texts`); default: the chunk texts in order of first use.
    """
    if len(texts) != num_chunks:
        raise ValueError(f"{len(texts)} chunk texts for {num_chunks} chunks")
    if any(not t.strip() for t in texts):
        raise ValueError("chunk texts must not be empty")
    index = {t: i for i, t in enumerate(dict.fromkeys(known if known is not None else texts))}
    if missing := [t for t in dict.fromkeys(texts) if t not in index]:
        raise ValueError(f"chunk texts {missing} are not among the embedded texts {list(index)}")
    plans, shot = [], 0
    for c, text in enumerate(texts):
        cut = c > 0 and text.startswith(SCENE_CUT_PREFIX)
        shot += cut
        plans.append(ChunkPlan(text=text, prompt=index[text], shot=shot, cut=cut))
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

    prompt_embeds: one [B or 1, text_len, text_dim] tensor per text of `spec.texts` (for single-prompt and
    prompt-switch videos, one per prompt; a scene-cut prompt adds its bare caption at the end).
    image_latent [B, C, 1, H, W] conditions latent 0 (I2V). on_chunk(c, latents) receives each finished chunk (e.g.
    a decoder); on_progress(c, n, ms) reports the previous chunk's device time without stalling the queue.
    sp: a `longlive.parallel.sp_infer.SPContext`; this rank then denoises its frames of each chunk with a
    head-sharded cache and every rank receives the full chunk.
    """
    cfg = model.cfg
    device = next(model.parameters()).device
    cf = cfg.chunk_frames
    if spec.frames <= 0 or spec.frames % cf:
        raise ValueError(f"frames={spec.frames} must be a positive multiple of the chunk size {cf} latent frames")
    texts = spec.texts
    if len(prompt_embeds) != len(texts):
        raise ValueError(f"{len(texts)} conditioning texts {texts} but {len(prompt_embeds)} embeddings")
    n_chunks = spec.frames // cf
    plans = spec.plan(n_chunks)
    h, w = cfg.latent_hw
    B = spec.batch
    geo = CacheGeometry(cf, cfg.window_frames, cfg.sink_frames, cfg.tokens_per_frame, spec.multishot_sink)
    dtype_name = {v: k for k, v in STORAGES.items()}[next(model.parameters()).dtype]
    heads = cfg.num_heads // (sp.size if sp is not None else 1)
    lo, hi = sp.frame_range(cf) if sp is not None else (0, cf)  # this rank's frames of every chunk
    storage = dtype_name if spec.kv_quant == "none" else spec.kv_quant
    cache = allocate_cache(geo, cfg.num_layers, B, heads, cfg.head_dim, storage=storage,
                           device=device, compute_dtype=next(model.parameters()).dtype)
    text_kvs = [model.text_kv(e.to(device)) for e in prompt_embeds]

    # Noise for the whole video, drawn once on the CPU from the seed: identical on every device.
    gen = torch.Generator("cpu").manual_seed(spec.seed)
    noise = torch.randn((B, spec.frames, cfg.in_channels, h, w), generator=gen).permute(0, 2, 1, 3, 4)
    noise = noise.to(device)
    if image_latent is not None:
        image_latent = image_latent.to(device=device, dtype=torch.float32)

    latents = torch.empty((B, cfg.in_channels, spec.frames, h, w), device=device)
    clock, windows, frames_per_chunk, rope_offsets, pinned = Clock(device), [], [], [], []
    for c, plan in enumerate(plans):
        clock.mark()  # marks 2c / 2c+1 bracket chunk c's device work only (decoding happens outside)
        cache.begin_chunk(c)
        windows.append(cache.window_frames())
        offset = c * cf + plan.shot * cfg.shot_rope_offset + lo
        rope_offsets.append(offset - lo)
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
        if plan.cut and spec.clean_recache_at_cut:  # the release's `shot_clean_recache`: only the re-run sees
            cache.clear_to_sink()                  # [global sink | this chunk]
        cache.committing = True  # the clean re-run's K/V are the ones the cache keeps
        model(x, t.zero_(), **call)
        cache.committing = False
        if plan.cut and spec.multishot_sink:
            cache.pin_current()
        pinned.append(cache.pinned_chunk)
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
    return GenerationResult(latents=latents, stats=stats, plans=plans, windows=windows, rope_offsets=rope_offsets,
                            pinned=pinned,
                            kv_cache_bytes=cache.storage.nbytes(),
                            kv_packed_bytes=getattr(cache.storage, "packed_nbytes", cache.storage.nbytes)())
