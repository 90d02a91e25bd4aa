"""Static FP8 activation scales (`act_scale=static`, longlive.quant.linear): calibration records max |x| per Linear,
the frozen path equals a float64 reference (x · 1/scale → clamp ±448 → E4M3 → GEMM) on fresh inputs including
saturation, zeros, NaN and ±Inf, static stays close to dynamic on in-range inputs, bad combinations are refused with
the fix, and a tiny generation through the assembler carries the row columns. CPU, except the marked GPU tests
(`-m gpu`: the fp8 backend's torch._scaled_mm path on sm_89+)."""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file

from longlive.cli import main
from longlive.experiments import precision_config
from longlive.experiments.spec import PrecisionSpec, RunSpec, check_spec, from_config
from longlive.infer.assemble import build, run
from longlive.infer.pipeline import GenerationSpec, generate
from longlive.infer.video import VideoRequest, validate
from longlive.model.dit import build_model
from longlive.model.presets import get_preset
from longlive.quant.formats import E4M3_MAX, to_e4m3
from longlive.quant.linear import ACT_SCALE_MARGIN, LinearQuantConfig, QuantLinear
from longlive.quant.recipes import (
    act_saturation,
    freeze_act_scales,
    observing_act_amax,
    quantize_model,
    reset_act_saturation,
    static_linears,
)
from longlive.runner.matrix import expand
from longlive.workloads.infer import video_request

CFG = get_preset("tiny")
STATIC = LinearQuantConfig(fmt="fp8", backend="emulated", act_scale="static")
DYNAMIC = LinearQuantConfig(fmt="fp8", backend="emulated")


def fresh_seed() -> int:
    return int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF


def randx(shape: tuple[int, ...], g: torch.Generator, spread: float = 1.0) -> torch.Tensor:
    """Gaussian rows with log-normal row magnitudes (tokens of very different sizes, as activations are)."""
    x = torch.randn(shape, generator=g)
    return x * torch.exp(spread * torch.randn(*shape[:-1], 1, generator=g))


def calibrated(lin: nn.Linear, batches: list[torch.Tensor], cfg: LinearQuantConfig = STATIC,
               margin: float = ACT_SCALE_MARGIN) -> nn.Sequential:
    """A one-Linear model whose static scale was calibrated on `batches`."""
    model = nn.Sequential(QuantLinear.from_linear(lin, cfg))
    with observing_act_amax(model):
        for b in batches:
            model(b)
    freeze_act_scales(model, margin)
    return model


def reference(x: torch.Tensor, q: QuantLinear, amax: float, margin: float = ACT_SCALE_MARGIN) -> torch.Tensor:
    """By hand: scale = fp32(amax · margin) / 448, inv = 1 / scale (fp32), E4M3 codes of clamp(x · inv), then the GEMM
    in float64 against the row-wise FP8 weights."""
    f32 = {"dtype": torch.float32, "device": x.device}
    scale = (torch.tensor(amax, **f32) * margin) / torch.tensor(448.0, **f32)
    inv = torch.tensor(1.0, **f32) / scale
    codes = to_e4m3(x.reshape(-1, x.shape[-1]).float() * inv)
    w = q._weight()
    w64 = w.data.double() * w.scale.double()
    out = (codes.double() * scale.double()) @ w64.T + q.bias.double()
    return out.view(*x.shape[:-1], -1)


def test_calibration_records_exactly_the_max_abs_seen_and_computes_dynamically_meanwhile():
    seed = fresh_seed()
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(64, 48)
    batches = [randx((5, 64), g) for _ in range(3)]
    batches[1][2, 7], batches[2][0, 1], batches[2][4, 9] = float("nan"), float("inf"), -float("inf")  # ignored
    static = nn.Sequential(QuantLinear.from_linear(lin, STATIC))
    dynamic = QuantLinear.from_linear(lin, DYNAMIC)
    with observing_act_amax(static) as lins:
        assert [n for n, _ in lins] == ["0"]
        for b in batches:
            torch.testing.assert_close(static(b), dynamic(b), rtol=0, atol=0, equal_nan=True)
    finite = torch.cat([b[torch.isfinite(b)] for b in batches])
    q = static[0]
    assert q.act_amax.item() == finite.abs().max().item(), seed
    assert q.act_observed == 3 and not q.act_calibrating and not q.act_frozen
    freeze_act_scales(static)
    scale = (torch.tensor(finite.abs().max().item()) * ACT_SCALE_MARGIN) / torch.tensor(448.0)
    assert q.act_fp8_scale.item() == scale.item() and q.act_fp8_inv_scale.item() == (1 / scale).item()
    assert q.act_fp8_scale_rows.shape == (5, 1) and (q.act_fp8_scale_rows == q.act_fp8_scale).all()


def test_calibration_through_a_generation_records_each_linears_own_max():
    model = build_model(CFG, seed=0)
    quantize_model(model, STATIC)
    seen: dict[str, list[float]] = {}
    for name, m in static_linears(model):
        m.register_forward_pre_hook(lambda mod, args, name=name: seen.setdefault(name, []).append(
            args[0].detach().abs().max().item()))
    g = torch.Generator().manual_seed(1)
    e = [torch.randn(1, CFG.text_len, CFG.text_dim, generator=g)]
    with observing_act_amax(model):
        generate(model, GenerationSpec(prompts=["x"], frames=4, steps=1, seed=2), e)
    lins = static_linears(model)
    assert len(lins) == 10 * CFG.num_layers and set(seen) == {n for n, _ in lins}
    for name, m in lins:
        assert (m.act_amax.item(), m.act_observed) == (max(seen[name]), len(seen[name])), name
    assert len({m.act_amax.item() for _, m in lins}) > 10  # each Linear its own range


@pytest.mark.parametrize("case", ["in_range", "saturating", "zeros", "nan", "inf"])
def test_frozen_static_path_equals_the_float64_reference(case):
    seed = fresh_seed()
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    lin = nn.Linear(64, 48)
    calib = [randx((7, 64), g) for _ in range(3)]
    model = calibrated(lin, calib)
    q = model[0]
    amax = max(b.abs().max().item() for b in calib)
    x = randx((2, 9, 64), g).clamp(-amax, amax)  # fresh values within the calibrated range, then the case's edits
    if case == "saturating":
        x[0, :3] *= 40 * amax / x[0, :3].abs().amax()  # far beyond margin × amax
    elif case == "zeros":
        x = torch.zeros_like(x)
    elif case == "nan":
        x[1, 4, 5] = float("nan")
    elif case == "inf":
        x[0, 2, 3], x[1, 6, 0] = float("inf"), -float("inf")
    reset_act_saturation(model)
    out = model(x)
    ref = reference(x, q, amax)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5 * ref.nan_to_num().abs().max().item(),
                               equal_nan=True, msg=lambda m: f"{case}, seed {seed}: {m}")
    y = x.reshape(-1, 64).float() * q.act_fp8_inv_scale
    saturated = int((y.abs() > E4M3_MAX).sum())
    assert (int(q.act_saturated), q.act_elements) == (saturated, x.numel()), seed
    assert act_saturation(model) == saturated / x.numel()
    if case == "in_range":
        assert saturated == 0
    if case == "saturating":
        assert saturated > 0 and torch.isfinite(out).all()
    if case == "zeros":
        assert torch.equal(out, q.bias.expand_as(out))
    if case == "nan":  # NaN stays NaN: its token's row only, no other row touched
        assert torch.isnan(out[1, 4]).all() and torch.isfinite(out[0]).all() and torch.isfinite(out[1, 5:]).all()
    if case == "inf":  # ±Inf saturates to ±448 · scale: finite rows, counted as saturated
        assert torch.isfinite(out).all() and saturated == 2


def test_fp8_backend_static_path_runs_torch_scaled_mm_with_the_same_codes():
    """The fp8 backend's GEMM (torch._scaled_mm, here its CPU kernel) on the same codes and scales: BF16 output, so
    equal to the reference within BF16 rounding; the one per-tensor scale is accepted as a row-wise [M, 1] operand."""
    seed = fresh_seed()
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    lin = nn.Linear(64, 48).to(torch.bfloat16)
    calib = [randx((7, 64), g).bfloat16() for _ in range(2)]
    model = calibrated(lin, calib, LinearQuantConfig(fmt="fp8", backend="fp8", act_scale="static"))
    amax = max(b.float().abs().max().item() for b in calib)
    for shape in ((3, 11, 64), (5, 64)):  # more rows than calibration had (scale column written per call), fewer
        x = randx(shape, g).bfloat16()
        out = model(x)
        assert out.dtype == torch.bfloat16 and out.shape == (*shape[:-1], 48)
        ref = reference(x, model[0], amax)
        torch.testing.assert_close(out.double(), ref, rtol=2**-7, atol=2**-7 * ref.abs().max().item(),
                                   msg=lambda m, shape=shape: f"{shape}, seed {seed}: {m}")


def test_static_and_dynamic_agree_on_in_range_inputs():
    seed = fresh_seed()
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    lin = nn.Linear(256, 96)
    model = calibrated(lin, [randx((64, 256), g, 0.5) for _ in range(4)])
    amax = model[0].act_amax.item()
    x = randx((128, 256), g, 0.5).clamp(-amax, amax)
    dynamic = QuantLinear.from_linear(lin, DYNAMIC)
    w = dynamic._weight()
    exact = F.linear(x, w.data.float() * w.scale, lin.bias)  # the same FP8 weights, unquantised activations
    err = {k: ((y - exact).norm() / exact.norm()).item() for k, y in (("static", model(x)), ("dynamic", dynamic(x)))}
    assert 0 < err["dynamic"] < 0.04 and 0 < err["static"] < 0.04, (err, seed)
    assert ((model(x) - dynamic(x)).norm() / exact.norm()).item() < 0.05, seed


def test_freezing_edge_cases():
    lin = nn.Linear(32, 16)
    zero = calibrated(lin, [torch.zeros(4, 32)])
    assert (zero[0].act_fp8_scale.item(), zero[0].act_fp8_inv_scale.item()) == (1.0, 1.0)  # amax 0 → scale 1
    tiny = calibrated(lin, [torch.full((2, 32), 1e-44)])
    assert tiny[0].act_fp8_scale.item() == 1.0  # 1 / scale would overflow
    fresh = nn.Sequential(QuantLinear.from_linear(lin, STATIC))
    with pytest.raises(RuntimeError, match="ran before calibration"):
        fresh(torch.randn(2, 32))
    with pytest.raises(RuntimeError, match="never reached 0 "):
        freeze_act_scales(fresh)
    with pytest.raises(ValueError, match="no FP8 Linears with static activation scales"):
        with observing_act_amax(nn.Sequential(QuantLinear.from_linear(lin, DYNAMIC))):
            pass
    # a new calibration forgets the old range
    model = calibrated(lin, [10 * torch.ones(2, 32)])
    model2 = calibrated(lin, [torch.ones(2, 32)])
    with observing_act_amax(model):
        model(torch.ones(2, 32))
    freeze_act_scales(model)
    assert model[0].act_fp8_scale.item() == model2[0].act_fp8_scale.item()


def test_bad_combinations_are_refused_with_the_fix(capsys, tmp_path):
    bad = {"nvfp4": PrecisionSpec(name="x", dtype="bf16", linear_quant="nvfp4", linear_backend="emulated",
                                  act_scale="static"),
           "none": PrecisionSpec(name="x", dtype="bf16", act_scale="static"),
           "weight-only": PrecisionSpec(name="x", dtype="bf16", linear_quant="fp8", linear_backend="emulated",
                                        act_quant=False, act_scale="static")}
    for what, prec in bad.items():
        with pytest.raises(ValueError, match=r"precision\.act_scale='static' calibrates per-tensor FP8 activation "
                                             r"scales: it needs FP8 block Linears.*precision=fp8-static"):
            check_spec(RunSpec(precision=prec))
            pytest.fail(f"{what} accepted")
    with pytest.raises(ValueError, match=r"runs on linear_backend fp8 or emulated, not 'te'"):
        check_spec(RunSpec(precision=PrecisionSpec(**{**precision_config("fp8-te"), "act_scale": "static"})))
    with pytest.raises(ValueError, match=r"precision\.act_scale='auto' is not one of dynamic, static"):
        check_spec(RunSpec(precision=PrecisionSpec(act_scale="auto")))
    check_spec(RunSpec(precision=PrecisionSpec(**precision_config("fp8-static"))))
    with pytest.raises(ValueError, match=r"--act-scale static calibrates .* linear_quant=nvfp4.*--act-scale dynamic"):
        validate(VideoRequest(model="tiny", frames=2, linear_quant="nvfp4", act_scale="static", random_weights=True))
    with pytest.raises(ValueError, match="needs FP8 block Linears"):
        quantize_model(build_model(CFG, seed=0), LinearQuantConfig(fmt="nvfp4", act_scale="static"))
    base = ["generate", "--model", "tiny", "--frames", "2", "--decode", "none", "--no-progress", "--random-weights"]
    for extra, words in ((["--precision", "nvfp4", "--act-scale", "static"], "linear_quant=nvfp4"),
                         (["--precision", "fp8-emulated", "--weight-only", "--act-scale", "static"], "act_quant=False"),
                         (["--precision", "bf16", "--act-scale", "static"], "linear_quant=none")):
        assert main([*base, *extra, "--out", str(tmp_path / "bad")]) == 2
        err = capsys.readouterr().err
        assert "--act-scale static calibrates per-tensor FP8 activation scales" in err and words in err, err
    assert not (tmp_path / "bad" / "result.json").exists()
    with pytest.raises(SystemExit):
        main([*base, "--act-scale", "auto", "--out", str(tmp_path / "bad")])
    assert "invalid choice: 'auto'" in capsys.readouterr().err


def test_a_sweep_cell_and_generate_take_act_scale_under_one_name():
    fast = ["matrices=[]", "steps=2", "sp=1"]
    spec = from_config(expand("smoke", [*fast, "precision=fp8-emulated", "precision.act_scale=static"])[0].config)
    assert (spec.precision.act_scale, video_request(spec).act_scale) == ("static", "static")
    spec = from_config(expand("smoke", [*fast, "precision=fp8-static"])[0].config)
    assert (video_request(spec).act_scale, video_request(spec).linear_backend) == ("static", "fp8")
    assert video_request(RunSpec()).act_scale == "dynamic"


def _generate(capsys, tmp_path, name: str, *args: str) -> dict:
    out = tmp_path / name
    code = main(["generate", "--model", "tiny", "--steps", "2", "--frames", "4", "--decode", "none", "--no-progress",
                 "--cache-dir", str(tmp_path / "emb"), "--precision", "fp8-emulated", *args, "--out", str(out)])
    # (a later --precision wins: argparse keeps the last)
    err = capsys.readouterr().err
    assert code == 0, err
    row = json.loads((out / "result.json").read_text())["rows"][0]
    return {**row, "latents": load_file(str(out / "latents.safetensors"))["latents"]}


def test_tiny_generation_with_static_scales_runs_and_the_row_carries_the_calibration(capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("LONGLIVE_WEIGHTS", raising=False)
    static = _generate(capsys, tmp_path, "static", "--act-scale", "static")
    dynamic = _generate(capsys, tmp_path, "dynamic")
    exact = _generate(capsys, tmp_path, "fp32", "--precision", "fp32")
    chunks = CFG.window_frames // CFG.chunk_frames + 1
    assert (static["act_scale"], static["act_scale_margin"], static["act_scale_calibration_chunks"],
            static["act_scale_calibration_forwards"]) == ("static", ACT_SCALE_MARGIN, chunks, chunks * 3)
    assert static["act_scale_calibration_s"] > 0 and 0 <= static["act_scale_saturated"] < 1e-3
    assert "act_scale" in static["timing_definition"] and static["linear_quant"] == "fp8"
    assert dynamic["act_scale"] == "dynamic" and "act_scale" not in dynamic["timing_definition"]
    assert all(dynamic[k] is None for k in ("act_scale_margin", "act_scale_calibration_chunks",
                                            "act_scale_calibration_forwards", "act_scale_saturated"))
    assert exact["act_scale"] is None  # no FP8 Linears: the field did not apply
    err = {k: ((r["latents"] - exact["latents"]).norm() / exact["latents"].norm()).item()
           for k, r in (("static", static), ("dynamic", dynamic))}
    assert 0 < err["dynamic"] < 0.1 and err["dynamic"] < err["static"] < 1.3 * err["dynamic"], err


def test_default_precision_rows_have_no_act_scale(tmp_path):
    req = VideoRequest(model="tiny", frames=2, steps=1, decode="none", random_weights=True, progress=False)
    row = run(build(req), tmp_path).metrics
    assert row["act_scale"] is None and row["act_scale_saturated"] is None and row["act_scale_margin"] is None


def _sm89() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9)


GPU = pytest.mark.skipif(not _sm89(), reason="needs a CUDA GPU with compute capability >= 8.9 (torch._scaled_mm)")


@pytest.mark.gpu
@GPU
def test_gpu_fp8_backend_static_equals_emulated_within_fp8_gemm_rounding():
    seed = fresh_seed()
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    lin = nn.Linear(1024, 768).to("cuda", torch.bfloat16)
    calib = [randx((rows, 1024), g).to("cuda", torch.bfloat16) for rows in (333, 1100, 64)]
    fast = calibrated(lin, calib, LinearQuantConfig(fmt="fp8", backend="fp8", act_scale="static"))
    emul = calibrated(lin, calib, STATIC)
    assert torch.equal(fast[0].act_fp8_scale, emul[0].act_fp8_scale) and fast[0].act_fp8_scale_rows.shape == (1100, 1)
    amax = max(b.float().abs().max().item() for b in calib)
    for shape in ((2, 517, 1024), (1500, 1024)):  # within the calibrated rows (the kept scale column), beyond them
        x = randx(shape, g)
        x.view(-1, 1024)[:4] *= 8 * amax / x.view(-1, 1024)[:4].abs().amax()  # four tokens at 8 × the range
        x = x.to("cuda", torch.bfloat16)
        reset_act_saturation(fast)
        reset_act_saturation(emul)
        out_fast, out_emul = fast(x), emul(x)
        ref = reference(x, emul[0], amax)
        peak = ref.abs().max().item()
        for name, out in (("fp8", out_fast), ("emulated", out_emul)):  # BF16 operands / output: 2^-9 relative each
            torch.testing.assert_close(out.double(), ref, rtol=2**-6, atol=2**-7 * peak,
                                       msg=lambda m, name=name, shape=shape: f"{name} {shape}, seed {seed}: {m}")
        assert ((out_fast.double() - out_emul.double()).norm() / ref.norm()).item() < 2**-7, (shape, seed)
        sat = int(fast[0].act_saturated)
        assert sat > 0 and sat == int(emul[0].act_saturated), (shape, seed)


@pytest.mark.gpu
@GPU
def test_gpu_compiled_static_linear_matches_eager_and_counts_nothing():
    seed = fresh_seed()
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    lin = nn.Linear(512, 384).to("cuda", torch.bfloat16)
    model = calibrated(lin, [randx((200, 512), g).to("cuda", torch.bfloat16)],
                       LinearQuantConfig(fmt="fp8", backend="fp8", act_scale="static"))
    x = randx((300, 512), g).to("cuda", torch.bfloat16)
    reset_act_saturation(model)
    compiled = torch.compile(lambda t: model(F.gelu(t.float(), approximate="tanh").to(torch.bfloat16)),
                             dynamic=False)
    out = compiled(x)  # the GELU, the static quantise and the scale row fuse; no saturation count under compile
    assert model[0].act_elements == 0 and int(model[0].act_saturated) == 0
    ref = model(F.gelu(x.float(), approximate="tanh").to(torch.bfloat16))
    assert model[0].act_elements == x.numel()  # the eager call counts
    torch.testing.assert_close(out.float(), ref.float(), rtol=2**-6, atol=2**-7 * ref.float().abs().max().item(),
                               msg=lambda m: f"seed {seed}: {m}")


@pytest.mark.gpu
@GPU
def test_gpu_assembled_fp8_static_generation_calibrates_before_compiling(tmp_path):
    req = VideoRequest(model="tiny", frames=4, steps=2, device="cuda", decode="none", random_weights=True,
                       progress=False, dtype="bf16", linear_quant="fp8", linear_backend="fp8", act_scale="static",
                       compile="default")
    pipe = build(req)
    res = run(pipe, tmp_path)
    m = res.metrics
    assert (m["act_scale"], m["act_scale_calibration_chunks"]) == ("static", CFG.window_frames // CFG.chunk_frames + 1)
    assert m["act_scale_saturated"] is None  # compiled blocks do not count
    assert all(q.act_frozen and not q.act_calibrating for _, q in static_linears(pipe.model))
    assert torch.isfinite(res.latents).all()
