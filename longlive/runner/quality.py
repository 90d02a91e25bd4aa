"""Glue between the runner's rows and `longlive.eval`: metric columns by name, fidelity against a reference
cell's artifacts, and VBench availability as a skip reason (checked before any video is generated)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

FRAME_METRICS = {"temporal_flickering"}


def compute_metric(name: str, *, frames) -> float:
    """A weight-free metric of a uint8 video [T, H, W, 3], by registered name."""
    if name == "temporal_flickering":
        from longlive.eval.flicker import temporal_flickering

        return float(temporal_flickering(frames))
    raise ValueError(f"unknown quality metric {name!r}; weight-free metrics: {', '.join(sorted(FRAME_METRICS))}")


def fidelity_against(cell_dir: Path, ref_dir: Path) -> dict[str, Any]:
    """Latent relative error and PSNR of this cell's outputs against the reference cell's."""
    from longlive.eval.fidelity import latent_rel_err, psnr
    from longlive.eval.loading import load_frames, load_latents

    out: dict[str, Any] = {}
    lat, ref_lat = Path(cell_dir) / "latents.safetensors", Path(ref_dir) / "latents.safetensors"
    if lat.exists() and ref_lat.exists():
        out["latent_rel_err_vs_ref"] = float(latent_rel_err(load_latents(lat), load_latents(ref_lat)))
    vid, ref_vid = Path(cell_dir) / "video.mp4", Path(ref_dir) / "video.mp4"
    if vid.exists() and ref_vid.exists():
        out["psnr_vs_ref"] = float(psnr(load_frames(vid), load_frames(ref_vid)))
    return out


def vbench_unavailable_reason(dimensions: list[str]) -> str | None:
    """Why VBench cannot score these dimensions here (missing extra or weights), or None."""
    from longlive.eval import vbench_adapter as va

    try:
        va.check_weights(dimensions)
    except va.MissingWeightsError as exc:
        return f"missing VBench weights: {str(exc).splitlines()[-1].strip()} (and {len(exc.args[1]) - 1} more)"
    try:
        import vbench  # noqa: F401
    except ImportError:
        return f"missing extra: vbench ({va.install_hint()})"
    return None


def vbench_scores(cell_dir: Path, dimensions: list[str]) -> dict[str, Any]:
    from longlive.eval import scoring, vbench_adapter

    raw = vbench_adapter.run_vbench(Path(cell_dir) / "video.mp4", dimensions, out_dir=Path(cell_dir) / "vbench")
    return {**{f"vbench_{k}": v for k, v in raw.items()}, **scoring.vbench_scores(raw)}
