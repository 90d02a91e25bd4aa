"""Teacher forcing trains what inference runs: the TF forward's prediction for each noisy block equals the
streaming pipeline's forward of that chunk over a KV cache filled by clean re-runs of the chunks before it — within
the window (whole-history mask) and past it (`tf_window`, against a cache that evicts)."""

from __future__ import annotations

import torch

from longlive.model.dit import build_model
from longlive.model.kv_cache import CacheGeometry, KVCache
from longlive.model.presets import get_preset
from longlive.train.teacher_forcing import (
    MaskedAttention,
    add_noise,
    blocked_tf_attention,
    frame_schedule,
    tf_mask_mod,
    tf_window_of,
)


def _assert_tf_equals_streaming(frames: int, t_index: torch.Tensor | None, attn_fn) -> None:
    """Run one TF forward over `frames` latents with `attn_fn` and compare every noisy block with the cached chunk
    forward (`t_index` per block; None: drawn at random)."""
    cfg = get_preset("tiny")
    model = build_model(cfg, seed=3).eval()
    cf, tpf = cfg.chunk_frames, cfg.tokens_per_frame
    h, w = cfg.latent_hw
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(1, cfg.in_channels, frames, h, w, generator=g)
    noise = torch.randn(x0.shape, generator=g)
    embeds = torch.randn(1, cfg.text_len, cfg.text_dim, generator=g)
    if t_index is None:
        t_index = torch.randint(0, 1000, (frames // cf,), generator=g)
    sched = frame_schedule(t_index, cf)
    x_t = add_noise(x0, noise, sched.sigma)
    with torch.no_grad():
        v_tf = model(torch.cat([x0, x_t], 2), torch.cat([torch.zeros(frames), sched.t])[None], embeds,
                     frame_positions=list(range(frames)) * 2, attn_fn=attn_fn,
                     frame_prompt=torch.zeros(2 * frames, dtype=torch.long))[:, :, frames:]
        geo = CacheGeometry(cf, cfg.window_frames, cfg.sink_frames, tpf, True)
        cache = KVCache.allocate(geo, cfg.num_layers, 1, cfg.num_heads, cfg.head_dim, storage="fp32", device="cpu",
                                 compute_dtype=torch.float32)
        kv = model.text_kv(embeds)
        for c in range(frames // cf):
            cache.begin_chunk(c)
            sl = slice(c * cf, (c + 1) * cf)
            v = model(x_t[:, :, sl], sched.t[sl][None].clone(), text_kv=kv, frame_offset=c * cf, cache=cache)
            torch.testing.assert_close(v, v_tf[:, :, sl], rtol=1e-4, atol=1e-5, msg=f"chunk {c}")
            cache.committing = True  # the pipeline's clean re-run at t = 0 fills the cache
            model(x0[:, :, sl], torch.zeros(1, cf), text_kv=kv, frame_offset=c * cf, cache=cache)
            cache.committing = False


def test_teacher_forcing_block_prediction_equals_the_cached_chunk_forward():
    cfg = get_preset("tiny")
    frames, cf, tpf = cfg.window_frames, cfg.chunk_frames, cfg.tokens_per_frame  # the whole window: no eviction
    masked = MaskedAttention(tf_mask_mod(frames, tpf, cf), 2 * frames * tpf, "auto")
    _assert_tf_equals_streaming(frames, torch.tensor([100, 400, 700, 999])[: frames // cf],
                                lambda q, k, v, layer: masked(q, k, v))


def test_windowed_teacher_forcing_equals_the_streaming_forward_with_eviction():
    """Past the window (10 chunks in a 4-slot window), each noisy block's TF prediction equals the cached chunk
    forward of the pipeline, whose cache evicts: what `tf_window` exists for."""
    cfg = get_preset("tiny")
    cf, tpf = cfg.chunk_frames, cfg.tokens_per_frame
    frames, win = 10 * cf, tf_window_of(cfg)
    _assert_tf_equals_streaming(frames, None,
                                lambda q, k, v, layer: blocked_tf_attention(q, k, v, frames, tpf, cf, win))
