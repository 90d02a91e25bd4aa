"""FLOP counts and ceilings against spec 05's physical-limit numbers; training metrics."""

import pytest

from longlive.measure.roofline import (
    ceiling_fps,
    chunk_flops,
    measure_attention_tflops,
    measure_gemm_tflops,
    pass_flops,
    training_metrics,
)
from longlive.model.presets import get_preset

FIVE_B = get_preset("wan2.2-ti2v-5b")


def test_5b_pass_flops_match_spec():
    f = pass_flops(FIVE_B)
    assert f.gemm / 1e12 == pytest.approx(61.1, abs=0.05)   # 2 × 144.7 M MACs × 7040 × 30
    assert f.attn / 1e12 == pytest.approx(73.1, abs=0.05)   # 4 × 7040 × 28160 × 3072 × 30
    assert f.cross / 1e12 == pytest.approx(1.3, abs=0.05)
    assert chunk_flops(FIVE_B, 4) / 32 / 1e12 == pytest.approx(21.2, abs=0.1)  # ≈ 21 TFLOP per frame


@pytest.mark.parametrize("steps,gemm,expected", [(4, 789, 35), (4, 1430, 44), (2, 789, 59), (2, 1430, 73)])
def test_ceilings_from_spec_rates(steps, gemm, expected):
    assert ceiling_fps(FIVE_B, steps, gemm, 723) == pytest.approx(expected, rel=0.03)


def test_warmup_window_has_less_attention():
    assert pass_flops(FIVE_B, kv_tokens=7040).attn == pytest.approx(pass_flops(FIVE_B).attn / 4)


def test_training_metrics():
    m = training_metrics([9.0, 2.0, 2.2, 1.8], tokens_per_step=1000, flops_per_step=4e12, peak_tflops=1.0)
    assert m["iter_s"] == 2.0 and m["tokens_per_s"] == 500 and m["mfu"] == pytest.approx(2.0)
    with pytest.raises(ValueError, match="need more than 1 steps"):
        training_metrics([1.0], 1, 1.0, 1.0)


def test_measured_rates_on_cpu_are_positive():
    import torch

    tiny = get_preset("tiny")
    assert measure_gemm_tflops(tiny, "cpu", torch.float32, repeats=2) > 0
    assert measure_attention_tflops(tiny, "cpu", torch.float32, "math", repeats=2) > 0
