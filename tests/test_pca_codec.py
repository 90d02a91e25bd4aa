"""The tiny preset's linear patch codec: the Wan VAE interface, exact linear algebra, fitting, files."""

from __future__ import annotations

import pytest
import torch

from longlive.train.data import COLOURS, ProceduralVideos
from longlive.vae import build_vae, load_vae
from longlive.vae.pca_codec import PCACodec, fit_pca_codec, save_codec

GEN = ProceduralVideos(128, 128, 24, seed=0)


def _unit(frames: torch.Tensor) -> torch.Tensor:
    return frames.permute(3, 0, 1, 2).float().div(127.5).sub(1.0)[None]


@pytest.fixture(scope="module")
def fitted() -> PCACodec:
    codec = build_vae("tiny-pca")
    fit_pca_codec(codec, [GEN.clip(i, 13)[0] for i in range(24)], log=lambda s: None)
    return codec


@pytest.fixture(scope="module")
def fitted_tube() -> PCACodec:
    codec = build_vae("tiny-pca")
    fit_pca_codec(codec, [GEN.clip(i, 13)[0] for i in range(24)], log=lambda s: None, first_tube=True)
    return codec


def test_first_frame_as_a_still_tube(fitted_tube, tmp_path):
    """Frame 0 goes through the group basis as 4 copies of itself; its decode is the mean of the projected tube
    (float64 reference); streaming equals whole; the flag survives save and load."""
    codec = fitted_tube
    assert bool(codec.first_tube)
    video = _unit(GEN.clip(778, 9)[0])
    lat = codec.encode(video)
    rec = codec.decode(lat)
    s = 16
    v = video.double()[0]
    tube = v[:, :1].expand(3, 4, 128, 128).reshape(3, 4, 8, s, 8, s).permute(2, 4, 1, 3, 5, 0).reshape(64, -1)
    mean, basis = codec.group_mean.double(), codec.group_basis.double()
    proj = (tube - mean) @ basis.T @ basis + mean  # [64 positions, 4·16·16·3]
    ref = proj.reshape(8, 8, 4, s, s, 3).mean(dim=2).permute(4, 0, 2, 1, 3).reshape(3, 128, 128).clamp(-1, 1)
    torch.testing.assert_close(rec.double()[0, :, 0], ref, atol=2e-5, rtol=0)
    # the later frames are coded exactly as without the tube
    torch.testing.assert_close(rec[:, :, 1:], codec._decode(lat[:, :, 1:], first=False), atol=0, rtol=0)
    stream = codec.streaming_decoder()
    assert torch.equal(torch.cat([stream.decode(lat[:, :, :1]), stream.decode(lat[:, :, 1:])], dim=2), rec)
    save_codec(codec, tmp_path / "vae.safetensors")
    loaded = load_vae("tiny-pca", tmp_path / "vae.safetensors")
    assert bool(loaded.first_tube) and torch.equal(loaded.decode(lat), rec)


def test_interface_shapes_and_errors():
    codec = build_vae("tiny-pca")
    assert isinstance(codec, PCACodec) and codec.stride == (4, 16, 16) and codec.z_dim == 16
    lat = codec.encode(torch.zeros(2, 3, 9, 64, 32))
    assert lat.shape == (2, 16, 3, 4, 2)
    assert codec.decode(lat).shape == (2, 3, 9, 64, 32)
    with pytest.raises(ValueError, match="T = 1 \\+ 4"):
        codec.encode(torch.zeros(1, 3, 8, 64, 64))
    with pytest.raises(ValueError, match="divisible by the codec stride"):
        codec.encode(torch.zeros(1, 3, 5, 60, 64))
    with pytest.raises(ValueError, match="latents \\[B, 16"):
        codec.decode(torch.zeros(1, 8, 2, 4, 4))


def test_decode_of_encode_is_the_float64_orthogonal_projection(fitted):
    video = _unit(GEN.clip(777, 9)[0])
    rec = fitted.decode(fitted.encode(video))
    s, z = 16, 16
    # reference: rows of 4-frame 16×16×3 patches, projected on the basis in float64 (frame 0 alone on its own)
    v = video.double()[0]  # [3, 9, 128, 128]

    def rows(x, f):
        return x.reshape(3, -1, f, 8, s, 8, s).permute(1, 3, 5, 2, 4, 6, 0).reshape(-1, f * s * s * 3)

    def project(r, mean, basis):
        return (r - mean.double()) @ basis.double().T @ basis.double() + mean.double()

    ref_first = project(rows(v[:, :1], 1), fitted.first_mean, fitted.first_basis)
    ref_group = project(rows(v[:, 1:], 4), fitted.group_mean, fitted.group_basis)
    got_first = rows(rec.double()[0][:, :1], 1)
    got_group = rows(rec.double()[0][:, 1:], 4)
    torch.testing.assert_close(got_first, ref_first.clamp(-1, 1), atol=2e-5, rtol=0)
    torch.testing.assert_close(got_group, ref_group.clamp(-1, 1), atol=2e-5, rtol=0)
    assert fitted.group_basis.shape == (z, 4 * s * s * 3)
    eye = fitted.group_basis.double() @ fitted.group_basis.double().T
    torch.testing.assert_close(eye, torch.eye(z, dtype=torch.float64), atol=1e-5, rtol=0)


def test_streaming_decode_equals_whole_decode(fitted):
    lat = fitted.encode(_unit(GEN.clip(5, 21)[0]))
    stream = fitted.streaming_decoder()
    assert stream.first
    parts = [stream.decode(lat[:, :, :2]), stream.decode(lat[:, :, 2:5]), stream.decode(lat[:, :, 5:])]
    assert [p.shape[2] for p in parts] == [5, 12, 4] and not stream.first
    assert torch.equal(torch.cat(parts, dim=2), fitted.decode(lat))
    stream.reset()
    assert stream.first


def test_fitted_codec_keeps_shapes_and_unit_latents(fitted):
    from longlive.eval.palette import palette_match

    held = GEN.clip(50_123, 29)[0]
    video = _unit(held)
    lat = fitted.encode(video)
    rec = fitted.decode(lat)
    psnr = 10 * torch.log10(4 / (rec - video).pow(2).mean())
    assert psnr > 21  # the learned tiny Wan VAE reached ≈15 dB in the tiny default's budget
    rec_u8 = rec[0].permute(1, 2, 3, 0).add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8)
    assert palette_match(rec_u8, torch.tensor(list(COLOURS.values()), dtype=torch.uint8)) > 0.6
    train = torch.cat([fitted.encode(_unit(GEN.clip(i, 13)[0])) for i in range(24)], dim=2)
    torch.testing.assert_close(train.mean(dim=(0, 2, 3, 4)), torch.zeros(16), atol=1e-3, rtol=0)
    torch.testing.assert_close(train.std(dim=(0, 2, 3, 4)), torch.ones(16), atol=1e-2, rtol=0)


def test_save_and_strict_load(fitted, tmp_path):
    path = tmp_path / "vae.safetensors"
    save_codec(fitted, path)
    assert (tmp_path / "vae_stats.json").exists()
    loaded = load_vae("tiny-pca", path)
    video = _unit(GEN.clip(9, 5)[0])
    assert torch.equal(loaded.encode(video), fitted.encode(video))
    wan = build_vae("tiny")
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in wan.state_dict().items()}, str(tmp_path / "wan.safetensors"))
    with pytest.raises(ValueError, match="missing key 'first_mean'"):
        load_vae("tiny-pca", tmp_path / "wan.safetensors")
    # a codec saved before `first_tube` existed loads as what it was: frame 0 through its own basis
    old = {k: v.contiguous() for k, v in fitted.state_dict().items() if k != "first_tube"}
    save_file(old, str(tmp_path / "old.safetensors"))
    legacy = load_vae("tiny-pca", tmp_path / "old.safetensors")
    assert not bool(legacy.first_tube) and torch.equal(legacy.encode(video), fitted.encode(video))


def test_the_shipped_codec_decodes_in_bf16_close_to_float32():
    """The shipped codec loaded in BF16 keeps its float32 latent stats (apply_stats): decode must still run, and stay
    within BF16 rounding of the float32 decode (the tiny gate runs the tiny preset in BF16 on the GPU)."""
    from pathlib import Path

    from longlive.model.presets import get_preset
    from longlive.weights import load_vae_for

    path = Path(__file__).resolve().parents[1] / "longlive/assets/tiny/vae.safetensors"
    f32, _ = load_vae_for(get_preset("tiny"), path)
    b16, _ = load_vae_for(get_preset("tiny"), path, dtype=torch.bfloat16)
    z = torch.randn(1, f32.z_dim, 3, 4, 4, generator=torch.Generator().manual_seed(3))
    ref, out = f32.decode(z), b16.decode(z.bfloat16())
    assert out.dtype == torch.bfloat16 and out.shape == ref.shape
    assert (out.float() - ref).abs().max().item() < 0.05
