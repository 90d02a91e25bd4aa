"""The `infer` and `quality` workloads: one video through the assembler, then speed, memory, the roofline measured
in the same process, the configured quality metrics and fidelity against the reference cell.

With `decode=none`, `random_weights=true` and `compile=default` on the 5B preset this is the perf ladder
(`longlive sweep +experiment=perf_ladder`): the denoise loop at the hardware limit with in-run GEMM / attention
ceilings, and latent error against the FP32 eager reference cell.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

import torch

from longlive.experiments import request_fields
from longlive.experiments.spec import RunSpec
from longlive.infer.assemble import Pipeline, build, run, warm_decoder
from longlive.infer.pipeline import generate
from longlive.infer.video import VideoRequest, validate
from longlive.measure.profile import profile_call
from longlive.measure.roofline import roofline_metrics
from longlive.measure.spread import TIMED_METRICS, aggregate_repeats
from longlive.model.attention import resolve_backend
from longlive.model.presets import get_preset
from longlive.parallel.groups import check_sp
from longlive.quant.kernels import active_kernels
from longlive.quant.kv import kv_saturated_share, reset_kv_saturation
from longlive.quant.recipes import DEFAULT_ACT_RULE
from longlive.workloads import CellContext
from longlive.workloads.checks import feature_reason, hardware_reason
from longlive.workloads.quality import (
    compute_metric,
    fidelity_against,
    metric_inputs,
    vbench_scores,
    vbench_unavailable_reason,
    vbench_window_scores,
    window_quality,
)

ROOFLINE_DEFINITION = (
    "gemm_tflops / attn_tflops measured in this process at the model's shapes (the FP8 _scaled_mm rate when the "
    "Linears run real FP8 GEMMs); ceiling_fps = frames per chunk / ((steps+1) x (GEMM FLOP / gemm rate + attention "
    "FLOP / attention rate)); mfu = achieved FLOP/s / that GEMM rate")
INFER_REPEATS = (
    " infer: the pipeline is built, compiled and warmed once, then generates the same video (same seed) n times back "
    "to back, each with a fresh warmed decoder; the roofline's achieved rate and MFU use the median denoise_fps; "
    "quality metrics, fidelity, the video and the profile are the first run's.")


def video_request(spec: RunSpec, progress: bool = False) -> VideoRequest:
    """The run spec's generation fields as a request (same names)."""
    return VideoRequest(
        model=spec.model.name, frames=spec.frames, prompts=list(spec.prompts), steps=spec.steps, seed=spec.seed,
        switch_at=list(spec.switch_at) if spec.switch_at is not None else None, device=spec.hardware.device,
        vae_device=spec.decode.vae_device, attn=spec.attn, decode=spec.decode.mode,
        random_weights=spec.random_weights, progress=progress, save_latents=True,
        **request_fields(dataclasses.asdict(spec.precision)),
        kv_quant=spec.kv_quant.name, sp=spec.sp, exchange=spec.exchange, compile=spec.compile,
        fuse_qkv=spec.fuse_qkv, lora=Path(spec.lora) if spec.lora else None,
        guidance_scale=spec.guidance_scale, negative_prompt=spec.negative_prompt, timestep_shift=spec.timestep_shift,
        window_frames=spec.window_frames, sink_frames=spec.sink_frames, shot_rope_offset=spec.shot_rope_offset,
        scene_cut_prefix=spec.scene_cut_prefix, height=spec.height, width=spec.width, lora_mode=spec.lora_mode,
        relative_rope=spec.relative_rope,
        ema=spec.ema, act_rule=spec.precision.act_rule or DEFAULT_ACT_RULE, quant_exclude=list(spec.quant_exclude),
        kv_rule=spec.kv_rule, vae_type=spec.vae_type, vae_pruning=spec.vae_pruning,
    )


class InferWorkload:
    """Generate one video; speed, memory, roofline and the configured quality metrics."""

    name = "infer"
    repeats_inside = True  # build (load, quantise, compile) once, time `spec.repeats` generations

    def check(self, spec: RunSpec) -> str | None:
        reason = hardware_reason(spec) or feature_reason(spec)
        if reason:
            return reason
        check_sp(get_preset(spec.model.name), spec.sp)
        try:
            validate(video_request(spec), launched=False)  # the cell's ranks check the SP launch itself
        except FileNotFoundError as exc:
            return f"missing weights: {exc}"
        return None

    def run(self, spec: RunSpec, ctx: CellContext) -> dict[str, Any]:
        req = video_request(spec)
        pipe = build(req)
        reset_kv_saturation()  # count the timed generations' FP8 window caches, not the compile warm-up's
        runs = [run(pipe if k == 0 else fresh_decoder(pipe), ctx.for_repeat(k).out) for k in range(spec.repeats)]
        kv_saturated = kv_saturated_share()  # this rank's caches (its heads under sp); None without an FP8 window
        device_ms = profile_window(pipe, ctx.out / "profile.txt") if spec.profile else None  # every SP rank
        res = runs[0]
        if not res.is_main:
            return {}
        for k in range(1, spec.repeats):  # the same seed's video again: the row keeps the first run's files
            shutil.rmtree(ctx.for_repeat(k).out, ignore_errors=True)
        out = aggregate_repeats([{**r.metrics, "timing_definition": r.timing_definition} for r in runs],
                                TIMED_METRICS)
        timing = out.pop("timing_definition")
        if "repeats" in timing:
            timing["repeats"] += INFER_REPEATS
        out["kv_saturated_share"] = kv_saturated  # beside kv_cache_gb / kv_packed_gb
        extra = {"chunk_ms": res.chunk_ms, "windows": res.windows, "notes": res.notes,
                 "linear_quant_source": pipe.linear_quant_source, "quant_kernels": active_kernels(),
                 "fused_qkv": req.fuse_qkv, "attn_backend": pipe.model.attn_backend}
        dev = torch.device(req.device)
        if spec.roofline:
            fp8 = pipe.linear_quant == "fp8" and pipe.linear_backend == "fp8"
            # the roofline counts steps + 1 passes per chunk; guidance runs 2 (steps + 1) = (2 steps + 1) + 1
            passes_as_steps = 2 * req.steps + 1 if pipe.spec.guided else req.steps
            out.update(roofline_metrics(pipe.config, passes_as_steps, out["denoise_fps"], dev, req.torch_dtype,
                                        resolve_backend(req.attn, dev, req.torch_dtype), fp8_gemm=fp8))
            extra["gemm_format"] = "fp8" if fp8 else str(req.torch_dtype).removeprefix("torch.")
            timing["roofline"] = ROOFLINE_DEFINITION
        if spec.profile:
            extra["device_time_ms"] = device_ms
        quality = quality_metrics(spec, res.video, ctx)
        timing.update(quality.pop("timing_definition", {}))  # the quality windows' definition
        out.update(quality)
        out["timing_definition"] = timing
        out["artifacts"] = {**res.artifacts, **({"profile": "profile.txt"} if spec.profile else {})}
        out["metrics_extra"] = extra
        return out


def fresh_decoder(pipe: Pipeline) -> Pipeline:
    """`pipe` with a new warmed decoder (a decoder serves one video); model, cache geometry and prompts are shared."""
    decoder, _ = warm_decoder(pipe.request, pipe.vae, pipe.config, pipe.sp, pipe.is_main)
    return dataclasses.replace(pipe, decoder=decoder)


def profile_window(pipe: Pipeline, path: Path) -> dict[str, float] | None:
    """Profile a run just long enough to fill the attention window plus one steady chunk, with the timed run's model,
    prompts, KV storage and SP group; every SP rank runs it (the collectives), the first writes `path`. Returns the
    device ms per kind of kernel (longlive.measure.profile)."""
    cfg = pipe.config
    slots = cfg.window_frames // cfg.chunk_frames
    short = dataclasses.replace(pipe.spec, frames=(slots + 1) * cfg.chunk_frames, warmup_chunks=slots,
                                prompts=pipe.spec.prompts[:1], switch_chunks=None, chunk_texts=None)
    title = (f"{cfg.name} sp={pipe.sp.size if pipe.sp else 1}, linear_quant={pipe.linear_quant}, "
             f"kv_quant={short.kv_quant}, compile={pipe.request.compile}, {short.steps}-step, {slots + 1} chunks "
             f"(the window fills at chunk {slots})")
    texts = pipe.spec.texts
    embeds = [pipe.embeds[texts.index(t)] for t in short.texts]
    return profile_call(lambda: generate(pipe.model, short, embeds, sp=pipe.sp), path, title, record=pipe.is_main)


def quality_metrics(spec: RunSpec, frames, ctx: CellContext) -> dict[str, Any]:
    """Registered weight-free metrics on the video and per quality window (drift; their definition under
    `timing_definition`), and fidelity against the reference cell's artifacts."""
    out: dict[str, Any] = {}
    if frames is not None:
        inputs = metric_inputs(spec, frames)
        for name in spec.quality.metrics:
            out[name] = compute_metric(name, **inputs)
        windows, definition = window_quality(spec, inputs)
        out.update(windows)
        if definition:
            out["timing_definition"] = definition
    if ctx.reference_dir is not None:
        out.update(fidelity_against(ctx.out, ctx.reference_dir))
    return out


class QualityWorkload(InferWorkload):
    """Inference plus VBench dimensions (optional extra, offline weights)."""

    name = "quality"

    def check(self, spec: RunSpec) -> str | None:
        reason = super().check(spec)
        if reason:
            return reason
        dims = list(spec.quality.vbench_dimensions)
        return vbench_unavailable_reason(dims) if dims else None

    def run(self, spec: RunSpec, ctx: CellContext) -> dict[str, Any]:
        out = super().run(spec, ctx)
        dims = list(spec.quality.vbench_dimensions)
        if dims and out:
            out.update(vbench_scores(ctx.out, dims))
            # VBench-Long: the same dimensions per quality window, where the video holds at least two
            out.update(vbench_window_scores(ctx.out, dims, get_preset(spec.model.name).fps,
                                            spec.quality.window_seconds))
        return out
