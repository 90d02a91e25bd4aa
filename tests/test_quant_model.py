"""Quantised Linear backends, PTQ of the block Linears, LoRA merge, the quantised KV cache, fidelity CLI."""

import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from longlive.infer.pipeline import GenerationSpec, generate
from longlive.model.dit import build_model
from longlive.model.kv_cache import CacheGeometry, KVCache
from longlive.model.presets import get_preset
from longlive.quant.kv import allocate_cache
from longlive.quant.linear import BackendUnavailable, LinearQuantConfig, QuantLinear, check_backend
from longlive.quant.recipes import merge_lora, model_weight_bytes, quantize_model

nvfp4 = pytest.importorskip("longlive.quant.nvfp4")
fp8 = pytest.importorskip("longlive.quant.fp8")


def test_backends_that_cannot_run_here_say_why_and_what_instead():
    with pytest.raises(BackendUnavailable, match=r"compute capability ≥ 8\.9.*this is cpu.*'emulated'"):
        check_backend("fp8", "fp8", "cpu")
    with pytest.raises(BackendUnavailable, match="runs FP8 GEMMs only, not nvfp4"):
        check_backend("nvfp4", "fp8", "cpu")
    try:
        import transformer_engine  # noqa: F401
    except ImportError:
        with pytest.raises(BackendUnavailable, match=r"pip install 'longlive\[te\]'"):
            check_backend("nvfp4", "te", "cpu")
    with pytest.raises(ValueError, match="unknown linear backend 'cutlass'"):
        check_backend("fp8", "cutlass", "cpu")
    check_backend("nvfp4", "emulated", "cpu")
    check_backend("fp8", "emulated", "cpu")


@pytest.mark.parametrize("fmt", ["nvfp4", "fp8"])
@pytest.mark.parametrize("act_quant", [True, False])
def test_emulated_linear_equals_dequantised_reference(fmt, act_quant):
    torch.manual_seed(0)
    lin = nn.Linear(64, 48)
    x = torch.randn(3, 5, 64)
    cfg = LinearQuantConfig(fmt=fmt, backend="emulated", act_quant=act_quant)
    q = QuantLinear.from_linear(lin, cfg)
    if fmt == "nvfp4":
        assert (cfg.weight_rule, cfg.act_rule) == ("mse", "static_6")  # the release's 4-over-6 weights by default
        w = nvfp4.dequantize_nvfp4(nvfp4.quantize_nvfp4(lin.weight.detach(), block=(1, 16), rule="mse"),
                                   torch.float32)
        xq = nvfp4.dequantize_nvfp4(nvfp4.quantize_nvfp4(x.reshape(-1, 64), block=(1, 16), rule="static_6"),
                                    torch.float32)
    else:
        w = fp8.dequantize_fp8(fp8.quantize_fp8(lin.weight.detach(), granularity="row"), torch.float32)
        xq = fp8.dequantize_fp8(fp8.quantize_fp8(x.reshape(-1, 64), granularity="row"), torch.float32)
    ref = F.linear(xq.view_as(x) if act_quant else x, w, lin.bias)
    torch.testing.assert_close(q(x), ref, rtol=0, atol=0)
    rel = ((q(x) - lin(x)).norm() / lin(x).norm()).item()
    assert 0 < rel < (0.25 if fmt == "nvfp4" else 0.06)  # lossy, but close


def test_ptq_quantises_exactly_the_block_linears_and_memory_drops():
    cfg = get_preset("tiny")
    model = build_model(cfg, seed=0, dtype=torch.bfloat16)
    before = model_weight_bytes(model)
    rep = quantize_model(model, LinearQuantConfig(fmt="nvfp4", backend="emulated"))
    assert len(rep.quantised) == cfg.num_layers * 10
    assert {n.split(".", 2)[2] for n in rep.quantised} == {
        "self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "cross_attn.q", "cross_attn.k",
        "cross_attn.v", "cross_attn.o", "ffn.0", "ffn.2"}
    assert isinstance(model.head.head, nn.Linear) and isinstance(model.time_projection[1], nn.Linear)
    assert isinstance(model.text_embedding[0], nn.Linear)
    # NVFP4 stores 4.5 bits per weight element against BF16's 16 (biases stay BF16)
    w_elems = sum(m.in_features * m.out_features for n, m in model.named_modules() if isinstance(m, QuantLinear))
    assert rep.bytes_before - rep.bytes_after >= w_elems * (2 - 0.5625) - 8 * len(rep.quantised)
    assert model_weight_bytes(model) == before - (rep.bytes_before - rep.bytes_after)
    with pytest.raises(ValueError, match="no Linear matches"):
        quantize_model(build_model(cfg), LinearQuantConfig(fmt="fp8", backend="emulated"), include="^nothing$")


def test_quantised_generation_runs_and_stays_close():
    cfg = get_preset("tiny")
    g = torch.Generator().manual_seed(1)
    e = [torch.randn(1, cfg.text_len, cfg.text_dim, generator=g)]
    spec = GenerationSpec(prompts=["x"], frames=8, steps=2, seed=3)
    ref = generate(build_model(cfg, seed=0), spec, e).latents
    out = {}
    for fmt in ("fp8", "nvfp4"):
        m = build_model(cfg, seed=0)
        quantize_model(m, LinearQuantConfig(fmt=fmt, backend="emulated"))
        out[fmt] = generate(m, spec, e).latents
        assert torch.equal(out[fmt], generate(m, spec, e).latents)  # deterministic
    err = {k: ((v - ref).norm() / ref.norm()).item() for k, v in out.items()}
    assert 0 < err["fp8"] < err["nvfp4"] < 0.5


def test_merge_lora_adds_b_times_a():
    torch.manual_seed(0)
    model = build_model(get_preset("tiny"), seed=0)
    w0 = model.blocks[1].ffn[0].weight.detach().clone()
    A, B = torch.randn(4, 128), torch.randn(384, 4)
    merged = merge_lora(model, {"base_model.model.blocks.1.ffn.0.lora_A.weight": A,
                                "base_model.model.blocks.1.ffn.0.lora_B.weight": B}, scale=0.5)
    assert merged == ["blocks.1.ffn.0"]
    torch.testing.assert_close(model.blocks[1].ffn[0].weight, w0 + 0.5 * B @ A)
    with pytest.raises(ValueError, match="has only lora_A"):
        merge_lora(model, {"blocks.0.ffn.0.lora_A.weight": A})
    with pytest.raises(ValueError, match="do not fit blocks.0.ffn.2"):
        merge_lora(model, {"blocks.0.ffn.2.lora_A.weight": A, "blocks.0.ffn.2.lora_B.weight": B})


GEO = CacheGeometry(chunk_frames=1, window_frames=4, sink_frames=1, tokens_per_frame=6)


@pytest.mark.parametrize("fmt,ratio", [("nvfp4", 3.4), ("fp8", 1.8)])  # 16 / 4.5 bits; 16 / (8 + 32/64)
def test_quantised_kv_is_smaller_and_close(fmt, ratio):
    torch.manual_seed(0)
    dense = KVCache.allocate(GEO, 2, 1, 2, 64, storage="bf16")
    quant = allocate_cache(GEO, 2, 1, 2, 64, storage=fmt, compute_dtype=torch.bfloat16)
    assert dense.storage.nbytes() / quant.storage.packed_nbytes() > ratio
    ptrs = [t.data_ptr() for t in quant.storage.packed]
    for c in range(6):
        k, v = torch.randn(1, 6, 2, 64, dtype=torch.bfloat16), torch.randn(1, 6, 2, 64, dtype=torch.bfloat16)
        for cache in (dense, quant):
            cache.begin_chunk(c)
            cache.committing = True
            kd, vd = cache.update(1, k, v)
            cache.committing = False
        kq, vq = quant.storage.attend(1, quant.current_slot, quant.filled_slots, k, v, False)
        kd, vd = dense.storage.attend(1, dense.current_slot, dense.filled_slots, k, v, False)
        cur = slice(quant.current_slot * 6, quant.current_slot * 6 + 6)
        assert torch.equal(kq[:, cur], k)  # the current chunk is attended unquantised
        rel = ((kq.float() - kd.float()).norm() / kd.float().norm()).item()
        assert rel < (0.2 if fmt == "nvfp4" else 0.05)
    assert [t.data_ptr() for t in quant.storage.packed] == ptrs  # written in place


def test_kv_quantised_once_per_chunk_and_first_chunk_exact(monkeypatch):
    cfg = get_preset("tiny")
    model = build_model(cfg, seed=0)
    e = [torch.randn(1, cfg.text_len, cfg.text_dim)]
    calls = []
    orig = nvfp4.quantize_nvfp4

    def counting(*a, **k):
        calls.append(1)
        return orig(*a, **k)

    monkeypatch.setattr(nvfp4, "quantize_nvfp4", counting)
    one = GenerationSpec(prompts=["x"], frames=cfg.chunk_frames, steps=4)
    exact = generate(model, one, e).latents
    q1 = generate(model, GenerationSpec(prompts=["x"], frames=cfg.chunk_frames, steps=4, kv_quant="nvfp4"), e)
    assert torch.equal(q1.latents, exact)  # chunk 0 attends only itself, in full precision
    calls.clear()
    res = generate(model, GenerationSpec(prompts=["x"], frames=3 * cfg.chunk_frames, steps=4, kv_quant="nvfp4"), e)
    assert len(calls) == 3 * cfg.num_layers * 2  # once per chunk, per layer, for K and V: not per step
    assert res.kv_packed_bytes < res.kv_cache_bytes


def test_fidelity_cli(tmp_path, capsys):
    from longlive.cli import main

    code = main(["fidelity", "--model", "tiny", "--frames", "4", "--steps", "2", "--device", "cpu",
                 "--ref-precision", "fp32", "--precision", "nvfp4", "--kv-quant", "nvfp4", "--out", str(tmp_path)])
    assert code == 0
    res = json.loads((tmp_path / "fidelity.json").read_text())
    assert 0 < res["latent_rel_err_vs_ref"] < 1 and res["psnr_vs_ref"] > 10
    assert res["candidate"]["weights_gb"] < res["reference"]["weights_gb"]
    assert res["candidate"]["kv_quant"] == "nvfp4" and "manifest" in res


def test_nvfp4_generator_round_trip_in_published_layout(tmp_path):
    from longlive.model.checkpoint import CheckpointError, checkpoint_format
    from longlive.quant.recipes import load_nvfp4_model, save_nvfp4_model

    cfg = get_preset("tiny")
    a = build_model(cfg, seed=4, dtype=torch.bfloat16)
    quantize_model(a, LinearQuantConfig(fmt="nvfp4", backend="emulated", weight_rule="mse"))
    save_nvfp4_model(a, tmp_path / "model_4o6.pt", rule="mse")
    assert checkpoint_format(tmp_path / "model_4o6.pt") == "longlive_generator_nvfp4"
    raw = torch.load(tmp_path / "model_4o6.pt", weights_only=True)
    sd = raw.get("generator", raw)
    assert sd["model.blocks.0.ffn.0.quantized_weight_values"].dtype == torch.uint8
    assert "model.blocks.0.ffn.0.weight" not in sd and "model.head.head.weight" in sd
    b = build_model(cfg, seed=9, dtype=torch.bfloat16)
    load_nvfp4_model(b, tmp_path / "model_4o6.pt")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, cfg.in_channels, cfg.chunk_frames, *cfg.latent_hw, generator=g)
    t = torch.tensor([[999.0, 500.0]])
    ctx = torch.randn(1, cfg.text_len, cfg.text_dim, generator=g)
    assert torch.equal(a(x, t, ctx), b(x, t, ctx))
    other = build_model(cfg.with_overrides(ffn_dim=256), dtype=torch.bfloat16)
    with pytest.raises(CheckpointError, match=r"model\.blocks\.0\.ffn\.0 is NVFP4 \[384, 128\]"):
        load_nvfp4_model(other, tmp_path / "model_4o6.pt")
