"""KV cache: the attended window of spec 02 chunk by chunk, in-place writes, order-free attention."""

import pytest
import torch

from longlive.model.attention import sdpa
from longlive.model.kv_cache import CacheGeometry, KVCache
from longlive.quant.kv import allocate_cache

DEFAULT = CacheGeometry(chunk_frames=8, window_frames=32, sink_frames=8, tokens_per_frame=1)


def frames(*chunks):
    return [c * 8 + i for c in chunks for i in range(8)]


def windows(cut_at=None, clean=False, n=8, rerun=False):
    """The window of each chunk's denoising steps (rerun=True: of its clean re-run), the loop's calls in order."""
    cache = KVCache.allocate(DEFAULT, num_layers=1, batch=1, heads=1, head_dim=2, storage="fp32")
    out = []
    for c in range(n):
        cache.begin_chunk(c)
        steps = cache.window_frames()
        if clean and c == cut_at:
            cache.clear_to_sink()
        out.append(cache.window_frames() if rerun else steps)
        if c == cut_at:
            cache.pin_current()
    return out


def test_windows_without_cut():
    w = windows()
    assert w[0] == frames(0)
    assert w[1] == frames(0, 1)
    assert w[2] == frames(0, 1, 2)
    assert w[3] == frames(0, 1, 2, 3)
    for c in range(4, 8):  # [sink chunk 0 | c-2 | c-1 | c]
        assert w[c] == frames(0, c - 2, c - 1, c)


def test_windows_with_scene_cut_at_chunk_5():
    w = windows(cut_at=5)
    assert w[:6] == windows()[:6]
    assert w[5] == frames(0, 3, 4, 5)
    assert w[6] == frames(0, 4, 5, 6)  # the pin survives eviction
    assert w[7] == frames(0, 5, 6, 7)  # [global sink | shot sink | previous | current]
    w10 = windows(cut_at=5, n=11)
    assert w10[10] == frames(0, 5, 9, 10)


def test_scene_cut_during_warmup_and_second_cut():
    cache = KVCache.allocate(DEFAULT, num_layers=1, batch=1, heads=1, head_dim=2, storage="fp32")
    got = []
    for c in range(9):
        cache.begin_chunk(c)
        got.append(cache.window_chunks())
        if c in (2, 6):
            cache.pin_current()
    assert got[4] == [0, 2, 3, 4]
    assert got[5] == [0, 2, 4, 5]
    assert got[6] == [0, 2, 5, 6]
    assert got[7] == [0, 5, 6, 7]  # the new cut replaces the old pin
    assert got[8] == [0, 6, 7, 8]


def test_clean_recache_keeps_only_global_sink_for_the_rerun():
    steps, rerun = windows(cut_at=5, clean=True), windows(cut_at=5, clean=True, rerun=True)
    assert steps[5] == frames(0, 3, 4, 5)  # the cut chunk denoises against the full window, as in the release
    assert rerun[5] == frames(0, 5)        # only its clean re-run sees [global sink | this chunk]
    assert steps[6] == rerun[6] == frames(0, 5, 6)
    assert steps[7] == frames(0, 5, 6, 7)


def test_clean_recache_keeps_slots_a_prefix():
    cache = KVCache.allocate(DEFAULT, num_layers=1, batch=1, heads=1, head_dim=2, storage="fp32")
    for c in range(6):
        cache.begin_chunk(c)
    assert cache.current_slot != 1
    cache.clear_to_sink()
    assert cache.current_slot == 1 and cache.filled_slots == 2 and cache.slot_chunk[:2] == [0, 5]
    cache.begin_chunk(6)
    assert cache.window_chunks() == [0, 5, 6] and cache.current_slot == 2


def test_writes_in_place_and_window_is_a_view():
    geo = CacheGeometry(chunk_frames=2, window_frames=8, sink_frames=2, tokens_per_frame=3)
    cache = KVCache.allocate(geo, num_layers=2, batch=1, heads=2, head_dim=4, storage="fp32")
    ptrs = [t.data_ptr() for t in (*cache.storage.k, *cache.storage.v)]
    for c in range(7):
        cache.begin_chunk(c)
        k = torch.full((1, 6, 2, 4), float(c))
        kw, vw = cache.update(1, k, -k)
        assert kw.data_ptr() == cache.storage.k[1].data_ptr()  # a view of the buffer, not a copy
        assert kw.shape[1] == 6 * min(c + 1, 4)
        assert torch.equal(kw[:, cache.current_slot * 6 : cache.current_slot * 6 + 6], k)
    assert [t.data_ptr() for t in (*cache.storage.k, *cache.storage.v)] == ptrs
    assert cache.storage.nbytes() == 2 * 2 * (4 * 6 * 2 * 4) * 4  # one set of K and V, nothing else
    # the chunks in the buffer are exactly the window's chunks, each with its own values
    resident = sorted(int(cache.storage.k[1][0, s * 6, 0, 0]) for s in range(4))
    assert resident == cache.window_chunks() == [0, 4, 5, 6]


def test_ring_order_attention_equals_release_order():
    """Slots sit in ring order; attention over the release's chronological order gives the same output."""
    torch.manual_seed(0)
    geo = CacheGeometry(chunk_frames=1, window_frames=4, sink_frames=1, tokens_per_frame=5)
    cache = KVCache.allocate(geo, num_layers=1, batch=1, heads=2, head_dim=8, storage="fp64")
    chunks = {}
    for c in range(8):
        cache.begin_chunk(c)
        chunks[c] = (torch.randn(1, 5, 2, 8, dtype=torch.float64), torch.randn(1, 5, 2, 8, dtype=torch.float64))
        k, v = cache.update(0, *chunks[c])
    q = torch.randn(1, 5, 2, 8, dtype=torch.float64)
    order = cache.window_chunks()
    k_ref = torch.cat([chunks[c][0] for c in order], 1)
    v_ref = torch.cat([chunks[c][1] for c in order], 1)
    assert not torch.equal(k, k_ref)  # physically permuted ...
    torch.testing.assert_close(sdpa(q, k, v), sdpa(q, k_ref, v_ref))  # ... same attention


def test_geometry_errors():
    with pytest.raises(ValueError, match="not a multiple of chunk_frames"):
        CacheGeometry(chunk_frames=8, window_frames=30, sink_frames=8, tokens_per_frame=1)
    with pytest.raises(ValueError, match="need at least 3"):
        CacheGeometry(chunk_frames=8, window_frames=16, sink_frames=8, tokens_per_frame=1)
    with pytest.raises(ValueError, match="unknown KV storage"):
        KVCache.allocate(DEFAULT, 1, 1, 1, 2, storage="int3")
    with pytest.raises(ValueError, match="allocate it with longlive.quant.kv.allocate_cache"):
        KVCache.allocate(DEFAULT, 1, 1, 1, 2, storage="nvfp4")


def test_buffers_are_heads_first_so_a_full_window_needs_no_copy():
    geo = CacheGeometry(chunk_frames=2, window_frames=8, sink_frames=2, tokens_per_frame=3)
    for storage in ("bf16", "nvfp4"):
        cache = allocate_cache(geo, num_layers=1, batch=1, heads=2, head_dim=16, storage=storage)
        for c in range(4):
            cache.begin_chunk(c)
            cache.committing = True
            kw, vw = cache.update(0, torch.randn(1, 6, 2, 16), torch.randn(1, 6, 2, 16))
            cache.committing = False
        assert kw.shape == (1, 24, 2, 16)  # callers index [B, L, H, D] ...
        assert kw.transpose(1, 2).is_contiguous() and vw.transpose(1, 2).is_contiguous()  # ... SDPA reads [B, H, L, D]
