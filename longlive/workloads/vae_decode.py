"""The `vae_decode` workload: the preset's VAE, set up exactly as a generation sets it up (`infer.assemble.load_vae`:
channels-last with cuDNN's algorithm search on CUDA, RMSNorm+SiLU compiled when `compile` is not none), decoding
`decode_chunks` chunks of random latents as one stream (`longlive sweep +experiment=vae_decode`). Random weights
always; `vae_type` picks the decoder (an MG-LightVAE at `vae_pruning`, else its type's rate: `longlive sweep
+experiment=vae_decode vae_type=mg_lightvae vae_pruning=0,0.5,0.75`)."""

from __future__ import annotations

import dataclasses
import statistics
from typing import Any

import torch

from longlive.experiments.spec import RunSpec
from longlive.infer.assemble import load_vae, vae_columns
from longlive.measure.memory import peaks, reset_peaks
from longlive.measure.profile import profile_call
from longlive.measure.spread import TIMED_METRICS, aggregate_repeats
from longlive.measure.timers import Clock
from longlive.model.presets import get_preset
from longlive.workloads import CellContext
from longlive.workloads.checks import hardware_reason
from longlive.workloads.infer import video_request

DECODE_TIMING = ("decode_ms: device time of one streaming decode(chunk) call with the causal caches carried from the "
                 "previous chunk (chunk 0 yields 1 + 4(t-1) frames, later chunks 4t); decode_fps = frames of the "
                 "chunks after the first / their time; decode_ms_median over those chunks; frames stay on the device "
                 "(host copy excluded)")
VAE_REPEATS = (" vae_decode: the VAE is loaded (and compiled) once; each run is a whole streaming decode of the same "
               "latents from a fresh causal cache; metrics_extra's decode_ms and frames are the first run's.")


class VAEDecodeWorkload:
    """Streaming decode of random latents; per-chunk device time, steady FPS, peak memory."""

    name = "vae_decode"
    repeats_inside = True  # load (and compile) the VAE once, time `spec.repeats` whole decode passes

    def check(self, spec: RunSpec) -> str | None:
        if spec.decode_chunks < 2:
            raise ValueError(f"decode_chunks={spec.decode_chunks}: need ≥ 2 (the first chunk is not steady)")
        return hardware_reason(spec)

    def run(self, spec: RunSpec, ctx: CellContext) -> dict[str, Any]:
        cfg = get_preset(spec.model.name)
        req = dataclasses.replace(video_request(spec), random_weights=True, vae_type=spec.vae_type,
                                  vae_pruning=spec.vae_pruning)
        vae, _ = load_vae(req, cfg, None)
        dev, dtype = torch.device(req.vae_device or req.device), vae.dtype
        h, w = cfg.latent_hw
        g = torch.Generator().manual_seed(spec.seed)
        lat = torch.randn(1, vae.z_dim, spec.decode_chunks * cfg.chunk_frames, h, w, generator=g).to(dev, dtype)
        reset_peaks(dev)
        passes, stream = [], None
        for _ in range(spec.repeats):
            stream = None  # the previous pass's causal caches go before the next pass allocates its own
            ms, frames, stream = decode_pass(vae, lat, cfg.chunk_frames, dev)
            passes.append((ms, frames))
        rows = [{"decode_fps": sum(frames[1:]) / (sum(ms[1:]) / 1e3), "decode_ms_median": statistics.median(ms[1:])}
                for ms, frames in passes]
        rows[0]["timing_definition"] = {"decode_fps": DECODE_TIMING, "decode_ms_median": DECODE_TIMING}
        timed = aggregate_repeats(rows, TIMED_METRICS)
        if "repeats" in timed["timing_definition"]:
            timed["timing_definition"]["repeats"] += VAE_REPEATS
        ms, frames = passes[0]
        extra_artifacts = {}
        if spec.profile:  # one more steady chunk under the profiler
            with torch.no_grad():
                device_ms = profile_call(lambda: stream.decode(lat[:, :, -cfg.chunk_frames:]), ctx.out / "profile.txt",
                                         f"{vae.config.name} VAE {spec.precision.dtype} {cfg.height}x{cfg.width}, "
                                         f"compile={spec.compile}: one steady chunk of {cfg.chunk_frames} latents")
            extra_artifacts["profile"] = "profile.txt"
        return {
            **timed, "compile": spec.compile, **vae_columns(spec.vae_type, vae), **peaks(dev),
            "metrics_extra": {"decode_ms": [round(x, 2) for x in ms], "frames": frames, "vae": vae.config.name,
                              "vae_widths": [getattr(vae.config, k, None) for k in ("enc_dim", "dec_dim")],
                              "channels_last": dev.type == "cuda", "resolution": f"{cfg.height}x{cfg.width}",
                              "dtype": str(dtype).removeprefix("torch."),
                              **({"device_time_ms": device_ms} if spec.profile else {})},
            "artifacts": extra_artifacts,
        }


def decode_pass(vae, lat: torch.Tensor, chunk: int, dev: torch.device) -> tuple[list[float], list[int], Any]:
    """One streaming decode of `lat` chunk by chunk from a fresh causal cache: (device ms per chunk, frames per
    chunk, the stream, whose caches a profiled extra chunk continues)."""
    stream, clock = vae.streaming_decoder(), Clock(dev)
    frames = []
    with torch.no_grad():
        for c in range(lat.shape[2] // chunk):
            clock.mark()
            out = stream.decode(lat[:, :, c * chunk : (c + 1) * chunk])
            clock.mark()
            frames.append(int(out.shape[2]))
    return clock.intervals_ms()[::2], frames, stream
