"""VBench's `temporal_flickering`, computed without weights, and a path to check it against VBench's own code.

VBench 0.1.5 (`vbench/temporal_flickering.py`) decodes every frame of the video with OpenCV at full resolution
(no resizing, no frame sampling, BGR order), takes for each consecutive pair the mean over all pixels and
channels of |frame[i+1] − frame[i]| (float32), averages those per-pair means, and scores
`(255 − mean) / 255`. We do the same on the frames we are given: absolute differences are summed exactly in
int64 and divided in float64, so the result is exact up to one float64 rounding (VBench's float32 means differ
by ~1e-7). Channel order does not change the score.

Two things make our number differ from a VBench run on the same generation:
- VBench scores the *decoded mp4*: H.264 (yuv420p) compression changes the frames. `compare_with_vbench`
  reports both the raw-frame and the decoded-file numbers.
- The official dimension is meant for videos of *static* scenes (VBench's temporal_flickering prompts; VBench-Long
  can drop non-static clips with a RAFT-based static filter). On a moving video this measures all inter-frame
  change, not only flicker, so it is a regression signal here, not the leaderboard number.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from longlive.output import write_mp4

from .loading import VideoLike, as_video
from .vbench_adapter import VBenchUnavailableError, install_hint

_SLAB = 16  # frame pairs per step: bounds the int16 working set to ~17 frames at any resolution


def frame_mae(frames: VideoLike) -> np.ndarray:
    """Mean absolute difference of each consecutive frame pair (float64, length T − 1), 0..255."""
    x = as_video(frames)
    t = x.shape[0]
    if t < 2:
        raise ValueError(f"temporal flickering needs at least 2 frames, got {t}")
    per_frame = x[0].numel()
    sums = []
    for s in range(0, t - 1, _SLAB):
        e = min(s + _SLAB, t - 1)
        a = x[s : e + 1].to(torch.int16)
        sums.append((a[1:] - a[:-1]).abs_().sum(dim=(1, 2, 3), dtype=torch.int64).cpu())
    return torch.cat(sums).numpy().astype(np.float64) / per_frame


def temporal_flickering(frames: VideoLike) -> float:
    """VBench temporal-flickering score of one video: (255 − mean pair MAE)/255, in [0, 1]; static → 1.0."""
    return float((255.0 - frame_mae(frames).mean()) / 255.0)


# ---------------------------------------------------------------------------------------------------------------
# Check path against the real `vbench` package (optional; never needed to compute the metric).


def vbench_available() -> bool:
    """Whether VBench's flickering module (and its OpenCV dependency) imports in this interpreter."""
    try:
        import vbench.temporal_flickering  # noqa: F401  # optional extra: vbench probe, absence -> False
    except Exception:
        return False
    return True


def _vbench_flicker_module():
    try:
        import vbench.temporal_flickering as mod  # optional extra: vbench, absence -> VBenchUnavailableError
    except Exception as e:
        raise VBenchUnavailableError(f"cannot import vbench.temporal_flickering ({e}). {install_hint()}") from e
    return mod


def vbench_score_frames(frames: VideoLike) -> float:
    """VBench's own per-pair MAE code (`mae_seq`) on these exact frames: checks the formula, no codec involved."""
    mod = _vbench_flicker_module()
    x = as_video(frames).cpu().numpy()
    return float((255.0 - np.mean(mod.mae_seq(list(x))).item()) / 255.0)


def vbench_score_file(video_path: str | os.PathLike) -> float:
    """VBench's own score of a video file (`cal_score`: OpenCV decode + its formula), what a VBench run reports."""
    return float(_vbench_flicker_module().cal_score(str(video_path)))


def decode_like_vbench(video_path: str | os.PathLike) -> np.ndarray:
    """Decode a file with OpenCV as VBench does (BGR uint8 [T, H, W, 3])."""
    import cv2  # optional extra: OpenCV is not a dependency, it comes with the vbench extra

    cap = cv2.VideoCapture(str(video_path))
    frames = []
    try:
        while cap.isOpened():
            ok, frame = cap.read()
            if not ok:
                break
            frames.append(frame)
    finally:
        cap.release()
    if not frames:
        raise ValueError(f"OpenCV decoded no frames from {video_path}")
    return np.stack(frames)


def compare_with_vbench(frames: VideoLike, fps: int = 16, workdir: str | os.PathLike | None = None) -> dict[str, float]:
    """Our score vs VBench's on one video, raw frames and after the mp4 round trip VBench sees.

    Returns `ours` / `vbench_frames` (same raw frames: should agree to ~1e-6) and `ours_decoded` / `vbench_file`
    (the mp4 written by `longlive.output.write_mp4`, decoded by OpenCV: should agree to ~1e-6; their gap to the
    raw pair is the codec's effect). Needs the real `vbench` package.
    """
    x = as_video(frames)
    out = {"ours": temporal_flickering(x), "vbench_frames": vbench_score_frames(x)}
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        path = write_mp4(x, Path(tmp) / "flicker_check.mp4", fps=fps)
        out["ours_decoded"] = temporal_flickering(decode_like_vbench(path))
        out["vbench_file"] = vbench_score_file(path)
    return out
