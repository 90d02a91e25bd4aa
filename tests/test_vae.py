"""Wan VAE: published layouts, causal streaming == batch, loading, and small independent numerics checks."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from longlive.vae import CausalCache, CausalConv3d, VAEConfig, build_vae, load_vae
from longlive.vae.layers import AttentionBlock, AvgDown3D, DupUp3D, RMSNorm, patchify, unpatchify, unpatchify_into

SPEC = Path(__file__).resolve().parents[1] / "spec" / "published_state_dict_shapes.json"  # in the repo


def _randomize(vae: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial weights (random gains too) so equality checks are not satisfied by accident."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in vae.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            p.copy_(1.0 + 0.2 * noise if name.endswith("gamma") else 0.3 * noise * p.abs().mean().clamp_min(0.1))
    return vae


@pytest.fixture(scope="module")
def tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    return _randomize(build_vae("tiny"))


@pytest.fixture(scope="module")
def tiny21() -> torch.nn.Module:
    torch.manual_seed(0)
    return _randomize(build_vae("tiny-wan2.1"), seed=1)


# ---- published layouts ------------------------------------------------------------------------


@pytest.mark.parametrize(("preset", "n_keys", "n_params"), [("wan2.2", 196, 704_688_668), ("wan2.1", 194, None)])
def test_published_layout_matches_json(preset: str, n_keys: int, n_params: int | None) -> None:
    ref = json.loads(SPEC.read_text())[f"vae_{preset}"]
    vae = build_vae(preset, device="meta")
    ours = {k: list(v.shape) for k, v in vae.state_dict().items()}
    assert list(ours) == list(ref)  # same keys, same order
    assert ours == ref
    assert len(ours) == n_keys
    count = sum(p.numel() for p in vae.parameters())
    assert count == sum(torch.Size(s).numel() for s in ref.values())
    if n_params is not None:
        assert count == n_params


def test_preset_properties() -> None:
    for preset, z, stride in [("wan2.2", 48, (4, 16, 16)), ("wan2.1", 16, (4, 8, 8)), ("tiny", 16, (4, 16, 16))]:
        vae = build_vae(preset, device="meta")
        assert vae.z_dim == z and vae.stride == stride
    stats = build_vae("wan2.2", device="meta")
    assert stats.latent_mean.shape == (48,) and "latent_mean" not in stats.state_dict()
    with pytest.raises(ValueError, match="known presets"):
        build_vae("nope", device="meta")


# ---- shapes -------------------------------------------------------------------------------------


@pytest.mark.parametrize("frames", [1, 5, 9])
def test_encode_shape_and_roundtrip(tiny: torch.nn.Module, frames: int) -> None:
    video = torch.rand(2, 3, frames, 32, 64) * 2 - 1
    z = tiny.encode(video)
    assert z.shape == (2, 16, 1 + (frames - 1) // 4, 2, 4)
    out = tiny.decode(z)
    assert out.shape == video.shape
    assert out.abs().max() <= 1.0


def test_encode_rejects_bad_shapes(tiny: torch.nn.Module) -> None:
    with pytest.raises(ValueError, match="1 \\+ 4"):
        tiny.encode(torch.zeros(1, 3, 4, 32, 32))
    with pytest.raises(ValueError, match="divisible"):
        tiny.encode(torch.zeros(1, 3, 5, 24, 32))
    with pytest.raises(ValueError, match="latents"):
        tiny.decode(torch.zeros(1, 8, 2, 2, 2))


# ---- streaming == batch -------------------------------------------------------------------------


@pytest.mark.parametrize("splits", [[1, 1, 1, 1, 1, 1], [2, 3, 1], [3, 3], [1, 2, 3], [6]])
@pytest.mark.parametrize("which", ["tiny", "tiny21"])
def test_streaming_equals_batch(request: pytest.FixtureRequest, which: str, splits: list[int]) -> None:
    vae = request.getfixturevalue(which)
    h, w = 32 // vae.stride[1], 32 // vae.stride[2]
    latents = torch.randn(2, vae.z_dim, sum(splits), h, w, generator=torch.Generator().manual_seed(3))
    ref = vae.decode(latents)
    stream = vae.streaming_decoder()
    parts, start = [], 0
    for i, n in enumerate(splits):
        out = stream.decode(latents[:, :, start : start + n])
        assert out.shape[2] == (1 + 4 * (n - 1) if i == 0 else 4 * n)
        parts.append(out)
        start += n
    assert torch.equal(torch.cat(parts, dim=2), ref)
    # Not saturated: the comparison is meaningful.
    assert (ref.abs() < 0.99).float().mean() > 0.3
    stream.reset()
    assert torch.equal(stream.decode(latents), ref)


@pytest.mark.parametrize("which", ["tiny", "tiny21"])
def test_one_pass_over_whole_sequence_matches_per_frame(request: pytest.FixtureRequest, which: str) -> None:
    """A single pass over all frames (zero padding only, no carried cache) equals the per-step cached path."""
    vae = request.getfixturevalue(which)
    latents = torch.randn(1, vae.z_dim, 4, 2, 2, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        x = vae.conv2(latents * vae.latent_std.view(1, -1, 1, 1, 1) + vae.latent_mean.view(1, -1, 1, 1, 1))
        whole = vae.decoder(x, CausalCache())
        cache = CausalCache()
        steps = []
        for i in range(4):
            steps.append(vae.decoder(x[:, :, i : i + 1], cache))
            cache.advance()
    torch.testing.assert_close(whole, torch.cat(steps, dim=2), rtol=1e-5, atol=1e-5)

    video = torch.rand(1, 3, 9, 32, 32, generator=torch.Generator().manual_seed(5)) * 2 - 1
    p = vae.config.patch_size
    with torch.no_grad():
        enc_whole = vae.encoder(patchify(video, p), CausalCache())
        enc = vae.encode(video)
        mu = F.conv3d(enc_whole, vae.conv1.weight[: vae.z_dim], vae.conv1.bias[: vae.z_dim])
    torch.testing.assert_close((mu - vae.latent_mean.view(1, -1, 1, 1, 1)) / vae.latent_std.view(1, -1, 1, 1, 1), enc)


def test_latent_normalisation_uses_stats(tiny: torch.nn.Module) -> None:
    cfg = tiny.config
    mean = tuple(0.1 * i for i in range(cfg.z_dim))
    std = tuple(1.0 + 0.05 * i for i in range(cfg.z_dim))
    stats_cfg = VAEConfig("tiny-stats", cfg.arch, cfg.z_dim, cfg.enc_dim, cfg.dec_dim, latent_mean=mean, latent_std=std)
    other = build_vae(stats_cfg)
    other.load_state_dict(tiny.state_dict())
    video = torch.rand(1, 3, 5, 32, 32) * 2 - 1
    m, s = torch.tensor(mean).view(1, -1, 1, 1, 1), torch.tensor(std).view(1, -1, 1, 1, 1)
    raw = tiny.encode(video)
    torch.testing.assert_close(other.encode(video), (raw - m) / s, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(other.decode((raw - m) / s), tiny.decode(raw), rtol=1e-5, atol=1e-5)


def test_channels_last_is_numerically_the_same(tiny: torch.nn.Module) -> None:
    vae = build_vae("tiny")
    vae.load_state_dict(tiny.state_dict())
    vae.to(memory_format=torch.channels_last_3d)  # the stock Module.to would reject the 4-D Conv2d weights
    assert vae.decoder.conv1.weight.is_contiguous(memory_format=torch.channels_last_3d)
    latents = torch.randn(1, 16, 3, 2, 2)
    torch.testing.assert_close(vae.decode(latents), tiny.decode(latents), rtol=1e-5, atol=1e-5)
    video = torch.rand(1, 3, 5, 32, 32) * 2 - 1
    torch.testing.assert_close(vae.encode(video), tiny.encode(video), rtol=1e-5, atol=1e-5)
    vae.to(memory_format=torch.contiguous_format)
    assert vae.decoder.conv1.weight.is_contiguous()


def test_channels_last_stream_keeps_its_layout(tiny: torch.nn.Module) -> None:
    """A channels-last VAE keeps every decoder activation channels-last (the reshaping blocks write that layout
    themselves), chunk by chunk, with the default layout's numbers; a mixed-layout add is a slow strided kernel."""
    vae = build_vae("tiny")
    vae.load_state_dict(tiny.state_dict())
    vae.to_channels_last()
    mixed = []

    def hook(m, inp, out):
        for x in (*inp, out):
            # size-1 dims make both layouts "contiguous"; only tensors with some spatial extent tell them apart
            if torch.is_tensor(x) and x.dim() == 5 and x.shape[1] > 1 and x.shape[3] * x.shape[4] > 1:
                if not x.is_contiguous(memory_format=torch.channels_last_3d):
                    mixed.append(type(m).__name__)

    for m in vae.decoder.modules():
        m.register_forward_hook(hook)
    latents = torch.randn(1, 16, 4, 2, 3)
    stream, ref = vae.streaming_decoder(), tiny.streaming_decoder()
    for a, b in ((0, 1), (1, 3), (3, 4)):
        torch.testing.assert_close(stream.decode(latents[:, :, a:b]), ref.decode(latents[:, :, a:b]),
                                   rtol=1e-5, atol=1e-5)
    assert not mixed, sorted(set(mixed))


def test_layout_helpers_equal_the_reference() -> None:
    from longlive.vae.layers import DupUp3D, _interleave_time, upsample_hw2

    cl = torch.channels_last_3d
    x = torch.randn(2, 6, 3, 5, 7).contiguous(memory_format=cl)
    up = upsample_hw2(x, cl)
    assert up.is_contiguous(memory_format=cl)
    assert torch.equal(up, torch.nn.functional.interpolate(x.contiguous(), scale_factor=(1.0, 2.0, 2.0),
                                                           mode="nearest-exact"))
    y = _interleave_time(x, cl)
    assert y.is_contiguous(memory_format=cl) and torch.equal(y, _interleave_time(x.contiguous()))
    assert torch.equal(y[:, :, 0::2], x[:, :3]) and torch.equal(y[:, :, 1::2], x[:, 3:])
    dup = DupUp3D(6, 3, 2, 2)
    cache = CausalCache(cl)
    cache.advance()  # not the first chunk: every frame is kept
    z = dup(x, cache)
    assert z.is_contiguous(memory_format=cl) and torch.equal(z, dup(x.contiguous(), None))


def test_bfloat16_decode(tiny: torch.nn.Module) -> None:
    vae = build_vae("tiny", dtype=torch.bfloat16)
    vae.load_state_dict(tiny.state_dict())
    latents = torch.randn(1, 16, 2, 2, 2)
    out = vae.decode(latents)
    assert out.dtype == torch.bfloat16 and out.shape == (1, 3, 5, 32, 32)
    assert (out.float() - tiny.decode(latents)).abs().mean() < 0.05


# ---- loading ------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_load_roundtrip(tiny: torch.nn.Module, tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"Tiny_VAE{suffix}"
    state = {k: v.clone() for k, v in tiny.state_dict().items()}
    if suffix == ".pth":
        torch.save(state, path)
    else:
        from safetensors.torch import save_file

        save_file(state, str(path))
    loaded = load_vae("tiny", path)
    assert loaded.latent_mean.device.type == "cpu"
    video = torch.rand(1, 3, 5, 32, 32) * 2 - 1
    assert torch.equal(loaded.encode(video), tiny.encode(video))
    latents = torch.randn(1, 16, 3, 2, 2)
    assert torch.equal(loaded.decode(latents), tiny.decode(latents))


def test_load_errors_name_key_and_shapes(tiny: torch.nn.Module, tmp_path: Path) -> None:
    state = dict(tiny.state_dict())
    key = "decoder.upsamples.1.upsamples.3.time_conv.weight"
    good = tuple(state[key].shape)
    bad = dict(state)
    bad[key] = torch.zeros(3, 3, 3, 1, 1)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=re.escape(key)) as err:
        load_vae("tiny", tmp_path / "bad.pth")
    assert str((3, 3, 3, 1, 1)) in str(err.value) and str(good) in str(err.value)

    missing = {k: v for k, v in state.items() if k != "encoder.head.0.gamma"}
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="missing key 'encoder.head.0.gamma'"):
        load_vae("tiny", tmp_path / "missing.pth")

    torch.save({**state, "extra.weight": torch.zeros(1)}, tmp_path / "extra.pth")
    with pytest.raises(ValueError, match="unexpected key 'extra.weight'"):
        load_vae("tiny", tmp_path / "extra.pth")

    absent = tmp_path / "nowhere" / "Wan2.2_VAE.pth"
    with pytest.raises(FileNotFoundError, match=re.escape(str(absent))):
        load_vae("wan2.2", absent)


# ---- independent numerics -----------------------------------------------------------------------


def test_causal_conv_cache_equals_full_conv() -> None:
    torch.manual_seed(0)
    conv = CausalConv3d(4, 5, 3, padding=1)
    x = torch.randn(2, 4, 7, 6, 5)
    ref = F.conv3d(F.pad(x, (1, 1, 1, 1, 2, 0)), conv.weight, conv.bias)
    cache = CausalCache()
    with torch.no_grad():
        parts = [conv(x[:, :, a:b], cache) for a, b in [(0, 1), (1, 3), (3, 7)]]
        assert torch.allclose(torch.cat(parts, 2), ref, atol=1e-6)
        assert cache.get(conv).shape[2] == 2
        cache.reset()
        assert len(cache) == 0 and cache.first


def test_patchify_packs_c_r_q() -> None:
    x = torch.arange(2 * 3 * 2 * 4 * 6, dtype=torch.float32).reshape(2, 3, 2, 4, 6)
    p = patchify(x, 2)
    assert p.shape == (2, 12, 2, 2, 3)
    for c in range(3):
        for r in range(2):  # width offset (slower)
            for q in range(2):  # height offset (faster)
                assert torch.equal(p[:, c * 4 + r * 2 + q], x[:, c, :, q::2, r::2])
    assert torch.equal(unpatchify(p, 2), x)
    dst = torch.zeros(2, 3, 5, 4, 6)
    unpatchify_into(dst[:, :, 1:3], p, 2)
    assert torch.equal(dst[:, :, 1:3], x)


def test_avgdown3d_hand_examples() -> None:
    x = torch.randn(1, 2, 2, 4, 4)
    pool = AvgDown3D(2, 2, factor_t=1, factor_s=2)  # groups of 4 folded channels = 2×2 average pool
    assert torch.allclose(pool(x), F.avg_pool3d(x, (1, 2, 2)))
    t = torch.tensor([10.0, 20.0, 30.0]).view(1, 1, 3, 1, 1).repeat(1, 2, 1, 1, 1)
    t[:, 1] *= -1
    out = AvgDown3D(2, 4, factor_t=2, factor_s=1)(t)  # group 1: out channel c·2 + i_t; left zero pad
    assert torch.equal(out.flatten(), torch.tensor([0.0, 20.0, 10.0, 30.0, 0.0, -20.0, -10.0, -30.0]))
    mix = AvgDown3D(4, 2, factor_t=1, factor_s=1)(torch.arange(4.0).view(1, 4, 1, 1, 1))
    assert torch.equal(mix.flatten(), torch.tensor([0.5, 2.5]))


def test_dupup3d_hand_examples() -> None:
    x = torch.randn(1, 2, 1, 3, 3)
    up = DupUp3D(2, 2, factor_t=1, factor_s=2)(x)
    assert torch.equal(up, x.repeat_interleave(2, -1).repeat_interleave(2, -2))
    seq = torch.tensor([1.0, 2.0]).view(1, 1, 2, 1, 1)
    dup = DupUp3D(1, 1, factor_t=2, factor_s=1)
    assert torch.equal(dup(seq).flatten(), torch.tensor([1.0, 1.0, 2.0, 2.0]))
    cache = CausalCache()
    assert torch.equal(dup(seq, cache).flatten(), torch.tensor([1.0, 2.0, 2.0]))  # first chunk drops 1
    spread = DupUp3D(2, 4, factor_t=1, factor_s=1)(torch.tensor([5.0, 7.0]).view(1, 2, 1, 1, 1))
    assert torch.equal(spread.flatten(), torch.tensor([5.0, 5.0, 7.0, 7.0]))


def test_rmsnorm_and_attention_against_direct_formulas() -> None:
    torch.manual_seed(0)
    norm = RMSNorm(6)
    with torch.no_grad():
        norm.gamma.copy_(torch.randn(6, 1, 1, 1))
    x = torch.randn(2, 6, 3, 4, 5)
    expect = x / x.norm(dim=1, keepdim=True) * 6**0.5 * norm.gamma
    torch.testing.assert_close(norm(x), expect)

    attn = AttentionBlock(6)
    with torch.no_grad():
        attn.norm.gamma.copy_(torch.rand(6, 1, 1) + 0.5)
        out = attn(x)
    for b in range(2):
        for t in range(3):
            f = x[b, :, t]  # [C, H, W]
            n = f / f.norm(dim=0, keepdim=True) * 6**0.5 * attn.norm.gamma
            qkv = F.conv2d(n[None], attn.to_qkv.weight, attn.to_qkv.bias)[0].flatten(1)  # [3C, HW]
            q, k, v = qkv[:6].T, qkv[6:12].T, qkv[12:].T
            o = torch.softmax(q @ k.T / 6**0.5, dim=-1) @ v  # [HW, C]
            o = F.conv2d(o.T.reshape(1, 6, 4, 5), attn.proj.weight, attn.proj.bias)[0]
            torch.testing.assert_close(out[b, :, t], f + o, rtol=1e-5, atol=1e-5)


# ---- cross-check against the independent diffusers implementation (CPU dev box only) ------------

_RES = {"0": "norm1", "2": "conv1", "3": "norm2", "6": "conv2"}


def _to_diffusers_key(key: str, cfg: VAEConfig) -> str:
    nrb = cfg.num_res_blocks
    key = re.sub(r"residual\.(\d)\.", lambda m: _RES[m.group(1)] + ".", key).replace(".shortcut.", ".conv_shortcut.")
    key = re.sub(r"^(encoder|decoder)\.middle\.([02])\.", lambda m: f"{m[1]}.mid_block.resnets.{int(m[2]) // 2}.", key)
    key = re.sub(r"^(encoder|decoder)\.middle\.1\.", r"\1.mid_block.attentions.0.", key)
    key = re.sub(r"^(encoder|decoder)\.head\.0\.", r"\1.norm_out.", key)
    key = re.sub(r"^(encoder|decoder)\.head\.2\.", r"\1.conv_out.", key)
    key = re.sub(r"^(encoder|decoder)\.conv1\.", r"\1.conv_in.", key)
    key = re.sub(r"^conv1\.", "quant_conv.", key)
    key = re.sub(r"^conv2\.", "post_quant_conv.", key)
    if cfg.arch == "wan2.2":
        key = re.sub(
            r"^encoder\.downsamples\.(\d+)\.downsamples\.(\d+)\.",
            lambda m: f"encoder.down_blocks.{m[1]}." + (f"resnets.{m[2]}." if int(m[2]) < nrb else "downsampler."),
            key,
        )
        key = re.sub(
            r"^decoder\.upsamples\.(\d+)\.upsamples\.(\d+)\.",
            lambda m: f"decoder.up_blocks.{m[1]}." + (f"resnets.{m[2]}." if int(m[2]) <= nrb else "upsampler."),
            key,
        )
        return key

    def flat_up(m: re.Match) -> str:
        stage, j = divmod(int(m[1]), nrb + 2)
        return f"decoder.up_blocks.{stage}." + (f"resnets.{j}." if j <= nrb else "upsamplers.0.")

    key = key.replace("encoder.downsamples.", "encoder.down_blocks.")
    return re.sub(r"^decoder\.upsamples\.(\d+)\.", flat_up, key)


@pytest.mark.parametrize("which", ["tiny", "tiny21"])
def test_matches_diffusers_autoencoder_kl_wan(request: pytest.FixtureRequest, which: str) -> None:
    diffusers = pytest.importorskip("diffusers")
    vae = request.getfixturevalue(which)
    cfg = vae.config
    kw = dict(
        base_dim=cfg.enc_dim, decoder_base_dim=cfg.dec_dim, z_dim=cfg.z_dim, dim_mult=list(cfg.dim_mult),
        num_res_blocks=cfg.num_res_blocks, temperal_downsample=list(cfg.temporal_down),
        latents_mean=[0.0] * cfg.z_dim, latents_std=[1.0] * cfg.z_dim,
    )  # fmt: skip
    if cfg.arch == "wan2.2":
        kw.update(is_residual=True, in_channels=12, out_channels=12, patch_size=2, scale_factor_spatial=16)
    ref = diffusers.AutoencoderKLWan(**kw).eval()
    ref.load_state_dict({_to_diffusers_key(k, cfg): v for k, v in vae.state_dict().items()}, strict=True)
    g = torch.Generator().manual_seed(6)
    video = torch.rand(1, 3, 9, 32, 32, generator=g) * 2 - 1
    latents = torch.randn(1, cfg.z_dim, 3, 32 // cfg.stride[1], 32 // cfg.stride[2], generator=g)
    with torch.no_grad():
        mu_ref = ref._encode(video)[:, : cfg.z_dim]
        out_ref = ref._decode(latents).sample
    torch.testing.assert_close(vae.encode(video), mu_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(vae.decode(latents), out_ref, rtol=1e-4, atol=1e-4)


# ---- CUDA (device machine only) -----------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_cuda_streaming_equals_batch(dtype: torch.dtype, channels_last: bool) -> None:
    cpu = _randomize(build_vae("tiny"))
    vae = build_vae("tiny", device="cuda", dtype=dtype)
    vae.load_state_dict(cpu.state_dict())
    if channels_last:
        vae.to_channels_last()
    latents = torch.randn(1, 16, 6, 4, 4, device="cuda")
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):  # fp32 means fp32 for the CPU check
        ref = vae.decode(latents)
        stream = vae.streaming_decoder()
        out = torch.cat([stream.decode(c) for c in latents.split([2, 3, 1], dim=2)], dim=2)
    assert torch.equal(out, ref)
    err = (ref.float().cpu() - cpu.decode(latents.cpu())).abs()
    assert err.max() < (1e-4 if dtype == torch.float32 else 0.1), err.max()
