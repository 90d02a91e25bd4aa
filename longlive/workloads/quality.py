"""Glue between result rows and `longlive.eval`: registered metrics by name, fidelity against a reference cell's
artifacts, and VBench availability as a skip reason (checked before any video is made)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from longlive.eval import scoring, vbench_adapter
from longlive.eval.metrics import compute_metrics


def compute_metric(name: str, *, frames) -> float | None:
    """A registered metric of a uint8 video [T, H, W, 3] (metrics needing other inputs are None here)."""
    return compute_metrics([name], skip_missing=True, frames=frames)[name]


def fidelity_against(cell_dir: Path, ref_dir: Path) -> dict[str, Any]:
    """Latent relative error and PSNR of this cell's outputs against the reference cell's."""
    cell_dir, ref_dir = Path(cell_dir), Path(ref_dir)
    out: dict[str, Any] = {}
    lat, ref_lat = cell_dir / "latents.safetensors", ref_dir / "latents.safetensors"
    if lat.exists() and ref_lat.exists():
        out.update(compute_metrics(["latent_rel_err_vs_ref"], latents=lat, ref_latents=ref_lat))
    vid, ref_vid = cell_dir / "video.mp4", ref_dir / "video.mp4"
    if vid.exists() and ref_vid.exists():
        out.update(compute_metrics(["psnr_vs_ref"], frames=vid, ref_frames=ref_vid))
    return out


def vbench_unavailable_reason(dimensions: list[str]) -> str | None:
    """Why VBench cannot score these dimensions here (missing extra or weight files), or None."""
    return vbench_adapter.unavailable_reason(dimensions)


def vbench_scores(cell_dir: Path, dimensions: list[str]) -> dict[str, Any]:
    raw = vbench_adapter.run_vbench(Path(cell_dir) / "video.mp4", dimensions, out_dir=Path(cell_dir) / "vbench")
    return {**{f"vbench_{k}": v for k, v in raw.items()}, **scoring.vbench_scores(raw)}
