"""Inputs of the metrics: uint8 videos [T, H, W, 3] and float latents, in memory or on disk.

Metrics accept a tensor, an ndarray or a path, so the runner can hand over whatever it has (decoded frames
in memory, or the mp4 / safetensors it wrote) without converting first.
"""

from __future__ import annotations

import os
from pathlib import Path

import imageio.v2 as iio
import numpy as np
import torch

from longlive.filecheck import LATENTS, load_safetensors

VideoLike = torch.Tensor | np.ndarray | str | os.PathLike
TensorLike = torch.Tensor | np.ndarray | str | os.PathLike


def load_frames(path: str | os.PathLike) -> torch.Tensor:
    """Decode a video file (mp4 via imageio-ffmpeg) into uint8 frames [T, H, W, 3] on the CPU."""
    reader = iio.get_reader(str(path), format="FFMPEG")
    try:
        frames = [np.asarray(f)[..., :3] for f in reader]
    finally:
        reader.close()
    if not frames:
        raise ValueError(f"no frames decoded from {path}")
    return torch.from_numpy(np.stack(frames))


def load_latents(path: str | os.PathLike, key: str | None = None) -> torch.Tensor:
    """One tensor from a safetensors file: `key`, or the only tensor in the file (an error lists the keys)."""
    tensors = load_safetensors(path, LATENTS)  # format and integrity checked before loading (longlive.filecheck)
    if key is not None:
        if key not in tensors:
            raise KeyError(f"{path} has no tensor {key!r}; it has: {', '.join(sorted(tensors))}")
        return tensors[key]
    if len(tensors) != 1:
        raise ValueError(f"{path} holds {len(tensors)} tensors ({', '.join(sorted(tensors))}): pass key=")
    return next(iter(tensors.values()))


def as_video(frames: VideoLike) -> torch.Tensor:
    """Validate uint8 [T, H, W, 3] (tensor, ndarray or video path) and return a tensor, without copying memory."""
    if isinstance(frames, str | os.PathLike):
        frames = load_frames(Path(frames))
    x = frames if isinstance(frames, torch.Tensor) else torch.from_numpy(np.asarray(frames))
    if x.dtype != torch.uint8:
        raise TypeError(f"frames must be uint8 (longlive.output.frames_to_uint8 converts [-1, 1] video), got {x.dtype}")
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"frames must be [T, H, W, 3], got {tuple(x.shape)}")
    return x


def as_tensor(x: TensorLike, key: str | None = None) -> torch.Tensor:
    """A tensor from a tensor, an ndarray or a safetensors path (see `load_latents`)."""
    if isinstance(x, str | os.PathLike):
        return load_latents(x, key)
    return x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
