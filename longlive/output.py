"""Writing outputs: H.264 mp4 for viewing and VBench, a PNG frame strip for reports, text/JSON results.

The frame writers take uint8 frames [T, H, W, 3] (tensor or ndarray); `frames_to_uint8` turns the model's
[-1, 1] video tensor into that. Every file is written to a temp name in the target folder and then
`os.replace`d, so a killed run or a full disk never leaves a truncated file that looks finished (a failed write
is an `OutputWriteError` naming the file; the temp file is removed).
`check_out_dir` / `check_out_file` test an output path before any work, so a bad --out costs nothing.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import imageio.v2 as iio
import numpy as np
import torch
from PIL import Image

Frames = torch.Tensor | np.ndarray


def frames_to_uint8(video: torch.Tensor, *, rounding: Literal["nearest", "truncate"] = "nearest") -> torch.Tensor:
    """[3, T, H, W] or [1, 3, T, H, W] in [-1, 1] → uint8 [T, H, W, 3] on the CPU, computed in float32.

    "nearest" rounds (x+1)·127.5 to nearest (unbiased). "truncate" reproduces the LongLive release's
    `(x·0.5+0.5).clamp(0,1)·255 → uint8` cast, for pixel-exact comparisons with its videos.
    """
    if video.ndim == 5:
        if video.shape[0] != 1:
            raise ValueError(f"batched video {tuple(video.shape)}: pass one sample (video[i]) at a time")
        video = video[0]
    if video.ndim != 4 or video.shape[0] != 3:
        raise ValueError(f"expected a [3, T, H, W] or [1, 3, T, H, W] video, got {tuple(video.shape)}")
    x = video.detach().to("cpu", torch.float32)
    if rounding == "nearest":
        x = ((x.clamp(-1.0, 1.0) + 1.0) * 127.5).round()
    elif rounding == "truncate":
        x = (x * 0.5 + 0.5).clamp(0.0, 1.0) * 255.0
    else:
        raise ValueError(f"rounding must be 'nearest' or 'truncate', got {rounding!r}")
    return x.to(torch.uint8).permute(1, 2, 3, 0).contiguous()


def _as_uint8_frames(frames: Frames) -> np.ndarray:
    """Validate [T, H, W, 3] uint8 and return a C-contiguous ndarray."""
    arr = frames.detach().cpu().numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
    if arr.dtype != np.uint8:
        raise TypeError(f"frames must be uint8 (use frames_to_uint8 for [-1, 1] videos), got {arr.dtype}")
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"frames must be [T, H, W, 3], got {tuple(arr.shape)}")
    if arr.shape[0] == 0:
        raise ValueError("no frames to write")
    return np.ascontiguousarray(arr)


class OutputWriteError(OSError):
    """An output file could not be written (disk full, quota, read-only disk, no permission). The message names the
    file and says any earlier version of it is intact, so a command prints it as one line instead of a traceback."""


def write_error(exc: OSError, path: str | os.PathLike, what: str = "") -> OutputWriteError:
    """`exc` (errno kept, so callers can still test for ENOSPC) restated with the file it was writing."""
    if isinstance(exc, OutputWriteError):
        return exc
    cause = exc.strerror or str(exc) or type(exc).__name__
    message = (f"could not write {what or path}: {cause}; nothing was replaced, any previous {Path(path).name} is "
               f"intact (free space or fix permissions, then rerun)")
    return OutputWriteError(exc.errno, message) if exc.errno is not None else OutputWriteError(message)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside `path` (same suffix, so tools pick the format) and replace on success. On any failure
    the temp file is removed and `path` is left as it was; an OSError becomes an OutputWriteError naming `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp{path.suffix}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        raise write_error(exc, path) from exc
    finally:
        tmp.unlink(missing_ok=True)



def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write a text file (result.json, index.html, ...) through a temp file and a rename."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def check_out_dir(path: str | os.PathLike, flag: str = "--out") -> Path:
    """Raise ValueError now, before any work, if `path` cannot become an output folder: it exists as a file, a
    folder above it is a file, or the nearest existing folder above it is not writable. Creates nothing."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{flag} {path} exists and is not a folder; give a folder (the outputs go inside it)")
    _check_above(path, flag)
    return path


def check_out_file(path: str | os.PathLike, flag: str = "--out") -> Path:
    """As `check_out_dir`, for an output file: it must not be a folder, and a folder for it must be makeable."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{flag} {path} is a folder; give the path of the file to write")
    _check_above(path, flag)
    return path


def _check_above(path: Path, flag: str) -> None:
    """The nearest existing path above `path` must be a writable folder."""
    for parent in path.parents:
        if not parent.exists():
            continue
        if not parent.is_dir():
            raise ValueError(f"{flag} {path}: {parent} is a file, so nothing can be made under it")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise ValueError(f"{flag} {path}: {parent} is not writable")
        return


def write_mp4(frames: Frames, path: str | os.PathLike, fps: int, *, crf: int = 18) -> Path:
    """Encode uint8 frames [T, H, W, 3] as H.264 (libx264, yuv420p, CRF 18 = visually lossless).

    yuv420p subsamples chroma 2×2, so x264 needs even sides: an odd H or W is padded by one replicated
    edge row/column (no resampling, the picture is not shifted; the file is at most 1 px larger).
    yuv420p is what players and VBench's decoders handle everywhere.
    """
    arr = _as_uint8_frames(frames)
    _, h, w, _ = arr.shape
    if h % 2 or w % 2:
        arr = np.pad(arr, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    with atomic_path(path) as tmp:
        writer = iio.get_writer(
            str(tmp),
            format="FFMPEG",
            mode="I",
            fps=fps,
            codec="libx264",
            pixelformat="yuv420p",
            quality=None,  # imageio's 0-10 scale is replaced by an explicit CRF below
            output_params=["-crf", str(crf), "-preset", "medium"],
            macro_block_size=1,  # sides are already even; do not let imageio rescale to multiples of 16
            ffmpeg_log_level="error",
        )
        try:
            for frame in arr:
                writer.append_data(frame)
        finally:
            writer.close()
    return Path(path)


def write_frame_strip(
    frames: Frames, path: str | os.PathLike, num: int = 8, *, separator: int = 2, color: int = 255
) -> Path:
    """Save `num` evenly spaced frames (first and last included) side by side as one PNG.

    Frames are separated by `separator`-pixel columns of grey level `color`; fewer frames than `num`
    gives one panel per frame. Width = n·W + (n−1)·separator, height = H.
    """
    arr = _as_uint8_frames(frames)
    t, h, w, _ = arr.shape
    n = min(num, t)
    if n < 1:
        raise ValueError(f"num must be at least 1, got {num}")
    idx = np.linspace(0, t - 1, n).round().astype(int)
    strip = np.full((h, n * w + (n - 1) * separator, 3), color, dtype=np.uint8)
    for j, i in enumerate(idx):
        x0 = j * (w + separator)
        strip[:, x0 : x0 + w] = arr[i]
    with atomic_path(path) as tmp:
        Image.fromarray(strip).save(tmp, format="PNG")
    return Path(path)
