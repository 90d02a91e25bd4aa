"""Training data: procedural clips (determinism, bouncing, captions, cuts), the release folder layout round
trip (fps resampling, resize), and the latent / prompt-embedding caches feeding `training_samples`."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

from longlive.text import EmbeddingCache, build_text_encoder
from longlive.train.data import (
    COLOURS,
    SCENE_CUT_PREFIX,
    FolderVideos,
    LatentCache,
    ProceduralDataset,
    ProceduralVideos,
    frame_prompts,
    training_samples,
    uint8_to_video,
    vae_identity,
    write_procedural_folder,
)
from longlive.vae import build_vae


class CountingVAE:
    """Wraps a VAE and counts encode calls (a cache hit must not call it)."""

    def __init__(self, vae: torch.nn.Module) -> None:
        self.vae, self.calls = vae, 0
        self.stride = vae.stride
        self.identity = vae_identity(vae)

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.vae.encode(video)


@pytest.fixture(scope="module")
def vae() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_vae("tiny")


def test_clip_deterministic_by_seed_and_index() -> None:
    a = ProceduralVideos(seed=3).clip(5, 20)
    b = ProceduralVideos(seed=3).clip(5, 20)
    assert torch.equal(a[0], b[0]) and a[1] == b[1]
    assert a[0].shape == (20, 128, 128, 3) and a[0].dtype == torch.uint8
    assert not torch.equal(a[0], ProceduralVideos(seed=4).clip(5, 20)[0])
    assert not torch.equal(a[0], ProceduralVideos(seed=3).clip(6, 20)[0])
    m1 = ProceduralVideos(seed=3).multishot(2, 2, 8)
    m2 = ProceduralVideos(seed=3).multishot(2, 2, 8)
    assert torch.equal(m1[0], m2[0]) and m1[1] == m2[1]


def test_shapes_bounce_and_stay_inside() -> None:
    gen = ProceduralVideos(height=48, width=64)  # small frames keep the long clips cheap
    reversals = 0
    for i in range(6):
        frames, _, meta = gen.clip(i, 300)
        c = meta["centres"]  # [T, n, 2]
        r = np.array([s["radius"] for s in meta["shapes"]], dtype=np.float32)
        assert (c[..., 0] >= r - 1e-3).all() and (c[..., 0] <= 64 - r + 1e-3).all()
        assert (c[..., 1] >= r - 1e-3).all() and (c[..., 1] <= 48 - r + 1e-3).all()
        v = np.diff(c, axis=0)
        reversals += int((np.sign(v[1:]) * np.sign(v[:-1]) < 0).sum())
        # the shapes move: consecutive frames differ
        assert (frames[1:] != frames[:-1]).any()
    assert reversals > 0  # 300 frames (12.5 s) move every shape > 2 frame widths, so it bounces


def test_caption_names_colours_and_kinds() -> None:
    gen = ProceduralVideos()
    seen_change = False
    for i in range(12):
        frames, caption, meta = gen.clip(i, 24)
        assert f"on a{'n' if meta['background'][0] in 'aeiou' else ''} {meta['background']} background" in caption
        for s in meta["shapes"]:
            assert f"{s['colour']} {s['kind']}" in caption
            if s["new_colour"]:
                seen_change = True
                assert f"the {s['kind']} turns {s['new_colour']}" in caption
                # the colour is actually present after the change frame, and not in the first frame
                col = torch.tensor(COLOURS[s["new_colour"]], dtype=torch.uint8)
                assert (frames[-1] == col).all(-1).any()
                assert not (frames[0] == col).all(-1).any()
        # the background colour fills the corners region most often
        bg = torch.tensor(COLOURS[meta["background"]], dtype=torch.uint8)
        assert (frames[0] == bg).all(-1).float().mean() > 0.3
    assert seen_change


def test_multishot_cuts_and_prefix() -> None:
    gen = ProceduralVideos()
    frames, captions, meta = gen.multishot(1, shots=3, frames_per_shot=[6, 8, 10])
    assert frames.shape[0] == 24 and meta["bounds"] == [0, 6, 14, 24]
    assert not captions[0].startswith(SCENE_CUT_PREFIX)
    assert all(c == SCENE_CUT_PREFIX + r for c, r in zip(captions[1:], meta["raw_captions"][1:], strict=True))
    bgs = [s["background"] for s in meta["shots"]]
    assert all(a != b for a, b in zip(bgs, bgs[1:], strict=False))


def test_folder_round_trip(tmp_path) -> None:
    """Procedural samples written in the release layout read back through `FolderVideos`: captions, the scene-cut
    prefix where the second shot's file starts, and the content through H.264, 30 → 24 fps and a resize."""
    names = write_procedural_folder(tmp_path, 2, 2, [30, 15], seed=1, height=96, width=128, fps=30)
    assert names == ["000000", "000001"]
    assert json.loads((tmp_path / "caption" / "000000" / "1.json").read_text())["caption"]
    ds = FolderVideos(tmp_path, 64, 64, fps=24, frames=8, chunk_frames=2)  # chunks of 5, 8, 8, 8 frames at 24 fps
    assert len(ds) == 2
    src_frames, _, meta = ProceduralVideos(96, 128, 30, 1).multishot(0, 2, [30, 15])
    plan = ds.plan(0)
    # shot 0 (30 frames at 30 fps, step 1.25) holds 3 chunks (to source frame 25), shot 1 (15 frames) the fourth
    assert [c.video for c in plan.chunks] == [0, 0, 0, 1] and plan.chunks[2].indices[-1] == 25
    first, second = meta["raw_captions"]
    assert plan.prompts == (first, first, first, SCENE_CUT_PREFIX + second)
    video = ds.read(0)
    assert video.shape == (3, 29, 64, 64) and video.dtype == torch.float32 and video.min() >= -1 and video.max() <= 1
    idx = [i for c in plan.chunks[:3] for i in c.indices]
    ref = uint8_to_video(src_frames[:30][idx], 64, 64)
    assert (video[:, :21] - ref).abs().mean() < 0.03  # content survives H.264 + resampling + resize
    assert FolderVideos(tmp_path, 96, 128, frames=8, chunk_frames=2).read(1).shape == (3, 29, 96, 128)  # no resize


def test_latent_cache_hit_is_identical_and_skips_vae(tmp_path, vae) -> None:
    counting = CountingVAE(vae)
    cache = LatentCache(tmp_path / "lat")
    video = ProceduralDataset(ProceduralVideos(32, 32), 1, 1, 9)[0][0]
    z1 = cache.encode(counting, video, "s0")
    assert z1.shape == (16, 3, 2, 2) and counting.calls == 1
    z2 = LatentCache(tmp_path / "lat").encode(counting, video, "s0")
    assert counting.calls == 1 and torch.equal(z1, z2)
    assert torch.equal(z1, vae.encode(video[None])[0])  # what was cached is what the VAE gives
    # another key, or a video of another shape under the same key, misses
    cache.encode(counting, video, "s1")
    cache.encode(counting, video[:, :5], "s0")
    assert counting.calls == 3 and not list((tmp_path / "lat").rglob("*.tmp"))
    # the identity of the VAE keys entries: changed weights miss
    other = build_vae("tiny")
    with torch.no_grad():
        next(other.parameters()).add_(1.0)
    assert vae_identity(other) != vae_identity(vae)


def test_frame_prompts() -> None:
    # shot 0: raw frames 0..11, shot 1: 12..; latent f covers raw 4f-3..4f, shot of its last raw frame
    prompts, idx = frame_prompts([0, 12, 40], num_latents=7, transition_latents=2)
    # latents 0,1,2 → shot 0 (last raw 0,4,8); 3 → raw 12 → shot 1 (transition), 4 → transition, 5,6 plain
    assert prompts == [(0, False), (1, True), (1, False)]
    assert idx == [0, 0, 0, 1, 1, 2, 2]
    assert frame_prompts([0, 12, 40], 7, transition_latents=None)[1] == [0, 0, 0, 1, 1, 1, 1]


def test_training_samples_end_to_end(tmp_path, vae) -> None:
    """Whole-sample sources (procedural): shot bounds give each latent its prompt; the caches make a second pass free
    (no VAE call, no rendering)."""
    source = ProceduralDataset(ProceduralVideos(32, 32, seed=0), 2, shots=2, frames_per_shot=8)
    text = build_text_encoder("tiny", device="cpu")
    counting = CountingVAE(vae)
    lat, emb = LatentCache(tmp_path / "lat"), EmbeddingCache(tmp_path / "emb")
    samples = list(training_samples(source, counting, text, lat, emb, num_latents=4))
    assert len(samples) == 2 and counting.calls == 2
    s = samples[0]
    assert s["latents"].shape == (1, 16, 4, 2, 2) and s["num_valid_latent_frames"] == 4
    assert s["prompt_embeds"].shape == (2, text.max_len, text.dim)
    assert s["frame_prompt"].tolist() == [0, 0, 1, 1]  # latent 2 ends on raw frame 8, the first of shot 1
    assert s["prompts"][1].startswith(SCENE_CUT_PREFIX) and not s["prompts"][0].startswith(SCENE_CUT_PREFIX)
    assert not torch.equal(s["prompt_embeds"][0], s["prompt_embeds"][1])
    assert torch.equal(s["prompt_embeds"], emb.encode(text, s["prompts"], device="cpu"))
    source.gen.multishot = None  # a cache hit must not render the clip
    again = list(training_samples(source, counting, text, lat, emb, num_latents=4))
    assert counting.calls == 2 and torch.equal(again[1]["latents"], samples[1]["latents"])
    assert torch.equal(again[0]["prompt_embeds"], s["prompt_embeds"])
    # too few frames for 5 latents (needs 17, samples have 16): skipped
    assert list(training_samples(source, counting, text, lat, emb, num_latents=5)) == []


def test_generator_speed_report() -> None:
    gen = ProceduralVideos()
    t0 = time.perf_counter()
    frames, _, _ = gen.clip(0, 96)
    ms = (time.perf_counter() - t0) * 1e3 / frames.shape[0]
    print(f"procedural 128x128: {ms:.2f} ms/frame")


def test_colour_change_probability_narrows_the_task_and_keeps_other_draws() -> None:
    from longlive.train.data import ProceduralDataset

    base = ProceduralVideos(64, 64, 24, seed=5, max_shapes=1)
    still = ProceduralVideos(64, 64, 24, seed=5, max_shapes=1, colour_change=0.0)
    always = ProceduralVideos(64, 64, 24, seed=5, max_shapes=1, colour_change=1.0)
    caps = [(base.clip(i, 12)[1], still.clip(i, 12)[1], always.clip(i, 12)[1]) for i in range(16)]
    assert any("turns" in b for b, _, _ in caps)  # the default changes colour in about half the clips
    assert not any("turns" in s for _, s, _ in caps) and all("turns" in a for _, _, a in caps)
    # same draw order: without its colour-change clause, every caption is the default's
    assert [s for _, s, _ in caps] == [b.split(";")[0].rstrip(".") + "." for b, _, _ in caps]
    keys = {ProceduralDataset(g, n_samples=1).sample_key(0) for g in (base, still)}
    assert len(keys) == 2  # narrowed data never shares a latent-cache entry with the default
    with pytest.raises(ValueError, match="colour_change is a probability"):
        ProceduralVideos(64, 64, 24, colour_change=1.5)


def test_speed_range_narrows_the_motion_and_keeps_other_draws() -> None:
    from longlive.train.data import ProceduralDataset

    base = ProceduralVideos(64, 64, 24, seed=7, max_shapes=1, colour_change=0.0)
    slow = ProceduralVideos(64, 64, 24, seed=7, max_shapes=1, colour_change=0.0, speed=(0.05, 0.1))
    still = ProceduralVideos(64, 64, 24, seed=7, max_shapes=1, colour_change=0.0, speed=(0.0, 0.0))
    for i in range(8):
        (_, cap_b, mb), (_, cap_s, ms), (fr_0, cap_0, m0) = base.clip(i, 12), slow.clip(i, 12), still.clip(i, 12)
        assert cap_b == cap_s == cap_0  # same scene draws, only the speed differs
        cb, cs, c0 = (np.asarray(m["centres"]) for m in (mb, ms, m0))
        assert np.allclose(cb[0], cs[0]) and np.allclose(cb[0], c0[0])  # same start
        step = np.linalg.norm(np.diff(cs[:, 0], axis=0), axis=-1)
        assert np.all(step <= 0.1 * 64 / 24 + 1e-4) and step.max() > 0.5 * 0.05 * 64 / 24  # bounces only shorten a step
        assert np.allclose(c0, c0[0]) and torch.equal(fr_0[0], fr_0[-1])  # speed 0: a still shape
    keys = {ProceduralDataset(g, n_samples=1).sample_key(0) for g in (base, slow)}
    assert len(keys) == 2
    with pytest.raises(ValueError, match="speed range"):
        ProceduralVideos(64, 64, 24, speed=(0.5, 0.1))


def test_start_spread_centres_the_start_and_keeps_other_draws() -> None:
    from longlive.train.data import ProceduralDataset

    kw = dict(seed=3, max_shapes=1, colour_change=0.0, radius=(0.2, 0.3))
    base, centred, near = (ProceduralVideos(48, 64, 24, start_spread=s, **kw) for s in (1.0, 0.0, 0.25))
    for i in range(8):
        (_, cap_b, mb), (_, cap_c, mc), (_, cap_n, mn) = base.clip(i, 6), centred.clip(i, 6), near.clip(i, 6)
        assert cap_b == cap_c == cap_n
        r = mb["shapes"][0]["radius"]
        assert mc["shapes"][0]["radius"] == r
        assert np.allclose(np.asarray(mc["centres"])[0, 0], [32.0, 24.0])  # (x, y) of the frame centre
        # the same draw, scaled towards the centre: a quarter of the base offset
        off_b = np.asarray(mb["centres"])[0, 0] - [32.0, 24.0]
        assert np.allclose(np.asarray(mn["centres"])[0, 0] - [32.0, 24.0], 0.25 * off_b, atol=1e-4)
    keys = {ProceduralDataset(g, n_samples=1).sample_key(0) for g in (base, centred)}
    assert len(keys) == 2
    with pytest.raises(ValueError, match="start_spread"):
        ProceduralVideos(64, 64, 24, start_spread=1.5)


def test_multishot_captions_match_the_rendered_ones_without_rendering() -> None:
    from longlive.train.data import ProceduralDataset

    gen = ProceduralVideos(48, 48, 24, seed=11)
    for index, shots, lengths in ((0, 1, 9), (3, 2, 9), (5, 3, [5, 9, 13])):
        _, _, meta = gen.multishot(index, shots, lengths)
        assert gen.multishot_captions(index, shots, lengths) == meta["raw_captions"]
    ds = ProceduralDataset(gen, n_samples=4, shots=2, frames_per_shot=9)
    assert ds.captions(2) == ds[2][1]
    with pytest.raises(IndexError):
        ds.captions(4)
    with pytest.raises(ValueError, match="one length per shot"):
        gen.multishot_captions(0, 2, [5])
