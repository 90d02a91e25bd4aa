"""Streaming autoregressive generation: the chunk loop of spec 02, readable in one sitting.

Per chunk: pick the chunk's text (one whose text starts with the scene-cut prefix starts a new shot and shifts
temporal RoPE by shot · shot_rope_offset), roll the KV cache, denoise with a fresh scheduler, re-run once at timestep 0
so the cache holds clean K/V (with clean recache at a cut, only that re-run sees [global sink | this chunk]), pin the
chunk if it opened a shot, hand the latents to the decoder.

Classifier-free guidance (`guidance_scale` ≠ 1, the release's `inference.guidance_scale`): every forward runs twice,
once on the chunk's text against the conditional KV cache and once on the negative prompt against a second cache of
its own (the release's `kv_cache_neg`), combined as v = v_u + g·(v_c − v_u); both branches share the latents, the
clean re-run, the clean recache and the pin. At guidance 1 no second cache exists and the loop is the plain one.

The prompt convention is the release's: a shot is (caption, first chunk). Its first chunk is conditioned on
"The scene transitions. <caption>", every later chunk of the shot on the bare caption, as in the release's
multi-shot training data. `chunk_texts` expands prompts + switch chunks into that per-chunk text; per-chunk text can
be given explicitly (`GenerationSpec.chunk_texts`), and then a chunk is a cut exactly when its text has the prefix.

Interactivity: a chunk where a new prompt takes over (`prompt_switches`) is stamped when the loop starts it, after the
generator's device has finished the chunk before (`GenerationResult.switch_submitted`); the decoder stamps when that
chunk's frames reach host memory, and the difference is the switch latency (`longlive.infer.decode.switch_latencies`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from longlive.experiments.rules import check_prompts
from longlive.infer.scheduler import make_scheduler
from longlive.measure.timers import ChunkStats, Clock
from longlive.model.attention import reads_fp8
from longlive.model.dit import CausalWanModel
from longlive.model.kv_cache import STORAGES, CacheGeometry, KVCache
from longlive.quant.kv import DEFAULT_KV_RULE, allocate_cache
from longlive.text.prompts import DEFAULT_NEGATIVE_PROMPT, SCENE_CUT_PREFIX, bare_caption, check_scene_cut_prefix


@dataclass
class GenerationSpec:
    """What to generate. `frames` counts latent frames and must be a multiple of the chunk size."""

    prompts: list[str]  # one per segment; a prompt with the scene-cut prefix opens a shot (see chunk_texts)
    frames: int
    steps: int = 4
    seed: int = 0
    switch_chunks: list[int] | None = None  # chunk index at which each prompt after the first begins
    timestep_shift: float = 5.0  # σ' = s·σ / (1 + (s−1)·σ) of the sigma grid (the release's timestep_shift)
    scheduler: str = "unipc"
    batch: int = 1
    multishot_sink: bool = True
    clean_recache_at_cut: bool = False
    kv_quant: str = "none"  # none: K/V in the model's dtype; fp8 / nvfp4: a quantised KV cache
    kv_rule: str = DEFAULT_KV_RULE  # the NVFP4 KV cache's scale rule (the release's kv_quant_scale_rule)
    warmup_chunks: int = 4
    chunk_texts: list[str] | None = None  # explicit text per chunk (then `prompts` and `switch_chunks` are unused)
    guidance_scale: float = 1.0  # classifier-free guidance (module docstring); 1: off, one forward per step
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT  # the unconditional branch's text (read only when guided)
    scene_cut_prefix: str = SCENE_CUT_PREFIX  # a chunk text starting with it opens a shot
    relative_rope: bool = False  # the release's use_relative_rope: positions within the window (spec 02), no sp

    @property
    def guided(self) -> bool:
        """Whether classifier-free guidance runs (two forwards per step, a second KV cache)."""
        return self.guidance_scale != 1.0

    def plan(self, num_chunks: int) -> list[ChunkPlan]:
        texts = self.chunk_texts if self.chunk_texts is not None else chunk_texts(
            self.prompts, num_chunks, self.switch_chunks, self.scene_cut_prefix)
        return plan_chunks(texts, num_chunks, self.texts, self.scene_cut_prefix)

    @property
    def texts(self) -> list[str]:
        """The distinct texts the chunks are conditioned on, in a fixed order: `generate` takes one embedding each.

        Without explicit chunk texts this does not depend on the length: every prompt as given, then the bare caption
        of each scene-cut prompt (used from the shot's second chunk on). With guidance, the negative prompt comes last
        (unless it is one of them), so the embeddings of the other texts do not move.
        """
        if self.chunk_texts is not None:
            texts = list(dict.fromkeys(self.chunk_texts))
        else:
            texts = conditioning_texts(self.prompts, self.scene_cut_prefix)
        if self.guided and self.negative_prompt not in texts:
            texts.append(self.negative_prompt)
        return texts


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
    kv_cache_bytes: int = 0   # everything the caches hold (packed slots + dequantisation scratch; both CFG branches)
    kv_packed_bytes: int = 0  # the stored K/V alone (equal to kv_cache_bytes for a dense cache)
    # chunk → time.perf_counter() when the loop started it with a new prompt (`prompt_switches`), device caught up
    switch_submitted: dict[int, float] = field(default_factory=dict)


def conditioning_texts(prompts: list[str], prefix: str = SCENE_CUT_PREFIX) -> list[str]:
    """Every prompt as given, then the bare caption of each scene-cut prompt (duplicates once)."""
    return list(dict.fromkeys([*prompts, *(bare_caption(p, prefix) for p in prompts if p.startswith(prefix))]))


def chunk_texts(prompts: list[str], num_chunks: int, switch_chunks: list[int] | None,
                prefix: str = SCENE_CUT_PREFIX) -> list[str]:
    """Per-chunk text from prompts and the chunk at which each prompt after the first begins (default: evenly spread).

    A prompt starting with the scene-cut prefix is a shot: its first chunk gets the prompt as given, its later chunks
    the bare caption (the release's convention). Any other prompt conditions all of its chunks.
    """
    starts = check_prompts(prompts, switch_chunks, num_chunks, prefix)
    texts = []
    for p, (start, end) in enumerate(zip(starts, [*starts[1:], num_chunks], strict=True)):
        texts += [prompts[p]] + [bare_caption(prompts[p], prefix)] * (end - start - 1)
    return texts


def prompt_switches(texts: list[str], prefix: str = SCENE_CUT_PREFIX) -> list[int]:
    """The chunks where a new prompt takes over (what `switch_latency_s` times): every chunk after the first that opens
    a shot or whose caption differs from the chunk before. A shot's later chunks dropping the scene-cut prefix of its
    first chunk are no switch: nobody submitted a new prompt there."""
    return [c for c in range(1, len(texts))
            if texts[c].startswith(prefix) or bare_caption(texts[c], prefix) != bare_caption(texts[c - 1], prefix)]


def plan_chunks(texts: list[str], num_chunks: int, known: list[str] | None = None,
                prefix: str = SCENE_CUT_PREFIX) -> list[ChunkPlan]:
    """Shots from per-chunk texts: a chunk after the first whose text starts with the scene-cut prefix is a cut.

    known: the texts in embedding order (`GenerationSpec.texts`); default: the chunk texts in order of first use.
    """
    check_scene_cut_prefix(prefix)
    if len(texts) != num_chunks:
        raise ValueError(f"{len(texts)} chunk texts for {num_chunks} chunks")
    if any(not t.strip() for t in texts):
        raise ValueError("chunk texts must not be empty")
    index = {t: i for i, t in enumerate(dict.fromkeys(known if known is not None else texts))}
    if missing := [t for t in dict.fromkeys(texts) if t not in index]:
        raise ValueError(f"chunk texts {missing} are not among the embedded texts {list(index)}")
    plans, shot = [], 0
    for c, text in enumerate(texts):
        cut = c > 0 and text.startswith(prefix)
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
    attn_probe: Callable[[KVCache, str], Callable] | None = None,
) -> GenerationResult:
    """Generate spec.frames latent frames chunk by chunk.

    prompt_embeds: one [B or 1, text_len, text_dim] tensor per text of `spec.texts` (for single-prompt and
    prompt-switch videos, one per prompt; a scene-cut prompt adds its bare caption, guidance the negative prompt).
    The window, sink and shot RoPE offset are the model's config (`longlive.infer.video.request_config` applies a
    request's overrides); with sink 0 a cut neither pins nor clean-recaches, as in the release (`_is_scene_cut`).
    image_latent [B, C, 1, H, W] conditions latent 0 (I2V). on_chunk(c, latents) receives each finished chunk (e.g.
    a decoder); on_progress(c, n, ms) reports the previous chunk's device time without stalling the queue.
    sp: a `longlive.parallel.sp_infer.SPContext`; this rank then denoises its frames of each chunk with a
    head-sharded cache and every rank receives the full chunk.
    attn_probe(cache, backend) -> attn_fn(q, k, v, layer): builds each forward's self-attention over the cache, in
    place of the model's own (e.g. `longlive.workloads.attn_error` running other kernels on the same window); it
    must return what the model would (see `dit.cached_attention`). Not with sp or relative_rope.
    """
    cfg = model.cfg
    device = next(model.parameters()).device
    cf = cfg.chunk_frames
    if spec.relative_rope and sp is not None:
        raise ValueError("relative_rope is not implemented under sequence parallelism (sp > 1)")
    if attn_probe is not None and (sp is not None or spec.relative_rope):
        raise ValueError("attn_probe replaces attention over the cache: not with sp > 1 or relative_rope")
    if spec.frames <= 0 or spec.frames % cf:
        raise ValueError(f"frames={spec.frames} must be a positive multiple of the chunk size {cf} latent frames")
    texts = spec.texts
    if len(prompt_embeds) != len(texts):
        raise ValueError(f"{len(texts)} conditioning texts {texts} but {len(prompt_embeds)} embeddings")
    n_chunks = spec.frames // cf
    plans = spec.plan(n_chunks)
    h, w = cfg.latent_hw
    B = spec.batch
    multishot = spec.multishot_sink and cfg.sink_frames > 0  # the release pins min(sink, chunk) frames: none at 0
    geo = CacheGeometry(cf, cfg.window_frames, cfg.sink_frames, cfg.tokens_per_frame, multishot)
    dtype_name = {v: k for k, v in STORAGES.items()}[next(model.parameters()).dtype]
    heads = cfg.num_heads // (sp.size if sp is not None else 1)
    lo, hi = sp.frame_range(cf) if sp is not None else (0, cf)  # this rank's frames of every chunk
    storage = dtype_name if spec.kv_quant == "none" else spec.kv_quant
    # [conditional] or, with guidance, [conditional, unconditional]: each branch attends its own history
    caches = [allocate_cache(geo, cfg.num_layers, B, heads, cfg.head_dim, storage=storage, device=device,
                             compute_dtype=next(model.parameters()).dtype, rule=spec.kv_rule,
                             fp8_window=reads_fp8(model.attn_backend))  # an FP8 backend reads FP8 K/V as stored
              for _ in range(1 + spec.guided)]
    text_kvs = [model.text_kv(e.to(device)) for e in prompt_embeds]
    negative_kv = text_kvs[texts.index(spec.negative_prompt)] if spec.guided else None

    # Noise for the whole video, drawn once on the CPU from the seed: identical on every device.
    gen = torch.Generator("cpu").manual_seed(spec.seed)
    noise = torch.randn((B, spec.frames, cfg.in_channels, h, w), generator=gen).permute(0, 2, 1, 3, 4)
    noise = noise.to(device)
    if image_latent is not None:
        image_latent = image_latent.to(device=device, dtype=torch.float32)

    latents = torch.empty((B, cfg.in_channels, spec.frames, h, w), device=device)
    clock, windows, frames_per_chunk, rope_offsets, pinned = Clock(device), [], [], [], []
    switches, switch_submitted = set(prompt_switches([p.text for p in plans], spec.scene_cut_prefix)), {}
    for c, plan in enumerate(plans):
        if c in switches:  # the new prompt is submitted at this chunk boundary: once the device has finished the last
            if device.type == "cuda":  # chunk (the host may run a chunk ahead); the generator's stream only, not a
                torch.cuda.current_stream(device).synchronize()  # decode worker's
            switch_submitted[c] = time.perf_counter()
        clock.mark()  # marks 2c / 2c+1 bracket chunk c's device work only (decoding happens outside)
        for cache in caches:
            cache.begin_chunk(c)
        windows.append(caches[0].window_frames())
        offset = c * cf + plan.shot * cfg.shot_rope_offset + lo
        rope_offsets.append(caches[0].relative_frame_positions()[0][0] if spec.relative_rope else offset - lo)
        x = noise[:, :, c * cf + lo : c * cf + hi].clone()
        sched = make_scheduler(spec.scheduler, spec.steps, spec.timestep_shift)
        t = torch.empty((B, hi - lo), device=device)
        cond = image_latent is not None and c == 0 and lo == 0  # latent 0 lives on the first SP rank
        calls = [{"text_kv": kv, "frame_offset": offset, "relative_rope": spec.relative_rope,
                  **({"cache": cache} if sp is None and attn_probe is None else
                     {"attn_fn": (sp.attn_fn if sp is not None else attn_probe)(cache, model.attn_backend)})}
                 for cache, kv in zip(caches, [text_kvs[plan.prompt], negative_kv], strict=False)]
        for step_t in sched.timesteps:
            t.fill_(step_t)
            if cond:
                x[:, :, :1] = image_latent
                t[:, 0] = 0
            v = model(x, t, **calls[0])
            if spec.guided:  # the release's combination, in float32
                v_uncond = model(x, t, **calls[1]).float()
                v = v_uncond + spec.guidance_scale * (v.float() - v_uncond)
            x, _ = sched.step(v, x)
            if sync_each_step and x.is_cuda:  # let a decode thread launch (see wan_vae.StreamingDecoder)
                torch.cuda.current_stream(x.device).synchronize()
        if cond:
            x[:, :, :1] = image_latent
        t.zero_()
        for cache, call in zip(caches, calls, strict=True):
            if plan.cut and spec.clean_recache_at_cut and cfg.sink_frames > 0:  # the release's `shot_clean_recache`:
                cache.clear_to_sink()                                          # the re-run sees [sink | this chunk]
            cache.committing = True  # the clean re-run's K/V are the ones the cache keeps
            model(x, t, **call)
            cache.committing = False
            if plan.cut and multishot:
                cache.pin_current()
        pinned.append(caches[0].pinned_chunk)
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
                            pinned=pinned, switch_submitted=switch_submitted,
                            kv_cache_bytes=sum(k.storage.nbytes() for k in caches),
                            kv_packed_bytes=sum(getattr(k.storage, "packed_nbytes", k.storage.nbytes)()
                                                for k in caches))
