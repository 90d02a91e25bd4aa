"""Glue between result rows and `longlive.eval`: registered metrics by name, fidelity against a reference cell's
artifacts (whole video and per chunk), and VBench availability as a skip reason (checked before any video is made)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from longlive.eval import scoring, vbench_adapter
from longlive.eval.clips import DEFAULT_WINDOW_SECONDS
from longlive.eval.drift import (
    DEFINITION_KEY,
    WINDOW_CENTRES,
    drift_numbers,
    resolve_window_metrics,
    window_columns,
    windowed_metrics,
    windows_of,
)
from longlive.eval.fidelity import chunk_frame_ranges, latent_rel_err_per_chunk, psnr_per_chunk
from longlive.eval.loading import load_frames, load_latents
from longlive.eval.metrics import INPUTS, compute_metrics
from longlive.experiments.spec import RunSpec
from longlive.model.presets import get_preset
from longlive.output import write_mp4

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


VBENCH_WINDOW_NAME = "windows"
"""VBench's run name for the window clips (`<cell>/vbench_windows_results/windows_eval_results.json`)."""


def vbench_window_scores(cell_dir: Path, dimensions: list[str], fps: float,
                         window_seconds: float = DEFAULT_WINDOW_SECONDS) -> dict[str, Any]:
    """VBench per quality window, as VBench-Long scores long videos: the cell's video.mp4 cut into the quality
    windows (`longlive.eval.drift`), each written as a clip (`vbench_windows/video-wNNN.mp4`), all scored in one
    VBench run, and per dimension `vbench_<dim>_per_window`, `_drift`, `_worst_window`, `_worst_window_index`
    (every VBench dimension is higher-is-better). Nothing for a video shorter than two windows."""
    cell_dir = Path(cell_dir)
    frames = load_frames(cell_dir / "video.mp4")
    w = windows_of(frames.shape[0], fps, window_seconds)
    if w.no_drift_reason is not None:
        return {}
    clips = cell_dir / "vbench_windows"
    clips.mkdir(parents=True, exist_ok=True)
    names = []
    for i, (a, b) in enumerate(w.ranges):
        names.append(f"video-w{i:03d}.mp4")
        write_mp4(frames[a:b], clips / names[-1], round(fps))
    out_dir = cell_dir / "vbench_windows_results"
    vbench_adapter.run_vbench(clips, dimensions, out_dir=out_dir, name=VBENCH_WINDOW_NAME)
    per_video = vbench_adapter.read_per_video_results(out_dir / f"{VBENCH_WINDOW_NAME}_eval_results.json")
    cols: dict[str, Any] = {WINDOW_CENTRES: w.centres_s}
    for dim in dimensions:
        scores = per_video.get(dim, {})
        missing = [n for n in names if n not in scores]
        if missing:
            raise RuntimeError(f"VBench scored no window clip {missing[0]} for {dim} (of {len(names)}) in {out_dir}")
        vals = [scores[n] for n in names]
        per, drift, worst, worst_i = window_columns(f"vbench_{dim}")
        cols[per] = vals
        cols[drift], cols[worst], cols[worst_i] = drift_numbers(vals, higher_is_better=True)
    return cols
