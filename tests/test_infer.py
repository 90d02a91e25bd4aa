"""Scheduler timesteps, UniPC against an independent implementation, and the AR chunk loop."""

import pytest
import torch

from longlive.infer.pipeline import SCENE_CUT_PREFIX, GenerationSpec, generate, plan_chunks
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


def test_plan_chunks_scene_cuts_and_shots():
    prompts = ["a cat", SCENE_CUT_PREFIX + "a dog", "a dog runs", SCENE_CUT_PREFIX + "a bird"]
    plans = plan_chunks(prompts, 8, [2, 4, 6])
    assert [p.prompt for p in plans] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert [p.cut for p in plans] == [False, False, True, False, False, False, True, False]
    assert [p.shot for p in plans] == [0, 0, 1, 1, 1, 1, 2, 2]
    with pytest.raises(ValueError, match="increase strictly"):
        plan_chunks(prompts, 8, [2, 2, 6])
    with pytest.raises(ValueError, match="need 3 switch chunks"):
        plan_chunks(prompts, 8, [2])


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
    generate(model, GenerationSpec(prompts=prompts, frames=8, steps=2, switch_chunks=[2]), _embeds(cfg, 2))
    per_chunk = offsets[::3]  # 2 steps + clean re-run per chunk
    assert per_chunk == [0, 2, 4 + 8, 6 + 8]


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
