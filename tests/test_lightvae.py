"""MG-LightVAE (vae_type mg_lightvae / mg_lightvae_v2): the Wan2.2 graph at pruned widths, the files' diffusers key
layout loaded strictly with the rate read off the file, streaming == batch, the full width unchanged, and the
vae_type / vae_pruning rules of generate, decode and sweeps."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from safetensors.torch import save_file

from longlive import cli
from longlive.experiments.spec import RunSpec, check_spec, from_config
from longlive.filecheck import FileCheckError
from longlive.infer.assemble import load_vae, vae_columns
from longlive.infer.compile import compile_vae
from longlive.infer.video import VideoRequest, vae_paths, validate
from longlive.model.presets import get_preset
from longlive.names import VAE_TYPES
from longlive.runner.matrix import expand
from longlive.vae import VAE_PRESETS, VAEConfig, build_vae
from longlive.vae.config import WAN22_LATENT_MEAN, WAN22_LATENT_STD
from longlive.vae.lightvae import (
    DROPPED,
    FILES,
    NOMINAL_PRUNING,
    diffusers_state,
    full_decoder_width,
    lightvae_config,
    lightvae_from_state,
    load_lightvae,
    pruned_width,
    to_diffusers_key,
    to_wan_key,
)
from longlive.weights import default_paths

SMALL = VAEConfig("small", "wan2.2", z_dim=8, enc_dim=16, dec_dim=32)
"""A Wan2.2-graph base small enough for CPU (full decoder width 128), pruned like the real one."""

FIVE_B = "wan2.2-ti2v-5b"


def _randomize(vae: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Non-trivial weights, gains too, so equality checks cannot pass by accident."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in vae.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype)
            p.copy_(1.0 + 0.2 * noise if name.endswith("gamma") else 0.3 * noise * p.abs().mean().clamp_min(0.1))
    return vae


def _small(rate: float, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    return _randomize(build_vae(lightvae_config(rate, SMALL), dtype=dtype), seed)


def _shapes(vae: torch.nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in vae.state_dict().items()}


# ---- widths -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("rate", "enc", "dec"), [(0.5, 80, 128), (0.75, 40, 64), (0.0, 160, 256)])
def test_both_halves_scale_and_the_latent_interfaces_stay(rate, enc, dec):
    cfg = lightvae_config(rate)
    assert (cfg.enc_dim, cfg.dec_dim, cfg.pruning, cfg.z_dim, cfg.stride) == (enc, dec, rate, 48, (4, 16, 16))
    assert (cfg.latent_mean, cfg.latent_std) == (WAN22_LATENT_MEAN, WAN22_LATENT_STD)  # same latent space
    s = _shapes(build_vae(cfg, device="meta"))
    assert s["encoder.conv1.weight"] == [enc, 12, 3, 3, 3] and s["encoder.head.2.weight"] == [96, 4 * enc, 3, 3, 3]
    assert s["conv1.weight"] == [96, 96, 1, 1, 1] and s["conv2.weight"] == [48, 48, 1, 1, 1]
    assert s["decoder.conv1.weight"] == [4 * dec, 48, 3, 3, 3] and s["decoder.head.2.weight"] == [12, dec, 3, 3, 3]
    assert s["decoder.upsamples.3.upsamples.0.shortcut.weight"] == [dec, 2 * dec, 1, 1, 1]  # stages 4d, 4d, 2d, d
    assert len(s) == 196  # the same 196 tensors as Wan2.2, narrower


def test_widths_round_half_to_even_and_stay_positive():
    assert pruned_width(5, 0.5) == 2 and pruned_width(7, 0.5) == 4  # 2.5 -> 2, 3.5 -> 4 (Python's round)
    cfg = lightvae_config(0.296875)  # 160 x 0.703125 = 112.5 -> 112; 256 x 0.703125 = 180
    assert (cfg.enc_dim, cfg.dec_dim) == (112, 180)
    assert (lightvae_config(0.998).enc_dim, lightvae_config(0.998).dec_dim) == (1, 1)  # never 0 channels
    for bad in (1.0, -0.1, math.nan, True, "0.5"):
        with pytest.raises(ValueError, match=r"must be a number in \[0, 1\)"):
            lightvae_config(bad)


# ---- the full width is unchanged ----------------------------------------------------------------------


def test_rate_zero_is_the_published_wan22_layout(shapes):
    ours = build_vae(lightvae_config(0.0), device="meta")
    ref = build_vae("wan2.2", device="meta")
    assert list(_shapes(ours).items()) == list(_shapes(ref).items()) == list(shapes["vae_wan2.2"].items())
    assert [type(m) for m in ours.modules()] == [type(m) for m in ref.modules()]
    assert VAE_PRESETS["wan2.2"].pruning == 0.0 and full_decoder_width() == 1024
    assert dataclasses.replace(lightvae_config(0.0), name="wan2.2") == VAE_PRESETS["wan2.2"]
    # the published Wan2.2 state in the files' diffusers names reads back as rate 0, every key in place
    via = lightvae_from_state(diffusers_state(ref), "wan2.2 as diffusers", device="meta")
    assert via.config.pruning == 0.0 and list(_shapes(via).items()) == list(_shapes(ref).items())


def test_rate_zero_decodes_and_encodes_bit_identically_to_the_unchanged_config():
    base = _randomize(build_vae(SMALL), 3)
    pruned0 = build_vae(lightvae_config(0.0, SMALL))
    pruned0.load_state_dict(base.state_dict(), strict=True)
    g = torch.Generator().manual_seed(4)
    lat, video = torch.randn(1, 8, 3, 1, 2, generator=g), torch.rand(1, 3, 5, 16, 16, generator=g) * 2 - 1
    assert torch.equal(pruned0.decode(lat), base.decode(lat))
    assert torch.equal(pruned0.encode(video), base.encode(video))


@pytest.mark.slow
def test_full_wan22_output_through_the_lightvae_loader_is_bit_identical():
    """The full 1,024-wide Wan2.2 decoder, weights in the files' diffusers names read back at rate 0, decodes a fixed
    input bit for bit like the module of the unchanged wan2.2 preset (705 M parameters on the CPU)."""
    ref = build_vae("wan2.2", device="meta")
    g = torch.Generator().manual_seed(0)
    pool = torch.randn(1_000_003, generator=g) * 0.02  # weights tiled from a prime-length pool: cheap, not periodic
    state = {}                                         # in any tensor's shape; the encoder is not run: left empty
    for k, v in ref.state_dict().items():
        n = v.numel()
        t = torch.empty(v.shape) if k.startswith("encoder.") else pool.repeat(n // pool.numel() + 1)[:n].view(v.shape)
        state[k] = t + 1.0 if k.endswith("gamma") else t
    ref.load_state_dict(state, strict=True, assign=True)
    ref.reset_latent_stats()
    ours = lightvae_from_state({to_diffusers_key(k): v for k, v in state.items()}, "full width")
    assert ours.config.pruning == 0.0
    lat = torch.randn(1, 48, 2, 1, 2, generator=g)
    with torch.no_grad():
        assert torch.equal(ours.decode(lat), ref.decode(lat))


# ---- key names ------------------------------------------------------------------------------------------


def test_key_map_round_trips_and_drops_training_heads():
    for rate in (0.0, 0.75):
        keys = list(build_vae(lightvae_config(rate), device="meta").state_dict())
        theirs = [to_diffusers_key(k) for k in keys]
        assert len(set(theirs)) == len(keys) and [to_wan_key(k) for k in theirs] == keys
        for t in theirs:  # none of Wan's own spellings survives
            assert not any(w in t for w in ("residual.", ".middle.", ".head.", "downsamples", "upsamples")), t
            assert not t.startswith(("conv1.", "conv2.", "encoder.conv1.", "decoder.conv1.")), t
    assert to_diffusers_key("decoder.upsamples.0.upsamples.3.time_conv.weight") == \
        "decoder.up_blocks.0.upsampler.time_conv.weight"
    assert to_wan_key("encoder.down_blocks.1.downsampler.resample.1.bias") == \
        "encoder.downsamples.1.downsamples.2.resample.1.bias"
    assert to_wan_key("decoder.mid_block.resnets.1.conv_shortcut.weight") == "decoder.middle.2.shortcut.weight"
    assert to_wan_key(DROPPED[0] + "3.weight") is None
    assert to_wan_key("decoder.conv1.weight") == "decoder.conv1.weight"  # Wan's names are read as they are


def test_the_diffusers_autoencoder_itself_loads_strictly_and_decodes_the_same():
    """Keys from diffusers' own AutoencoderKLWan at pruned widths (not from our inverse map): loaded strictly with the
    rate read off them, decoding equals diffusers' to float32 rounding."""
    diffusers = pytest.importorskip("diffusers")
    for rate in (0.5, 0.75):
        cfg = lightvae_config(rate, SMALL)
        ref = diffusers.AutoencoderKLWan(
            base_dim=cfg.enc_dim, decoder_base_dim=cfg.dec_dim, z_dim=cfg.z_dim, is_residual=True, in_channels=12,
            out_channels=12, patch_size=2, scale_factor_spatial=16, latents_mean=[0.0] * 8, latents_std=[1.0] * 8,
        ).eval()
        _randomize(ref, 5)
        ours = lightvae_from_state(ref.state_dict(), "diffusers", SMALL)
        assert ours.config.pruning == rate
        lat = torch.randn(1, 8, 3, 1, 2, generator=torch.Generator().manual_seed(6))
        with torch.no_grad():
            torch.testing.assert_close(ours.decode(lat), ref._decode(lat).sample, rtol=1e-5, atol=1e-5)


# ---- self-made checkpoints ------------------------------------------------------------------------


@pytest.mark.parametrize(("rate", "nest", "suffix"), [(0.5, "generator", ".pth"), (0.75, None, ".pth"),
                                                      (0.75, None, ".safetensors")])
def test_self_made_checkpoints_load_strictly_with_the_rate_read_off_them(tmp_path, rate, nest, suffix):
    src = _small(rate, seed=int(rate * 8))
    state = {**diffusers_state(src), f"{DROPPED[0]}0.weight": torch.ones(3)}  # a training head: dropped
    path = tmp_path / f"MG-LightVAE{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save({nest: state, "step": 7} if nest else state, path)
    vae = load_lightvae(path, SMALL)
    assert vae.config == lightvae_config(rate, SMALL) and vae.config.pruning == rate
    assert vae.state_dict().keys() == src.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(vae.state_dict().values(), src.state_dict().values(), strict=True))
    lat = torch.randn(1, 8, 2, 1, 1, generator=torch.Generator().manual_seed(2))
    # equal weights; a memory-mapped file's weights may sit at another alignment, which CPU convolutions may sum in
    # another order: equal outputs up to float32 rounding
    torch.testing.assert_close(vae.decode(lat), src.decode(lat), rtol=1e-6, atol=1e-6)


def _state(rate: float = 0.5) -> dict[str, torch.Tensor]:
    return diffusers_state(build_vae(lightvae_config(rate, SMALL)))


def test_a_missing_key_is_named_in_the_files_layout():
    state = _state()
    del state["decoder.up_blocks.0.resnets.0.conv1.weight"]
    with pytest.raises(ValueError) as exc:
        lightvae_from_state(state, "f.pth", SMALL)
    text = str(exc.value)
    assert "f.pth: does not load strictly as the MG-LightVAE at pruning rate 0.5" in text
    assert "1 missing key(s): decoder.up_blocks.0.resnets.0.conv1.weight" in text
    assert "unexpected" not in text and "Expected an MG-LightVAE checkpoint" in text


def test_an_unexpected_key_is_named_as_the_file_spells_it():
    state = {**_state(), "decoder.up_blocks.0.resnets.9.conv1.weight": torch.zeros(1)}
    with pytest.raises(ValueError, match=r"1 unexpected key\(s\): decoder\.up_blocks\.0\.resnets\.9\.conv1\.weight"):
        lightvae_from_state(state, "f.pth", SMALL)


def test_a_wrong_shape_is_named_with_both_shapes():
    state = _state(0.75)
    state["decoder.mid_block.attentions.0.proj.weight"] = torch.zeros(32, 31, 1, 1)
    with pytest.raises(ValueError) as exc:
        lightvae_from_state(state, "f.pth", SMALL)
    assert ("1 key(s) with the wrong shape: decoder.mid_block.attentions.0.proj.weight [32, 31, 1, 1] (expected "
            "[32, 32, 1, 1])") in str(exc.value)
    assert "pruning rate 0.75" in str(exc.value) and "encoder base width 4, decoder 8" in str(exc.value)


def test_an_encoder_pruned_differently_from_the_decoder_is_refused():
    state = {**_state(0.75), **{k: v for k, v in _state(0.5).items() if k.startswith("encoder.")}}
    with pytest.raises(ValueError, match=r"key\(s\) with the wrong shape: encoder\.conv_in\.weight \[8, 12, 3, 3, 3\] "
                                         r"\(expected \[4, 12, 3, 3, 3\]\)"):
        lightvae_from_state(state, "f.pth", SMALL)


def test_no_rate_is_guessed():
    state = _state()
    del state["decoder.conv_in.weight"]
    with pytest.raises(ValueError, match="cannot read the pruning rate: no 5-D decoder.conv_in.weight"):
        lightvae_from_state(state, "f.pth", SMALL)
    state = _state()
    state["decoder.conv_in.weight"] = torch.zeros(63, 8, 3, 3, 3)  # 4·round(32·(1 − r)) is a multiple of 4
    with pytest.raises(ValueError, match="decoder.conv_in has 63 output channels, which no pruning rate gives"):
        lightvae_from_state(state, "f.pth", SMALL)
    state["decoder.conv_in.weight"] = torch.zeros(256, 8, 3, 3, 3)  # wider than the unpruned decoder
    with pytest.raises(ValueError, match="256 output channels, which no pruning rate gives .*the full decoder has 128"):
        lightvae_from_state(state, "f.pth", SMALL)


def test_two_spellings_of_one_weight_and_non_tensors_are_refused(tmp_path):
    state = _state()
    state["decoder.conv1.weight"] = state["decoder.conv_in.weight"]
    with pytest.raises(ValueError, match="keys 'decoder.conv_in.weight' and 'decoder.conv1.weight' are the same"):
        lightvae_from_state(state, "f.pth", SMALL)
    path = tmp_path / "odd.pth"
    torch.save({"state_dict": {"decoder.conv_in.weight": torch.zeros(1), "note": "x"}}, path)
    with pytest.raises(ValueError, match="1 entries are not tensors \\(note\\)"):
        load_lightvae(path, SMALL)
    with pytest.raises(FileNotFoundError, match="MG-LightVAE checkpoint not found"):
        load_lightvae(tmp_path / "missing.pth", SMALL)
    (tmp_path / "cut.pth").write_bytes(path.read_bytes()[:200])
    with pytest.raises(FileCheckError, match="MG-LightVAE"):
        load_lightvae(tmp_path / "cut.pth", SMALL)


# ---- streaming ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [0.5, 0.75])
def test_streaming_chunk_by_chunk_equals_batch_decode_bit_for_bit(rate):
    vae = _small(rate, seed=9)  # the same per-latent passes with the same carried caches: equal, not close
    lat = torch.randn(1, 8, 6, 1, 2, generator=torch.Generator().manual_seed(1))
    ref = vae.decode(lat)
    stream = vae.streaming_decoder()
    out = torch.cat([stream.decode(c) for c in lat.split([1, 2, 3], dim=2)], dim=2)
    assert out.shape == (1, 3, 1 + 4 * 5, 16, 32) and torch.equal(out, ref)


# ---- vae_type / vae_pruning: generate, decode, sweeps ------------------------------------------------------


def _req(**kw) -> VideoRequest:
    base = dict(model=FIVE_B, frames=get_preset(FIVE_B).chunk_frames, random_weights=True, vae_type="mg_lightvae")
    return VideoRequest(**{**base, **kw})


def test_vae_type_is_refused_for_presets_without_the_wan22_vae():
    for model, vae in (("tiny", "tiny-pca"), ("wan2.1-t2v-1.3b", "wan2.1")):
        frames = get_preset(model).chunk_frames
        with pytest.raises(ValueError, match=f"--vae-type mg_lightvae: MG-LightVAE is the release's pruned Wan2.2 "
                                             f"VAE, and this preset decodes with its {vae} VAE; give --vae-type wan"):
            validate(_req(model=model, frames=frames))
        with pytest.raises(ValueError, match=f"vae_type='mg_lightvae_v2'.*its {vae} VAE; give vae_type=wan"):
            check_spec(RunSpec(vae_type="mg_lightvae_v2", frames=frames,
                               model=dataclasses.replace(RunSpec().model, name=model)))
    validate(_req(model="tiny", frames=get_preset("tiny").chunk_frames, vae_type="wan"))  # today's behaviour


def test_vae_pruning_rules(tmp_path):
    validate(_req(vae_pruning=0.5))
    validate(_req(vae_pruning=0))
    with pytest.raises(ValueError, match="--vae-pruning 0.5 sets the width of a randomly initialised MG-LightVAE: "
                                         "give it with --vae-type mg_lightvae"):
        validate(_req(vae_type="wan", vae_pruning=0.5))
    for bad in (1.0, -0.25, math.nan):
        with pytest.raises(ValueError, match=r"--vae-pruning .* must be a number in \[0, 1\)"):
            validate(_req(vae_pruning=bad))
    with pytest.raises(ValueError, match="--vae-pruning 0.5 applies to random weights only: a checkpoint's rate is "
                                         "read off the file"):
        validate(_req(vae_pruning=0.5, vae=tmp_path / "MG-LightVAE.pth"))
    with pytest.raises(ValueError, match="vae_pruning=0.5 applies to random weights only"):
        check_spec(RunSpec(vae_type="mg_lightvae", vae_pruning=0.5,
                           model=dataclasses.replace(RunSpec().model, name=FIVE_B)))
    image = tmp_path / "frame.png"
    image.write_bytes(b"")
    with pytest.raises(ValueError, match="--vae-type mg_lightvae with --image: .* is a decoder"):
        validate(_req(image=image))
    with pytest.raises(ValueError, match="unknown --vae-type 'lightvae'; choose one of wan, mg_lightvae, mg_lightvae"):
        validate(_req(vae_type="lightvae"))
    with pytest.raises(ValueError, match="vae_type='mg_lightvae' picks the decoder .* train encodes"):
        check_spec(RunSpec(vae_type="mg_lightvae", workload=dataclasses.replace(RunSpec().workload, name="train"),
                           model=dataclasses.replace(RunSpec().model, name=FIVE_B)))


def test_published_files_sit_beside_the_wan22_vae(tmp_path, monkeypatch):
    monkeypatch.setenv("LONGLIVE_WEIGHTS", str(tmp_path))
    paths = default_paths(get_preset(FIVE_B))
    assert vae_paths(_req(vae_type="wan"), paths) == paths and paths.vae == tmp_path / "Wan2.2_VAE.pth"
    for vae_type, name in (("mg_lightvae", "MG-LightVAE.pth"), ("mg_lightvae_v2", "MG-LightVAE_v2.pth")):
        assert vae_paths(_req(vae_type=vae_type), paths).vae == tmp_path / name == tmp_path / FILES[vae_type]
    assert set(FILES) == set(NOMINAL_PRUNING) == set(VAE_TYPES) - {"wan"}


@pytest.mark.parametrize(("vae_type", "pruning", "rate"), [("mg_lightvae_v2", None, 0.75), ("mg_lightvae", 0.9, 0.9)])
def test_random_weights_build_the_types_rate_or_the_given_one(vae_type, pruning, rate):
    req = _req(vae_type=vae_type, vae_pruning=pruning)
    vae, note = load_vae(req, get_preset(FIVE_B), None)
    assert vae.config == lightvae_config(rate) and f"at pruning rate {rate:g}, seeded random weights" in note
    assert vae_columns(vae_type, vae) == {"vae_type": vae_type, "vae_pruning": rate}
    assert vae_columns("wan", vae) == {"vae_type": "wan", "vae_pruning": None}
    again, _ = load_vae(req, get_preset(FIVE_B), None)  # seeded by the request
    assert torch.equal(again.decoder.conv1.weight, vae.decoder.conv1.weight)


def test_a_file_gives_its_own_rate_through_generations_loader(tmp_path):
    rate = 63 / 64  # the real 5B base at a rate small enough for a test file: 160 -> round(2.5) = 2, 256 -> 4
    src = _randomize(build_vae(lightvae_config(rate)), 1)
    path = tmp_path / "light.pth"
    torch.save({"gen_model": diffusers_state(src)}, path)
    vae, note = load_vae(_req(vae=path, random_weights=False), get_preset(FIVE_B), None)
    assert note is None and vae.config == lightvae_config(rate) and (vae.config.enc_dim, vae.config.dec_dim) == (2, 4)
    assert torch.equal(vae.decoder.head["2"].weight, src.decoder.head["2"].weight)
    with pytest.raises(FileNotFoundError, match="MG-LightVAE checkpoint not found: expected"):
        load_vae(_req(vae=tmp_path / "nope.pth"), get_preset(FIVE_B), None)


def test_decode_takes_the_generations_decoder_unless_told(tmp_path, monkeypatch):
    """`longlive decode` reads vae_type / vae_pruning from the generate row beside the latents; another --vae-type
    takes none of the generation's VAE options (the request it builds is captured, nothing is decoded)."""
    gen = tmp_path / "gen"
    gen.mkdir()
    save_file({"latents": torch.zeros(1, 48, 1, 1, 1)}, str(gen / "latents.safetensors"))
    config = {"model": FIVE_B, "vae_type": "mg_lightvae", "vae_pruning": 0.6, "random_weights": True, "seed": 3}
    (gen / "result.json").write_text(json.dumps({"rows": [{"config": config}]}))
    seen = []
    monkeypatch.setattr(cli, "decode_latents", lambda lat, req: seen.append(req) or torch.zeros(1, 4, 4, 3))
    monkeypatch.setattr(cli, "write_video", lambda frames, out, fps: None)
    for extra, want in (([], ("mg_lightvae", 0.6)), (["--vae-type", "wan"], ("wan", None)),
                        (["--vae-type", "mg_lightvae_v2"], ("mg_lightvae_v2", None)),
                        (["--vae-pruning", "0.25"], ("mg_lightvae", 0.25))):
        assert cli.main(["decode", str(gen), "--out", str(tmp_path / "out"), "--device", "cpu", *extra]) == 0
        assert (seen[-1].vae_type, seen[-1].vae_pruning, seen[-1].seed) == (*want, 3)


def test_sweeps_time_it_at_the_given_rates():
    cells = [from_config(c.config) for c in expand("vae_decode", ["vae_type=mg_lightvae", "vae_pruning=0,0.5,0.75"])]
    assert sorted((s.vae_type, s.vae_pruning, s.compile) for s in cells) == sorted(
        ("mg_lightvae", r, c) for r in (0.0, 0.5, 0.75) for c in ("none", "default"))


# ---- CUDA (device machine only) ---------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("rate", [0.5, 0.75])
def test_cuda_pruned_5b_decoder_compiled_bf16_matches_eager(rate):
    """The 5B MG-LightVAE set up as a generation sets it up (BF16, channels-last, `compile_vae`): against a float32
    stream of the same weights the compiled stream's error is the eager one's (within 25 %), and the eager stream
    equals eager batch decode bit for bit; a small latent grid keeps it quick."""
    torch.manual_seed(0)
    ref = build_vae(lightvae_config(rate), device="cuda")  # float32
    eager, comp = (build_vae(lightvae_config(rate), device="cuda", dtype=torch.bfloat16) for _ in range(2))
    for m in (eager, comp):
        m.load_state_dict(ref.state_dict())
        m.to_channels_last()
    compile_vae(comp)
    lat = torch.randn(1, 48, 7, 4, 6, device="cuda", generator=torch.Generator("cuda").manual_seed(1))
    streams = [m.streaming_decoder() for m in (ref, eager, comp)]
    outs: list[list[torch.Tensor]] = [[], [], []]
    with torch.no_grad(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        for a, b in ((0, 1), (1, 4), (4, 7)):
            for s, o in zip(streams, outs, strict=True):
                o.append(s.decode(lat[:, :, a:b]).float())
        whole = eager.decode(lat).float()
    r, e, c = (torch.cat(o, dim=2) for o in outs)
    assert e.shape == (1, 3, 25, 64, 96) and torch.equal(e, whole)
    err_e, err_c = (e - r).abs().mean().item(), (c - r).abs().mean().item()
    assert err_c <= 1.25 * err_e + 1e-4, (err_c, err_e)
    assert (c - e).abs().max().item() < 0.1
