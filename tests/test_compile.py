"""torch.compile as a transform from outside (longlive.infer.compile): the compiled generator streams the same
latents as eager (fp32, CPU inductor), one graph serves every block, and the VAE's fused RMSNorm+SiLU equals the
eager chain. Bad modes are refused before any work."""

from __future__ import annotations

import copy

import pytest
import torch

from longlive.infer.compile import compile_blocks, compile_vae
from longlive.infer.pipeline import GenerationSpec, generate
from longlive.model.dit import build_model
from longlive.model.presets import get_preset


def test_compiled_blocks_stream_the_eager_latents():
    import torch._dynamo

    cfg = get_preset("tiny")
    model = build_model(cfg, seed=0).eval().requires_grad_(False)
    embeds = [torch.randn(1, cfg.text_len, cfg.text_dim, generator=torch.Generator().manual_seed(1))]
    slots = cfg.window_frames // cfg.chunk_frames
    spec = GenerationSpec(prompts=["x"], frames=(slots + 2) * cfg.chunk_frames, steps=2, seed=0, warmup_chunks=0,
                          kv_quant="nvfp4")  # a quantised cache too: its scratch is what attention reads
    with torch.no_grad():
        ref = generate(model, spec, embeds).latents
        torch._dynamo.reset()  # an earlier test may have compiled these blocks already: count from a clean cache
        compiled = compile_blocks(copy.deepcopy(model), "default")
        assert compile_blocks(compiled, "default") is compiled and all(b._longlive_compiled for b in compiled.blocks)
        torch._dynamo.utils.counters.clear()
        out = generate(compiled, spec, embeds).latents
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    # the layer index is not a guard: the two blocks share their graphs (≤ 2 pieces around eager attention,
    # plus one more set for the nvfp4-scratch layout at most), instead of a set per layer
    assert 0 < graphs <= 6, graphs


def test_compile_modes_are_checked():
    model = build_model(get_preset("tiny"), seed=0)
    assert compile_blocks(model, "none") is model and not hasattr(model.blocks[0], "_longlive_compiled")
    with pytest.raises(ValueError, match="unknown compile mode 'fast'"):
        compile_blocks(model, "fast")


def test_vae_fused_rms_silu_equals_eager():
    from longlive.vae import build_vae
    from longlive.vae.layers import RMSNorm

    torch.manual_seed(0)
    vae = build_vae("tiny").eval()
    x = torch.randn(1, vae.z_dim, 3, 4, 4)
    with torch.no_grad():
        ref = vae.decode(x)
        norm = next(m for m in vae.modules() if isinstance(m, RMSNorm))
        h = torch.randn(2, norm.gamma.shape[0], 2, 5, 5)
        eager = norm.forward_silu(h)
        compile_vae(vae)
        assert norm.fused is not None
        torch.testing.assert_close(norm.forward_silu(h), eager, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(vae.decode(x), ref, rtol=1e-4, atol=1e-5)
    with torch.enable_grad():  # training never takes the compiled (no-grad) path
        h.requires_grad_(True)
        norm.forward_silu(h).sum().backward()
        assert h.grad is not None


def test_vae_fused_pad_stream_equals_eager():
    """Compiled and channels-last, a stream decoded chunk by chunk runs its residual blocks whole and the other
    norm→conv pairs through the fused pad after the first chunk, and equals the eager default-layout stream."""
    from longlive.vae import build_vae
    from longlive.vae.layers import ResidualBlock, RMSNorm

    torch.manual_seed(0)
    ref_vae = build_vae("tiny").eval()
    vae = build_vae("tiny").eval()
    vae.load_state_dict(ref_vae.state_dict())
    vae.to_channels_last()
    compile_vae(vae)
    calls = []
    for m in vae.modules():
        if isinstance(m, RMSNorm):
            inner = m.fused_pad
            m.fused_pad = lambda *a, _f=inner: calls.append("pad") or _f(*a)
        elif isinstance(m, ResidualBlock):
            inner = m.fused
            m.fused = lambda *a, _f=inner: calls.append("block") or _f(*a)
    lat = torch.randn(1, vae.z_dim, 4, 2, 3)
    got, ref = vae.streaming_decoder(), ref_vae.streaming_decoder()
    with torch.no_grad():
        for a, b in ((0, 1), (1, 3), (3, 4)):
            out = got.decode(lat[:, :, a:b])
            torch.testing.assert_close(out, ref.decode(lat[:, :, a:b]), rtol=1e-4, atol=1e-5)
            assert set(calls) == ({"pad", "block"} if a > 0 else set())  # the first chunk has no pad yet
    # every cache tail is its own small tensor in the stream's layout, not a view pinning a whole activation
    tails = [t for t in got.cache._memory.values() if t.dim() == 5 and t.shape[3] * t.shape[4] > 1]
    assert tails and all(t._base is None for t in tails)
