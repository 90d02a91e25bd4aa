"""Teacher forcing trains what inference runs: the TF forward's prediction for each noisy block equals the
streaming pipeline's forward of that chunk over a KV cache filled by clean re-runs of the chunks before it."""

from __future__ import annotations

import torch

from longlive.model.dit import build_model
from longlive.model.kv_cache import CacheGeometry, KVCache
from longlive.model.presets import get_preset
from longlive.train.teacher_forcing import MaskedAttention, add_noise, frame_schedule, tf_mask_mod


def test_teacher_forcing_block_prediction_equals_the_cached_chunk_forward():
    cfg = get_preset("tiny")
    model = build_model(cfg, seed=3).eval()
    frames, cf, tpf = cfg.window_frames, cfg.chunk_frames, cfg.tokens_per_frame  # the whole window: no eviction
    h, w = cfg.latent_hw
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(1, cfg.in_channels, frames, h, w, generator=g)
    noise = torch.randn(x0.shape, generator=g)
    embeds = torch.randn(1, cfg.text_len, cfg.text_dim, generator=g)
    sched = frame_schedule(torch.tensor([100, 400, 700, 999])[: frames // cf], cf)
    x_t = add_noise(x0, noise, sched.sigma)
    masked = MaskedAttention(tf_mask_mod(frames, tpf, cf), 2 * frames * tpf, "auto")
    with torch.no_grad():
        v_tf = model(torch.cat([x0, x_t], 2), torch.cat([torch.zeros(frames), sched.t])[None], embeds,
                     frame_positions=list(range(frames)) * 2, attn_fn=lambda q, k, v, layer: masked(q, k, v),
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
