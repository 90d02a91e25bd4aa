"""Scheduler timesteps, UniPC against an independent implementation, and the AR chunk loop."""

import dataclasses

import pytest
import torch

from longlive.infer.pipeline import (
    SCENE_CUT_PREFIX,
    GenerationSpec,
    chunk_texts,
    conditioning_texts,
    generate,
    plan_chunks,
)
from longlive.infer.scheduler import FlowUniPC, flow_sigmas, flow_timesteps
from longlive.model.dit import build_model
from longlive.model.presets import get_preset


@pytest.mark.parametrize(
    "steps,ts,sigmas",
    [(4, [999, 937, 833, 624], [0.99980, 0.93727, 0.83306, 0.62469, 0]),
     (3, [999, 908, 713], [0.99980, 0.90884, 0.71398, 0]),
     (2, [999, 833], [0.99980, 0.83306, 0])],
)
def test_timesteps_and_sigmas_of_spec(steps, ts, sigmas):
    assert flow_timesteps(steps) == ts
    assert flow_sigmas(steps) == pytest.approx(sigmas, abs=5e-6)
    assert FlowUniPC(steps).timesteps == ts


@pytest.mark.parametrize("steps", [4, 3, 2])
def test_unipc_matches_diffusers(steps):
    diffusers = pytest.importorskip("diffusers")
    ref = diffusers.UniPCMultistepScheduler(
        num_train_timesteps=1000, prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0,
        solver_order=2, solver_type="bh2", predict_x0=True, lower_order_final=True, final_sigmas_type="zero",
    )
    ref.set_timesteps(steps)
    ours = FlowUniPC(steps)
    ref.sigmas = torch.tensor(ours.sigmas, dtype=torch.float64)  # diffusers' grid starts at 1.0, Wan's at 0.999
    ref.timesteps = torch.tensor(ours.timesteps)
    g = torch.Generator().manual_seed(steps)
    W = torch.randn(4, 4, dtype=torch.float64, generator=g) * 0.3
    x_ref = torch.randn(2, 4, 3, 3, dtype=torch.float64, generator=g)
    x = x_ref.float()
    for i, t in enumerate(ours.timesteps):
        v_ref = torch.einsum("ij,bjhw->bihw", W, x_ref) * (1 + ours.sigmas[i])
        x_ref = ref.step(v_ref, torch.tensor(t), x_ref).prev_sample
        x, _ = ours.step(torch.einsum("ij,bjhw->bihw", W.float(), x) * (1 + ours.sigmas[i]), x)
    torch.testing.assert_close(x.double(), x_ref, atol=5e-6, rtol=1e-5)


def test_last_step_returns_the_x0_prediction():
    s = FlowUniPC(2)
    x = torch.randn(3, 4)
    v = torch.randn(3, 4)
    x, _ = s.step(v, x)
    x_final, x0 = s.step(v, x)
    torch.testing.assert_close(x_final, x0)


def test_chunk_texts_follow_the_release_convention():
    """A scene-cut prompt conditions its shot's first chunk only; later chunks get the bare caption."""
    prompts = ["a cat", SCENE_CUT_PREFIX + "a dog", "a dog runs", SCENE_CUT_PREFIX + "a bird"]
    texts = chunk_texts(prompts, 8, [2, 4, 6])
    assert texts == ["a cat", "a cat", SCENE_CUT_PREFIX + "a dog", "a dog", "a dog runs", "a dog runs",
                     SCENE_CUT_PREFIX + "a bird", "a bird"]
    plans = plan_chunks(texts, 8, conditioning_texts(prompts))
    assert [p.cut for p in plans] == [False, False, True, False, False, False, True, False]
    assert [p.shot for p in plans] == [0, 0, 1, 1, 1, 1, 2, 2]
    # embeddings in GenerationSpec.texts order: the prompts as given, then the bare captions of the cut prompts
    assert conditioning_texts(prompts) == [*prompts, "a dog", "a bird"]
    assert [p.prompt for p in plans] == [0, 0, 1, 4, 2, 2, 3, 5]
    with pytest.raises(ValueError, match="increase strictly"):
        chunk_texts(prompts, 8, [2, 2, 6])
    with pytest.raises(ValueError, match="need 3 switch chunks"):
        chunk_texts(prompts, 8, [2])
    with pytest.raises(ValueError, match="2 prompts need at least 2 chunks"):
        chunk_texts(["a", "b"], 1, None)
    with pytest.raises(ValueError, match="must not be empty"):
        chunk_texts(["a", SCENE_CUT_PREFIX], 4, None)


def test_explicit_chunk_texts_cut_wherever_the_prefix_is():
    """Per-chunk text given explicitly: every chunk whose text has the prefix is a cut (the release's rule)."""
    texts = ["a", SCENE_CUT_PREFIX + "b", SCENE_CUT_PREFIX + "b", "b"]
    spec = GenerationSpec(prompts=["unused"], frames=8, chunk_texts=texts)
    plans = spec.plan(4)
    assert spec.texts == ["a", SCENE_CUT_PREFIX + "b", "b"]
    assert [(p.text, p.prompt, p.shot, p.cut) for p in plans] == [
        ("a", 0, 0, False), (SCENE_CUT_PREFIX + "b", 1, 1, True), (SCENE_CUT_PREFIX + "b", 1, 2, True),
        ("b", 2, 2, False)]


@pytest.fixture(scope="module")
def tiny():
    cfg = get_preset("tiny")
    return build_model(cfg, seed=0), cfg


def _embeds(cfg, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, cfg.text_len, cfg.text_dim, generator=g) for _ in range(n)]


def test_same_seed_same_video_other_seed_differs(tiny):
    model, cfg = tiny
    spec = GenerationSpec(prompts=["x"], frames=8, steps=2, seed=7)
    a = generate(model, spec, _embeds(cfg, 1)).latents
    b = generate(model, spec, _embeds(cfg, 1)).latents
    c = generate(model, GenerationSpec(prompts=["x"], frames=8, steps=2, seed=8), _embeds(cfg, 1)).latents
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_frames_must_be_a_multiple_of_the_chunk(tiny):
    model, cfg = tiny
    with pytest.raises(ValueError, match="multiple of the chunk size 2"):
        generate(model, GenerationSpec(prompts=["x"], frames=7), _embeds(cfg, 1))


def test_loop_reports_each_chunks_window(tiny):
    model, cfg = tiny
    res = generate(model, GenerationSpec(prompts=["x"], frames=12, steps=2, seed=1), _embeds(cfg, 1))
    assert res.windows[0] == [0, 1]
    assert res.windows[5] == [0, 1, 6, 7, 8, 9, 10, 11]  # tiny preset, chunk 5: sink 0 | 3 | 4 | 5
    assert len(res.stats.chunk_ms) == 6 and all(ms > 0 for ms in res.stats.chunk_ms)


def test_cost_is_steps_plus_one_forwards_per_chunk(tiny, monkeypatch):
    model, cfg = tiny
    calls = []
    orig = type(model).forward

    def counting(self, x, t, *a, **k):
        calls.append(float(t[0, -1]))
        return orig(self, x, t, *a, **k)

    monkeypatch.setattr(type(model), "forward", counting)
    generate(model, GenerationSpec(prompts=["x"], frames=4, steps=4), _embeds(cfg, 1))
    assert calls == [999, 937, 833, 624, 0] * 2


def test_shot_offset_changes_rope_positions(tiny, monkeypatch):
    model, cfg = tiny
    offsets = []
    orig = type(model).forward

    def spy(self, x, t, *a, frame_offset=0, **k):
        offsets.append(frame_offset)
        return orig(self, x, t, *a, frame_offset=frame_offset, **k)

    monkeypatch.setattr(type(model), "forward", spy)
    prompts = ["a", SCENE_CUT_PREFIX + "b"]
    res = generate(model, GenerationSpec(prompts=prompts, frames=8, steps=2, switch_chunks=[2]), _embeds(cfg, 3))
    per_chunk = offsets[::3]  # 2 steps + clean re-run per chunk
    assert per_chunk == [0, 2, 4 + 8, 6 + 8] == res.rope_offsets


def test_three_shot_plan_by_hand(tiny, monkeypatch):
    """For a 3-shot video, each chunk's text, shot, RoPE offset and pinned chunk against the rule written out."""
    model, cfg = tiny
    made, seen = [], []  # the text K/V made per embedding, and the one every forward got (mapped back below)
    orig, orig_kv = type(model).forward, type(model).text_kv

    def spy(self, x, t, *a, text_kv=None, **k):
        seen.append(next(i for i, kv in enumerate(made) if kv is text_kv))
        return orig(self, x, t, *a, text_kv=text_kv, **k)

    def spy_kv(self, e):
        made.append(orig_kv(self, e))
        return made[-1]

    monkeypatch.setattr(type(model), "forward", spy)
    monkeypatch.setattr(type(model), "text_kv", spy_kv)
    cut = SCENE_CUT_PREFIX
    spec = GenerationSpec(prompts=["a cat sleeps", cut + "a dog runs", cut + "a bird flies"], frames=14, steps=2,
                          switch_chunks=[2, 5])
    assert spec.texts == ["a cat sleeps", cut + "a dog runs", cut + "a bird flies", "a dog runs", "a bird flies"]
    res = generate(model, spec, _embeds(cfg, len(spec.texts)))
    texts = [spec.texts[i] for i in seen[::3]]  # 2 steps + the clean re-run per chunk
    assert all(seen[3 * c] == seen[3 * c + 1] == seen[3 * c + 2] for c in range(7))
    O = cfg.shot_rope_offset  # temporal RoPE shifts by 8 per shot
    by_hand = [  # chunk: text, shot, RoPE offset (c·chunk + shot·8), pinned chunk after it
        ("a cat sleeps", 0, 0, None),
        ("a cat sleeps", 0, 2, None),
        (cut + "a dog runs", 1, 4 + O, 2),  # a cut: new shot, this chunk pinned (multi-shot sink)
        ("a dog runs", 1, 6 + O, 2),        # the shot's later chunks: the bare caption
        ("a dog runs", 1, 8 + O, 2),
        (cut + "a bird flies", 2, 10 + 2 * O, 5),  # the next cut replaces the pin
        ("a bird flies", 2, 12 + 2 * O, 5),
    ]
    assert list(zip(texts, [p.shot for p in res.plans], res.rope_offsets, res.pinned, strict=True)) == by_hand
    assert [p.text for p in res.plans] == texts


def test_clean_recache_windows_of_each_forward(tiny, monkeypatch):
    """With clean recache, the cut chunk's denoising steps see the full window and only its clean re-run sees
    [global sink | cut chunk]; the next chunk sees [global sink | cut chunk (pinned) | itself]."""
    from longlive.model.kv_cache import KVCache

    model, cfg = tiny
    forwards = []  # (chunk, committing, attended chunks), layer 0 of every forward
    orig = KVCache.update

    def spy(self, layer, k, v):
        if layer == 0:
            forwards.append((self.slot_chunk[self.current_slot], self.committing, self.window_chunks()))
        return orig(self, layer, k, v)

    monkeypatch.setattr(KVCache, "update", spy)
    spec = GenerationSpec(prompts=["a", SCENE_CUT_PREFIX + "b"], frames=14, steps=2, switch_chunks=[5],
                          clean_recache_at_cut=True)
    res = generate(model, spec, _embeds(cfg, 3))
    of = {c: [(commit, w) for ch, commit, w in forwards if ch == c] for c in (5, 6)}
    assert of[5] == [(False, [0, 3, 4, 5]), (False, [0, 3, 4, 5]), (True, [0, 5])]
    assert of[6] == [(False, [0, 5, 6])] * 2 + [(True, [0, 5, 6])]
    assert res.windows[5] == [0, 1, 6, 7, 8, 9, 10, 11] and res.pinned[5:] == [5, 5]
    plain = generate(model, dataclasses.replace(spec, clean_recache_at_cut=False), _embeds(cfg, 3))
    assert torch.equal(plain.latents[:, :, :12], res.latents[:, :, :12])  # the cut chunk's steps are unchanged
    assert not torch.allclose(plain.latents[:, :, 12:], res.latents[:, :, 12:])


def test_i2v_first_latent_is_the_image(tiny):
    model, cfg = tiny
    h, w = cfg.latent_hw
    img = torch.randn(1, cfg.in_channels, 1, h, w)
    res = generate(model, GenerationSpec(prompts=["x"], frames=4, steps=2), _embeds(cfg, 1), image_latent=img)
    assert torch.equal(res.latents[:, :, :1], img)
    plain = generate(model, GenerationSpec(prompts=["x"], frames=4, steps=2), _embeds(cfg, 1))
    assert not torch.allclose(plain.latents[:, :, 1:], res.latents[:, :, 1:])


def test_multi_prompt_changes_later_chunks_only(tiny):
    model, cfg = tiny
    e = _embeds(cfg, 2)
    one = generate(model, GenerationSpec(prompts=["a"], frames=8, steps=2), e[:1]).latents
    two = generate(model, GenerationSpec(prompts=["a", "b"], frames=8, steps=2, switch_chunks=[2]), e).latents
    assert torch.equal(one[:, :, :4], two[:, :, :4])
    assert not torch.allclose(one[:, :, 4:], two[:, :, 4:])
