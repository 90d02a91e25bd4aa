"""Padded folder samples (allow_padding): frames at or past num_valid_latent_frames carry no loss, as in the release."""

from __future__ import annotations

import pytest
import torch

from longlive.model.dit import build_model
from longlive.model.presets import get_preset
from longlive.train.teacher_forcing import batched_teacher_forcing_loss, teacher_forcing_loss
from longlive.train.trainer import ARTrainer, TrainConfig, valid_frames_of

MC = get_preset("tiny")
CF = MC.chunk_frames
FRAMES = 3 * CF


def sample(seed: int):
    g = torch.Generator().manual_seed(seed)
    h, w = MC.latent_hw
    x0 = torch.randn(1, MC.in_channels, FRAMES, h, w, generator=g)
    return x0, torch.randn(x0.shape, generator=g), torch.randn(1, MC.text_len, MC.text_dim, generator=g)


def loss(model, x0, noise, pe, **kw):
    return teacher_forcing_loss(model, x0, pe, torch.zeros(FRAMES, dtype=torch.long), noise=noise,
                                t_index=torch.tensor([700, 300, 100]), attn="dense", **kw)


def test_padded_frames_carry_no_loss_and_the_real_ones_keep_theirs():
    model = build_model(MC, seed=0).eval()
    x0, noise, pe = sample(1)
    other = x0.clone()
    other[:, :, 2 * CF:] = torch.randn(other[:, :, 2 * CF:].shape)  # the padded block differs
    with torch.no_grad():
        full = loss(model, x0, noise, pe)
        assert torch.equal(loss(model, x0, noise, pe, valid_frames=FRAMES), full)  # nothing padded: the plain mean
        masked = loss(model, x0, noise, pe, valid_frames=2 * CF)
        # block-causal: the real frames never see the padding, so changing it moves only the unmasked loss
        torch.testing.assert_close(loss(model, other, noise, pe, valid_frames=2 * CF), masked, rtol=0, atol=1e-7)
        assert not torch.allclose(loss(model, other, noise, pe), full)
        # the masked mean is the mean over the real frames of a plain run on the same inputs restricted to them
        short = teacher_forcing_loss(model, x0[:, :, :2 * CF], pe, torch.zeros(2 * CF, dtype=torch.long),
                                     noise=noise[:, :, :2 * CF], t_index=torch.tensor([700, 300]), attn="dense")
        torch.testing.assert_close(masked, short, rtol=1e-5, atol=1e-7)
        with pytest.raises(ValueError, match="valid_frames"):
            loss(model, x0, noise, pe, valid_frames=0)


def test_batched_loss_masks_each_sample_by_its_own_count():
    model = build_model(MC, seed=0).eval()
    parts = [sample(s) for s in (2, 3)]
    x0, noise, pe = (torch.cat([p[i] for p in parts]) for i in range(3))
    t_index = torch.tensor([[700, 300, 100], [500, 200, 900]])
    with torch.no_grad():
        single = [teacher_forcing_loss(model, p[0], p[2], torch.zeros(FRAMES, dtype=torch.long), noise=p[1],
                                       t_index=t_index[b], attn="dense", valid_frames=v)
                  for b, (p, v) in enumerate(zip(parts, (FRAMES, CF), strict=True))]
        batched = batched_teacher_forcing_loss(model, x0, pe, noise=noise, t_index=t_index, attn="dense",
                                               valid_frames=[FRAMES, CF])
    # per-sample counts weight the frames, not the samples: (sum of real-frame losses) / (real frames)
    expected = (single[0] * FRAMES + single[1] * CF) / (FRAMES + CF)
    torch.testing.assert_close(batched, expected, rtol=1e-5, atol=1e-7)


def test_the_trainer_reads_num_valid_latent_frames(tmp_path):
    x0, _, pe = sample(4)
    padded = {"x0": x0, "prompt_embeds": pe, "frame_prompt": torch.zeros(FRAMES, dtype=torch.long),
              "num_valid_latent_frames": CF}
    assert valid_frames_of(padded, FRAMES) == CF and valid_frames_of({"x0": x0}, FRAMES) == FRAMES
    whole = dict(padded, num_valid_latent_frames=FRAMES)
    changed = dict(padded, x0=torch.cat([x0[:, :, :CF], torch.randn(x0[:, :, CF:].shape)], dim=2))
    tr = ARTrainer(build_model(MC, seed=0), TrainConfig(train_steps=1, progress=False, fsdp=False,
                                                        activation_checkpointing=False, attn="dense"),
                   iter([]), tmp_path)
    with torch.no_grad():
        a, b, c = (tr.compute_loss(s, step=1, recycle=False) for s in (padded, changed, whole))
    torch.testing.assert_close(a, b, rtol=0, atol=1e-7)  # only the padded frames differ: the same loss
    assert not torch.allclose(a, c)
