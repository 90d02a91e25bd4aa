"""Batched teacher forcing (`batch_size` > 1): the batched loss is the mean of the single-sample losses, a batch of
one with error recycling is the single-sample path, and the trainer refuses what it cannot batch."""

from __future__ import annotations

import copy

import pytest
import torch

from longlive.model.dit import build_model
from longlive.model.presets import get_preset
from longlive.train.error_recycling import ErrorRecycler, ErrorRecyclingConfig
from longlive.train.teacher_forcing import batched_teacher_forcing_loss, teacher_forcing_loss
from longlive.train.trainer import ARTrainer, RandomLatentData, TrainConfig

MC = get_preset("tiny")
FRAMES = 4


def _batch(b: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    h, w = MC.latent_hw
    x0 = torch.randn(b, MC.in_channels, FRAMES, h, w, generator=g)
    noise = torch.randn(x0.shape, generator=g)
    pe = torch.randn(b, MC.text_len, MC.text_dim, generator=g)
    t_index = torch.randint(0, 1000, (b, FRAMES // MC.chunk_frames), generator=g)
    return x0, noise, pe, t_index


@pytest.mark.parametrize("weighting", ["wan", "uniform"])
def test_batched_loss_is_the_mean_of_single_sample_losses(weighting):
    model = build_model(MC, seed=0)
    x0, noise, pe, t_index = _batch(3)
    batched = batched_teacher_forcing_loss(model, x0, pe, noise=noise, t_index=t_index, attn="dense",
                                           loss_weighting=weighting)
    singles = [teacher_forcing_loss(model, x0[b:b + 1], pe[b:b + 1], torch.zeros(FRAMES, dtype=torch.long),
                                    noise=noise[b:b + 1], t_index=t_index[b], attn="dense", loss_weighting=weighting)
               for b in range(3)]
    torch.testing.assert_close(batched, torch.stack(singles).mean(), rtol=1e-5, atol=1e-6)


def test_batch_of_one_with_error_recycling_is_the_single_sample_path():
    model = build_model(MC, seed=0)
    cfg = ErrorRecyclingConfig(p_clean=0.0, p_context=1.0, p_latent=1.0, p_noise=1.0)
    rec_a = ErrorRecycler(cfg)
    x0, noise, pe, t_index = _batch(1, seed=1)
    for seed in range(3):  # fill the banks with a few recorded steps
        teacher_forcing_loss(model, x0, pe, torch.zeros(FRAMES, dtype=torch.long), noise=noise, t_index=t_index[0],
                             attn="dense", recycler=rec_a, recycle_generator=torch.Generator().manual_seed(seed))
    rec_b = copy.deepcopy(rec_a)
    single = teacher_forcing_loss(model, x0, pe, torch.zeros(FRAMES, dtype=torch.long), noise=noise,
                                  t_index=t_index[0], attn="dense", recycler=rec_a,
                                  recycle_generator=torch.Generator().manual_seed(7))
    batched = batched_teacher_forcing_loss(model, x0, pe, noise=noise, t_index=t_index, attn="dense", recycler=rec_b,
                                           recycle_generators=[torch.Generator().manual_seed(7)])
    torch.testing.assert_close(batched, single, rtol=1e-6, atol=1e-7)
    a, b = rec_a.state_dict(), rec_b.state_dict()
    for bank in ("x0", "v"):
        for ia, ib in zip(a[bank]["items"], b[bank]["items"], strict=True):
            assert len(ia) == len(ib) and all(torch.equal(u, v) for u, v in zip(ia, ib, strict=True))


def _single_prompt(data: RandomLatentData):
    for s in data:
        yield {"x0": s["x0"], "prompts_embeds": s["prompts_embeds"][:1], "frame_prompt": torch.zeros(FRAMES)}


def test_trainer_batches_single_prompt_samples_and_refuses_the_rest(tmp_path):
    model = build_model(MC, seed=0)
    cfg = TrainConfig(train_steps=2, lr=1e-3, batch_size=3, text_dropout=0.5, attn="dense", progress=False,
                      resume=False)
    tr = ARTrainer(model, cfg, _single_prompt(RandomLatentData(MC, FRAMES, seed=0)), tmp_path / "a")
    before = [p.detach().clone() for p in tr.params]
    tr.run()
    assert tr.step == 2 and tr.tokens_per_step == 3 * 2 * FRAMES * (MC.latent_hw[0] // 2) * (MC.latent_hw[1] // 2)
    assert any(not torch.equal(a, b) for a, b in zip(before, tr.params, strict=True))
    multi = ARTrainer(build_model(MC, seed=0), TrainConfig(train_steps=1, batch_size=2, attn="dense", progress=False,
                                                           resume=False),
                      RandomLatentData(MC, FRAMES, seed=0, num_prompts=2), tmp_path / "b")
    with pytest.raises(ValueError, match="takes single-prompt samples"):
        multi.run()
    with pytest.raises(ValueError, match="batch_size must be ≥ 1"):
        TrainConfig(batch_size=0)


def test_timestep_densities():
    from longlive.train.teacher_forcing import sample_t_index, sigma_table

    sigmas, _ = sigma_table()
    g = torch.Generator().manual_seed(0)
    table = sigmas[sample_t_index(40_000, g, "table")]
    flat = sigmas[sample_t_index(40_000, g, "sigma")]
    assert abs(float((table < 0.3).float().mean()) - 0.079) < 0.01  # the release's draws: σ skewed high
    for q in (0.1, 0.3, 0.5, 0.9):  # σ uniform on (0, 1), up to the table's spacing
        assert abs(float((flat < q).float().mean()) - q) < 0.01
    with pytest.raises(ValueError, match="unknown timestep density 'beta'"):
        sample_t_index(2, g, "beta")
    with pytest.raises(ValueError, match="unknown timestep_density"):
        TrainConfig(timestep_density="beta")
