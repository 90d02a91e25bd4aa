"""A weight-free quality measure for the tiny preset: how well generated videos match the procedural
distribution they were trained on.

Procedural clips are drawn from a small palette of flat colours, so every pixel of a real clip sits on a palette
colour (up to video-codec noise). `palette_match` is the fraction of pixels within `tol` (L∞, 0–255 scale) of some
palette colour: 1.0 for procedural clips, low for noise or smeared blobs, and it rises as a model learns to draw
crisp flat shapes. It says nothing about motion; pair it with `temporal_flickering` (VBench's definition).
"""

from __future__ import annotations

import re

import torch

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 215, 40),
    "orange": (245, 140, 30),
    "purple": (140, 60, 190),
    "pink": (240, 130, 190),
    "cyan": (40, 200, 210),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
    "grey": (128, 128, 128),
    "brown": (130, 80, 40),
}
"""The procedural palette by caption name (`longlive.train.data` draws with it; kept here
so `eval` can read prompts without importing `train`)."""


def named_colours(text: str) -> torch.Tensor:
    """RGB [K, 3] of the palette colours a caption names, in palette order, the grey background excepted: the
    tiny task's prompted object colours (here, not in `train`, so the registered metrics read prompts the way the
    tiny default's evaluation does)."""
    words = set(re.findall(r"[a-z]+", text.lower()))
    return torch.tensor([rgb for name, rgb in COLOURS.items() if name != "grey" and name in words],
                        dtype=torch.int64).reshape(-1, 3)


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


def prompt_colour_match(frames: torch.Tensor, colours: torch.Tensor, background: torch.Tensor, tol: int = 48) -> float:
    """Text adherence for the procedural task: of the foreground pixels (farther than `tol`, L∞, from the
    background colour), the fraction within `tol` of a colour the prompt names. 1.0 when every drawn pixel has a
    prompted colour, about 1/K for a model that ignores the prompt and picks among K palette colours at random;
    NaN when nothing is drawn. `tol` is wider than `palette_match`'s because shape edges blend into the background.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be [T, H, W, 3], got {tuple(frames.shape)}")
    cols = torch.as_tensor(colours).to(torch.int16).reshape(1, -1, 3)
    if cols.shape[1] == 0:
        raise ValueError("prompt_colour_match needs at least one prompted colour")
    px = frames.reshape(-1, 3).to(torch.int16)
    fg = (px - torch.as_tensor(background).to(torch.int16).reshape(1, 3)).abs().amax(dim=-1) > tol
    if not fg.any():
        return float("nan")
    near = ((px[fg].unsqueeze(1) - cols).abs().amax(dim=-1) <= tol).any(dim=-1)
    return near.float().mean().item()


def foreground_mask(frames: torch.Tensor, background: torch.Tensor, tol: int = 48) -> torch.Tensor:
    """[T, H, W] bool: pixels of frames [T, H, W, 3] (uint8) farther than `tol` (L∞) from the background colour."""
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be [T, H, W, 3], got {tuple(frames.shape)}")
    d = (frames.to(torch.int16) - torch.as_tensor(background).to(torch.int16).reshape(1, 1, 1, 3)).abs()
    return d.amax(dim=-1) > tol


def foreground_fraction(frames: torch.Tensor, background: torch.Tensor, tol: int = 48) -> float:
    """Fraction of pixels farther than `tol` (L∞) from the background colour: how much is drawn at all. On a
    flat background `palette_match` rewards an empty frame; this number next to the real clips' shows it."""
    return foreground_mask(frames, background, tol).float().mean().item()
