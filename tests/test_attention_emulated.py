"""The `-emulated` attention backends: the low-precision kernels' arithmetic (each module's `reference`) through the
model's attention dispatch on any device, reading an FP8 KV cache as stored; the GPU-only names say where to go."""

from __future__ import annotations

import os

import pytest
import torch

import longlive.quant.attention  # noqa: F401  (registers the backends)
from longlive.infer.assemble import VideoRequest, build, run
from longlive.model.attention import reads_fp8, resolve_backend, sdpa, sdpa_backend, unavailable_reason
from longlive.names import ATTN, ATTN_EMULATED, ATTN_LOWP
from longlive.quant import attention_cudnn, attention_triton
from longlive.quant.fp8 import fp8_window
from longlive.runner.matrix import expand, reference_cell

EMULATES = {"cudnn-fp8-emulated": attention_cudnn.reference, "int8-fp8-emulated": attention_triton.reference}


def test_every_emulated_name_is_a_low_precision_twin_of_a_kernel():
    assert set(ATTN_EMULATED) == set(EMULATES) and set(ATTN_EMULATED) <= set(ATTN_LOWP) <= set(ATTN)
    for name in ATTN_EMULATED:
        assert name.removesuffix("-emulated") in ATTN_LOWP
        assert unavailable_reason(name, "cpu") is None and resolve_backend(name, "cpu", torch.bfloat16) == name
        assert reads_fp8(name) and sdpa_backend(name) == "math"  # cross-attention on any device
    with pytest.raises(ValueError, match="takes BF16/FP16 activations, not FP32"):
        resolve_backend("cudnn-fp8-emulated", "cpu", torch.float32)


def test_a_gpu_only_name_on_the_cpu_points_at_its_twin():
    with pytest.raises(ValueError, match=r"needs a CUDA device.*use attn=auto \(or math\), or "
                                         r"attn=int8-fp8-emulated for its arithmetic in PyTorch"):
        resolve_backend("int8-fp8", "cpu", torch.bfloat16)


@pytest.mark.parametrize("name", ATTN_EMULATED)
def test_dispatch_equals_the_reference_on_tensors_and_fp8_windows(name):
    seed = int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, n, 2, 32, generator=g).to(torch.bfloat16) for n in (40, 96, 96))
    for kk, vv in ((k, v), (fp8_window(k), fp8_window(v))):
        got, want = sdpa(q, kk, vv, name), EMULATES[name](q, kk, vv)
        assert got.dtype == q.dtype and torch.equal(got, want), f"seed {seed}"
    logits = torch.einsum("bqhd,bkhd->bhqk", q.double(), k.double()) / 32**0.5
    ref = torch.einsum("bhqk,bkhd->bqhd", logits.softmax(-1), v.double())  # float64 attention
    err = ((sdpa(q, k, v, name).double() - ref).norm() / ref.norm()).item()
    assert 1e-4 < err < 0.15, (f"seed {seed}: {name}'s error against float64, {err:.3g}, should show E4M3 rounding "
                               "(> 1e-4) and stay small (< 0.15)")


def test_tiny_generation_with_an_emulated_backend_and_an_fp8_cache_is_close_to_bf16(tmp_path):
    """The shipped tiny model, 8 latent frames, on the CPU: FP8 attention over the FP8 window cache moves the
    latents, by less than a tenth of their norm."""
    common = dict(model="tiny", frames=8, steps=2, seed=3, device="cpu", dtype="bf16", decode="none",
                  progress=False)
    base = run(build(VideoRequest(**common)), tmp_path / "base")
    emu = run(build(VideoRequest(**common, attn="cudnn-fp8-emulated", kv_quant="fp8")), tmp_path / "emu")
    err = ((emu.latents - base.latents).norm() / base.latents.norm()).item()
    assert 0 < err < 0.1, err


def test_the_emulated_tiny_gate_preset_runs_on_the_cpu_against_pytorch_attention():
    cells = expand("attn_lowp_tiny_emulated", ["seed=0", "precision=bf16"])
    assert {c.axes["hardware"] for c in cells} == {"cpu"} and {c.axes["model"] for c in cells} == {"tiny"}
    assert {(c.axes["attn"], c.axes["kv_quant"]) for c in cells} == {
        ("auto", "none"), *((a, kv) for a in ATTN_EMULATED for kv in ("none", "fp8"))}
    ref = reference_cell(next(c for c in cells if c.axes["attn"] == "cudnn-fp8-emulated"))
    assert (ref.axes["attn"], ref.axes["precision"], ref.axes["kv_quant"]) == ("auto", "bf16", "none")
    assert [g["name"] for g in cells[0].config["gates"]] == ["fidelity-tiny"]
