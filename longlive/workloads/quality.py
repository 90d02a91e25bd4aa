"""Glue between result rows and `longlive.eval`: registered metrics by name, fidelity against a reference cell's
artifacts (whole video and per chunk), and VBench availability as a skip reason (checked before any video is made)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from longlive.eval import scoring, vbench_adapter
from longlive.eval.drift import DEFINITION_KEY, resolve_window_metrics, windowed_metrics
from longlive.eval.fidelity import chunk_frame_ranges, latent_rel_err_per_chunk, psnr_per_chunk
from longlive.eval.loading import load_frames, load_latents
from longlive.eval.metrics import INPUTS, compute_metrics
from longlive.experiments.spec import RunSpec
from longlive.model.presets import get_preset

CELL_SPEC = "cell.json"
"""The runner's spec of a cell, written into the cell's folder (`runner.executor.run_cell`): its `config` names the
model preset, whose chunk size and VAE stride split a video into chunks when the caller does not give them."""


def compute_metric(name: str, **inputs: Any) -> float | None:
    """A registered metric of a uint8 video [T, H, W, 3] (`frames`) and what else the row has (`metric_inputs`);
    a metric needing inputs not given is None here."""
    return compute_metrics([name], skip_missing=True, **inputs)[name]


def metric_inputs(spec: RunSpec, frames) -> dict[str, Any]:
    """What a row offers the registered metrics, under the registry's input names: the frames, the preset's fps and
    the video's prompt text (`prompt`: the cell's prompts, a list) — each only where the registry knows the name."""
    have = {"frames": frames, "fps": get_preset(spec.model.name).fps, "prompt": list(spec.prompts)}
    return {k: v for k, v in have.items() if k in INPUTS}


def window_quality(spec: RunSpec, inputs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """(row columns, timing definition) of quality over time: the run spec's window metrics per window, drift and
    worst window (`longlive.eval.drift`); nothing when no metric is windowed."""
    q = spec.quality
    names = resolve_window_metrics(q.window_metrics, q.metrics)
    if not names:
        return {}, {}
    cols, definition = windowed_metrics(names, window_seconds=q.window_seconds, **inputs)
    return cols, {DEFINITION_KEY: definition}


def fidelity_against(cell_dir: Path, ref_dir: Path, *, chunk_frames: int | None = None,
                     t_stride: int | None = None) -> dict[str, Any]:
    """Latent relative error and PSNR of this cell's outputs against the reference cell's, for the whole video and
    per chunk (`latent_rel_err_per_chunk`, `latent_rel_err_max_chunk`, `psnr_per_chunk`: where a long rollout
    drifts). The chunk is `chunk_frames` latent frames, decoding to frames through a VAE of temporal stride
    `t_stride`; not given, both come from the model preset named in the cell's `cell.json` (no per-chunk columns
    without either)."""
    cell_dir, ref_dir = Path(cell_dir), Path(ref_dir)
    if chunk_frames is None:
        chunk_frames, t_stride = cell_chunk_geometry(cell_dir) or (None, t_stride)
    t_stride = t_stride or 4
    out: dict[str, Any] = {}
    lat, ref_lat = cell_dir / "latents.safetensors", ref_dir / "latents.safetensors"
    latent_frames = None
    if lat.exists() and ref_lat.exists():
        x, ref = load_latents(lat), load_latents(ref_lat)
        out.update(compute_metrics(["latent_rel_err_vs_ref"], latents=x, ref_latents=ref))
        if chunk_frames is not None and x.ndim == 5 and x.shape == ref.shape and x.shape[2] % chunk_frames == 0:
            per_chunk = latent_rel_err_per_chunk(x, ref, chunk_frames)
            latent_frames = x.shape[2]
            out["latent_rel_err_per_chunk"] = per_chunk
            out["latent_rel_err_max_chunk"] = max(per_chunk)
    vid, ref_vid = cell_dir / "video.mp4", ref_dir / "video.mp4"
    if vid.exists() and ref_vid.exists():
        frames, ref_frames = load_frames(vid), load_frames(ref_vid)
        out.update(compute_metrics(["psnr_vs_ref"], frames=frames, ref_frames=ref_frames))
        if latent_frames is not None and frames.shape == ref_frames.shape:
            ranges = chunk_frame_ranges(latent_frames, chunk_frames, t_stride, video_frames=frames.shape[0])
            out["psnr_per_chunk"] = psnr_per_chunk(frames, ref_frames, ranges)
    return out


def cell_chunk_geometry(cell_dir: Path) -> tuple[int, int] | None:
    """(chunk_frames, temporal VAE stride) of the model preset in the cell's `cell.json`, or None without one."""
    try:
        config = json.loads((Path(cell_dir) / CELL_SPEC).read_text())["config"]
        cfg = get_preset(config["model"]["name"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return cfg.chunk_frames, cfg.vae_stride[0]


def vbench_unavailable_reason(dimensions: list[str]) -> str | None:
    """Why VBench cannot score these dimensions here (missing extra or weight files), or None."""
    return vbench_adapter.unavailable_reason(dimensions)


def vbench_scores(cell_dir: Path, dimensions: list[str]) -> dict[str, Any]:
    raw = vbench_adapter.run_vbench(Path(cell_dir) / "video.mp4", dimensions, out_dir=Path(cell_dir) / "vbench")
    return {**{f"vbench_{k}": v for k, v in raw.items()}, **scoring.vbench_scores(raw)}
