"""A weight-free quality measure for the tiny preset: how well generated videos match the procedural
distribution they were trained on.

Procedural clips are drawn from a small palette of flat colours, so every pixel of a real clip sits on a palette
colour (up to video-codec noise). `palette_match` is the fraction of pixels within `tol` (L∞, 0–255 scale) of some
palette colour: 1.0 for procedural clips, low for noise or smeared blobs, and it rises as a model learns to draw
crisp flat shapes. It says nothing about motion; pair it with `temporal_flickering` (VBench's definition).
"""

from __future__ import annotations

import torch


def palette_match(frames: torch.Tensor, palette: torch.Tensor, tol: int = 24) -> float:
    """frames uint8 [T, H, W, 3]; palette uint8/int [K, 3]. Fraction of pixels within `tol` of a palette colour."""
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be [T, H, W, 3], got {tuple(frames.shape)}")
    px = frames.reshape(-1, 1, 3).to(torch.int16)
    pal = torch.as_tensor(palette).to(torch.int16).reshape(1, -1, 3)
    hits = torch.zeros(px.shape[0], dtype=torch.bool)
    for lo in range(0, px.shape[0], 1 << 18):  # bounded memory for long videos
        d = (px[lo : lo + (1 << 18)] - pal).abs().amax(dim=-1)
        hits[lo : lo + (1 << 18)] = (d <= tol).any(dim=-1)
    return hits.float().mean().item()
