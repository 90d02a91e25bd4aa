"""Splitting a long video into clips the way VBench-Long does, and averaging a per-clip metric over them.

VBench-Long (`vbench2_beta_long.utils.split_video_into_clips`, in the vbench 0.1.5 wheel) cuts each video into
clips of `int(fps) · int(seconds)` frames, fps being the decoder's average rate truncated to an integer:
consecutive non-overlapping clips from frame 0; if frames are left over, one more clip of full length that ends
at the last frame (it reaches back into the previous clip); a video shorter than one clip is kept whole. A
dimension's long-video score is the plain mean of its clip scores (`reorganize_clips_results`), except subject
and background consistency, which VBench-Long fuses with a clip-to-clip term (not reproduced here).

Clip length: `long_custom_input` mode uses 2 s for every dimension; the standard prompt suite reads
`VBENCH_LONG_CLIP_SECONDS` (VBench's `clip_length_mix.yaml`: 10 s for human action, temporal style and overall
consistency). VBench-Long re-encodes every clip to mp4 before scoring; we score the frames as given.

Quality windows (`quality_window_ranges`, used by `longlive.eval.drift` for quality over time) are the same clips with
one change: a window lasts `int(fps) · seconds` frames, the seconds not truncated, so sub-second windows are possible
(for whole seconds, VBench-Long's clip exactly). Leftover frames get VBench-Long's full-length last window ending at
the last frame: every window then holds as many frames as the others, so a metric's value in the last window is
comparable with the first's (a short trailing window would score fewer pairs, a noisier number), and the last
window is the end of the video, which is what drift asks about.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from .loading import VideoLike, as_video

DEFAULT_CLIP_SECONDS = 2
"""VBench-Long's clip duration in `long_custom_input` mode (any dimension) and for most dimensions otherwise."""

VBENCH_LONG_CLIP_SECONDS: dict[str, float] = {
    "subject_consistency": 2.0,
    "background_consistency": 2.0,
    "motion_smoothness": 2.0,
    "temporal_flickering": 2.0,
    "dynamic_degree": 2.0,
    "imaging_quality": 2.0,
    "aesthetic_quality": 2.0,
    "object_class": 2.0,
    "multiple_objects": 2.0,
    "human_action": 10.0,
    "color": 2.0,
    "spatial_relationship": 2.0,
    "scene": 2.0,
    "appearance_style": 2.0,
    "temporal_style": 10.0,
    "overall_consistency": 10.0,
}
"""Per-dimension clip seconds of VBench-Long's default `clip_length_mix.yaml` (standard prompt-suite mode; a
video evaluated for several dimensions is cut at the longest of theirs)."""


def clip_frames(fps: float, clip_seconds: float = DEFAULT_CLIP_SECONDS) -> int:
    """Frames per clip as VBench-Long computes it: int(fps) · int(seconds) (both truncated, as VBench does)."""
    n = int(fps) * int(clip_seconds)
    if n < 1:
        raise ValueError(f"clip of int({fps}) fps × int({clip_seconds}) s has no frames")
    return n


def clip_ranges(num_frames: int, fps: float, clip_seconds: float = DEFAULT_CLIP_SECONDS) -> list[tuple[int, int]]:
    """Half-open frame ranges [start, stop) of VBench-Long's clips for a video of `num_frames` frames."""
    return split_ranges(num_frames, clip_frames(fps, clip_seconds))


def split_ranges(num_frames: int, seg: int) -> list[tuple[int, int]]:
    """VBench-Long's rule for clips of `seg` frames: back to back from frame 0, leftovers covered by one more
    full-length clip ending at the last frame, a video shorter than one clip kept whole."""
    if num_frames < 1:
        raise ValueError(f"no frames to split (num_frames={num_frames})")
    if seg < 1:
        raise ValueError(f"a clip needs at least one frame (got {seg})")
    if num_frames < seg:
        return [(0, num_frames)]
    full, rest = divmod(num_frames, seg)
    ranges = [(i * seg, (i + 1) * seg) for i in range(full)]
    if rest:
        ranges.append((num_frames - seg, num_frames))
    return ranges


DEFAULT_WINDOW_SECONDS = float(DEFAULT_CLIP_SECONDS)
"""Quality windows default to VBench-Long's 2 s clips (`quality.window_seconds`)."""


def check_window_seconds(window_seconds: float) -> None:
    """`quality.window_seconds` must be a finite number of seconds > 0 (a ValueError naming the key otherwise)."""
    if isinstance(window_seconds, bool) or not (isinstance(window_seconds, int | float)
                                                and math.isfinite(window_seconds) and window_seconds > 0):
        raise ValueError(f"quality.window_seconds={window_seconds!r}: a window must last a finite time > 0 s "
                         f"(default {DEFAULT_WINDOW_SECONDS:g}, VBench-Long's clip)")


def quality_window_frames(fps: float, window_seconds: float = DEFAULT_WINDOW_SECONDS) -> int:
    """Frames per quality window: int(fps) · window_seconds, truncated (VBench-Long's clip for whole seconds)."""
    check_window_seconds(window_seconds)
    if not (math.isfinite(fps) and fps >= 1):
        raise ValueError(f"fps={fps!r}: windows need a video rate of at least 1 frame per second")
    n = int(int(fps) * window_seconds + 1e-9)  # 24 × 0.5 stays 12 despite float rounding
    if n < 1:
        raise ValueError(f"quality.window_seconds={window_seconds!r} at int({fps}) fps is less than one frame: "
                         f"use at least {1 / int(fps):.3g} s")
    return n


def quality_window_ranges(num_frames: int, fps: float,
                  window_seconds: float = DEFAULT_WINDOW_SECONDS) -> list[tuple[int, int]]:
    """Half-open frame ranges [start, stop) of the quality windows of a `num_frames`-frame video (module doc)."""
    return split_ranges(num_frames, quality_window_frames(fps, window_seconds))


def quality_window_centres_s(ranges: list[tuple[int, int]], fps: float) -> list[float]:
    """Each window's centre in seconds: frame i spans [i, i + 1) / fps, so [a, b) is centred at (a + b) / 2fps."""
    return [(a + b) / (2.0 * fps) for a, b in ranges]


def per_clip_scores(
    frames: VideoLike, fps: float, metric: Callable[[torch.Tensor], float], clip_seconds: float = DEFAULT_CLIP_SECONDS
) -> list[float]:
    """`metric` on each VBench-Long clip of the video (frames as views, no copies)."""
    x = as_video(frames)
    return [float(metric(x[a:b])) for a, b in clip_ranges(x.shape[0], fps, clip_seconds)]


def score_long_video(
    frames: VideoLike, fps: float, metric: Callable[[torch.Tensor], float], clip_seconds: float = DEFAULT_CLIP_SECONDS
) -> float:
    """Mean of `metric` over the video's VBench-Long clips (each clip weighs the same, the extended last one too)."""
    return float(np.mean(per_clip_scores(frames, fps, metric, clip_seconds)))
