"""LoRA over frozen quantised Linears (DMD's NVFP4 frozen networks, Table 2): y = Q(W)x + (alpha/rank)·B·A·x."""

from __future__ import annotations

import pytest
import torch

from longlive.model.dit import build_model
from longlive.model.presets import get_preset
from longlive.quant.linear import LinearQuantConfig, QuantLinear
from longlive.quant.recipes import quantize_model
from longlive.train.lora import add_lora, lora_modules, lora_state_dict


def _quantised_tiny(fmt: str):
    model = build_model(get_preset("tiny"), seed=0)
    quantize_model(model, LinearQuantConfig(fmt=fmt, act_quant=False))
    return model


@pytest.mark.parametrize("fmt", ["nvfp4", "fp8"])
def test_lora_over_quantised_linear_equals_base_plus_low_rank(fmt):
    model = _quantised_tiny(fmt)
    ref_q = model.blocks[0].ffn[0]
    assert isinstance(ref_q, QuantLinear)
    add_lora(model, lora_rank=4, alpha=8)
    layer = lora_modules(model)["blocks.0.ffn.0"]
    g = torch.Generator().manual_seed(1)
    for p in (layer.lora_A["default"].weight, layer.lora_B["default"].weight):
        with torch.no_grad():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    x = torch.randn(3, 5, ref_q.in_features, generator=g)
    a = layer.lora_A["default"].weight.double()
    b = layer.lora_B["default"].weight.double()
    expected = ref_q(x).double() + 2.0 * (x.double() @ a.T @ b.T)
    torch.testing.assert_close(layer(x).double(), expected, rtol=1e-2, atol=1e-2)
    assert layer.base_layer is ref_q


def test_lora_on_quantised_model_trains_only_adapters_and_saves():
    model = _quantised_tiny("nvfp4")
    add_lora(model, lora_rank=4, alpha=4)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n for n in trainable)
    assert all(model.get_parameter(n).dtype == torch.float32 for n in trainable)
    for m in lora_modules(model).values():
        torch.nn.init.normal_(m.lora_B["default"].weight)
    cfg = model.cfg
    h, w = cfg.latent_hw
    out = model(torch.randn(1, cfg.in_channels, cfg.chunk_frames, h, w), torch.zeros(1, cfg.chunk_frames),
                torch.randn(1, cfg.text_len, cfg.text_dim))
    out.float().pow(2).mean().backward()
    assert all(model.get_parameter(n).grad is not None for n in trainable)
    sd = lora_state_dict(model)
    assert len(sd) == len(trainable)


def test_merge_into_quantised_linear_is_refused():
    model = _quantised_tiny("nvfp4")
    add_lora(model, lora_rank=2, alpha=2)
    with pytest.raises(ValueError, match="merge into the BF16 checkpoint first"):
        lora_modules(model)["blocks.0.ffn.0"].merge()
