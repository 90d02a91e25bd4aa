"""The causal Wan DiT: published layouts, strict loading, RoPE and a float64 reference of the block math."""

import math

import pytest
import torch
import torch.nn.functional as F

from longlive.model.checkpoint import CheckpointError, load_generator, save_generator
from longlive.model.dit import CausalWanModel, build_model, timestep_embedding
from longlive.model.presets import get_preset
from longlive.model.rope import Rope3D, apply_rope, axis_pairs


@pytest.mark.parametrize(
    "preset,key,params",
    [("wan2.2-ti2v-5b", "generator_wan2.2_ti2v_5b", 4_999_787_712),
     ("wan2.1-t2v-1.3b", "generator_wan2.1_t2v_1.3b_same_class", None)],
)
def test_published_keys_and_shapes_on_meta(shapes, preset, key, params):
    model = build_model(get_preset(preset), device="meta")
    ours = {"model." + k: list(v.shape) for k, v in model.state_dict().items()}
    assert ours == shapes[key]
    n = sum(p.numel() for p in model.parameters())
    assert n == sum(math.prod(s) for s in shapes[key].values())
    if params is not None:
        assert n == params


def test_5b_meta_checkpoint_loads_strictly_and_wrong_shape_is_named(tmp_path, shapes):
    ref = shapes["generator_wan2.2_ti2v_5b"]
    sd = {k: torch.empty(s, device="meta") for k, s in ref.items()}
    model = build_model(get_preset("wan2.2-ti2v-5b"), device="meta")
    from longlive.model.checkpoint import check_state_dict

    check_state_dict(model, {k[len("model."):]: v for k, v in sd.items()})  # every key and shape matches
    bad = dict(sd)
    bad["model.blocks.3.ffn.0.weight"] = torch.empty(14336, 3071, device="meta")
    with pytest.raises(CheckpointError, match=r"model\.blocks\.3\.ffn\.0\.weight has shape \[14336, 3071\]"):
        check_state_dict(model, {k[len("model."):]: v for k, v in bad.items()})


def _tiny_inputs(cfg, seed=0):
    g = torch.Generator().manual_seed(seed)
    h, w = cfg.latent_hw
    x = torch.randn(1, cfg.in_channels, cfg.chunk_frames, h, w, generator=g)
    t = torch.tensor([[999.0, 500.0]])
    ctx = torch.randn(1, cfg.text_len, cfg.text_dim, generator=g)
    return x, t, ctx


@pytest.mark.parametrize("wrapper", ["generator", "generator_ema_fsdp", "model", "raw"])
def test_tiny_checkpoint_round_trip_reproduces_outputs(tmp_path, wrapper):
    cfg = get_preset("tiny")
    a = build_model(cfg, seed=1)
    x, t, ctx = _tiny_inputs(cfg)
    ref = a(x, t, ctx)
    path = save_generator(a, tmp_path / "model_bf16.pt")
    if wrapper != "generator":
        payload = torch.load(path, weights_only=True)
        sd = payload["generator"]
        if wrapper == "generator_ema_fsdp":
            sd = {k.replace("model.", "model._fsdp_wrapped_module.", 1): v for k, v in sd.items()}
            payload = {"generator_ema": sd}
        elif wrapper == "model":
            payload = {"model": sd}
        else:
            payload = sd
        torch.save(payload, path)
    b = build_model(cfg, seed=2)
    assert not torch.equal(b(x, t, ctx), ref)
    load_generator(b, path)
    assert torch.equal(b(x, t, ctx), ref)


def test_checkpoint_errors_name_key_and_path(tmp_path):
    cfg = get_preset("tiny")
    model = build_model(cfg)
    with pytest.raises(FileNotFoundError, match="missing_dir/model_bf16.pt"):
        load_generator(model, tmp_path / "missing_dir" / "model_bf16.pt")
    sd = {"model." + k: v for k, v in model.state_dict().items()}
    sd["model.head.head.weight"] = torch.zeros(3, 3)
    torch.save({"generator": sd}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"model\.head\.head\.weight has shape \[3, 3\].*expects \[64, 128\]"):
        load_generator(model, tmp_path / "bad.pt")
    del sd["model.head.head.weight"]
    torch.save({"generator": sd}, tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match=r"missing key model\.head\.head\.weight"):
        load_generator(model, tmp_path / "missing.pt")
    sd["model.head.head.weight"] = model.head.head.weight.detach()
    sd["model.blocks.9.extra"] = torch.zeros(1)
    torch.save({"generator": sd}, tmp_path / "extra.pt")
    with pytest.raises(CheckpointError, match=r"unexpected key model\.blocks\.9\.extra"):
        load_generator(model, tmp_path / "extra.pt")


def test_safetensors_folder_without_prefix_loads(tmp_path):
    from safetensors.torch import save_file

    cfg = get_preset("tiny")
    a = build_model(cfg, seed=3)
    sd = {k: v.contiguous() for k, v in a.state_dict().items()}
    keys = sorted(sd)
    save_file({k: sd[k] for k in keys[:10]}, str(tmp_path / "diffusion_pytorch_model-00001-of-00002.safetensors"))
    save_file({k: sd[k] for k in keys[10:]}, str(tmp_path / "diffusion_pytorch_model-00002-of-00002.safetensors"))
    b = build_model(cfg, seed=4)
    load_generator(b, tmp_path)
    x, t, ctx = _tiny_inputs(cfg)
    assert torch.equal(a(x, t, ctx), b(x, t, ctx))


def test_rope_axis_split_and_frequencies():
    assert axis_pairs(128) == (22, 21, 21)
    rope = Rope3D(128)
    tt, th, tw = rope.tables
    assert tt.shape == (1024, 22) and th.shape == (1024, 21) and tw.shape == (1024, 21)
    i = torch.arange(22, dtype=torch.float64)
    torch.testing.assert_close(tt[1], 10000.0 ** (-2 * i / 44), rtol=1e-15, atol=0)
    j = torch.arange(21, dtype=torch.float64)
    torch.testing.assert_close(th[1], 10000.0 ** (-2 * j / 42), rtol=1e-15, atol=0)


def test_rope_matches_complex_reference_and_is_interleaved():
    rope = Rope3D(32)
    f0, F_, H, W = 5, 2, 3, 4
    cos, sin = rope.cos_sin(f0, F_, H, W)
    x = torch.randn(2, F_ * H * W, 3, 32, dtype=torch.float64)
    out = apply_rope(x, cos, sin).double()
    pt, ph, pw = axis_pairs(32)
    ff, hh, ww = torch.meshgrid(torch.arange(F_) + f0, torch.arange(H), torch.arange(W), indexing="ij")
    tables = rope.tables
    ang = torch.cat([tables[0][ff.flatten()], tables[1][hh.flatten()], tables[2][ww.flatten()]], -1)
    xc = torch.view_as_complex(x.reshape(2, -1, 3, 16, 2).contiguous())
    ref = torch.view_as_real(xc * torch.polar(torch.ones_like(ang), ang)[None, :, None]).flatten(-2)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_timestep_embedding_cos_then_sin():
    e = timestep_embedding(torch.tensor([[3.0]]), 256)
    assert e.shape == (1, 1, 256) and e.dtype == torch.float64
    freqs = 10000.0 ** (-torch.arange(128, dtype=torch.float64) / 128)
    torch.testing.assert_close(e[0, 0, :128], torch.cos(3 * freqs))
    torch.testing.assert_close(e[0, 0, 128:], torch.sin(3 * freqs))


def _reference_forward(m: CausalWanModel, x, t, ctx):
    """Float64 re-derivation of the spec-01 block math from the state dict alone (no module code)."""
    cfg = m.cfg
    P = {k: v.double() for k, v in m.state_dict().items()}
    B, C, Fr, H, W = x.shape
    D, nh = cfg.dim, cfg.num_heads
    hd = D // nh

    def lin(h, name):
        return h @ P[name + ".weight"].T + P[name + ".bias"]

    def rms(h, name):
        return h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6) * P[name + ".weight"]

    def ln(h, name=None):
        y = (h - h.mean(-1, keepdim=True)) / torch.sqrt(h.var(-1, unbiased=False, keepdim=True) + 1e-6)
        return y * P[name + ".weight"] + P[name + ".bias"] if name else y

    def attn(q, k, v):
        s = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(hd)
        return torch.einsum("bhqk,bkhd->bqhd", s.softmax(-1), v).reshape(q.shape[0], q.shape[1], -1)

    hx = F.conv3d(x.double(), P["patch_embedding.weight"], P["patch_embedding.bias"], stride=cfg.patch_size)
    f2, h2, w2 = hx.shape[2:]
    tok = hx.flatten(2).transpose(1, 2)
    L = tok.shape[1]
    c = lin(F.gelu(lin(ctx.double(), "text_embedding.0"), approximate="tanh"), "text_embedding.2")
    sinus = timestep_embedding(t, cfg.freq_dim)
    e = lin(F.silu(lin(sinus, "time_embedding.0")), "time_embedding.2")
    e0 = lin(F.silu(e), "time_projection.1").unflatten(-1, (6, D))
    cos, sin = m.rope.cos_sin(0, f2, h2, w2)
    rope = lambda z: apply_rope(z, cos.double(), sin.double())  # noqa: E731  (checked separately above)

    def per_frame(h, s):  # broadcast per-frame [B, F, D] over tokens
        return (h.view(B, f2, -1, D) * s.unsqueeze(2)).view(B, L, D)

    def add_frame(h, s):
        return (h.view(B, f2, -1, D) + s.unsqueeze(2)).view(B, L, D)

    for i in range(cfg.num_layers):
        p = f"blocks.{i}."
        mod = (P[p + "modulation"].unsqueeze(1) + e0).unbind(2)
        y = add_frame(ln(tok) + per_frame(ln(tok), mod[1]), mod[0])
        q = rope(rms(lin(y, p + "self_attn.q"), p + "self_attn.norm_q").view(B, L, nh, hd))
        k = rope(rms(lin(y, p + "self_attn.k"), p + "self_attn.norm_k").view(B, L, nh, hd))
        v = lin(y, p + "self_attn.v").view(B, L, nh, hd)
        tok = tok + per_frame(lin(attn(q, k, v), p + "self_attn.o"), mod[2])
        y = ln(tok, p + "norm3")
        q = rms(lin(y, p + "cross_attn.q"), p + "cross_attn.norm_q").view(B, L, nh, hd)
        k = rms(lin(c, p + "cross_attn.k"), p + "cross_attn.norm_k").view(B, -1, nh, hd)
        v = lin(c, p + "cross_attn.v").view(B, -1, nh, hd)
        tok = tok + lin(attn(q, k, v), p + "cross_attn.o")
        y = add_frame(ln(tok) + per_frame(ln(tok), mod[4]), mod[3])
        tok = tok + per_frame(lin(F.gelu(lin(y, p + "ffn.0"), approximate="tanh"), p + "ffn.2"), mod[5])
    shift, scale = (P["head.modulation"].unsqueeze(1) + e.unsqueeze(2)).unbind(2)
    out = lin(add_frame(ln(tok) + per_frame(ln(tok), scale), shift), "head.head")
    pt, ph, pw = cfg.patch_size
    u = out.view(B, f2, h2, w2, pt, ph, pw, C)
    return torch.einsum("bfhwpqrc->bcfphqwr", u).reshape(B, C, f2 * pt, h2 * ph, w2 * pw)


def test_block_math_matches_float64_reference():
    cfg = get_preset("tiny")
    m = build_model(cfg, seed=5)
    x, t, ctx = _tiny_inputs(cfg, seed=6)
    ours = m(x, t, ctx).double()
    ref = _reference_forward(m, x, t, ctx)
    assert ours.shape == ref.shape == x.shape
    torch.testing.assert_close(ours, ref, atol=2e-4, rtol=2e-4)


def test_bad_inputs_raise_before_work():
    cfg = get_preset("tiny")
    m = build_model(cfg)
    x, t, ctx = _tiny_inputs(cfg)
    with pytest.raises(ValueError, match="per frame"):
        m(x, t[:, :1], ctx)
    with pytest.raises(ValueError, match="latent channels"):
        m(x[:, :3], t, ctx)
    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        get_preset("nope")


def test_keys_enter_the_cache_already_rotated_at_absolute_positions():
    from longlive.model.kv_cache import CacheGeometry, KVCache

    cfg = get_preset("tiny")
    m = build_model(cfg, seed=7)
    x, t, ctx = _tiny_inputs(cfg, seed=8)
    geo = CacheGeometry(cfg.chunk_frames, cfg.window_frames, cfg.sink_frames, cfg.tokens_per_frame)
    cache = KVCache.allocate(geo, cfg.num_layers, 1, cfg.num_heads, cfg.head_dim, storage="fp32")
    pre = {}
    m.blocks[0].self_attn.norm_k.register_forward_hook(lambda mod, inp, out: pre.setdefault("k", out))
    for c in range(3):  # the third chunk sits at absolute frames 4, 5 (+ a shot offset of 8)
        cache.begin_chunk(c)
        pre.clear()
        m(x, t, ctx, cache=cache, frame_offset=2 * c + 8)
    h, w = cfg.latent_hw
    cos, sin = m.rope.cos_sin(4 + 8, cfg.chunk_frames, h // 2, w // 2)
    expected = apply_rope(pre["k"].view(1, -1, cfg.num_heads, cfg.head_dim), cos, sin)
    n = cfg.chunk_frames * cfg.tokens_per_frame
    stored = cache.storage.k[0][:, cache.current_slot * n : (cache.current_slot + 1) * n]
    torch.testing.assert_close(stored, expected, rtol=0, atol=0)
    assert not torch.allclose(stored, pre["k"].view_as(stored))  # rotation really applied
