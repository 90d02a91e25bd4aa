"""Saved latents to a video (`longlive decode LATENTS --out DIR`): generate with `--decode none` (or
`--save-latents`) now, decode later or elsewhere (the release's `save_latents_only`, without its second script).

The decode goes through the generation's own path: the VAE loaded by `assemble.load_vae`, the decoder made and
warmed by `assemble.warm_decoder`, the latents submitted chunk by chunk in the VAE's dtype as `assemble.run` does, the
frames written by `assemble.write_video`. So for the same decode mode the frames equal those `generate`
would have written, bit for bit (tests/test_generate_io.py).

The generation's settings (preset, VAE file, seed of seeded weights, devices, precision) are read from the row that
`generate` wrote beside the latents: `result.json` in the latents' folder, or the `results.jsonl` one folder up
whose `cell_id` is the folder's name (many videos per command); explicit options override them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from longlive.filecheck import LATENTS, load_safetensors
from longlive.infer.assemble import load_vae, warm_decoder, write_video
from longlive.infer.video import VideoRequest
from longlive.model.presets import get_preset
from longlive.weights import default_paths

LATENTS_FILE = "latents.safetensors"


def read_latents(path: str | Path) -> torch.Tensor:
    """float32 latents [B, C, F, H, W] of a generate's latents.safetensors (a folder holding one, or the file)."""
    path = Path(path)
    if path.is_dir():
        path = path / LATENTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"latents not found: expected {path} (written by generate --decode none or "
                                f"--save-latents)")
    tensors = load_safetensors(path, LATENTS)  # format and integrity checked before loading (longlive.filecheck)
    if "latents" not in tensors:
        raise ValueError(f"{path}: a safetensors file without a `latents` tensor (it holds {sorted(tensors)[:5]}): "
                         f"expected {LATENTS.description}")
    latents = tensors["latents"]
    if latents.ndim != 5:
        raise ValueError(f"{path}: latents of shape {list(latents.shape)}, expected [B, C, F, H, W]")
    return latents


def generation_config(path: str | Path) -> dict[str, Any] | None:
    """The `config` of the generate row that wrote these latents (module docstring), or None."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    single = folder / "result.json"
    if single.is_file():
        rows = json.loads(single.read_text(encoding="utf-8")).get("rows") or []
        return rows[0].get("config") if rows else None
    many = folder.parent / "results.jsonl"
    if many.is_file():
        found = None
        for line in many.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn line of a killed writer
            if isinstance(row, dict) and row.get("cell_id") == folder.name:
                found = row.get("config")  # the last row of a cell wins
        return found
    return None


def decode_latents(latents: torch.Tensor, req: VideoRequest) -> torch.Tensor:
    """uint8 frames [T, H, W, 3] of the first sample, through `req`'s VAE, devices and decode mode."""
    if req.decode in ("none", "tiles"):
        raise ValueError(f"--decode {req.decode}: decoding saved latents takes one of batch, streaming, async, "
                         f"device (tiles needs the SP ranks of a generation)")
    cfg = get_preset(req.model)
    if latents.shape[1] != cfg.out_channels:
        raise ValueError(f"latents have {latents.shape[1]} channels; the {cfg.name} VAE takes {cfg.out_channels}")
    paths = None if req.random_weights else default_paths(cfg)
    vae, _ = load_vae(req, cfg, paths)
    decoder, _ = warm_decoder(req, vae, cfg, None, True)
    cf = cfg.chunk_frames
    with torch.no_grad():
        for start in range(0, latents.shape[2], cf):  # chunk by chunk, in the VAE's dtype, as generation submits
            decoder.submit(latents[:, :, start : start + cf].to(vae.dtype))
        return decoder.finish()[0]


__all__ = ["decode_latents", "generation_config", "read_latents", "write_video"]
