"""NVFP4 generator checkpoints (`model_4o6.pt` layout, spec 01): round trip, published buffer layout, strict errors."""

from __future__ import annotations

import pytest
import torch

from longlive.model.checkpoint import CheckpointError, read_generator_file
from longlive.quant.nvfp4 import dequantize_nvfp4, quantize_nvfp4
from longlive.quant.nvfp4_checkpoint import (
    build_nvfp4_state_dict,
    load_nvfp4_generator,
    save_nvfp4_generator,
    split_nvfp4_state_dict,
)
from longlive.quant.swizzle import to_blocked

LINEARS = ("blocks.0.self_attn.q", "blocks.0.ffn.0")


def tiny_model(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name in LINEARS:
        sd[f"{name}.weight"] = torch.randn(32, 64, generator=g).to(torch.bfloat16)
        sd[f"{name}.bias"] = torch.randn(32, generator=g).to(torch.bfloat16)
    sd["blocks.0.modulation"] = torch.randn(1, 6, 64, generator=g)  # fp32 in memory → written as BF16
    sd["blocks.0.self_attn.norm_q.weight"] = torch.ones(64, dtype=torch.bfloat16)
    sd["head.head.weight"] = torch.randn(12, 64, generator=g).to(torch.bfloat16)  # kept BF16 (not quantised)
    return sd


def quantise(sd: dict[str, torch.Tensor], rule: str, block=(1, 16)):
    q = {n: quantize_nvfp4(sd[f"{n}.weight"], rule=rule, block=block) for n in LINEARS}
    other = {k: v for k, v in sd.items() if not any(k == f"{n}.weight" for n in LINEARS)}
    return q, other


def file_sd(path) -> tuple[dict, dict]:
    obj = torch.load(str(path), map_location="cpu", weights_only=True)
    return obj["generator"], obj


@pytest.mark.parametrize("rule", ["mse", "static_6", "static_4"])
def test_round_trip(tmp_path, rule):
    sd = tiny_model()
    q, other = quantise(sd, rule, block=(16, 16) if rule == "mse" else (1, 16))
    path = save_nvfp4_generator(tmp_path / "model_4o6.pt", q, other, rule)
    assert not list(tmp_path.glob("*.tmp"))
    q2, other2, meta = load_nvfp4_generator(path)
    assert meta["checkpoint_format"] == "longlive_generator_nvfp4" and meta["rule"] == rule
    assert meta["quantization"]["weight_scale_rule"] == rule
    assert set(q2) == set(LINEARS) and set(other2) == set(other)
    for n in LINEARS:
        a, b = q[n], q2[n]
        assert torch.equal(a.values, b.values) and torch.equal(a.scales.view(torch.uint8), b.scales.view(torch.uint8))
        assert torch.equal(a.amax, b.amax) and torch.equal(a.global_scale, b.global_scale)
        assert b.shape == (32, 64) and b.rule == rule and b.block == a.block
        assert torch.equal(dequantize_nvfp4(a), dequantize_nvfp4(b))
    for k, v in other2.items():
        assert v.dtype == torch.bfloat16 and torch.equal(v, other[k].to(torch.bfloat16))


def test_published_buffer_layout(tmp_path):
    sd = tiny_model()
    q, other = quantise(sd, "mse")
    path = save_nvfp4_generator(tmp_path / "m.pt", q, other, "mse")
    gen, obj = file_sd(path)
    assert obj["checkpoint_format"] == "longlive_generator_nvfp4" and obj["checkpoint_version"] == 1
    assert obj["quantization"]["weight_scale_rule"] == "mse" and obj["dtype"] == "bfloat16"
    assert all(k.startswith("model.") for k in gen)
    x = "model.blocks.0.self_attn.q"
    assert f"{x}.weight" not in gen
    v, sf, amax, meta = (gen[f"{x}.quantized_weight_{s}"] for s in ("values", "scale_factors", "amax", "metadata"))
    assert v.dtype == torch.uint8 and v.shape == (32, 32)
    assert sf.dtype == torch.float8_e4m3fn and sf.shape == (128 * 64 // 16,)
    assert amax.dtype == torch.float32 and amax.shape == (1,)
    assert amax.item() == sd["blocks.0.self_attn.q.weight"].float().abs().max().item()  # the amax, not the scale
    assert meta.dtype == torch.int32 and meta.tolist() == [32, 64, 128, 64]
    assert gen[f"{x}.bias"].dtype == torch.bfloat16 and gen["model.blocks.0.modulation"].dtype == torch.bfloat16
    # blocked swizzle of the [32, 4] scale matrix: row r, scale column c at (r % 32)·16 + (r // 32)·4 + c
    s = q["blocks.0.self_attn.q"].scales.view(torch.uint8)
    sfb = sf.view(torch.uint8)
    for r in range(32):
        for c in range(4):
            assert sfb[(r % 32) * 16 + (r // 32) * 4 + c] == s[r, c]
    # low nibble = even column
    codes = torch.stack((v & 0xF, v >> 4), -1).reshape(32, 64)
    deq = torch.tensor([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6])[codes.long()]
    scale = s.view(torch.float8_e4m3fn).float().repeat_interleave(16, 1) * (amax / (6 * 256))
    assert torch.equal((deq * scale).to(torch.bfloat16), dequantize_nvfp4(q["blocks.0.self_attn.q"]))
    # the BF16 loader refuses this file and points at the low-precision loader
    with pytest.raises(CheckpointError, match="longlive_generator_nvfp4"):
        read_generator_file(path)


def test_unpadded_large_and_fourovesix_padded_values(tmp_path):
    w = torch.randn(128, 128).to(torch.bfloat16)
    q = quantize_nvfp4(w, rule="mse")
    sd = build_nvfp4_state_dict({"l": q}, {}, "mse")
    assert sd["l.quantized_weight_metadata"].tolist() == [128, 128, 128, 128]
    assert sd["l.quantized_weight_scale_factors"].numel() == 128 * 128 // 16  # = out·in/16 when aligned
    assert torch.equal(sd["l.quantized_weight_scale_factors"].view(torch.uint8), to_blocked(q.scales.view(torch.uint8)))
    # a FourOverSix-style file with zero-padded values [padded_rows, padded_cols/2] is accepted and cropped
    small = quantize_nvfp4(torch.randn(32, 64), rule="mse")
    sd = build_nvfp4_state_dict({"s": small}, {}, "mse")
    padded = torch.zeros(128, 32, dtype=torch.uint8)
    padded[:32] = sd["s.quantized_weight_values"]
    sd["s.quantized_weight_values"] = padded
    got, _ = split_nvfp4_state_dict(sd, "mse")
    assert torch.equal(got["s"].values, small.values)


def _saved(tmp_path, rule="mse"):
    q, other = quantise(tiny_model(), rule)
    path = save_nvfp4_generator(tmp_path / "m.pt", q, other, rule)
    return path, torch.load(str(path), map_location="cpu", weights_only=True)


X = "model.blocks.0.self_attn.q.quantized_weight_"


@pytest.mark.parametrize(
    "corrupt,match",
    [
        (lambda g: g.__setitem__(X + "metadata", torch.tensor([32, 64, 127, 64], dtype=torch.int32)), X + "metadata"),
        (lambda g: g.__setitem__(X + "metadata", torch.tensor([33, 64, 128, 64], dtype=torch.int32)), X + "values"),
        (lambda g: g.__setitem__(X + "metadata", torch.tensor([32, 64, 128, 64])), X + "metadata"),  # int64
        (lambda g: g.__setitem__(X + "metadata", torch.tensor([32, 48, 128, 64], dtype=torch.int32)), X + "values"),
        (lambda g: g.__setitem__(X + "values", g[X + "values"].to(torch.int8)), X + "values"),
        (lambda g: g.__setitem__(X + "scale_factors", g[X + "scale_factors"][:-4]), X + "scale_factors"),
        (lambda g: g.__setitem__(X + "scale_factors", g[X + "scale_factors"].float()), X + "scale_factors"),
        (lambda g: g.__setitem__(X + "amax", torch.tensor([float("nan")])), X + "amax"),
        (lambda g: g.__setitem__(X + "amax", torch.ones(2)), X + "amax"),
        (lambda g: g.pop(X + "amax"), X + "amax"),
        (lambda g: g.__setitem__("model.blocks.0.self_attn.q.weight", torch.zeros(32, 64)), "self_attn.q.weight"),
        (lambda g: g.__setitem__(X + "zeros", torch.zeros(1)), X + "zeros"),
    ],
)
def test_corrupted_buffers_name_the_key(tmp_path, corrupt, match):
    path, obj = _saved(tmp_path)
    corrupt(obj["generator"])
    torch.save(obj, str(path))
    with pytest.raises(CheckpointError, match=match.replace(".", r"\.")):
        load_nvfp4_generator(path)


def test_rule_metadata_and_format_errors(tmp_path):
    path, obj = _saved(tmp_path, "mse")
    with pytest.raises(CheckpointError, match="conflicts"):
        load_nvfp4_generator(path, rule="static_6")
    obj["quantization"] = {"format": "nvfp4"}
    torch.save(obj, str(path))
    with pytest.raises(CheckpointError, match="no scale rule"):
        load_nvfp4_generator(path)
    q, _, meta = load_nvfp4_generator(path, rule="mse")
    assert meta["rule"] == "mse" and q["blocks.0.self_attn.q"].global_scale.item() == pytest.approx(
        q["blocks.0.self_attn.q"].amax.item() / 1536
    )
    obj["quantization"] = {"scale_rule": "static_6"}  # FourOverSix configs may only carry scale_rule
    torch.save(obj, str(path))
    q, _, meta = load_nvfp4_generator(path)
    assert meta["rule"] == "static_6" and q["blocks.0.self_attn.q"].global_scale.item() == pytest.approx(
        q["blocks.0.self_attn.q"].amax.item() / 2688
    )
    obj["checkpoint_format"] = "longlive_generator_merged_bf16"
    torch.save(obj, str(path))
    with pytest.raises(CheckpointError, match="checkpoint_format"):
        load_nvfp4_generator(path)
    with pytest.raises(FileNotFoundError):
        load_nvfp4_generator(tmp_path / "missing.pt")


def test_transposed_copies_ignored_and_build_errors(tmp_path):
    path, obj = _saved(tmp_path)
    obj["generator"][X + "transposed_values"] = torch.zeros(64, 16, dtype=torch.uint8)
    torch.save(obj, str(path))
    q, other, meta = load_nvfp4_generator(path)
    assert meta["ignored_keys"] == [X + "transposed_values"] and not any("quantized" in k for k in other)
    qq, other = quantise(tiny_model(), "mse")
    with pytest.raises(CheckpointError, match="rule"):
        build_nvfp4_state_dict(qq, other, "static_6")
    with pytest.raises(CheckpointError, match="both"):
        build_nvfp4_state_dict(qq, {**other, "blocks.0.ffn.0.weight": torch.zeros(32, 64)}, "mse")
    with pytest.raises(CheckpointError, match="2-D"):
        build_nvfp4_state_dict({"a": quantize_nvfp4(torch.randn(2, 3, 16), rule="mse")}, {}, "mse")
