"""Quality over time: a registered frame metric computed per window of a video, and how far it moves.

One number per video hides a long rollout that starts clean and degrades. Here the video is cut into quality
windows (`longlive.eval.clips.quality_window_ranges`: VBench-Long's 2 s clips by default, the last one ending at the
last frame) and each metric named in `quality.window_metrics` is computed on every window. Per metric `m` a row gets:

- `m_per_window`: the window values, in time order (window centres in `quality_window_centres_s`, seconds);
- `m_drift`: last window − first window, in the metric's own units (negative = worse for a higher-is-better metric);
- `m_worst_window`, `m_worst_window_index`: the worst window's value and 0-based index, "worst" in the metric's bad
  direction as registered (`Metric.higher_is_better`); the earliest window wins a tie.

A video shorter than two windows has no drift and no worst window (None): its one or two windows overlap too much
to say anything about time. The row's timing definition says why.

Any registered metric whose inputs are the frames (plus the fps, prompts or whatever else the row passes through
unchanged) can be windowed; metrics of latents or of a reference run cannot (their windows would need the
reference's frames cut the same way), and a windowed metric must declare its direction.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .clips import (
    DEFAULT_WINDOW_SECONDS,
    check_window_seconds,
    quality_window_centres_s,
    quality_window_frames,
    quality_window_ranges,
)
from .loading import VideoLike, as_video
from .metrics import INPUTS, METRICS, Metric, get_metric

PER_WINDOW = "_per_window"
DRIFT = "_drift"
WORST = "_worst_window"
WORST_INDEX = "_worst_window_index"
WINDOW_CENTRES = "quality_window_centres_s"
"""Row column: the windows' centres in seconds (one list per row, shared by every windowed metric)."""
DEFINITION_KEY = "quality_windows"
"""The timing-definition key under which a row records how its windows and drift numbers were made."""


def window_columns(metric: str) -> tuple[str, str, str, str]:
    """(per-window list, drift, worst value, worst index) column names of `metric`."""
    return tuple(metric + s for s in (PER_WINDOW, DRIFT, WORST, WORST_INDEX))  # type: ignore[return-value]


def windowable(metric: Metric) -> bool:
    """Whether a metric can be computed on a window of the frames alone (no latents, no reference run)."""
    return metric.needs.frames and not metric.needs.latents and not metric.needs.reference


def resolve_window_metrics(window_metrics: Sequence[str] | None, metrics: Sequence[str]) -> list[str]:
    """The metrics to window: `quality.window_metrics` when given, else the windowable ones with a good direction
    among the cell's `quality.metrics` (unknown names, and directionless ones such as `foreground_fraction`, are left
    to the whole-video metrics to report: listing them there must not make a cell invalid)."""
    if window_metrics is not None:
        return list(dict.fromkeys(window_metrics))
    return [n for n in dict.fromkeys(metrics)
            if n in METRICS and windowable(METRICS[n]) and METRICS[n].higher_is_better is not None]


def check_window_quality(window_metrics: Sequence[str] | None, metrics: Sequence[str],
                         window_seconds: float) -> None:
    """The quality-window settings of a run spec, before any work: a clear ValueError naming the key and the fix."""
    check_window_seconds(window_seconds)
    for name in resolve_window_metrics(window_metrics, metrics):
        if name not in METRICS:
            raise ValueError(f"quality.window_metrics: unknown metric {name!r}; registered: "
                             f"{', '.join(sorted(METRICS))}")
        m = METRICS[name]
        if not windowable(m):
            ok = sorted(n for n, x in METRICS.items() if windowable(x) and x.higher_is_better is not None)
            raise ValueError(f"quality.window_metrics: {name!r} needs {', '.join(m.needs.inputs())}; windows take "
                             f"metrics of the frames only ({', '.join(ok)})")
        if m.higher_is_better is None:
            raise ValueError(f"quality.window_metrics: metric {name!r} declares no direction, so its worst window is "
                             "undefined: register it with higher_is_better=True or False")


@dataclass(frozen=True)
class Windows:
    """The quality windows of one video."""

    ranges: list[tuple[int, int]]
    centres_s: list[float]
    frames_per_window: int
    num_frames: int
    fps: float
    seconds: float

    @property
    def no_drift_reason(self) -> str | None:
        """Why this video has no drift numbers (shorter than two windows), or None."""
        if self.num_frames >= 2 * self.frames_per_window:
            return None
        return (f"no drift or worst window: the video's {self.num_frames} frames are fewer than two windows "
                f"({2 * self.frames_per_window} frames)")

    def definition(self, names: Iterable[str]) -> str:
        """What the row's window columns mean, as recorded in its timing definition."""
        names = list(names)
        text = (f"{', '.join(names)} per quality window: windows of {self.frames_per_window} frames "
                f"({self.seconds:g} s at {int(self.fps)} fps), back to back from frame 0, the last one ending at the "
                f"last frame (VBench-Long's clips); {len(self.ranges)} windows of a {self.num_frames}-frame video, "
                f"centres in {WINDOW_CENTRES}; <metric>{DRIFT} = last window − first window; <metric>{WORST} = the "
                "lowest window of a higher-is-better metric, the highest of a lower-is-better one, "
                f"<metric>{WORST_INDEX} its 0-based window (the earliest of ties)")
        reason = self.no_drift_reason
        return text + (f"; {reason}" if reason else "")


def windows_of(num_frames: int, fps: float, window_seconds: float = DEFAULT_WINDOW_SECONDS) -> Windows:
    """The windows of a `num_frames`-frame video at `fps`."""
    ranges = quality_window_ranges(num_frames, fps, window_seconds)
    return Windows(ranges, quality_window_centres_s(ranges, fps), quality_window_frames(fps, window_seconds),
                   num_frames, fps, float(window_seconds))


def drift_numbers(values: Sequence[float | None], higher_is_better: bool) -> tuple[float | None, float | None,
                                                                                   int | None]:
    """(last − first, worst value, worst index) of per-window values; None (or NaN) values are skipped for the worst
    and make the drift None when at an end."""
    vals = [None if v is None or math.isnan(v) else float(v) for v in values]
    if len(vals) < 2:
        return None, None, None
    drift = vals[-1] - vals[0] if vals[0] is not None and vals[-1] is not None else None
    scored = [(v if higher_is_better else -v, i) for i, v in enumerate(vals) if v is not None]
    if not scored:
        return drift, None, None
    _, worst_i = min(scored, key=lambda p: (p[0], p[1]))
    return drift, vals[worst_i], worst_i


def per_window(metric: str | Metric, frames: VideoLike, ranges: Sequence[tuple[int, int]],
               **inputs: Any) -> list[float | None]:
    """`metric` on each window's frames (views, no copies); the other inputs are passed as given. NaN becomes None."""
    m = get_metric(metric) if isinstance(metric, str) else metric
    x = as_video(frames)
    out: list[float | None] = []
    for a, b in ranges:
        v = m(frames=x[a:b], **inputs)
        out.append(None if math.isnan(v) else v)
    return out


def windowed_metrics(names: Sequence[str], frames: VideoLike, fps: float,
                     window_seconds: float = DEFAULT_WINDOW_SECONDS, **inputs: Any) -> tuple[dict[str, Any], str]:
    """(row columns, definition) for each named metric over the video's quality windows (module docstring). Inputs
    the metrics registry does not know are dropped, so a caller can offer everything it has."""
    check_window_quality(names, names, window_seconds)
    x = as_video(frames)
    w = windows_of(x.shape[0], fps, window_seconds)
    given = {k: v for k, v in inputs.items() if k in INPUTS and k != "frames"}
    given["fps"] = fps
    cols: dict[str, Any] = {WINDOW_CENTRES: w.centres_s}
    for name in names:
        metric = get_metric(name)
        per, drift, worst, worst_i = window_columns(name)
        if metric.missing(["frames", *(k for k, v in given.items() if v is not None)]):
            cols.update({per: None, drift: None, worst: None, worst_i: None})  # as compute_metrics' skip_missing
            continue
        vals = per_window(metric, x, w.ranges, **given)
        cols[per] = vals
        numbers = drift_numbers(vals, bool(metric.higher_is_better)) if w.no_drift_reason is None else (None,) * 3
        cols[drift], cols[worst], cols[worst_i] = numbers
    return cols, w.definition(names)
