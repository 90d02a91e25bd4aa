"""Reference low-precision formats: E2M1/E4M3 rounding, NVFP4 (all rules, 1×16 and 16×16), Hadamard, FP8, MXFP4,
swizzle. The expected values come from definitions written here (float64 / numpy-float32), not from the code."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from longlive.quant.formats import (
    e2m1_to_float,
    pack_nibbles,
    round_to_e2m1,
    to_e4m3,
    unpack_nibbles,
)
from longlive.quant.fp8 import dequantize_fp8, quantize_fp8
from longlive.quant.hadamard import (
    hadamard_matrix,
    inverse_random_hadamard_transform,
    random_hadamard_matrix,
    random_hadamard_transform,
)
from longlive.quant.mxfp4 import dequantize_mxfp4, quantize_mxfp4
from longlive.quant.nvfp4 import (
    block_scale_candidates,
    dequantize_nvfp4,
    fake_quantize_nvfp4,
    global_scale_from_amax,
    nvfp4_codes,
    quantize_nvfp4,
)
from longlive.quant.swizzle import from_blocked, to_blocked

HSET = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ----------------------------------------------------------------------------------------------------------------
# Independent definitions
# ----------------------------------------------------------------------------------------------------------------
GRID = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]
DM = {"static_6": 2688.0, "static_4": 1792.0, "mse": 1536.0, "mae": 1536.0, "abs_max": 1536.0}
MT = {"static_6": 6.0, "static_4": 4.0, "mse": 6.0, "mae": 6.0, "abs_max": 6.0}


def ref_rne_index(a: float) -> int:
    """Nearest E2M1 magnitude index for a ≥ 0 (saturating at 6); ties go to the even index (= even mantissa)."""
    a = min(a, 6.0)
    best = min(range(8), key=lambda i: (abs(GRID[i] - a), i % 2))
    return best


def ref_code(y: float) -> int:
    if math.isnan(y):
        return 0
    return ref_rne_index(abs(y)) | (8 if math.copysign(1.0, y) < 0 else 0)


def ref_value(code: int) -> float:
    v = GRID[code & 7]
    return -v if code & 8 else v


def ref_e4m3(v: float) -> float:
    """Round a float to E4M3 (fn): RNE, subnormal step 2^-9, saturate at ±448, NaN stays NaN."""
    if math.isnan(v):
        return v
    s = -1.0 if v < 0 else 1.0
    a = min(abs(v), 448.0)
    if a == 0:
        return 0.0 * s
    if a < 2.0**-6:
        step = 2.0**-9
    else:
        _, e = math.frexp(a)  # a = m·2^e, m ∈ [0.5, 1) → exponent e-1, 3 mantissa bits
        step = 2.0 ** (e - 1 - 3)
    return s * min(round(a / step) * step, 448.0)  # Python round() is ties-to-even


def ref_nvfp4_f64(x: np.ndarray, rule: str, block: tuple[int, int], amax: float | None = None):
    """Float64 definition of spec 03 (incl. the 4/6 choice) on a 2-D array → (codes, scales per row-block, g)."""
    x = np.asarray(x, dtype=np.float64)
    rows, cols = x.shape
    amax = float(np.abs(x).max()) if amax is None else amax
    g = amax / DM[rule]
    codes = np.zeros((rows, cols), dtype=np.int64)
    scales = np.zeros((rows, cols // 16))
    br = block[0]
    for r0 in range(0, rows, br):
        for c0 in range(0, cols, 16):
            blk = x[r0 : r0 + br, c0 : c0 + 16]
            bm = float(np.abs(blk).max())
            s_f = 0.0 if g == 0 else bm / MT[rule] / g
            cands = [s_f] + ([s_f * 1.5] if rule in ("mse", "mae", "abs_max") else [])
            results = []
            for sf in cands:
                s = ref_e4m3(min(sf, 448.0))
                den = s * g
                cb = np.array([[0 if den == 0 else ref_code(v / den) for v in row] for row in blk])
                xh = np.vectorize(ref_value)(cb) * s * g
                d = xh - blk
                err = {"mse": (d**2).sum(), "mae": np.abs(d).sum(), "abs_max": np.abs(d).max()}.get(rule, 0.0)
                results.append((err, cb, s))
            pick = results[1] if len(results) == 2 and results[1][0] < results[0][0] else results[0]
            codes[r0 : r0 + br, c0 : c0 + 16] = pick[1]
            scales[r0 : r0 + br, c0 // 16] = pick[2]
    return codes, scales, g


def emu_nvfp4_f32(x: np.ndarray, rule: str, block: tuple[int, int], amax: float | None = None):
    """numpy-float32 emulation of the documented op order (nvfp4.py docstring) — the bit-exact kernel contract."""
    f = np.float32
    x = np.asarray(x, dtype=f)
    rows, cols = x.shape
    br = block[0]
    prow = -(-rows // br) * br
    xp = np.zeros((prow, cols), dtype=f)
    xp[:rows] = x
    xb = xp.reshape(prow // br, br, cols // 16, 16).transpose(0, 2, 1, 3).reshape(prow // br, cols // 16, br * 16)
    amax32 = f(np.abs(x).max()) if amax is None else f(amax)
    g = amax32 / f(DM[rule])
    bm = np.abs(xb).max(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        s_f = np.where(g == 0, f(0), (bm / f(MT[rule])) / g).astype(f)
    e4 = np.vectorize(lambda v: ref_e4m3(float(v)))
    rcode = np.vectorize(lambda v: ref_code(float(v)))
    rval = np.vectorize(ref_value)

    def cand(sf):
        s = e4(np.minimum(sf, f(448))).astype(f)
        den = (s * g).astype(f)[..., None]
        with np.errstate(divide="ignore", invalid="ignore"):
            y = np.where(den == 0, f(0), xb / den).astype(f)
        c = rcode(y)
        xh = ((rval(c).astype(f) * s[..., None]).astype(f) * g).astype(f)
        return c, s, xh

    def tree(e):
        while e.shape[-1] > 1:
            e = e[..., 0::2] + e[..., 1::2]
        return e[..., 0]

    c6, s6, xh6 = cand(s_f)
    if rule in ("mse", "mae", "abs_max"):
        c4, s4, xh4 = cand((s_f * f(1.5)).astype(f))
        d6 = xh6.astype(np.float64) - xb.astype(np.float64)
        d4 = xh4.astype(np.float64) - xb.astype(np.float64)
        if rule == "mse":
            e6, e4_ = tree(d6 * d6), tree(d4 * d4)
        elif rule == "mae":
            e6, e4_ = tree(np.abs(d6)), tree(np.abs(d4))
        else:
            e6, e4_ = np.abs(d6).max(-1), np.abs(d4).max(-1)
        pick = e4_ < e6
        c6 = np.where(pick[..., None], c4, c6)
        s6 = np.where(pick, s4, s6)
    codes = c6.reshape(prow // br, cols // 16, br, 16).transpose(0, 2, 1, 3).reshape(prow, cols)[:rows]
    scales = np.repeat(s6, br, axis=0)[:rows]
    return codes, scales, g


def impl(x, rule="static_6", block=(1, 16), amax=None, **kw):
    q = quantize_nvfp4(torch.as_tensor(x, dtype=torch.float32), rule=rule, block=block, amax=amax, **kw)
    return q, nvfp4_codes(q).numpy().astype(np.int64), q.scales.float().numpy()


# ----------------------------------------------------------------------------------------------------------------
# E2M1 / E4M3 / packing
# ----------------------------------------------------------------------------------------------------------------
MIDPOINTS = {0.25: 0.0, 0.75: 1.0, 1.25: 1.0, 1.75: 2.0, 2.5: 2.0, 3.5: 4.0, 5.0: 4.0}


def test_e2m1_midpoints_round_to_even():
    for sign in (1.0, -1.0):
        y = torch.tensor([sign * m for m in MIDPOINTS])
        got = e2m1_to_float(round_to_e2m1(y))
        assert got.tolist() == [sign * v for v in MIDPOINTS.values()]


def test_e2m1_sweep_matches_definition():
    # every multiple of 1/64 in [-8, 8] (exact in fp32), plus each midpoint nudged by one ulp either side
    base = [k / 64 for k in range(-512, 513)]
    nudged = []
    for m in MIDPOINTS:
        for s in (1, -1):
            v = np.float32(s * m)
            nudged += [float(np.nextafter(v, np.float32(-100))), float(np.nextafter(v, np.float32(100)))]
    vals = base + nudged
    got = round_to_e2m1(torch.tensor(vals, dtype=torch.float32)).tolist()
    assert got == [ref_code(v) for v in vals]


def test_e2m1_exact_values_saturation_zero_nan():
    vals = [0.0, -0.0, 0.5, 6.0, -6.0, 6.0001, 7.0, 1e30, float("inf"), -float("inf"), -0.1, 0.1, float("nan")]
    codes = round_to_e2m1(torch.tensor(vals)).tolist()
    assert codes == [0, 8, 1, 7, 15, 7, 7, 7, 7, 15, 8, 0, 0]
    assert e2m1_to_float(torch.arange(16)).tolist() == [ref_value(c) for c in range(16)]
    assert math.copysign(1.0, e2m1_to_float(torch.tensor([8])).item()) == -1.0


def test_stochastic_rounding_unbiased_and_only_neighbours():
    gen = torch.Generator().manual_seed(0)
    n = 20000
    for y, (lo, hi) in {2.3: (2.0, 3.0), 0.1: (0.0, 0.5), 5.5: (4.0, 6.0), -1.2: (-1.5, -1.0), 4.0: (4.0, 4.0)}.items():
        vals = e2m1_to_float(round_to_e2m1(torch.full((n,), y), stochastic=True, generator=gen))
        assert set(vals.unique().tolist()) <= {lo, hi}
        assert abs(vals.double().mean().item() - y) < 0.02
    # saturation and exact grid values never move
    assert e2m1_to_float(round_to_e2m1(torch.full((100,), 9.0), stochastic=True, generator=gen)).unique().tolist() == [
        6.0
    ]
    # explicit noise is used as documented: up iff u < p
    noise = torch.tensor([0.29, 0.31, 0.0, 0.999])
    got = e2m1_to_float(round_to_e2m1(torch.tensor([2.3, 2.3, 2.0, 2.0]), stochastic=True, noise=noise))
    assert got.tolist() == [3.0, 2.0, 2.0, 2.0]


def test_pack_nibbles_low_is_even():
    packed = pack_nibbles(torch.tensor([[1, 2, 15, 8]], dtype=torch.uint8))
    assert packed.tolist() == [[0x21, 0x8F]]
    assert unpack_nibbles(packed).tolist() == [[1, 2, 15, 8]]
    with pytest.raises(ValueError):
        pack_nibbles(torch.zeros(3, dtype=torch.uint8))


@HSET
@given(st.lists(st.integers(1, 5), min_size=0, max_size=3), st.integers(1, 20), st.integers(0, 2**31 - 1))
def test_pack_unpack_round_trip(lead, half, seed):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 16, (*lead, 2 * half), generator=g, dtype=torch.uint8)
    assert torch.equal(unpack_nibbles(pack_nibbles(codes)), codes)


def test_e4m3_saturation_rne_nan():
    vals = [0.0, 448.0, 449.0, 500.0, 1e9, -1e9, 2.0**-9, 2.0**-10, 3 * 2.0**-11, 17.0, 19.0, 0.3, float("nan")]
    got = to_e4m3(torch.tensor(vals)).float().tolist()
    exp = [ref_e4m3(v) for v in vals]
    assert got[:-1] == exp[:-1] and math.isnan(got[-1])
    assert to_e4m3(torch.tensor([float("nan"), -float("nan")])).view(torch.uint8).tolist() == [0x7F, 0x7F]
    sweep = torch.linspace(-460, 460, 9001)
    assert to_e4m3(sweep).float().tolist() == [ref_e4m3(v) for v in sweep.tolist()]
    tiny = torch.linspace(0, 2.0**-5, 2001)
    assert to_e4m3(tiny).float().tolist() == [ref_e4m3(v) for v in tiny.tolist()]


# ----------------------------------------------------------------------------------------------------------------
# NVFP4: hand-made vectors against the float64 definition
# ----------------------------------------------------------------------------------------------------------------
def _one_block(vals: list[float]) -> np.ndarray:
    assert len(vals) <= 16
    return np.array([vals + [0.0] * (16 - len(vals))])


def test_nvfp4_static6_midpoints_exact():
    # amax = 2688 → g = 1; block 0 has max 2688 → s = 448, y = x / 448; block 1 max 0.75 → s = 0.125
    ts = list(MIDPOINTS) + [6.0]
    b0 = [448.0 * t for t in ts] + [-448.0 * t for t in ts]
    b1 = [0.125 * t for t in ts] + [0.0] * 6 + [0.125 * 0.5]
    x = np.concatenate([_one_block(b0), _one_block(b1)], axis=1)
    q, codes, scales = impl(x)
    rc, rs, rg = ref_nvfp4_f64(x, "static_6", (1, 16))
    assert q.global_scale.item() == rg == 1.0
    assert scales.tolist() == rs.tolist() == [[448.0, 0.125]]
    assert codes.tolist() == rc.tolist()
    deq = dequantize_nvfp4(q, torch.float32).numpy()
    assert deq[0, :7].tolist() == [448.0 * v for v in MIDPOINTS.values()]
    assert deq[0, 7] == 2688.0 and deq[0, 15] == -2688.0


def test_nvfp4_beyond_six_clamps_and_all_equal_block():
    # caller amax smaller than the data: scale clamps at 448 and |y| at 6
    x = np.array([[5000.0, -5000.0, 100.0] + [0.0] * 13])
    q, codes, scales = impl(x, amax=2688.0)
    assert scales.tolist() == [[448.0]] and codes[0, :2].tolist() == [7, 15]
    assert codes.tolist() == ref_nvfp4_f64(x, "static_6", (1, 16), amax=2688.0)[0].tolist()
    # all-equal block → every code is ±6's code
    x = np.full((2, 32), 3.7)
    x[1] = -3.7
    q, codes, _ = impl(x)
    assert set(codes[0].tolist()) == {7} and set(codes[1].tolist()) == {15}
    assert np.allclose(dequantize_nvfp4(q, torch.float32).numpy(), x, rtol=2**-4)


def test_nvfp4_zero_tensor_and_zero_block():
    for rule in DM:
        for block in ((1, 16), (16, 16)):
            q = quantize_nvfp4(torch.zeros(16, 32), rule=rule, block=block)
            assert q.amax.item() == 0 and q.global_scale.item() == 0
            assert not q.scales.float().any() and not q.values.any()
            out = dequantize_nvfp4(q, torch.float32)
            assert torch.equal(out, torch.zeros(16, 32))
    x = torch.zeros(1, 32)
    x[0, 16:] = torch.linspace(-3, 3, 16)
    q = quantize_nvfp4(x)
    assert q.scales.float()[0, 0] == 0 and torch.isfinite(dequantize_nvfp4(q, torch.float32)).all()
    assert torch.equal(dequantize_nvfp4(q, torch.float32)[0, :16], torch.zeros(16))


def test_nvfp4_subnormal_e4m3_scales():
    # g = 1 (amax 2688 in block 0); other blocks have bm/6 in the E4M3 subnormal range (step 2^-9)
    u = 2.0**-9
    blocks = [
        [2688.0],
        [6 * 3 * u, 6 * u],  # s = 3u exactly
        [6 * 0.4 * u],  # s rounds to 0 → whole block 0
        [6 * 0.5 * u],  # tie → 0 (even)
        [6 * 0.75 * u, 6 * 0.2 * u],  # s rounds up to u → y_max = 4.5 → 4
        [6 * 5.5 * u],  # s = 5.5u → tie → 6u
    ]
    x = np.concatenate([_one_block(b) for b in blocks], axis=1)
    q, codes, scales = impl(x)
    rc, rs, _ = ref_nvfp4_f64(x, "static_6", (1, 16))
    assert scales.tolist() == rs.tolist() == [[448.0, 3 * u, 0.0, 0.0, u, 6 * u]]
    assert codes.tolist() == rc.tolist()
    deq = dequantize_nvfp4(q, torch.float32).numpy()
    assert deq[0, 32:64].tolist() == [0.0] * 32
    assert deq[0, 64] == 4 * u


def test_nvfp4_nan_policy():
    x = torch.randn(4, 32)
    x[1, 3] = float("nan")
    q = quantize_nvfp4(x)  # amax computed from x → NaN → everything NaN
    assert torch.isnan(q.amax).all() and torch.isnan(dequantize_nvfp4(q, torch.float32)).all()
    assert not q.values.any()  # NaN elements code to 0
    q = quantize_nvfp4(x, amax=x.nan_to_num().abs().max())  # finite caller amax → only the NaN block
    deq = dequantize_nvfp4(q, torch.float32)
    assert torch.isnan(deq[1, :16]).all() and torch.isfinite(deq[1, 16:]).all() and torch.isfinite(deq[0]).all()
    assert q.scales.view(torch.uint8)[1, 0].item() == 0x7F
    for rule in ("mse", "static_4"):
        qq = quantize_nvfp4(x, rule=rule, amax=8.0)
        assert torch.isnan(dequantize_nvfp4(qq, torch.float32)[1, :16]).all()
    xi = torch.randn(2, 16)
    xi[0, 0] = float("inf")
    assert torch.isnan(dequantize_nvfp4(quantize_nvfp4(xi), torch.float32)).all()


def test_nvfp4_shape_and_argument_errors():
    with pytest.raises(ValueError, match="multiple of 16"):
        quantize_nvfp4(torch.randn(4, 24))
    with pytest.raises(ValueError, match="rule"):
        quantize_nvfp4(torch.randn(4, 16), rule="static_5")
    with pytest.raises(ValueError, match="block"):
        quantize_nvfp4(torch.randn(4, 16), block=(8, 16))
    q = quantize_nvfp4(torch.randn(2, 3, 5, 32, dtype=torch.bfloat16))
    assert q.values.shape == (30, 16) and q.scales.shape == (30, 2) and q.shape == (2, 3, 5, 32)
    assert dequantize_nvfp4(q).shape == (2, 3, 5, 32) and dequantize_nvfp4(q).dtype == torch.bfloat16


def test_nvfp4_static4():
    # amax 1792 → g = 1; block max → 4
    x = _one_block([1792.0, 448.0 * 1.25, 448.0 * 3.5, 448.0 * 2.5, -448.0 * 3.4])
    q, codes, scales = impl(x, rule="static_4")
    rc, rs, rg = ref_nvfp4_f64(x, "static_4", (1, 16))
    assert q.global_scale.item() == rg == 1.0 and scales.tolist() == rs.tolist() == [[448.0]]
    assert codes.tolist() == rc.tolist()
    assert codes[0, :5].tolist() == [6, 2, 6, 4, 13]  # 4, 1.25→1, 3.5→4, 2.5→2, −3.4→−3


def test_four_over_six_tie_keeps_six_and_four_wins():
    # mse/mae/abs_max: D = 256 → amax 1536 gives g = 1. Block 0 holds the amax; s6 = 256, s4 = 384.
    amax_blk = [1536.0]
    tie = [12.0, 6.0, 0.0, -12.0]  # bm 12: s6 = 2 (grid ·2), s4 = 3 (grid ·3): both exact → tie → 6
    four = [12.0, 9.0, 9.0, -4.5]  # y6 = 4.5 → 4 (err 1); y4 = 3, 3, 1.5 exact → 4 wins
    six = [12.0, 1.0, 1.0, 2.0]  # y6 exact; y4 = 1/3 → 0.5 → 1.5 (err .5) → 6 wins
    x = np.concatenate([_one_block(b) for b in (amax_blk, tie, four, six)], axis=1)
    for rule in ("mse", "mae", "abs_max"):
        q, codes, scales = impl(x, rule=rule)
        rc, rs, rg = ref_nvfp4_f64(x, rule, (1, 16))
        assert q.global_scale.item() == rg == 1.0
        assert scales[0, 1:].tolist() == rs[0, 1:].tolist() == [2.0, 3.0, 2.0]
        assert codes.tolist() == rc.tolist()
        deq = dequantize_nvfp4(q, torch.float32).numpy()
        assert deq[0, 16:20].tolist() == tie and deq[0, 32:36].tolist() == four


def test_four_over_six_rules_can_disagree():
    # errors (per candidate): one big vs many small. g = 1 via amax 1536 in a separate block.
    rng = np.random.default_rng(3)
    found = set()
    for _ in range(400):
        blk = list(np.round(rng.uniform(-12, 12, 15) * 4) / 4) + [12.0]
        x = np.concatenate([_one_block([1536.0]), _one_block(blk)], axis=1)
        picks = tuple(ref_nvfp4_f64(x, r, (1, 16))[1][0, 1] for r in ("mse", "mae", "abs_max"))
        if len(set(picks)) > 1 and picks not in found:
            found.add(picks)
            for r, p in zip(("mse", "mae", "abs_max"), picks, strict=True):
                assert impl(x, rule=r)[2][0, 1] == p
    assert found, "expected at least one block where the 4/6 rules pick differently"


def test_sixteen_by_sixteen_blocks():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(40, 48, generator=g) * torch.logspace(-1, 1, 48)
    for rule in DM:
        q = quantize_nvfp4(w, rule=rule, block=(16, 16))
        s = q.scales.float()
        for r0 in range(0, 40, 16):
            assert (s[r0 : r0 + 16] == s[r0 : r0 + 1]).all()  # one scale per tile, repeated on its rows
        rc, rs, _ = ref_nvfp4_f64(w.numpy().astype(np.float64), rule, (16, 16))
        assert np.allclose(s.numpy(), rs, rtol=2**-20)  # float64 definition (no exact ties in random data)
        assert np.array_equal(nvfp4_codes(q).numpy(), rc)
    # W and Wᵀ quantise identically with 2-D blocks (max-based rules are order-free)
    for rule in ("static_6", "static_4", "abs_max"):
        a = dequantize_nvfp4(quantize_nvfp4(w[:32], rule=rule, block=(16, 16)), torch.float32)
        b = dequantize_nvfp4(quantize_nvfp4(w[:32].T.contiguous(), rule=rule, block=(16, 16)), torch.float32)
        assert torch.equal(a, b.T)


@pytest.mark.parametrize("rule", list(DM))
@pytest.mark.parametrize("block", [(1, 16), (16, 16)])
def test_nvfp4_bit_exact_vs_documented_f32_op_order(rule, block):
    gen = torch.Generator().manual_seed(hash((rule, block)) % 2**31)
    x = torch.randn(20, 64, generator=gen) * torch.logspace(-3, 2, 64)
    x[3, :16] = 0
    x[5, 16:32] *= 1e-4  # subnormal-range scales
    x = x.to(torch.bfloat16).float()
    q, codes, scales = impl(x, rule=rule, block=block)
    ec, es, eg = emu_nvfp4_f32(x.numpy(), rule, block)
    assert q.global_scale.item() == float(eg)
    assert np.array_equal(scales, es.astype(np.float32))
    assert np.array_equal(codes, ec)
    # dequantisation: (e2m1 · s) · g in fp32
    v = np.vectorize(ref_value)(ec).astype(np.float32)
    exp = (v * np.repeat(es.astype(np.float32), 16, axis=1)).astype(np.float32) * np.float32(eg)
    assert np.array_equal(dequantize_nvfp4(q, torch.float32).numpy(), exp)


# (rule, amax, bm) where a different fp32 operation order gives a different E4M3 block scale (found by exhaustive
# search over bf16 pairs): these pin step 4 of the documented order, s_f = (bm / M) / g and s4_f = s6_f · 1.5.
ORDER_PINS = [
    ("static_6", 1.09375, 0.0019073486328125),
    ("static_6", 1.09375, 0.003814697265625),
    ("mse", 1.0, 0.00140380859375),
    ("mse", 1.0, 0.00189208984375),
    ("mse", 1.0625, 0.0018157958984375),
    ("mse", 1.0625, 0.003631591796875),
]


@pytest.mark.parametrize("rule,amax,bm", ORDER_PINS)
def test_nvfp4_scale_operation_order_pins(rule, amax, bm):
    f = np.float32
    g = f(amax) / f(DM[rule])
    s6_f = (f(bm) / f(MT[rule])) / g
    exp6 = ref_e4m3(float(s6_f))
    s6, s4 = block_scale_candidates(torch.tensor([bm]), global_scale_from_amax(torch.tensor([amax]), rule), rule)
    assert s6.item() == exp6
    alternatives = [f(bm) / (f(MT[rule]) * g), f(bm) * ((f(DM[rule]) / f(amax)) / f(MT[rule]))]
    if s4 is not None:
        exp4 = ref_e4m3(float(s6_f * f(1.5)))
        assert s4.item() == exp4
        alt4 = ref_e4m3(float((f(bm) / f(4)) / g))
        assert alt4 != exp4 or any(ref_e4m3(float(a)) != exp6 for a in alternatives)
    else:
        assert any(ref_e4m3(float(a)) != exp6 for a in alternatives)  # the pin discriminates
    x = torch.zeros(1, 32)
    x[0, 0], x[0, 16] = amax, bm
    q = quantize_nvfp4(x, rule=rule)
    assert q.scales.float()[0, 1].item() in {exp6} | ({exp4} if s4 is not None else set())


def test_nvfp4_stochastic_unbiased_and_neighbours():
    # g = 1 and exact scales: block 0 holds amax 2688 (s = 448), block 1 has max 6 → s = 1 → y = x
    x = torch.tensor([[2688.0] + [0.0] * 15 + [6.0, 2.3, -0.1, 5.5, 1.0] + [0.0] * 11])
    gen = torch.Generator().manual_seed(7)
    draws = torch.stack(
        [dequantize_nvfp4(quantize_nvfp4(x, stochastic=True, generator=gen), torch.float32)[0] for _ in range(3000)]
    )
    assert torch.equal(draws[:, 0], torch.full((3000,), 2688.0))
    for j, (lo, hi) in {17: (2.0, 3.0), 18: (-0.5, 0.0), 19: (4.0, 6.0), 20: (1.0, 1.0)}.items():
        assert set(draws[:, j].unique().tolist()) <= {lo, hi}
        assert abs(draws[:, j].double().mean().item() - x[0, j].item()) < 0.05
    # same seed → same draws; works for a 4/6 rule
    a = quantize_nvfp4(x, stochastic=True, generator=torch.Generator().manual_seed(1), rule="mse")
    b = quantize_nvfp4(x, stochastic=True, generator=torch.Generator().manual_seed(1), rule="mse")
    assert torch.equal(a.values, b.values) and torch.equal(a.scales.view(torch.uint8), b.scales.view(torch.uint8))


# ----------------------------------------------------------------------------------------------------------------
# Property tests
# ----------------------------------------------------------------------------------------------------------------
def _rand_tensor(seed: int, rows: int, nblk: int, spread: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, 16 * nblk, generator=g) * torch.exp(spread * torch.rand(rows, 16 * nblk, generator=g))
    return x.to(torch.bfloat16).float()


@HSET
@given(
    st.integers(0, 2**31 - 1),
    st.integers(1, 33),
    st.integers(1, 4),
    st.sampled_from(list(DM)),
    st.sampled_from([(1, 16), (16, 16)]),
    st.booleans(),
)
def test_property_error_bound(seed, rows, nblk, rule, block, stochastic):
    """|x̂ − x| ≤ den·(step(|y|)/2 or a full step when stochastic) + clamp overshoot (+ fp32 slack)."""
    x = _rand_tensor(seed, rows, nblk, 3.0)
    q = quantize_nvfp4(x, rule=rule, block=block, stochastic=stochastic, generator=torch.Generator().manual_seed(seed))
    xh = dequantize_nvfp4(q, torch.float32).double()
    den = (q.scales.double() * q.global_scale.double()).repeat_interleave(16, dim=1)
    y = (x.double() / den).abs()
    step = torch.where(y < 2, 0.5, torch.where(y < 4, 1.0, 2.0))
    bound = den * (step if stochastic else step / 2) + (x.double().abs() - 6 * den).clamp(min=0)
    assert ((xh - x.double()).abs() <= bound * (1 + 1e-6) + 1e-30).all()


@HSET
@given(
    st.integers(0, 2**31 - 1),
    st.integers(1, 33),
    st.integers(1, 3),
    st.sampled_from(list(DM)),
    st.sampled_from([(1, 16), (16, 16)]),
)
def test_property_requantise_idempotent(seed, rows, nblk, rule, block):
    """Q(D(Q(x))) with the same amax reproduces the dequantised tensor exactly (all rules), and also the codes and
    scales for the static rules. (A 4/6 block re-quantised may flip to the other candidate when both reproduce the
    values exactly — a tie that keeps 6 — so codes are only compared for static rules.) Spread is limited so every
    block scale is an E4M3 normal: with subnormal scales re-quantisation may legitimately change the scale."""
    x = _rand_tensor(seed, rows, nblk, 1.0)
    q1 = quantize_nvfp4(x, rule=rule, block=block)
    x1 = dequantize_nvfp4(q1, torch.float32)
    q2 = quantize_nvfp4(x1, rule=rule, block=block, amax=q1.amax)
    assert torch.equal(dequantize_nvfp4(q2, torch.float32), x1)
    if rule.startswith("static"):
        assert torch.equal(q2.values, q1.values)
        assert torch.equal(q2.scales.view(torch.uint8), q1.scales.view(torch.uint8))


def test_fake_quantize_helper():
    x = torch.randn(4, 32, dtype=torch.bfloat16)
    out = fake_quantize_nvfp4(x, rule="mse")
    assert out.dtype == torch.bfloat16 and torch.equal(out, dequantize_nvfp4(quantize_nvfp4(x, rule="mse")))


# ----------------------------------------------------------------------------------------------------------------
# Hadamard
# ----------------------------------------------------------------------------------------------------------------
def test_hadamard_orthonormal_and_inverse():
    h = hadamard_matrix(16, dtype=torch.float64)
    assert torch.allclose(h @ h.T, torch.eye(16, dtype=torch.float64), atol=1e-12)
    assert set((hadamard_matrix(16, normalized=False)).unique().tolist()) == {-1.0, 1.0}
    for signs in (None, 123, torch.tensor([1.0, -1.0] * 8)):
        t = random_hadamard_matrix(signs).double()
        assert torch.allclose(t @ t.T, torch.eye(16, dtype=torch.float64), atol=1e-7)
        x = torch.randn(3, 5, 48)
        y = random_hadamard_transform(x, signs)
        ref = (x.reshape(3, 5, 3, 16).double() @ t).reshape(3, 5, 48)
        assert torch.allclose(y.double(), ref, atol=1e-5)
        assert torch.allclose(inverse_random_hadamard_transform(y, signs), x, atol=1e-5)
        # along another dim
        y1 = random_hadamard_transform(x.transpose(1, 2).contiguous(), signs, dim=1)
        assert torch.allclose(y1.transpose(1, 2), y, atol=1e-6)
    # small integers: every butterfly sum is exact → bit-equal to the dense float64 product
    xi = torch.randint(-8, 8, (10, 16)).float()
    assert torch.equal(random_hadamard_transform(xi).double(), xi.double() @ random_hadamard_matrix().double())
    with pytest.raises(ValueError):
        random_hadamard_transform(torch.randn(4, 24))


def test_nvfp4_with_hadamard_round_trip():
    x = torch.randn(8, 64, generator=torch.Generator().manual_seed(2))
    for signs in (True, 5):
        q = quantize_nvfp4(x, hadamard=signs, rule="mse")
        back = dequantize_nvfp4(q, torch.float32, hadamard=signs)
        assert (back - x).norm() / x.norm() < 0.15
        q2 = quantize_nvfp4(random_hadamard_transform(x, None if signs is True else signs), rule="mse")
        assert torch.equal(q.values, q2.values)  # the hook = transform, then quantise (amax after the RHT)
        rot = inverse_random_hadamard_transform(dequantize_nvfp4(q2, torch.float32), None if signs is True else signs)
        assert torch.equal(back, rot)


# ----------------------------------------------------------------------------------------------------------------
# FP8
# ----------------------------------------------------------------------------------------------------------------
def ref_fp8(x: np.ndarray, gran: str):
    x = x.astype(np.float64)
    rows, cols = x.shape
    if gran == "tensor":
        groups = [(slice(None), slice(None))]
    elif gran == "row":
        groups = [(slice(r, r + 1), slice(None)) for r in range(rows)]
    elif gran == "block1x128":
        groups = [(slice(r, r + 1), slice(c, c + 128)) for r in range(rows) for c in range(0, cols, 128)]
    else:
        groups = [(slice(r, r + 128), slice(c, c + 128)) for r in range(0, rows, 128) for c in range(0, cols, 128)]
    data = np.zeros_like(x)
    scales = []
    for gs in groups:
        a = np.abs(x[gs]).max()
        s = float(np.float32(a / 448.0))  # fp32 division via exact-then-round (innocuous double rounding)
        s = 1.0 if s == 0 else s
        scales.append(s)
        data[gs] = np.vectorize(lambda v, s=s: ref_e4m3(float(np.float32(v / s))))(x[gs])
    return data, np.array(scales)


@pytest.mark.parametrize("gran", ["tensor", "row", "block1x128", "block128x128"])
def test_fp8_granularities_vs_definition(gran):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(130, 256, generator=g) * torch.logspace(-2, 2, 256)
    x[7] = 0
    x[:, 128:] *= 3
    q = quantize_fp8(x, gran)
    data, scales = ref_fp8(x.numpy(), gran)
    assert np.array_equal(q.scale.numpy().ravel(), scales.astype(np.float32))
    assert np.array_equal(q.data.float().numpy(), data)
    exp_shape = {"tensor": (1,), "row": (130, 1), "block1x128": (130, 2), "block128x128": (2, 2)}[gran]
    assert tuple(q.scale.shape) == exp_shape and q.data.dtype == torch.float8_e4m3fn
    deq = dequantize_fp8(q, torch.float32)
    s_el = torch.as_tensor(scales, dtype=torch.float64).reshape(exp_shape if gran != "tensor" else (1, 1))
    if gran == "block128x128":
        s_el = s_el.repeat_interleave(128, 0)[:130]
    if gran.startswith("block"):
        s_el = s_el.repeat_interleave(128, 1)
    err = (deq.double() - x.double()).abs()
    assert deq.shape == x.shape and (err <= x.double().abs() * 2**-4 + s_el * 2**-10 + 1e-30).all()


def test_fp8_zero_nan_and_errors():
    q = quantize_fp8(torch.zeros(3, 128), "row")
    assert torch.equal(q.scale, torch.ones(3, 1)) and not q.data.float().any()
    x = torch.randn(2, 128)
    x[1, 0] = float("nan")
    d = dequantize_fp8(quantize_fp8(x, "row"), torch.float32)
    assert torch.isnan(d[1]).all() and torch.isfinite(d[0]).all()
    with pytest.raises(ValueError, match="multiple of 128"):
        quantize_fp8(torch.randn(4, 100), "block1x128")
    with pytest.raises(ValueError, match="granularity"):
        quantize_fp8(torch.randn(4, 128), "col")
    q = quantize_fp8(torch.randn(2, 3, 128), "tensor")
    assert dequantize_fp8(q).shape == (2, 3, 128)


# ----------------------------------------------------------------------------------------------------------------
# MXFP4
# ----------------------------------------------------------------------------------------------------------------
def test_mxfp4_vs_definition():
    g = torch.Generator().manual_seed(9)
    x = torch.randn(6, 96, generator=g) * torch.logspace(-3, 3, 96)
    x[2, :32] = 0
    x[3, 32:64] = 4.0  # exact power of two: floor(log2 4) − 2 = 0 → scale 1
    x[4, :32] = 7.9  # y = 7.9 / 1 → saturates to 6
    q = quantize_mxfp4(x)
    codes = unpack_nibbles(q.values).numpy()
    xb = x.double().numpy().reshape(6, 3, 32)
    for r in range(6):
        for b in range(3):
            bm = np.abs(xb[r, b]).max()
            e = -127 if bm == 0 else max(-127, min(127, math.frexp(bm)[1] - 1 - 2))
            assert q.scales[r, b].item() == e + 127
            assert codes[r, 32 * b : 32 * b + 32].tolist() == [ref_code(v / 2.0**e) for v in xb[r, b]]
    deq = dequantize_mxfp4(q, torch.float32)
    assert deq[3, 32:64].tolist() == [4.0] * 32 and deq[4, :32].tolist() == [6.0] * 32
    assert (deq[2, :32] == 0).all()
    xn = x.clone()
    xn[0, 0] = float("nan")
    qn = quantize_mxfp4(xn)
    assert qn.scales[0, 0].item() == 255 and torch.isnan(dequantize_mxfp4(qn, torch.float32)[0, :32]).all()
    with pytest.raises(ValueError):
        quantize_mxfp4(torch.randn(2, 48))


# ----------------------------------------------------------------------------------------------------------------
# Swizzle
# ----------------------------------------------------------------------------------------------------------------
def test_to_blocked_matches_offset_formula():
    rows, cols = 300, 10
    s = torch.arange(rows * cols, dtype=torch.int32).reshape(rows, cols)
    b = to_blocked(s)
    pc = 12
    assert b.numel() == 384 * pc
    for r in range(rows):
        for c in range(cols):
            off = ((r // 128) * (pc // 4) + c // 4) * 512 + (r % 32) * 16 + ((r % 128) // 32) * 4 + c % 4
            assert b[off].item() == s[r, c].item()
    assert (b == 0).sum().item() == 384 * pc - rows * cols + 1  # padding is zero (plus element 0 itself)


@HSET
@given(st.integers(1, 300), st.integers(1, 20), st.booleans())
def test_blocked_round_trip(rows, cols, fp8):
    s = torch.rand(rows, cols) * 400
    s = to_e4m3(s) if fp8 else s
    b = to_blocked(s)
    assert b.ndim == 1 and b.dtype == s.dtype
    back = from_blocked(b, rows, cols)
    view = (lambda t: t.view(torch.uint8)) if fp8 else (lambda t: t)
    assert torch.equal(view(back), view(s))
