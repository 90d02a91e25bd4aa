"""palette_match: 1 on palette-only frames, ~0 on uniform noise, and its tolerance boundary."""

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
