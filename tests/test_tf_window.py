"""Teacher forcing through the inference KV window (`tf_window`): the windowed mask is the cache's window, the
blocked gather equals the dense mask, and a windowed TF forward over a clip longer than the window predicts what the
streaming pipeline computes with eviction (that one in tests/test_tf_matches_inference.py)."""

from __future__ import annotations

import itertools

import pytest
import torch

from longlive.experiments.spec import RunSpec
from longlive.model.dit import build_model
from longlive.model.kv_cache import CacheGeometry, KVCache
from longlive.model.presets import get_preset
from longlive.train.teacher_forcing import (
    MaskedAttention,
    TFWindow,
    blocked_tf_attention,
    dense_mask,
    resolve_attn,
    teacher_forcing_loss,
    tf_mask_mod,
    tf_window_of,
)
from longlive.train.trainer import TrainConfig
from longlive.workloads.train import train_config

GEOMETRIES = [  # (frames, chunk, tokens per frame, window blocks, sink blocks)
    (30, 2, 3, 4, 1), (12, 2, 2, 4, 1), (16, 4, 2, 3, 2), (8, 2, 3, 4, 1), (10, 1, 2, 5, 0), (6, 1, 1, 2, 1)]


def _sdpa(q, k, v, mask):
    return torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                            attn_mask=mask).transpose(1, 2)


@pytest.mark.parametrize("frames,chunk,tpf,blocks,sink", GEOMETRIES)
def test_blocked_gather_equals_the_dense_windowed_mask(frames, chunk, tpf, blocks, sink):
    g = torch.Generator().manual_seed(frames * 31 + blocks)
    win = TFWindow(blocks, sink)
    n = 2 * frames * tpf
    q, k, v = (torch.randn(2, n, 3, 8, generator=g, dtype=torch.float64) for _ in range(3))
    ref = _sdpa(q, k, v, dense_mask(tf_mask_mod(frames, tpf, chunk, win), n))
    torch.testing.assert_close(blocked_tf_attention(q, k, v, frames, tpf, chunk, win), ref, rtol=0, atol=1e-12)


def test_blocked_gather_handles_extreme_logits_and_ties():
    """Large equal logits (ties at the max) and all-zero inputs: no NaN, equal to the dense mask."""
    frames, chunk, tpf, win = 12, 2, 2, TFWindow(4, 1)
    n = 2 * frames * tpf
    for q, k in [(torch.full((1, n, 2, 4), 30.0, dtype=torch.float64),) * 2,
                 (torch.zeros(1, n, 2, 4, dtype=torch.float64),) * 2]:
        v = torch.randn(1, n, 2, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        out = blocked_tf_attention(q, k, v, frames, tpf, chunk, win)
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out, _sdpa(q, k, v, dense_mask(tf_mask_mod(frames, tpf, chunk, win), n)),
                                   rtol=0, atol=1e-12)


@pytest.mark.parametrize("chunk,window,sink", [(2, 8, 2), (1, 4, 1), (3, 12, 6), (2, 6, 0)])
def test_window_rule_is_the_kv_caches_window(chunk, window, sink):
    """For every chunk of a long video, the clean blocks a TF block sees are the chunks the KV cache attends."""
    geo = CacheGeometry(chunk, window, sink, 1, multishot_sink=False)
    win = TFWindow(window // chunk, sink // chunk)
    cache = KVCache.allocate(geo, 1, 1, 1, 1, storage="fp32")
    for c in range(25):
        cache.begin_chunk(c)
        assert win.clean_blocks(c) == cache.window_chunks(), c
        q = torch.full((c + 1,), c)
        assert win.visible(q, torch.arange(c + 1)).nonzero().flatten().tolist() == cache.window_chunks()


def test_a_clip_within_the_window_gets_the_unwindowed_mask():
    frames, chunk, tpf = 8, 2, 3
    n = 2 * frames * tpf
    win = TFWindow(4, 1)
    assert win.covers(frames // chunk) and not win.covers(frames // chunk + 1)
    assert torch.equal(dense_mask(tf_mask_mod(frames, tpf, chunk, win), n), dense_mask(tf_mask_mod(frames, tpf, chunk),
                                                                                       n))


def test_window_outside_blocks_do_not_reach_a_noisy_block():
    """Perturbing a clean block outside block i's window leaves block i's noisy output unchanged; inside, it moves."""
    frames, chunk, tpf, win = 16, 2, 2, TFWindow(4, 1)
    n, t = 2 * frames * tpf, chunk * tpf
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(1, n, 2, 4, generator=g, dtype=torch.float64) for _ in range(3))
    base = blocked_tf_attention(q, k, v, frames, tpf, chunk, win)
    i = 6  # window of block 6: sink 0 and blocks 4, 5 (its own clean block is hidden from its noisy queries)
    noisy_i = slice(frames * tpf + i * t, frames * tpf + (i + 1) * t)
    for block, moves in [(1, False), (3, False), (0, True), (4, True), (5, True), (6, False)]:
        k2, v2 = k.clone(), v.clone()
        k2[:, block * t:(block + 1) * t] += 1.0
        v2[:, block * t:(block + 1) * t] += 1.0
        out = blocked_tf_attention(q, k2, v2, frames, tpf, chunk, win)
        assert (not torch.equal(out[:, noisy_i], base[:, noisy_i])) == moves, block


def _loss(model, x0, window, attn="auto"):
    cfg = model.cfg
    g = torch.Generator().manual_seed(7)
    noise = torch.randn(x0.shape, generator=g)
    t_index = torch.randint(0, 1000, (x0.shape[2] // cfg.chunk_frames,), generator=g)
    emb = torch.randn(1, cfg.text_len, cfg.text_dim, generator=g)
    return teacher_forcing_loss(model, x0, emb, torch.zeros(x0.shape[2], dtype=torch.long), noise=noise,
                                t_index=t_index, attn=attn, window=window)


def test_teacher_forcing_loss_with_a_window():
    cfg = get_preset("tiny")
    model = build_model(cfg, seed=1)
    h, w = cfg.latent_hw
    short = torch.randn(1, cfg.in_channels, cfg.window_frames, h, w, generator=torch.Generator().manual_seed(2))
    # within the window: the same computation, bit for bit
    assert torch.equal(_loss(model, short, tf_window_of(cfg)), _loss(model, short, None))
    long = torch.randn(1, cfg.in_channels, 3 * cfg.window_frames, h, w, generator=torch.Generator().manual_seed(3))
    blocked = _loss(model, long, tf_window_of(cfg))
    torch.testing.assert_close(blocked, _loss(model, long, tf_window_of(cfg), attn="dense"), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(blocked, _loss(model, long, None))  # the window does cut context
    blocked.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)


def test_window_knobs_and_errors():
    assert resolve_attn("auto", "cpu", windowed=True) == "blocked"
    assert resolve_attn("auto", "cpu") == "dense"
    assert resolve_attn("auto", "cuda", windowed=True) == "flex"
    with pytest.raises(ValueError, match="sink < blocks"):
        TFWindow(2, 2)
    bad = get_preset("tiny").__class__(**{**get_preset("tiny").__dict__, "sink_frames": 3})
    with pytest.raises(ValueError, match="sink_frames=3 is not whole chunks"):
        tf_window_of(bad)
    with pytest.raises(ValueError, match="no MaskedAttention form"):
        MaskedAttention(tf_mask_mod(4, 1, 2), 8, "blocked")(*(torch.zeros(1, 8, 1, 2),) * 3)
    assert train_config(RunSpec(tf_window=True)).tf_window is True
    assert TrainConfig().tf_window is False


def test_tiny_recipe_long_mix():
    from longlive.train.tiny import TinyRecipe, _mixed

    got = list(itertools.islice(_mixed(["s1", "s2"], ["L1"], 0.25), 8))
    assert got == ["s1", "s2", "s1", "L1", "s2", "s1", "s2", "L1"]
    assert list(itertools.islice(_mixed(["s1"], [], 0.0), 3)) == ["s1"] * 3
    with pytest.raises(ValueError, match="set long_latents"):
        TinyRecipe(long_mix=0.1)
    with pytest.raises(ValueError, match="needs ar_batch 1"):
        TinyRecipe(long_latents=60, long_mix=0.1, ar_batch=4)
    with pytest.raises(ValueError, match="must lie in"):
        TinyRecipe(long_share=1.0)
