"""`int8-fp8` attention (longlive.quant.attention_triton): the PyTorch reference against float64 attention, the
INT8 block quantiser's edge cases, K smoothing, FP8Window inputs; on a GPU (`-m gpu`, skipped without CUDA sm_90+
and Triton) the Triton kernel against the reference.

Error bounds (relative Frobenius error against float64 attention of the same BF16 inputs), and why:
  * Gaussian q, k, v (the worst case for a relative error: the output is an average of zero-mean values, as small
    as the rounding noise averages down to): E4M3 keeps 3 mantissa bits, a relative step of 2^-3/m (mantissa m in
    [1, 2)), so each rounded P or V element carries an rms relative error of 2^-3·√(E[1/m²]/12) ≈ 2.6 %, which
    does not average out relative to such an output (measured:
    FP8 V alone 2.5-2.8 %, FP8 P alone 2.6 %); INT8 blocks perturb the base-e logits by ~0.013 rms, 1.3 %.
    Independent: √(2.6² + 2.6² + 1.3²) ≈ 3.9 % (measured 3.5-4.2 % over 25 seeds). Bound 5 %.
  * Keys sharing large per-channel offsets (up to ±50, as real K has), Gaussian V: smoothing removes the offsets
    before INT8, so the error stays that of Gaussian inputs (measured 3.7-3.9 %). Bound 5 %; without smoothing
    the offsets set the INT8 step and the error is 12-13 %.
  * Values with a common mean (as real V has) and offset keys: the output is far from zero and the same absolute
    noise, averaged over ≳ 100 keys, is a small relative error (measured ≤ 0.7 % from 177 keys on, but 1.0-1.3 %
    with 65 keys). Bound 1 % from 177 keys on.
  * Kernel against reference (GPU): the same quantisation and the same online softmax with the same key tile, so
    they differ only in summation order and the GPU's approximate exp2: far below one BF16 step in nearly all
    elements. Bound 2e-3 (the brief allows 1e-2); a wrong key tile alone gives ~1e-2.
Inputs are fresh random draws; the seed is in every failure message.
"""

from __future__ import annotations

import math
import os

import pytest
import torch

from longlive.model.attention import FP8Window
from longlive.quant import attention_triton as at
from longlive.quant.fp8 import fp8_window

# shapes (B, Lq, H, D, Lk): tails in both query and key tiles, every supported head_dim, a single query
SHAPES = [(1, 200, 2, 128, 600), (1, 130, 3, 64, 177), (2, 64, 2, 32, 700), (1, 1, 2, 128, 257)]


def fresh_seed() -> int:
    return int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def exact_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Non-causal softmax attention in float64 on [B, L, H, D]."""
    q, k, v = (x.double() for x in (q, k, v))
    s = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
    return torch.einsum("bhqk,bkhd->bqhd", s.softmax(-1), v)


def inputs(shape: tuple[int, int, int, int, int], seed: int, key_offset: float = 0.0, value_mean: float = 0.0,
           device: str = "cpu"):
    """BF16 q, k, v [B, L, H, D], Gaussian; keys shifted per (head, channel) by up to ±2·key_offset, values by a
    common mean of scale value_mean (the structure real K and V have)."""
    B, Lq, H, D, Lk = shape
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, L, H, D, generator=g) for L in (Lq, Lk, Lk))
    k = k + key_offset * torch.randn(1, 1, H, D, generator=g).clamp(-2, 2)
    v = v + value_mean * torch.randn(1, 1, H, D, generator=g)
    return tuple(x.to(torch.bfloat16).to(device) for x in (q, k, v))


STRUCTURED = {"key_offset": 10.0, "value_mean": 1.0}


# ------------------------------------------------------------------------------------------------ CPU: reference
@pytest.mark.parametrize("shape", SHAPES)
def test_reference_is_close_to_float64_attention(shape):
    seed = fresh_seed()
    q, k, v = inputs(shape, seed)
    err = rel_err(at.reference(q, k, v), exact_attention(q, k, v))
    assert err <= 0.05, f"seed {seed}: Gaussian inputs, rel. error {err:.4f} > 5 %"
    q, k, v = inputs(shape, seed, key_offset=25.0)
    err = rel_err(at.reference(q, k, v), exact_attention(q, k, v))
    assert err <= 0.05, f"seed {seed}: keys offset by up to ±50, rel. error {err:.4f} > 5 % (K smoothing?)"
    q, k, v = inputs(shape, seed, **STRUCTURED)
    err = rel_err(at.reference(q, k, v), exact_attention(q, k, v))
    assert err <= 0.01, f"seed {seed}: structured inputs, rel. error {err:.4f} > 1 %"


def test_reference_rounds_p_against_the_running_maximum_of_its_key_tile():
    """The online softmax rounds P to E4M3 against the running row maximum, so the key tile matters at the 1 %
    level: the reference must be run with the kernel's BLOCK_N (and any tile stays within the accuracy bound)."""
    seed = fresh_seed()
    q, k, v = inputs((1, 128, 2, 64, 512), seed)
    a, b = at.reference(q, k, v, tile_n=64), at.reference(q, k, v, tile_n=128)
    ref = exact_attention(q, k, v)
    assert rel_err(a, ref) <= 0.05 and rel_err(b, ref) <= 0.05, f"seed {seed}"
    assert 1e-3 < rel_err(a, b) < 0.05, f"seed {seed}: tiles 64 and 128 differ by {rel_err(a, b):.2e}"


def test_k_smoothing_leaves_exact_attention_unchanged():
    seed = fresh_seed()
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(2, L, 3, 32, generator=g, dtype=torch.float64) for L in (40, 90, 90))
    k = k + 5 * torch.randn(1, 1, 3, 32, generator=g, dtype=torch.float64)
    smoothed = k - k.mean(dim=1, keepdim=True)  # mean over keys per (b, h, channel)
    torch.testing.assert_close(exact_attention(q, smoothed, v), exact_attention(q, k, v), rtol=1e-12, atol=1e-12,
                               msg=lambda m: f"seed {seed}: {m}")


def test_fp8_window_inputs_match_their_dequantised_tensors():
    """An FP8Window K enters as data · scale (fp32), exactly what its dequantised fp32 tensor gives; an FP8Window
    V is used as stored, and a float V is re-quantised per tensor, which reproduces the same codes when V came
    from fp8_window (its largest element sits at ±448), even through BF16. A BF16-rounded K moves the logits by
    ~2^-9, enough to move some P values across an E4M3 rounding boundary: that is P's rounding noise (measured
    2.0-2.4 %, the bound 4 % ≈ √2 × 2.6 %), not a different result."""
    seed = fresh_seed()
    q, k, v = inputs((1, 150, 2, 64, 300), seed)
    kw, vw = fp8_window(k), fp8_window(v)
    out = at.reference(q, kw, vw)
    same = at.reference(q, kw.dequantize(torch.float32), vw.dequantize(torch.float32))
    assert torch.equal(out, same), f"seed {seed}: fp32-dequantised windows differ by {rel_err(same, out):.2e}"
    same = at.reference(q, kw, vw.dequantize(torch.bfloat16))
    assert torch.equal(out, same), f"seed {seed}: a bf16-dequantised V differs by {rel_err(same, out):.2e}"
    close = at.reference(q, kw.dequantize(torch.bfloat16), vw)
    assert rel_err(close, out) <= 0.04, f"seed {seed}: a bf16-dequantised K differs by {rel_err(close, out):.2e}"


def test_a_single_key_returns_its_fp8_value():
    """One key: P = exp2(P_LOG2) ≈ 447.7 rounds to the E4M3 code 448 while the row sum keeps 447.7, so the output
    is V's E4M3 value × 448 / 447.7 (a 0.07 % excess, which averages out over many keys)."""
    seed = fresh_seed()
    q, k, v = inputs((2, 5, 3, 64, 1), seed)
    vw = fp8_window(v)
    expected = vw.dequantize(torch.float32) * (448 / 2**at.P_LOG2)
    out = at.reference(q, k, v)
    torch.testing.assert_close(out.float(), expected.expand_as(out), rtol=4e-3, atol=1e-6,
                               msg=lambda m: f"seed {seed}: {m}")


# ------------------------------------------------------------------------------------------------ CPU: quantiser
def test_int8_block_quantiser_on_edge_cases():
    x = torch.zeros(1, 8, 4)
    x[0, 0] = torch.tensor([0.5, 1.5, 2.5, -2.5])  # inv = 127 / 127 = 1: ties round to even
    x[0, 1] = torch.tensor([127.0, -127.0, 126.5, 3.5])
    x[0, 4:] = 0.0  # second block of 4 rows: all zeros
    codes, scales = at.quantize_int8_blocks(x, 4)
    assert codes.dtype == torch.int8 and codes.shape == (1, 8, 4) and scales.shape == (1, 2)
    assert codes[0, 0].tolist() == [0, 2, 2, -2] and codes[0, 1].tolist() == [127, -127, 126, 4]
    assert scales[0, 0].item() == 1.0 and scales[0, 1].item() == 1.0 and not codes[0, 4:].any()  # zero block
    y = torch.randn(1, 6, 4)
    y[0, 1, 2] = float("nan")
    y[0, 4, 0] = float("inf")
    codes, scales = at.quantize_int8_blocks(y, 2)  # blocks: rows 0-1 (NaN), 2-3, 4-5 (Inf)
    assert not codes[0, :2].any() and math.isnan(scales[0, 0].item())
    assert not codes[0, 4:].any() and math.isinf(scales[0, 2].item())
    assert codes[0, 2:4].abs().max().item() == 127 and math.isfinite(scales[0, 1].item())
    codes, scales = at.quantize_int8_blocks(torch.ones(2, 5, 3), 4)  # 5 rows → padded to 8, padding codes 0
    assert codes.shape == (2, 8, 3) and scales.shape == (2, 2) and not codes[:, 5:].any()
    assert (codes[:, :5] == 127).all()


def test_int8_block_quantiser_on_random_blocks():
    """Every code within ±127, the block maximum at exactly ±127, dequantisation within half a step, odd symmetry."""
    seed = fresh_seed()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 256, 64, generator=g) * torch.exp(2 * torch.randn(3, 1, 1, generator=g))
    codes, scales = at.quantize_int8_blocks(x, 64)
    step = scales.repeat_interleave(64, dim=-1)[..., None]
    assert (codes.float() * step - x).abs().le(step * (0.5 + 1e-5)).all(), f"seed {seed}"
    blocks = codes.unflatten(1, (-1, 64)).abs().to(torch.int32)
    assert (blocks.amax(dim=(2, 3)) == 127).all() and blocks.max() <= 127, f"seed {seed}"
    neg, neg_scales = at.quantize_int8_blocks(-x, 64)
    assert torch.equal(neg, -codes) and torch.equal(neg_scales, scales), f"seed {seed}"


# ------------------------------------------------------------------------------------------------ CPU: API
def test_unavailable_on_cpu_names_the_missing_device():
    reason = at.unavailable(torch.device("cpu"))
    assert reason is not None and "int8-fp8" in reason and "CUDA" in reason


def test_attend_rejects_bad_inputs_before_any_work():
    q = torch.zeros(1, 8, 2, 64, dtype=torch.bfloat16)
    kv = torch.zeros(1, 16, 2, 64, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="q must be .* BF16 or FP16, got .*float32"):
        at.attend(q.float(), kv, kv)
    with pytest.raises(ValueError, match="head_dim .* got 48"):
        at.attend(q[..., :48], kv[..., :48], kv[..., :48])
    with pytest.raises(ValueError, match=r"k must be \[B, Lk, H, D\] = \[1, Lk, 2, 64\]"):
        at.attend(q, kv[:, :, :1], kv)
    with pytest.raises(ValueError, match="same number of keys"):
        at.attend(q, kv, kv[:, :8])
    with pytest.raises(ValueError, match="FP8Window v must hold float8_e4m3fn"):
        at.attend(q, kv, FP8Window(kv, torch.ones(1)))
    with pytest.raises(ValueError, match="runs on CUDA tensors, got q on cpu"):
        at.attend(q, kv, kv)


# ------------------------------------------------------------------------------------------------ GPU: the kernel
def _gpu_ready() -> bool:
    return torch.cuda.is_available() and at.unavailable(torch.device("cuda")) is None


GPU = pytest.mark.skipif(not _gpu_ready(), reason="needs a CUDA sm_90+ GPU and Triton")
TIGHT = 2e-3


def heads_first_window(x: torch.Tensor, extra: int = 5) -> FP8Window:
    """x [B, L, H, D] as an FP8 cache would hold it: a [B, L, H, D] view of a heads-first [B, H, L + extra, D]
    buffer (the extra slots are garbage the kernel must not read)."""
    B, L, H, D = x.shape
    w = fp8_window(x)
    buf = torch.full((B, H, L + extra, D), float("nan"), device=x.device).to(torch.float8_e4m3fn)
    buf[:, :, :L] = w.data.transpose(1, 2)
    return FP8Window(buf[:, :, :L].transpose(1, 2), w.scale)


@pytest.mark.gpu
@GPU
@pytest.mark.parametrize("shape", [*SHAPES, (1, 5, 2, 64, 1)])
def test_kernel_matches_reference_and_float64(shape):
    seed = fresh_seed()
    q, k, v = inputs(shape, seed, device="cuda")
    out = at.attend(q, k, v)
    assert out.shape == q.shape and out.dtype == q.dtype and out.is_contiguous()
    ref = at.reference(q.cpu(), k.cpu(), v.cpu(), tile_n=at.DEFAULT_CONFIG.block_n)
    assert rel_err(out.cpu(), ref) <= TIGHT, f"seed {seed}: kernel vs reference {rel_err(out.cpu(), ref):.2e}"
    err = rel_err(out.cpu(), exact_attention(q.cpu(), k.cpu(), v.cpu()))
    assert err <= 0.05, f"seed {seed}: kernel vs float64 {err:.4f}"


@pytest.mark.gpu
@GPU
@pytest.mark.parametrize("config", at.CONFIGS, ids=str)
def test_every_tile_config_matches_the_reference_with_its_tile(config):
    seed = fresh_seed()
    q, k, v = inputs((1, 300, 2, 128, 1000), seed, **STRUCTURED, device="cuda")
    out = at.attend(q, k, v, config=config).cpu()
    ref = at.reference(q.cpu(), k.cpu(), v.cpu(), tile_n=config.block_n)
    assert rel_err(out, ref) <= TIGHT, f"seed {seed}: {config}: {rel_err(out, ref):.2e}"


@pytest.mark.gpu
@GPU
def test_autotuned_kernel_matches_the_reference_with_the_chosen_tile():
    seed = fresh_seed()
    q, k, v = inputs((1, 256, 2, 128, 2000), seed, device="cuda")
    out = at.attend(q, k, v, config="autotune").cpu()
    best = at._kernels()["attn_tuned"].best_config
    ref = at.reference(q.cpu(), k.cpu(), v.cpu(), tile_n=best.kwargs["BLOCK_N"])
    assert rel_err(out, ref) <= TIGHT, f"seed {seed}: autotuned {best}: {rel_err(out, ref):.2e}"


@pytest.mark.gpu
@GPU
def test_strided_fp8_windows_of_heads_first_buffers():
    seed = fresh_seed()
    q, k, v = inputs((1, 200, 3, 128, 333), seed, **STRUCTURED, device="cuda")
    kw, vw = heads_first_window(k), heads_first_window(v)
    out = at.attend(q, kw, vw).cpu()
    cpu = (FP8Window(kw.data.cpu(), kw.scale.cpu()), FP8Window(vw.data.cpu(), vw.scale.cpu()))
    ref = at.reference(q.cpu(), *cpu)
    assert rel_err(out, ref) <= TIGHT, f"seed {seed}: {rel_err(out, ref):.2e}"
    # V read as stored (channels contiguous: the MMA transposes it) and V already stored keys-contiguous
    as_stored = at.attend(q, kw, vw, v_transpose=False).cpu()
    assert rel_err(as_stored, out) <= 1e-3, f"seed {seed}: {rel_err(as_stored, out):.2e}"
    B, L, H, D = v.shape
    vt = torch.empty(B, H, D, -(-L // 16) * 16 + 16, device="cuda").to(torch.float8_e4m3fn)  # 16-byte rows
    vt[..., :L] = vw.data.permute(0, 2, 3, 1)
    keys_contiguous = FP8Window(vt[..., :L].permute(0, 3, 1, 2), vw.scale)
    assert keys_contiguous.data.stride(1) == 1
    prep = at.prepare(q, kw, keys_contiguous)
    assert prep.v8.data_ptr() == vt.data_ptr(), "a keys-contiguous V must be read as stored, not transposed"
    same = at.attend(q, kw, keys_contiguous).cpu()
    assert rel_err(same, out) <= 1e-3, f"seed {seed}: {rel_err(same, out):.2e}"


@pytest.mark.gpu
@GPU
def test_prepass_codes_equal_the_reference_quantisers():
    seed = fresh_seed()
    B, Lq, H, D, Lk = 2, 200, 3, 64, 300
    q, k, v = inputs((B, Lq, H, D, Lk), seed, **STRUCTURED, device="cuda")
    prep = at.prepare(q, k, v)
    q8, sq = at.quantize_int8_blocks(q.cpu().float().transpose(1, 2), at.Q_BLOCK)
    c = torch.tensor(at.LOG2E / math.sqrt(D), dtype=torch.float32)
    assert torch.equal(prep.q8.view(B, H, -1, D).cpu(), q8), f"seed {seed}: q codes"
    assert torch.equal(prep.sq.view(B, H, -1).cpu(), sq * c), f"seed {seed}: q scales"
    kh = k.cpu().float().transpose(1, 2)
    mean = prep.mean.view(B, H, 1, D).cpu()
    torch.testing.assert_close(mean, kh.mean(dim=2, keepdim=True), rtol=1e-5, atol=1e-5)
    k8, sk = at.quantize_int8_blocks(kh - mean, at.K_BLOCK)  # same mean: the codes must agree exactly
    got8, got_s = prep.k8.view(B, H, -1, D).cpu(), prep.sk.view(B, H, -1).cpu()  # padded to PAD keys, not K_BLOCK
    assert torch.equal(got8[:, :, : k8.shape[2]], k8) and not got8[:, :, k8.shape[2] :].any(), f"seed {seed}: k codes"
    assert torch.equal(got_s[..., : sk.shape[-1]], sk), f"seed {seed}: k scales"
    w = fp8_window(v)  # on the GPU, like the kernel's scale
    assert torch.equal(prep.vs, w.scale), f"seed {seed}: v scale"
    assert torch.equal(prep.v8.view(torch.uint8), w.data.view(torch.uint8)), f"seed {seed}: v codes"
    bf16_v = at.attend(q, k, v)
    assert torch.equal(bf16_v, at.attend(q, k, w)), f"seed {seed}: BF16 V and its fp8_window differ"


@pytest.mark.gpu
@GPU
def test_output_is_fully_written_and_nan_propagates_like_the_reference():
    seed = fresh_seed()
    q, k, v = inputs((1, 300, 2, 64, 500), seed, device="cuda")
    poison = torch.full_like(q, float("nan"))
    out = at.attend(q, k, v, out=poison)
    assert out.data_ptr() == poison.data_ptr() and torch.isfinite(out).all(), f"seed {seed}: rows left unwritten"
    assert torch.equal(out, at.attend(q, k, v)), f"seed {seed}"
    q[0, 5, 1, 3] = float("nan")  # poisons q's block of Q_BLOCK rows in head 1
    k[0, 7, 0, 2] = float("inf")  # poisons every row of head 0 (through the key mean)
    out = at.attend(q, k, v).cpu()
    ref = at.reference(q.cpu(), k.cpu(), v.cpu())
    assert torch.equal(out.isnan(), ref.isnan()), f"seed {seed}: NaN patterns differ"
    assert out[0, :, 0].isnan().all() and out[0, :128, 1].isnan().all() and out[0, 128:, 1].isfinite().all()
