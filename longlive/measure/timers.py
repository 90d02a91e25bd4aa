"""Timing primitives shared by every workload (spec 05, "Timing definitions").

Device work is timed with CUDA events where there is a GPU (host clocks would time the launch queue);
on CPU the host clock is the device clock. Marks are recorded without synchronising, and read lazily.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch


class Clock:
    """A sequence of marks on one device; elapsed times between consecutive marks in milliseconds."""

    def __init__(self, device: torch.device | str):
        self.cuda = torch.device(device).type == "cuda"
        self.marks: list = []

    def mark(self) -> int:
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            self.marks.append(ev)
        else:
            self.marks.append(time.perf_counter())
        return len(self.marks) - 1

    def interval_ms(self, i: int) -> float:
        """Milliseconds from mark i to mark i+1 (waits for mark i+1 on the GPU)."""
        a, b = self.marks[i], self.marks[i + 1]
        if self.cuda:
            b.synchronize()
            return a.elapsed_time(b)
        return (b - a) * 1e3

    def intervals_ms(self) -> list[float]:
        return [self.interval_ms(i) for i in range(len(self.marks) - 1)]


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in [0, 100]) of a non-empty list."""
    if not values:
        raise ValueError("percentile of an empty list")
    s = sorted(values)
    pos = (len(s) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


@dataclass
class ChunkStats:
    """Per-chunk statistics of one generation, with the timing definition they follow."""

    chunk_ms: list[float]
    chunk_frames: list[int]
    warmup_chunks: int
    timing_definition: str = "denoise_fps: video frames / device wall time of the chunk loop after warm-up chunks"

    @property
    def steady(self) -> tuple[list[float], list[int]]:
        w = min(self.warmup_chunks, max(len(self.chunk_ms) - 1, 0))
        return self.chunk_ms[w:], self.chunk_frames[w:]

    @property
    def denoise_fps(self) -> float:
        ms, frames = self.steady
        return sum(frames) / (sum(ms) / 1e3)

    def summary(self) -> dict[str, float]:
        ms, _ = self.steady
        return {
            "denoise_fps": self.denoise_fps,
            "first_chunk_latency_s": self.chunk_ms[0] / 1e3,
            "chunk_ms_p10": percentile(ms, 10),
            "chunk_ms_median": statistics.median(ms),
            "chunk_ms_p90": percentile(ms, 90),
            "warmup_chunks": float(min(self.warmup_chunks, max(len(self.chunk_ms) - 1, 0))),
        }
