"""palette_match: 1 on palette-only frames, ~0 on uniform noise, and its tolerance boundary."""

import math

import pytest
import torch

from longlive.eval.palette import palette_match

PAL = torch.tensor([[255, 0, 0], [0, 0, 255], [128, 128, 128]], dtype=torch.uint8)


def test_palette_frames_score_one_and_noise_scores_low():
    idx = torch.randint(0, 3, (4, 16, 16))
    assert palette_match(PAL[idx], PAL) == 1.0
    noise = torch.randint(0, 256, (4, 16, 16, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    assert palette_match(noise, PAL) < 0.05


def test_tolerance_boundary():
    f = torch.full((1, 1, 2, 3), 128, dtype=torch.uint8)
    f[0, 0, 1] = torch.tensor([128 + 25, 128, 128])
    assert palette_match(f, PAL, tol=24) == 0.5
    assert palette_match(f, PAL, tol=25) == 1.0


def test_vae_training_pass_equals_inference_and_loss_falls():
    from longlive.train.vae_train import decode_mu, encode_mu, train_vae
    from longlive.vae import build_vae

    torch.manual_seed(0)
    vae = build_vae("tiny")
    v = torch.rand(1, 3, 5, 64, 64) * 2 - 1
    with torch.no_grad():
        assert torch.equal(encode_mu(vae, v), vae.encode(v))  # tiny preset: identity latent statistics
        assert torch.equal(decode_mu(vae, encode_mu(vae, v)).clamp(-1, 1), vae.decode(vae.encode(v)))

    def clips(i):  # a red square sliding right: the same clip every time, so the loss must fall
        f = torch.zeros(5, 64, 64, 3, dtype=torch.uint8)
        for t in range(5):
            f[t, 20:40, 5 + 4 * t : 25 + 4 * t, 0] = 255
        return f

    losses = train_vae(vae, clips, steps=12, batch=1, crop=None, log=lambda *_: None)
    assert losses[-1] < 0.7 * losses[0]


def test_vae_window_pass_equals_full_pass_and_windowed_training_runs():
    """A window after a no-grad prefix reconstructs exactly the frames the whole-clip pass gives for it."""
    from longlive.train.vae_train import decode_mu, encode_mu, train_vae, window_reconstruct
    from longlive.vae import build_vae

    torch.manual_seed(0)
    vae = build_vae("tiny")
    v = torch.rand(1, 3, 13, 32, 32) * 2 - 1  # 4 latents
    with torch.no_grad():
        mu = encode_mu(vae, v)
        full = decode_mu(vae, mu)
        for start, n in [(0, 4), (0, 2), (2, 2), (1, 3)]:
            rec, target, wmu = window_reconstruct(vae, v, start, n)
            a, b = (0, 1 + 4 * (n - 1)) if start == 0 else (1 + 4 * (start - 1), 1 + 4 * (start + n - 1))
            assert torch.equal(target, v[:, :, a:b])
            torch.testing.assert_close(rec, full[:, :, a:b])
            torch.testing.assert_close(wmu, mu[:, :, start : start + n])

    lengths = []

    def clips(i, n):
        lengths.append(n)
        return torch.randint(0, 256, (n, 32, 32, 3), dtype=torch.uint8)

    losses = train_vae(vae, clips, steps=3, batch=1, crop=None, prefix_latents=2, window_latents=1, warmup=2,
                       min_lr=1e-5, zero_init=True, log=lambda *_: None)
    assert len(losses) == 3 and all(n in (1, 5, 9) for n in lengths)


def test_prompt_colour_match_counts_prompted_foreground_pixels():
    from longlive.eval.palette import prompt_colour_match

    grey, red, blue = torch.tensor([128, 128, 128]), torch.tensor([220, 40, 40]), torch.tensor([40, 80, 220])
    frames = grey.repeat(2, 8, 8, 1).to(torch.uint8)
    frames[0, :2, :2] = red.to(torch.uint8)  # 4 red pixels
    frames[1, :1, :4] = blue.to(torch.uint8)  # 4 blue pixels
    assert prompt_colour_match(frames, red[None], grey) == 0.5
    assert prompt_colour_match(frames, torch.stack([red, blue]), grey) == 1.0
    frames[1, :1, :4] = (red + torch.tensor([0, 48, 0])).to(torch.uint8)  # at the tolerance: still red
    assert prompt_colour_match(frames, red[None], grey) == 1.0
    frames[1, :1, :4] = (red + torch.tensor([0, 49, 0])).to(torch.uint8)  # one past it
    assert prompt_colour_match(frames, red[None], grey) == 0.5
    assert math.isnan(prompt_colour_match(grey.repeat(1, 4, 4, 1).to(torch.uint8), red[None], grey))
    with pytest.raises(ValueError, match="at least one"):
        prompt_colour_match(frames, torch.zeros(0, 3), grey)


def test_foreground_fraction():
    from longlive.eval.palette import foreground_fraction

    grey = torch.tensor([128, 128, 128])
    frames = grey.repeat(2, 8, 8, 1).to(torch.uint8)
    assert foreground_fraction(frames, grey) == 0.0
    frames[0, :4, :4] = torch.tensor([128, 128 + 49, 128], dtype=torch.uint8)  # 16 of 128 pixels, one past tol
    frames[1, :4, :4] = torch.tensor([128, 128 + 48, 128], dtype=torch.uint8)  # at tol: background
    assert foreground_fraction(frames, grey) == 16 / 128
