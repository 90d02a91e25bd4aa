"""The decoder fusions of `compile_vae` (issue 20) equal the eager decoder.

* `subpixel_up`: nearest ×2 + 3×3 conv as four 2×2 parity convs on the small input, against F.interpolate + conv in
  float64 (every border, 1-pixel maps, both layouts); in BF16 it adds one rounding, of the summed weights, so its
  error against float64 is ≈ 1.35× the eager path's.
* The up-resample, DupUp3D and head graphs wired into a stream (`compile_vae` with the functions left uncompiled, so
  the wiring is checked fast): the stream equals the eager stream and the batch decode, the caches too, and every
  fused path runs where it should.
* The functions compiled (CPU inductor, tiny shapes) equal themselves eager.
GPU (`-m gpu`): the compiled BF16 channels-last decoder against eager BF16, both measured against float32.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from longlive.infer.compile import compile_vae
from longlive.vae import CausalCache, build_vae
from longlive.vae.layers import (
    CL3D,
    DupUp3D,
    Resample,
    dup_up,
    head_pixels,
    subpixel_up,
    subpixel_weight,
    unpatchify,
    upsample_steady,
)

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _randomize(vae: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial weights (random gains, biases) so that equality is not reached by accident."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in vae.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            p.copy_(1.0 + 0.2 * noise if name.endswith("gamma") else 0.3 * noise * p.abs().mean().clamp_min(0.1))
    return vae


def _reference_up(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """Nearest ×2 in H, W (F.interpolate) then the 3×3 conv with zero padding 1, frame by frame."""
    up = F.interpolate(x, scale_factor=(1.0, 2.0, 2.0), mode="nearest")
    return F.conv3d(up, w.unsqueeze(2), b, padding=(0, 1, 1))


@pytest.mark.parametrize("shape", [(3, 5, 2, 1, 1), (4, 6, 1, 3, 4), (8, 8, 3, 5, 7), (2, 3, 1, 6, 1)])
@pytest.mark.parametrize("fmt", [torch.contiguous_format, CL3D])
def test_subpixel_up_equals_upsample_then_conv(shape, fmt) -> None:
    c, o, t, h, w = shape
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(2, c, t, h, w, generator=g, dtype=torch.float64).contiguous(memory_format=fmt)
    wt = torch.randn(o, c, 3, 3, generator=g, dtype=torch.float64)
    b, skip = torch.randn(o, generator=g, dtype=torch.float64), torch.randn(2, o, t, 2 * h, 2 * w, generator=g,
                                                                              dtype=torch.float64)
    ref = _reference_up(x, wt, b)
    ws = subpixel_weight(wt, fmt)
    assert ws.shape == (4 * o, c, 1, 2, 2)
    for bias, sk, want in ((b, None, ref), (None, None, ref - b.view(1, o, 1, 1, 1)), (b, skip, ref + skip)):
        got = subpixel_up(x, ws, bias, fmt, sk)
        assert got.shape == want.shape and got.is_contiguous(memory_format=fmt)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    # every output pixel depends on the right inputs only: a unit impulse at a corner and at the centre
    for i, j in ((0, 0), (h - 1, w - 1), (h // 2, w // 2)):
        e = torch.zeros_like(x)
        e[:, :, :, i, j] = 1.0
        torch.testing.assert_close(subpixel_up(e, ws, None, fmt), _reference_up(e, wt, None), rtol=0, atol=1e-12)


def test_subpixel_weight_rejects_other_kernels() -> None:
    with pytest.raises(ValueError, match=r"3×3 Conv2d weight \[O, I, 3, 3\], got shape \(4, 4, 1, 1\)"):
        subpixel_weight(torch.zeros(4, 4, 1, 1))


def test_subpixel_bf16_error_is_within_bf16_rounding() -> None:
    """In BF16 the parity kernels add one rounding, of the summed weights (sums of 1–4 taps, rounded once), to the
    eager path's two (the conv's output, then the bias add, as cuDNN runs them): against float64 their error is
    ≈ 1.35× the eager path's and ≈ 1.9× the rounding of the exact output itself (6 seeds: 1.32–1.38, 1.85–1.93)."""
    g = torch.Generator().manual_seed(3)
    c, o = 64, 32
    x = torch.randn(1, c, 2, 9, 11, generator=g).to(torch.bfloat16)
    w = (torch.randn(o, c, 3, 3, generator=g) / (3 * c**0.5)).to(torch.bfloat16)
    b = (0.3 * torch.randn(o, generator=g)).to(torch.bfloat16)
    exact = _reference_up(x.double(), w.double(), b.double())
    eager = _reference_up(x, w, None) + b.view(1, o, 1, 1, 1)  # BF16 conv output, then the BF16 bias add
    fused = subpixel_up(x, subpixel_weight(w), b, torch.contiguous_format)
    err_eager, err_fused = ((y.double() - exact).abs().mean().item() for y in (eager, fused))
    err_out = (exact.to(torch.bfloat16).double() - exact).abs().mean().item()
    assert err_fused <= 1.5 * err_eager and err_fused <= 2.1 * err_out, (err_fused, err_eager, err_out)
    # the one extra rounding is that of the summed weights: float64 sums rounded to BF16 once
    assert torch.equal(subpixel_weight(w), subpixel_weight(w.double()).to(torch.bfloat16))


def _stream(resample: Resample, shortcut: DupUp3D, xs: list[torch.Tensor], fmt) -> tuple[list, CausalCache]:
    cache, outs = CausalCache(fmt), []
    for x in xs:
        y = resample(x, cache, skip=(shortcut, x))
        outs.append(y)
        cache.advance()
    return outs, cache


@pytest.mark.parametrize("mode", ["upsample3d", "upsample2d"])
@pytest.mark.parametrize("fmt", [torch.contiguous_format, CL3D])
def test_resample_steady_path_equals_eager(mode, fmt) -> None:
    """An up-resample with the stage's shortcut, over a stream: the fused function (uncompiled here) from the pass
    where it applies, equal to the eager resample plus the eager DupUp3D add, caches included."""
    torch.manual_seed(0)
    up_t = mode == "upsample3d"
    eager, short = _randomize(Resample(8, mode, out_dim=4)).eval(), DupUp3D(8, 4, 2 if up_t else 1, 2)
    fused = Resample(8, mode, out_dim=4).eval()
    fused.load_state_dict(eager.state_dict())
    calls = []
    fused.fused = lambda *a: calls.append(len(calls)) or upsample_steady(*a)
    xs = [torch.randn(1, 8, 1 if i < 2 else 2, 3, 5).contiguous(memory_format=fmt) for i in range(4)]
    with torch.no_grad():
        ref, ref_cache = _stream(eager, short, xs, fmt)
        got, got_cache = _stream(fused, short, xs, fmt)
    # first pass: eager (the time conv is bypassed); upsample3d's second pass too (its time conv has no pad yet)
    assert len(calls) == (2 if up_t else 3)
    for a, b in zip(got, ref, strict=True):
        assert a.is_contiguous(memory_format=fmt)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    if up_t:
        torch.testing.assert_close(got_cache.get(fused.time_conv), ref_cache.get(eager.time_conv), rtol=0, atol=0)
        assert got_cache.get(fused.time_conv)._base is None  # its own small tensor, not a view of the input
    with torch.no_grad(), pytest.raises(ValueError, match="shortcut is added only after an up-resample"):
        Resample(8, "downsample2d")(xs[0], CausalCache(), skip=(short, xs[0]))


def test_subpixel_weight_follows_the_weight() -> None:
    """The kept parity kernels are rebuilt after an in-place change of the conv weight and after a new weight."""
    torch.manual_seed(0)
    m = Resample(4, "upsample2d")
    first = m.subpixel_weight(torch.contiguous_format)
    assert m.subpixel_weight(torch.contiguous_format) is first
    with torch.no_grad():
        m.resample["1"].weight.mul_(2.0)
    torch.testing.assert_close(m.subpixel_weight(torch.contiguous_format), 2.0 * first)
    m.resample["1"].weight.data = torch.randn(4, 4, 3, 3)
    torch.testing.assert_close(m.subpixel_weight(CL3D), subpixel_weight(m.resample["1"].weight, CL3D))
    assert m.subpixel_weight(CL3D).is_contiguous(memory_format=CL3D)


def test_decoder_stream_with_the_fused_graphs_equals_eager(monkeypatch) -> None:
    """`compile_vae`'s wiring with the functions left uncompiled, channels-last as on CUDA: a stream decoded chunk by
    chunk takes every fused path (residual blocks, norm pads, up-resamples, DupUp3D, head) and equals the eager
    default-layout stream and the batch decode."""
    torch.manual_seed(0)
    ref_vae = _randomize(build_vae("tiny"))
    vae = build_vae("tiny")
    vae.load_state_dict(ref_vae.state_dict())
    vae.to_channels_last()
    monkeypatch.setattr(torch, "compile", lambda fn, **_: fn)
    compile_vae(vae)
    calls: dict[str, int] = {}

    def count(name, fn):
        return lambda *a: calls.__setitem__(name, calls.get(name, 0) + 1) or fn(*a)

    for m in vae.modules():
        if isinstance(m, Resample) and m.fused is not None:
            m.fused = count("up", m.fused)
        elif isinstance(m, DupUp3D):
            m.fused = count("dup", m.fused)
    vae.decoder.fused_head = count("head", vae.decoder.fused_head)
    lat = torch.randn(1, vae.z_dim, 5, 2, 3)
    got, ref = vae.streaming_decoder(), ref_vae.streaming_decoder()
    outs = []
    with torch.no_grad():
        for a, b in ((0, 1), (1, 3), (3, 5)):
            outs.append(got.decode(lat[:, :, a:b]))
            torch.testing.assert_close(outs[-1], ref.decode(lat[:, :, a:b]), rtol=1e-4, atol=1e-5)
        seen = dict(calls)
        whole = vae.decode(lat)
    torch.testing.assert_close(torch.cat(outs, dim=2), whole, rtol=0, atol=0)  # the same passes, the same caches
    # passes 2–5 take the head path; an up-resample takes its fused path from pass 2 (upsample2d) or, once its time
    # conv has a pad, from pass 3 (upsample3d), and adds its stage's DupUp3D shortcut there (UpStage passes it as
    # `skip`), so the shortcut's own fused path runs only where the resample's does not: pass 2 of the upsample3d
    # stages
    ups = [m for m in vae.decoder.modules() if isinstance(m, Resample)]
    n_dup = sum(1 for m in vae.decoder.modules() if isinstance(m, DupUp3D))
    n_up3d = sum(m.mode == "upsample3d" for m in ups)
    assert len(ups) == 3 and n_dup == 3 and n_up3d == 2
    assert seen == {"head": 4, "dup": n_up3d, "up": 4 * len(ups) - n_up3d}, seen
    names = {m: n for n, m in vae.named_modules()}
    twins = dict(ref_vae.named_modules())
    assert len(got.cache) == len(ref.cache)
    for key, tail in got.cache._memory.items():  # the caches equal the eager stream's, one by one
        torch.testing.assert_close(tail, ref.cache.get(twins[names[key]]), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_compiled_graphs_equal_eager() -> None:
    """The up-resample (time conv, pad, interleave, parity convs, shortcut) and the head, compiled with CPU inductor
    as `compile_vae` compiles them, equal the same functions run eagerly."""
    g = torch.Generator().manual_seed(0)
    c, o, t, h, w = 8, 4, 2, 3, 4

    def cl(*shape):
        return torch.randn(*shape, generator=g).contiguous(memory_format=CL3D)

    x, prev, skip = cl(1, c, t, h, w), cl(1, c, 2, h, w), cl(1, c, t, h, w)
    w_t, b_t = cl(2 * c, c, 3, 1, 1), torch.randn(2 * c, generator=g)
    w_sub, b = subpixel_weight(torch.randn(o, c, 3, 3, generator=g), CL3D), torch.randn(o, generator=g)
    seq, w_h, b_h = cl(1, c, t + 2, h, w), cl(12, c, 3, 3, 3), torch.randn(12, generator=g)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # inductor's own deprecation notices
        args = (x, prev, w_t, b_t, w_sub, b, CL3D, skip, (o, 2, 2))
        (y, pad), (y_ref, pad_ref) = torch.compile(upsample_steady, dynamic=False)(*args), upsample_steady(*args)
        px = torch.compile(head_pixels, dynamic=False)(seq, w_h, b_h, (0, 1, 1), 2)
    assert y.shape == (1, o, 2 * t, 2 * h, 2 * w) and y.is_contiguous(memory_format=CL3D)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pad, pad_ref, rtol=0, atol=0)
    torch.testing.assert_close(pad, torch.cat([prev, x], dim=2)[:, :, -2:], rtol=0, atol=0)
    ref_px = unpatchify(F.conv3d(seq, w_h, b_h, padding=(0, 1, 1)).clamp(-1, 1), 2)
    assert px.shape == (1, 3, t + 2 - 2, 2 * h, 2 * w) and px.is_contiguous()
    torch.testing.assert_close(px, ref_px, rtol=1e-5, atol=1e-5)
    # dup_up as the shortcut module computes it
    dup = DupUp3D(c, o, 2, 2)
    cache = CausalCache(CL3D)
    cache.advance()
    torch.testing.assert_close(dup_up(skip, o, 2, 2, CL3D), dup(skip, cache), rtol=0, atol=0)


# ---- GPU ---------------------------------------------------------------------------------------------------------


def _gpu_pair(dtype: torch.dtype):
    torch.manual_seed(0)
    ref = _randomize(build_vae("tiny"))
    vae = build_vae("tiny")
    vae.load_state_dict(ref.state_dict())
    return ref.to(device="cuda", dtype=torch.float32), vae.to(device="cuda", dtype=dtype).to_channels_last()


@pytest.mark.gpu
@CUDA
def test_compiled_bf16_decoder_on_gpu_matches_eager() -> None:
    """Compiled BF16 channels-last decode (as `infer.assemble.load_vae` sets it up) against eager BF16 channels-last:
    both measured against float32, the compiled error is the eager error (within 25 %), stream == batch."""
    ref32, vae = _gpu_pair(torch.bfloat16)
    eager = build_vae("tiny", device="cuda", dtype=torch.bfloat16)
    eager.load_state_dict(vae.state_dict())
    eager.to_channels_last()
    compile_vae(vae)
    lat = torch.randn(1, vae.z_dim, 7, 4, 6, device="cuda")
    streams = [m.streaming_decoder() for m in (ref32, eager, vae)]
    outs: list[list[torch.Tensor]] = [[], [], []]
    with torch.no_grad():
        for a, b in ((0, 1), (1, 4), (4, 7)):
            for s, o in zip(streams, outs, strict=True):
                o.append(s.decode(lat[:, :, a:b]).float())
        whole = vae.decode(lat).float()
    ref, e, c = (torch.cat(o, dim=2) for o in outs)
    err_e, err_c = (e - ref).abs().mean().item(), (c - ref).abs().mean().item()
    assert err_c <= 1.25 * err_e + 1e-4, (err_c, err_e)
    assert (c - e).abs().max().item() < 0.1
    torch.testing.assert_close(c, whole, rtol=0, atol=1e-2)


@pytest.mark.gpu
@CUDA
def test_subpixel_conv_bf16_on_gpu_at_decoder_widths() -> None:
    """At a decoder width (512 channels, cuDNN channels-last), the parity convs' BF16 error against float64 is the
    nearest ×2 + 3×3 conv's."""
    g = torch.Generator().manual_seed(0)
    c = 512
    x = torch.randn(1, c, 2, 24, 40, generator=g).to("cuda", torch.bfloat16).contiguous(memory_format=CL3D)
    w = (torch.randn(c, c, 3, 3, generator=g) / (3 * c**0.5)).to("cuda", torch.bfloat16)
    w = w.contiguous(memory_format=torch.channels_last)
    b = torch.randn(c, generator=g).to("cuda", torch.bfloat16)
    with torch.no_grad():
        exact = _reference_up(x.double(), w.double(), b.double())
        eager = _reference_up(x, w, b)
        fused = torch.compile(subpixel_up, dynamic=False)(x, subpixel_weight(w, CL3D), b, CL3D)
    assert fused.is_contiguous(memory_format=CL3D)
    err_e, err_f = ((y.double() - exact).abs().mean().item() for y in (eager, fused))
    assert err_f <= 1.5 * err_e, (err_f, err_e)
