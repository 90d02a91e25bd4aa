"""Fused q/k/v projection (longlive.model.fuse): the fused generator streams the unfused one's latents, FP8
(emulated, row-wise weight scales) included; what it refuses, and that it is idempotent."""

from __future__ import annotations

import copy

import pytest
import torch

from longlive.infer.pipeline import GenerationSpec, generate
from longlive.model.dit import build_model
from longlive.model.fuse import fuse_qkv
from longlive.model.presets import get_preset


def _setup():
    cfg = get_preset("tiny")
    model = build_model(cfg, seed=0).eval().requires_grad_(False)
    for p in model.parameters():  # non-zero biases, so their concatenation is exercised
        p.add_(0.02 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    embeds = [torch.randn(1, cfg.text_len, cfg.text_dim, generator=torch.Generator().manual_seed(1))]
    slots = cfg.window_frames // cfg.chunk_frames
    spec = GenerationSpec(prompts=["x"], frames=(slots + 1) * cfg.chunk_frames, steps=2, seed=0, warmup_chunks=0)
    return model, embeds, spec


def test_fused_qkv_streams_the_unfused_latents():
    model, embeds, spec = _setup()
    with torch.no_grad():
        ref = generate(model, spec, embeds).latents
        fused = copy.deepcopy(model)
        assert fuse_qkv(fused) == len(fused.blocks)
        assert fuse_qkv(fused) == 0  # idempotent
        attn = fused.blocks[0].self_attn
        assert attn.q is None and attn.qkv.weight.shape == (3 * fused.cfg.dim, fused.cfg.dim)
        torch.testing.assert_close(attn.qkv.weight[fused.cfg.dim:2 * fused.cfg.dim],
                                   model.blocks[0].self_attn.k.weight, rtol=0, atol=0)
        out = generate(fused, spec, embeds).latents
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_fused_qkv_quantises_as_one_fp8_linear_with_the_same_numerics():
    from longlive.quant.linear import LinearQuantConfig, QuantLinear
    from longlive.quant.recipes import quantize_model

    model, embeds, spec = _setup()
    cfg = LinearQuantConfig(fmt="fp8", backend="emulated")
    fused = copy.deepcopy(model)
    fuse_qkv(fused)
    quantize_model(model, cfg)
    quantize_model(fused, cfg)
    assert isinstance(fused.blocks[0].self_attn.qkv, QuantLinear)
    with torch.no_grad():
        ref = generate(model, spec, embeds).latents
        out = generate(fused, spec, embeds).latents
    # row-wise weight scales are per output channel, and each token's activation scale is the same for all three
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_fuse_after_quantisation_is_refused():
    from longlive.quant.linear import LinearQuantConfig
    from longlive.quant.recipes import quantize_model

    model, _, _ = _setup()
    quantize_model(model, LinearQuantConfig(fmt="fp8", backend="emulated"))
    with pytest.raises(TypeError, match="fuse before quantising"):
        fuse_qkv(model)


def test_a_fused_model_is_not_saved_in_the_release_layout(tmp_path):
    from longlive.model.checkpoint import save_generator

    model, _, _ = _setup()
    fuse_qkv(model)
    with pytest.raises(ValueError, match="save the model before fusing"):
        save_generator(model, tmp_path / "g.pt")
    assert not (tmp_path / "g.pt").exists()
