"""The release's sampling options on `longlive generate` (issue 18, item 6): classifier-free guidance and its negative
prompt, the timestep shift, any step count, window and sink, the shot RoPE offset and the scene-cut prefix. Each
option changes the output or is rejected before any work; at their defaults the output is today's, bit for bit."""

import json

import pytest
import torch
from safetensors.torch import load_file

from longlive.cli import main
from longlive.infer.assemble import make_video
from longlive.infer.pipeline import GenerationSpec, generate
from longlive.infer.scheduler import FlowUniPC, flow_sigmas
from longlive.infer.video import VideoRequest, request_config, validate
from longlive.model.dit import build_model
from longlive.model.kv_cache import CacheGeometry, KVCache
from longlive.model.presets import get_preset
from longlive.text.prompts import DEFAULT_NEGATIVE_PROMPT, SCENE_CUT_PREFIX

CFG = get_preset("tiny")
CF = CFG.chunk_frames


@pytest.fixture(scope="module")
def model():
    return build_model(CFG, seed=0)


def _embeds(n: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, CFG.text_len, CFG.text_dim, generator=g) for _ in range(n)]


def _reference_cfg(model, cond: torch.Tensor, uncond: torch.Tensor, g: float, chunks: int, steps: int,
                   seed: int) -> torch.Tensor:
    """The release's CFG loop written out for one prompt without cuts: per chunk both branches roll their own cache,
    every step combines v_u + g (v_c - v_u), and each branch re-runs the clean chunk into its own cache."""
    geo = CacheGeometry(CF, CFG.window_frames, CFG.sink_frames, CFG.tokens_per_frame)
    caches = [KVCache.allocate(geo, CFG.num_layers, 1, CFG.num_heads, CFG.head_dim, storage="fp32") for _ in "cu"]
    kvs = [model.text_kv(cond), model.text_kv(uncond)]
    h, w = CFG.latent_hw
    noise = torch.randn((1, chunks * CF, CFG.in_channels, h, w),
                        generator=torch.Generator().manual_seed(seed)).permute(0, 2, 1, 3, 4)
    out = []
    for c in range(chunks):
        for cache in caches:
            cache.begin_chunk(c)
        x = noise[:, :, c * CF : (c + 1) * CF].clone()
        sched = FlowUniPC(steps)
        for ts in sched.timesteps:
            t = torch.full((1, CF), float(ts))
            v_c, v_u = (model(x, t, text_kv=kv, cache=cache, frame_offset=c * CF)
                        for kv, cache in zip(kvs, caches, strict=True))
            x, _ = sched.step(v_u + g * (v_c - v_u), x)
        for kv, cache in zip(kvs, caches, strict=True):
            cache.committing = True
            model(x, torch.zeros(1, CF), text_kv=kv, cache=cache, frame_offset=c * CF)
            cache.committing = False
        out.append(x)
    return torch.cat(out, dim=2)


def test_guidance_one_is_the_plain_loop(model):
    """Guidance 1 ignores the negative prompt, embeds nothing more and allocates one cache; bit for bit."""
    plain = GenerationSpec(prompts=["x"], frames=2 * CF, steps=2, seed=1)
    one = GenerationSpec(prompts=["x"], frames=2 * CF, steps=2, seed=1, guidance_scale=1.0, negative_prompt="other")
    assert one.texts == plain.texts == ["x"]
    a, b = generate(model, plain, _embeds(1)), generate(model, one, _embeds(1))
    assert torch.equal(a.latents, b.latents)
    guided = generate(model, GenerationSpec(prompts=["x"], frames=CF, steps=1, seed=1, guidance_scale=2.0,
                                            negative_prompt="other"), _embeds(2))
    assert a.kv_cache_bytes == b.kv_cache_bytes == guided.kv_cache_bytes // 2  # the second cache only when guided


def test_guidance_equals_the_explicit_cfg_loop(model):
    """Over three chunks, so each branch attends its own clean history from the second chunk on."""
    chunks, g = 3, 3.5
    spec = GenerationSpec(prompts=["p"], frames=chunks * CF, steps=2, seed=4, guidance_scale=g, negative_prompt="n")
    assert spec.texts == ["p", "n"]  # the negative prompt's embedding comes last
    cond, uncond = _embeds(2, seed=3)
    got = generate(model, spec, [cond, uncond]).latents
    ref = _reference_cfg(model, cond, uncond, g, chunks, steps=2, seed=4)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-6)
    plain = generate(model, GenerationSpec(prompts=["p"], frames=chunks * CF, steps=2, seed=4), [cond]).latents
    assert (got - plain).abs().max() > 1e-2


def _video(tmp_path, name: str, **kw):
    req = VideoRequest(model="tiny", frames=kw.pop("frames", CF), steps=kw.pop("steps", 1), decode="none",
                       random_weights=True, progress=False, cache_dir=tmp_path / "embeddings", **kw)
    return make_video(req, tmp_path / name)


def test_guidance_is_the_combination_of_two_plain_runs(tmp_path):
    """One chunk, one step: x = x_T − σ·v is linear in v, so the guided video is x_u + g (x_c − x_u), where x_u is a
    plain run whose prompt is the negative prompt (the same encoder and embedding cache)."""
    cond = _video(tmp_path, "cond", prompts=["a red ball"])
    uncond = _video(tmp_path, "uncond", prompts=["blurry, static"])
    guided = _video(tmp_path, "guided", prompts=["a red ball"], guidance_scale=4.0, negative_prompt="blurry, static")
    torch.testing.assert_close(guided.latents, uncond.latents + 4.0 * (cond.latents - uncond.latents),
                               rtol=0, atol=1e-4)
    m, plain = guided.metrics, cond.metrics
    assert (m["guidance_scale"], m["negative_prompt"], m["forwards_per_chunk"]) == (4.0, "blurry, static", 4)
    assert (plain["guidance_scale"], plain["negative_prompt"], plain["forwards_per_chunk"]) == (1.0, None, 2)
    assert m["kv_cache_gb"] == pytest.approx(2 * plain["kv_cache_gb"])
    assert "guidance_scale" in guided.timing_definition


@pytest.fixture(scope="module")
def references() -> dict:
    return {}


@pytest.mark.parametrize("field,value", [
    ("timestep_shift", 3.0),
    ("steps", 7),
    ("window_frames", 2 * CFG.window_frames),
    ("sink_frames", 0),
    ("shot_rope_offset", 0),
    ("scene_cut_prefix", "[cut] "),
])
def test_each_option_changes_the_video(tmp_path, references, field, value):
    """A 5-chunk video whose second prompt starts at chunk 3: the last chunk evicts (a window of 4 slots), so the
    window, the sink and the shot RoPE offset all matter. The second prompt opens a shot under either prefix only."""
    cut = "[cut] " if field == "scene_cut_prefix" else SCENE_CUT_PREFIX
    steps = 2 if field == "timestep_shift" else 1  # one step's sigma barely moves with the shift (0.9998 → 0.9993)
    base = dict(frames=5 * CF, steps=steps, prompts=["a red ball", cut + "a blue cube"], switch_at=[3])
    key = (cut, steps)
    if key not in references:  # the same default run serves several options
        references[key] = _video(tmp_path, "ref", **base)
    ref = references[key]
    res = _video(tmp_path, field, **{**base, field: value})
    if field == "steps":
        assert res.metrics["forwards_per_chunk"] == value + 1
    else:
        assert res.metrics[field] == value and ref.metrics[field] != value
    assert (res.latents - ref.latents).abs().max() > 1e-3


def test_scene_cut_prefix_marks_the_shots(model):
    spec = GenerationSpec(prompts=["a", "[cut] b"], frames=4 * CF, steps=1, switch_chunks=[2],
                          scene_cut_prefix="[cut] ")
    assert [(p.text, p.shot, p.cut) for p in spec.plan(4)] == [("a", 0, False), ("a", 0, False),
                                                                ("[cut] b", 1, True), ("b", 1, False)]
    res = generate(model, spec, _embeds(len(spec.texts)))
    assert res.rope_offsets == [0, CF, 2 * CF + CFG.shot_rope_offset, 3 * CF + CFG.shot_rope_offset]
    default = GenerationSpec(prompts=["a", "[cut] b"], frames=4 * CF, switch_chunks=[2])
    assert [p.cut for p in default.plan(4)] == [False] * 4  # without the option it is a plain prompt switch


def test_window_sink_and_offset_override_the_preset():
    req = VideoRequest(model="tiny", frames=4 * CF, window_frames=6 * CF, sink_frames=0, shot_rope_offset=3)
    cfg = request_config(req)
    assert (cfg.window_frames, cfg.sink_frames, cfg.shot_rope_offset) == (6 * CF, 0, 3)
    assert request_config(VideoRequest(model="tiny", frames=4 * CF)) is get_preset("tiny")


def test_sink_zero_pins_nothing(model):
    """The release's `_is_scene_cut` is false with sink 0: no shot pin, though the RoPE offset still applies."""
    m = build_model(CFG.with_overrides(sink_frames=0), seed=0)
    spec = GenerationSpec(prompts=["a", SCENE_CUT_PREFIX + "b"], frames=6 * CF, steps=1, switch_chunks=[2])
    res = generate(m, spec, _embeds(len(spec.texts)))
    assert res.pinned == [None] * 6
    assert res.windows[-1] == list(range(2 * CF, 6 * CF))  # the last four chunks, no sink
    assert res.rope_offsets[-1] == 5 * CF + CFG.shot_rope_offset


@pytest.mark.parametrize("kw,message", [
    ({"steps": 0}, "--steps 0 must be ≥ 1"),
    ({"timestep_shift": 0.0}, "--timestep-shift 0.0 must be a finite number > 0"),
    ({"guidance_scale": -1.0}, "--guidance-scale -1.0 must be a finite number ≥ 0"),
    ({"guidance_scale": float("nan")}, "--guidance-scale nan must be"),
    ({"window_frames": 3}, "window_frames=3 is not a multiple of chunk_frames=2"),
    ({"window_frames": 2 * CF}, "holds 2 chunk slots; need at least 3"),
    ({"window_frames": 0}, "--window-frames 0 must be ≥ 1"),
    ({"sink_frames": 1}, "sink_frames=1 is not a multiple of chunk_frames=2"),
    ({"sink_frames": -2}, "--sink-frames -2 must be ≥ 0"),
    ({"shot_rope_offset": -1}, "--shot-rope-offset -1 must be ≥ 0"),
    ({"scene_cut_prefix": "  "}, "must contain text"),
])
def test_out_of_range_options_are_rejected_before_any_work(kw, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        validate(VideoRequest(model="tiny", frames=4 * CF, random_weights=True, **kw))


def test_any_step_count_matches_diffusers_unipc():
    """Step counts beyond the old choices (1-6, 8) run the release's UniPC (diffusers' bh2), at other shifts too."""
    diffusers = pytest.importorskip("diffusers")
    for steps, shift in ((1, 5.0), (7, 5.0), (12, 3.0)):
        ref = diffusers.UniPCMultistepScheduler(
            num_train_timesteps=1000, prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift,
            solver_order=2, solver_type="bh2", predict_x0=True, lower_order_final=True, final_sigmas_type="zero")
        ref.set_timesteps(steps)
        ours = FlowUniPC(steps, shift)
        assert ours.sigmas == flow_sigmas(steps, shift) and len(ours.timesteps) == steps
        ref.sigmas = torch.tensor(ours.sigmas, dtype=torch.float64)
        ref.timesteps = torch.tensor(ours.timesteps)
        g = torch.Generator().manual_seed(steps)
        W = torch.randn(4, 4, dtype=torch.float64, generator=g) * 0.3
        x_ref = torch.randn(2, 4, 3, 3, dtype=torch.float64, generator=g)
        x = x_ref.float()
        for i, t in enumerate(ours.timesteps):
            x_ref = ref.step(torch.einsum("ij,bjhw->bihw", W, x_ref) * (1 + ours.sigmas[i]), torch.tensor(t),
                             x_ref).prev_sample
            x, _ = ours.step(torch.einsum("ij,bjhw->bihw", W.float(), x) * (1 + ours.sigmas[i]), x)
        torch.testing.assert_close(x.double(), x_ref, atol=1e-5, rtol=1e-5)


def test_defaults_leave_the_video_unchanged(tmp_path):
    """`generate` with every new flag at its default value (and an unused negative prompt) writes today's latents."""
    common = ["generate", "--model", "tiny", "--frames", str(4 * CF), "--steps", "2", "--decode", "none",
              "--no-progress", "--device", "cpu", "--cache-dir", str(tmp_path / "emb"), "--prompt", "a red ball",
              "--prompt", SCENE_CUT_PREFIX + "a blue cube"]
    assert main([*common, "--out", str(tmp_path / "plain")]) == 0
    explicit = ["--guidance-scale", "1", "--negative-prompt", "unused at guidance 1", "--timestep-shift", "5",
                "--window-frames", str(CFG.window_frames), "--sink-frames", str(CFG.sink_frames),
                "--shot-rope-offset", str(CFG.shot_rope_offset), "--scene-cut-prefix", SCENE_CUT_PREFIX]
    assert main([*common, *explicit, "--out", str(tmp_path / "explicit")]) == 0
    a, b = (load_file(str(tmp_path / d / "latents.safetensors"))["latents"] for d in ("plain", "explicit"))
    assert torch.equal(a, b)
    row = json.loads((tmp_path / "plain" / "result.json").read_text())["rows"][0]
    assert {k: row[k] for k in ("guidance_scale", "negative_prompt", "timestep_shift", "window_frames", "sink_frames",
                                "shot_rope_offset", "scene_cut_prefix", "forwards_per_chunk")} == {
        "guidance_scale": 1.0, "negative_prompt": None, "timestep_shift": 5.0, "window_frames": CFG.window_frames,
        "sink_frames": CFG.sink_frames, "shot_rope_offset": CFG.shot_rope_offset, "scene_cut_prefix": SCENE_CUT_PREFIX,
        "forwards_per_chunk": 3}
    assert row["config"]["negative_prompt"] == DEFAULT_NEGATIVE_PROMPT  # the release's default, recorded as given
