"""VBench per quality window (VBench-Long's way of scoring long videos): the cell's video cut into the quality
windows, scored in one VBench run, and per dimension the per-window list, drift and worst window. VBench itself does
not run on CPU CI; a stand-in writes results in VBench's file format from what it is given."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from longlive.eval import vbench_adapter
from longlive.eval.clips import quality_window_ranges
from longlive.eval.loading import load_frames
from longlive.output import write_mp4
from longlive.workloads.quality import VBENCH_WINDOW_NAME, vbench_window_scores


def _ramp_video(path: Path, frames: int, fps: int) -> None:
    """Grey frames getting brighter over time, so each window's mean differs (drift > 0, worst = first)."""
    levels = torch.linspace(40, 200, frames).round().to(torch.uint8)
    write_mp4(levels[:, None, None, None].expand(frames, 32, 32, 3).contiguous(), path, fps)


@pytest.fixture
def fake_vbench(monkeypatch):
    seen: dict[str, list] = {}

    def run_vbench(videos_dir, dimensions, cache_dir=None, out_dir="vbench_results", *, name="longlive", **_):
        clips = sorted(Path(videos_dir).glob("*.mp4"))
        seen["clips"] = [(c.name, load_frames(c).shape[0]) for c in clips]
        per = [{"video_path": str(c), "video_results": float(load_frames(c).float().mean() / 255)} for c in clips]
        data = {d: [sum(e["video_results"] for e in per) / len(per), per] for d in dimensions}
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / f"{name}_eval_results.json").write_text(json.dumps(data))
        return {d: data[d][0] for d in dimensions}

    monkeypatch.setattr(vbench_adapter, "run_vbench", run_vbench)
    return seen


def test_each_window_is_scored_as_its_own_clip(tmp_path, fake_vbench):
    fps, frames = 24, 150  # 6.25 s: four 2-s windows, the last ending at the last frame
    _ramp_video(tmp_path / "video.mp4", frames, fps)
    cols = vbench_window_scores(tmp_path, ["subject_consistency", "imaging_quality"], fps)
    ranges = quality_window_ranges(frames, fps)
    assert fake_vbench["clips"] == [(f"video-w{i:03d}.mp4", b - a) for i, (a, b) in enumerate(ranges)]
    for dim in ("subject_consistency", "imaging_quality"):
        vals = cols[f"vbench_{dim}_per_window"]
        assert len(vals) == len(ranges) and vals == sorted(vals) and vals[0] < vals[-1]
        assert cols[f"vbench_{dim}_drift"] == pytest.approx(vals[-1] - vals[0])
        assert cols[f"vbench_{dim}_worst_window"] == vals[0] and cols[f"vbench_{dim}_worst_window_index"] == 0
    assert len(cols["quality_window_centres_s"]) == len(ranges)
    assert (tmp_path / "vbench_windows_results" / f"{VBENCH_WINDOW_NAME}_eval_results.json").is_file()


def test_a_video_shorter_than_two_windows_gets_no_window_columns(tmp_path, fake_vbench):
    _ramp_video(tmp_path / "video.mp4", 40, 24)
    assert vbench_window_scores(tmp_path, ["subject_consistency"], 24) == {}
    assert "clips" not in fake_vbench  # VBench never ran


def test_a_window_vbench_did_not_score_is_an_error(tmp_path, monkeypatch):
    _ramp_video(tmp_path / "video.mp4", 150, 24)

    def partial(videos_dir, dimensions, cache_dir=None, out_dir="x", *, name="longlive", **_):
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / f"{name}_eval_results.json").write_text(json.dumps(
            {d: [0.5, [{"video_path": "video-w000.mp4", "video_results": 0.5}]] for d in dimensions}))

    monkeypatch.setattr(vbench_adapter, "run_vbench", partial)
    with pytest.raises(RuntimeError, match="scored no window clip video-w001.mp4 for subject_consistency"):
        vbench_window_scores(tmp_path, ["subject_consistency"], 24)


def test_read_per_video_results(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps({
        "subject_consistency": [0.9, [{"video_path": "/a/x-w000.mp4", "video_results": 0.8, "frame_results": [1]},
                                      {"video_path": "/a/x-w001.mp4", "video_results": 1}]],
        "aesthetic_quality": 0.5,  # no per-video list: left out
        "motion_smoothness": [0.7, []]}))
    assert vbench_adapter.read_per_video_results(path) == {"subject_consistency": {"x-w000.mp4": 0.8,
                                                                                   "x-w001.mp4": 1.0}}
    assert vbench_adapter.read_results(path)["aesthetic_quality"] == 0.5
