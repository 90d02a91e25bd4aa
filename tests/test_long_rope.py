"""Length beyond the RoPE table (spec 02): the grown time table, the crossing of it, and relative positions."""

import dataclasses

import pytest
import torch

from longlive.infer.pipeline import GenerationSpec, generate
from longlive.model.dit import build_model
from longlive.model.kv_cache import CacheGeometry, KVCache
from longlive.model.presets import get_preset
from longlive.model.rope import Rope3D, _axis_angles, apply_rope
from longlive.text.prompts import SCENE_CUT_PREFIX

TINY = get_preset("tiny")


def embeddings(spec: GenerationSpec) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(1, TINY.text_len, TINY.text_dim, generator=g) for _ in spec.texts]


def test_a_grown_table_equals_a_longer_table_bit_for_bit():
    small, published, long = Rope3D(32, max_positions=16), Rope3D(32), Rope3D(32, max_positions=4096)
    for start, frames in ((0, 16), (10, 12), (40, 3), (1016, 16), (3000, 5)):
        a, b = small.cos_sin(start, frames, 3, 4), long.cos_sin(start, frames, 3, 4)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]), (start, frames)
        c = published.cos_sin(start, frames, 3, 4)  # past 1024 the published table grows too
        assert torch.equal(a[0], c[0]) and torch.equal(a[1], c[1]), (start, frames)
    assert small.tables[0].shape[0] >= 3005 and small.tables[1].shape[0] == 16  # only time grows
    with pytest.raises(ValueError, match="token grid"):
        small.cos_sin(0, 1, 17, 4)
    with pytest.raises(ValueError, match="start at 0"):
        small.cos_sin(-1, 2, 3, 4)


def test_below_the_table_the_angles_are_the_published_table_rows():
    """Today's angles: rows of the 1024-row float64 tables, cos/sin taken in float64 and cast to float32."""
    rope = Rope3D(TINY.head_dim)
    pt, ph, pw = rope.pairs
    start, frames, h, w = 1000, 24, 2, 3
    tt, th, tw = (_axis_angles(1024, 2 * n, 10000.0) for n in (pt, ph, pw))
    ang = torch.cat([tt[start : start + frames][:, None, None].expand(frames, h, w, -1),
                     th[:h][None, :, None].expand(frames, h, w, -1),
                     tw[:w][None, None].expand(frames, h, w, -1)], dim=-1).reshape(frames * h * w, -1)
    cos, sin = rope.cos_sin(start, frames, h, w)
    assert torch.equal(cos, ang.cos().float()) and torch.equal(sin, ang.sin().float())
    assert rope.tables[0].shape[0] == 1024  # nothing grew


def test_attention_logits_depend_only_on_distance_across_the_crossing():
    rope = Rope3D(TINY.head_dim)
    g = torch.Generator().manual_seed(1)
    q = torch.randn(1, 1, 1, TINY.head_dim, generator=g, dtype=torch.float64)
    k = torch.randn(1, 1, 1, TINY.head_dim, generator=g, dtype=torch.float64)

    def logit(pq: int, pk: int) -> float:
        (cq, sq), (ck, sk) = rope.cos_sin(pq, 1, 1, 1), rope.cos_sin(pk, 1, 1, 1)
        return float((apply_rope(q, cq.double(), sq.double()) * apply_rope(k, ck.double(), sk.double())).sum())

    for distance in (0, 3, 30, 500):
        near, across = logit(distance + 10, 10), logit(1020 + distance, 1020)  # the second pair crosses 1024
        assert abs(near - across) < 1e-5 * max(1.0, abs(near)), distance
    assert abs(logit(12, 10) - logit(13, 10)) > 1e-3  # the logit does move with distance


def ar_loop(model, base: int, chunks: int, *, query_shift: int = 0) -> torch.Tensor:
    """The chunk loop's cache traffic (one step + the clean re-run) with temporal positions base + c·chunk."""
    cfg = model.cfg
    cf, (h, w) = cfg.chunk_frames, cfg.latent_hw
    geo = CacheGeometry(cf, cfg.window_frames, cfg.sink_frames, cfg.tokens_per_frame)
    cache = KVCache.allocate(geo, cfg.num_layers, 1, cfg.num_heads, cfg.head_dim, storage="fp32")
    g = torch.Generator().manual_seed(2)
    text_kv = model.text_kv(torch.randn(1, cfg.text_len, cfg.text_dim, generator=g))
    outs = []
    for c in range(chunks):
        cache.begin_chunk(c)
        x = torch.randn(1, cfg.in_channels, cf, h, w, generator=g)
        offset = base + c * cf
        outs.append(model(x, torch.full((1, cf), 900.0), text_kv=text_kv, cache=cache,
                          frame_offset=offset + (query_shift if c == chunks - 1 else 0)))
        cache.committing = True
        model(x, torch.zeros(1, cf), text_kv=text_kv, cache=cache, frame_offset=offset)
        cache.committing = False
    return torch.stack(outs)


def test_the_chunk_loop_crosses_the_published_table_keeping_relative_positions():
    """Keys are cached rotated at absolute positions: shifting every position by the same amount, here across 1024,
    leaves every output as it was (to float32 rounding), while shifting the query alone does not."""
    model = build_model(TINY, seed=0)
    chunks = 5  # the window (4 slots) rolls at the last chunk; the last three sit past 1024
    base = 1024 - 2 * TINY.chunk_frames
    below, across = ar_loop(model, 0, chunks), ar_loop(model, base, chunks)
    assert model.rope.tables[0].shape[0] > 1024
    torch.testing.assert_close(across, below, rtol=1e-4, atol=1e-4)
    shifted = ar_loop(model, base, chunks, query_shift=1)
    assert (shifted[-1] - below[-1]).abs().max() > 1e-2  # the check above can fail


@pytest.mark.parametrize("table,shot_offset,frames,reference", [
    (4, TINY.shot_rope_offset, 12, 1024),  # a test-only table of 4; the reference is today's output
    (1024, 1020, 8, 4096),                 # the published table, crossed by the cut's offset (last chunk at 1026)
])
def test_a_generation_crossing_the_table_equals_one_under_a_longer_table(table, shot_offset, frames, reference):
    """A two-shot video past the end of its table equals, bit for bit, the same video under a table that covers it."""
    spec = GenerationSpec(prompts=["a red ball", SCENE_CUT_PREFIX + "a blue cube"], frames=frames, steps=1, seed=3)
    crossing = build_model(TINY.with_overrides(rope_max_positions=table, shot_rope_offset=shot_offset), seed=0)
    covered = build_model(TINY.with_overrides(rope_max_positions=reference, shot_rope_offset=shot_offset), seed=0)
    a, b = generate(crossing, spec, embeddings(spec)), generate(covered, spec, embeddings(spec))
    assert a.rope_offsets[-1] + TINY.chunk_frames > table and crossing.rope.tables[0].shape[0] > table
    assert covered.rope.tables[0].shape[0] == reference  # nothing crossed there
    assert torch.equal(a.latents, b.latents)


def test_relative_positions_number_the_window_chronologically():
    """The release's use_relative_rope layout: attended chunks 0, 1, … in time order, whatever slot holds them."""
    geo = CacheGeometry(chunk_frames=2, window_frames=8, sink_frames=2, tokens_per_frame=1)  # 4 slots
    cache = KVCache.allocate(geo, num_layers=1, batch=1, heads=1, head_dim=2, storage="fp32")
    for c in range(9):
        cache.begin_chunk(c)
        if c == 4:
            cache.pin_current()
    assert cache.window_chunks() == [0, 4, 7, 8]  # [sink | shot sink | previous | current]
    query, keys = cache.relative_frame_positions()
    assert query == [6, 7]
    by_slot = {cache.slot_chunk[s]: keys[2 * s : 2 * s + 2] for s in range(cache.filled_slots)}
    assert by_slot == {0: [0, 1], 4: [2, 3], 7: [4, 5], 8: [6, 7]}
    # Chunks next to each other keep their distance; the sinks are drawn up to the window.
    assert query[0] - by_slot[7][0] == (8 - 7) * 2 and query[0] - by_slot[0][0] == 6 < 8 * 2
    # Until the window fills, relative positions are the absolute ones.
    fresh = KVCache.allocate(geo, num_layers=1, batch=1, heads=1, head_dim=2, storage="fp32")
    for c in range(3):
        fresh.begin_chunk(c)
    assert fresh.relative_frame_positions() == ([4, 5], [0, 1, 2, 3, 4, 5])


def test_relative_rope_equals_absolute_until_the_window_rolls_then_stays_inside_it():
    window, cf = TINY.window_frames, TINY.chunk_frames
    spec = GenerationSpec(prompts=["a red ball"], frames=2 * window, steps=1, seed=5)
    model = build_model(TINY.with_overrides(rope_max_positions=window), seed=0)
    relative = generate(model, dataclasses.replace(spec, relative_rope=True), embeddings(spec))
    assert relative.rope_offsets == [0, 2, 4, 6] + [window - cf] * (len(relative.rope_offsets) - 4)
    assert model.rope.tables[0].shape[0] == window  # never past the window, so nothing grew
    absolute = generate(model, spec, embeddings(spec))
    # fp32 cache: rotating before the store or after the read is the same, so the first window is bit for bit equal
    assert torch.equal(relative.latents[:, :, :window], absolute.latents[:, :, :window])
    assert not torch.equal(relative.latents, absolute.latents)  # then the sink is drawn up: an explicit option


def test_relative_rope_needs_the_cache_window():
    model = build_model(TINY, seed=0)
    x = torch.zeros(1, TINY.in_channels, TINY.chunk_frames, *TINY.latent_hw)
    with pytest.raises(ValueError, match="relative_rope"):
        model(x, torch.zeros(1, TINY.chunk_frames), torch.zeros(1, TINY.text_len, TINY.text_dim), relative_rope=True)
    spec = GenerationSpec(prompts=["a"], frames=TINY.chunk_frames, steps=1, relative_rope=True)
    with pytest.raises(ValueError, match="sequence parallelism"):
        generate(model, spec, embeddings(spec), sp=object())
