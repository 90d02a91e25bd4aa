"""The release's training folder (`video/<sample>/*.mp4` + `caption/<sample>/*.json`) read as its
`MultiVideoConcatDataset` reads it, with its options, encoded once into the latent cache (halo windows at sp > 1),
and every data source `longlive train --data` names run through the command."""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from longlive import cli
from longlive.experiments.spec import RunSpec, check_spec
from longlive.model.presets import get_preset
from longlive.output import write_mp4
from longlive.train import data as data_mod
from longlive.train import trainer as trainer_mod
from longlive.train.data import (
    SCENE_CUT_PREFIX,
    FolderOptions,
    FolderVideos,
    build_train_data,
    write_procedural_folder,
)


def _clip(n: int, video: int, side: int = 16) -> np.ndarray:
    """n flat frames: red tells the video, green and blue the frame index (levels 8 apart: H.264 moves a flat colour
    by up to about 2)."""
    i = np.arange(n)
    out = np.empty((n, side, side, 3), dtype=np.uint8)
    out[..., 0] = 40 + 60 * video
    out[..., 1] = (12 + 8 * (i % 30))[:, None, None]
    out[..., 2] = (12 + 8 * (i // 30))[:, None, None]
    return out


def _sample(root: Path, name: str, lengths: list[int], *, fps: int = 24, stems: list[str] | None = None,
            captions: list[str] | None = None) -> None:
    """A sample folder in the release layout: one mp4 + json caption per shot."""
    stems = stems or [str(k) for k in range(len(lengths))]
    for k, (n, stem) in enumerate(zip(lengths, stems, strict=True)):
        write_mp4(_clip(n, k), root / "video" / name / f"{stem}.mp4", fps)
        caption = captions[k] if captions else f"shot {k} of {name}"
        (root / "caption" / name).mkdir(parents=True, exist_ok=True)
        (root / "caption" / name / f"{stem}.json").write_text(json.dumps({"caption": caption}))


def _decoded(video: torch.Tensor) -> list[tuple[int, int]]:
    """(video, source frame) of every frame of a read sample [3, T, H, W]."""
    px = ((video.mean(dim=(2, 3)) + 1) * 127.5).T  # [T, 3]
    return [(round((float(r) - 40) / 60), round((float(g) - 12) / 8) + 30 * round((float(b) - 12) / 8))
            for r, g, b in px]


def _folder(root: Path, frames: int, **options) -> FolderVideos:
    return FolderVideos(root, 16, 16, 24, frames=frames, chunk_frames=2, options=FolderOptions(**options))


def _chunks(ds: FolderVideos, i: int = 0) -> list[tuple[int, int, int, bool]]:
    """(video, first frame, last frame, scene cut?) per chunk of sample i."""
    return [(c.video, c.indices[0], c.indices[-1], c.prompt.startswith(SCENE_CUT_PREFIX)) for c in ds.plan(i).chunks]


# ---- the release's reading -----------------------------------------------------------------------------------


def test_chunks_follow_the_release_walk(tmp_path: Path) -> None:
    """Numeric file order; a chunk never spans two videos (the rest of a video too short for a chunk is dropped);
    a chunk from a new video carries the scene-cut prefix; frames are the release's nearest-frame steps."""
    _sample(tmp_path, "s", [9, 20, 40], stems=["2", "10", "1"])  # numeric order: 1 (40), 2 (9), 10 (20)
    ds = _folder(tmp_path, frames=8)  # chunk 2 latents: first chunk 5 raw frames, later ones 8; 29 in all
    assert [p.name for p in ds.plan(0).videos] == ["1.mp4", "2.mp4", "10.mp4"]
    ds = _folder(tmp_path, frames=10)  # 37 frames: the 40-frame video holds 5 + 8 + 8 + 8 = 29, then 8 more = 37
    assert _chunks(ds) == [(0, 0, 4, False), (0, 5, 12, False), (0, 13, 20, False), (0, 21, 28, False),
                           (0, 29, 36, False)]
    (tmp_path / "video" / "s" / "1.mp4").unlink()
    (tmp_path / "caption" / "s" / "1.json").unlink()
    ds = _folder(tmp_path, frames=6)  # 2.mp4 (9 frames) holds only the first chunk; 10.mp4 the next two
    assert _chunks(ds) == [(0, 0, 4, False), (1, 0, 7, True), (1, 8, 15, False)]
    plan = ds.plan(0)
    assert plan.prompts == ("shot 0 of s", SCENE_CUT_PREFIX + "shot 1 of s", "shot 1 of s") and plan.cuts == 1
    video = ds.read(0)
    assert video.shape == (3, 21, 16, 16) and -1 <= video.min() and video.max() <= 1
    assert _decoded(video) == [(0, i) for i in range(5)] + [(1, i) for i in range(16)]  # what was planned


def test_frame_rate_resampling_uses_the_release_rounding(tmp_path: Path) -> None:
    """30 fps to 24: step 1.25 from a running position, NumPy's half-to-even rounding (2.5 → 2, 8.5 → 8, 13.5 → 14);
    the second chunk starts at round(5 · 1.25) = 6."""
    _sample(tmp_path, "s", [40], fps=30)
    ds = _folder(tmp_path, frames=4)
    assert [c.indices for c in ds.plan(0).chunks] == [(0, 1, 2, 4, 5), (6, 7, 8, 10, 11, 12, 14, 15)]
    assert [i for _, i in _decoded(ds.read(0))] == [0, 1, 2, 4, 5, 6, 7, 8, 10, 11, 12, 14, 15]


def test_max_chunks_per_shot_cuts_long_takes(tmp_path: Path) -> None:
    """After k chunks of one video, 1 s (24 frames) is skipped and the next chunk opens a virtual shot."""
    _sample(tmp_path, "s", [72])
    assert _chunks(_folder(tmp_path, 6)) == [(0, 0, 4, False), (0, 5, 12, False), (0, 13, 20, False)]
    assert _chunks(_folder(tmp_path, 6, max_chunks_per_shot=2)) == [(0, 0, 4, False), (0, 5, 12, False),
                                                                   (0, 37, 44, True)]
    ds = _folder(tmp_path, 6, max_chunks_per_shot=1)
    assert _chunks(ds) == [(0, 0, 4, False), (0, 29, 36, True), (0, 61, 68, True)]
    assert ds.plan(0).prompts == ("shot 0 of s",) + (SCENE_CUT_PREFIX + "shot 0 of s",) * 2
    assert [i for _, i in _decoded(ds.read(0))] == [*range(5), *range(29, 37), *range(61, 69)]


def test_allow_padding_and_min_latent_frames(tmp_path: Path) -> None:
    """A sample whose videos run out is an error naming it; with allow_padding it is padded with its last frame and
    last prompt and reports its real latents; min_latent_frames refuses padded samples with too few."""
    _sample(tmp_path, "short", [13, 6])  # 13 frames: chunks 0 and 1; 6 frames: too short for chunk 2
    with pytest.raises(ValueError, match=r"video/short: its videos hold only 2 of 3 chunks.*0\.mp4 13 frames"):
        _folder(tmp_path, 6)
    ds = _folder(tmp_path, 6, allow_padding=True)
    plan = ds.plan(0)
    assert plan.valid_latents == 4 and len(plan.chunks) == 2 and plan.prompts == ("shot 0 of short",) * 3
    assert [i for _, i in _decoded(ds.read(0))] == [*range(13)] + [12] * 8  # padded with the last real frame
    assert len(_folder(tmp_path, 6, allow_padding=True, min_latent_frames=4)) == 1
    refused = _folder(tmp_path, 6, allow_padding=True, min_latent_frames=6)
    assert len(refused) == 0 and "4 real latent frames, fewer than min_latent_frames=6" in refused.rejected[0][1]
    for bad, msg in [({"min_latent_frames": 2}, "only applies with allow_padding"),
                     ({"min_latent_frames": 3, "allow_padding": True}, "multiple of the chunk"),
                     ({"max_chunks_per_shot": -1}, "max_chunks_per_shot must be an int >= 0")]:
        with pytest.raises(ValueError, match=msg):
            _folder(tmp_path, 6, **bad)


def test_uniform_prompt_reads_one_video(tmp_path: Path) -> None:
    """uniform_prompt keeps every chunk in the sample's first video (one caption); a first video that cannot fill
    the sample is an error without padding, padded with it, and a first video too short for the first chunk is
    refused even with padding (as in the release)."""
    _sample(tmp_path, "a", [20, 40])
    assert _chunks(_folder(tmp_path, 6)) == [(0, 0, 4, False), (0, 5, 12, False), (1, 0, 7, True)]
    with pytest.raises(ValueError, match="video/a: its videos hold only 2 of 3 chunks"):
        _folder(tmp_path, 6, uniform_prompt=True)
    ds = _folder(tmp_path, 6, uniform_prompt=True, allow_padding=True)
    assert _chunks(ds) == [(0, 0, 4, False), (0, 5, 12, False)] and set(ds.plan(0).prompts) == {"shot 0 of a"}
    _sample(tmp_path, "b", [3, 40])
    ds = _folder(tmp_path, 6, uniform_prompt=True, allow_padding=True)
    assert [p.name for p in ds.plans] == ["a"] and "first video is shorter than the first chunk" in ds.rejected[0][1]
    assert _chunks(_folder(tmp_path, 6, allow_padding=True), 1) == [(1, 0, 4, False), (1, 5, 12, False),
                                                                    (1, 13, 20, False)]


def test_bad_input_is_a_clear_error_before_any_encoding(tmp_path: Path, monkeypatch) -> None:
    """Each mistake names the file at fault, and fails before the VAE is even loaded."""
    def no_encoding(*a, **k):
        raise AssertionError("encoding work started before the data was checked")

    monkeypatch.setattr(data_mod, "load_vae_for", no_encoding)
    mc = get_preset("tiny")

    def error(root: Path, frames: int = 4) -> str:
        with pytest.raises((ValueError, FileNotFoundError)) as e:
            build_train_data(f"folder:{root}", model_cfg=mc, frames=frames, cache_dir=tmp_path / "cache",
                             progress=False)
        return str(e.value)

    assert "is not a folder" in error(tmp_path / "missing")
    root = tmp_path / "d"
    (root / "video").mkdir(parents=True)
    assert f"{root / 'caption'} is not a folder" in error(root)
    (root / "caption").mkdir()
    assert "no sample folders under" in error(root)
    (root / "video" / "s").mkdir()
    assert f"{root / 'video' / 's'} holds no video" in error(root)
    write_mp4(_clip(13, 0), root / "video" / "s" / "0.mp4", 24)
    assert f"{root / 'video' / 's' / '0.mp4'} has no caption: expected {root / 'caption' / 's' / '0.json'}" in \
        error(root)
    (root / "caption" / "s").mkdir()
    (root / "caption" / "s" / "0.json").write_text(json.dumps({"text": "a cat"}))
    assert "0.json: 'caption' must be a non-empty string" in error(root)
    (root / "caption" / "s" / "0.json").write_text(json.dumps({"caption": "a cat"}))
    (root / "video" / "s" / "1.mp4").write_bytes(b"not a video")
    (root / "caption" / "s" / "1.json").write_text(json.dumps({"caption": "a dog"}))
    assert f"{root / 'video' / 's' / '1.mp4'}: not a readable video" in error(root)
    (root / "video" / "s" / "1.mp4").unlink()
    assert "video/s: its videos end after 2 of 3 chunks, too short for frames=6" in error(root, frames=6)
    assert "must be a positive multiple of the chunk" in error(root, frames=5)


# ---- the command --------------------------------------------------------------------------------------------


def _train(out: Path, data: str, *extra: str, frames: int = 4) -> int:
    return cli.main(["train", "--model", "tiny", "--train-steps", "2", "--frames", str(frames), "--data", data,
                     "--out", str(out), "--no-progress", "--no-activation-checkpointing", "--no-fsdp", *extra])


def _data_line(text: str) -> str:
    return next(ln for ln in text.splitlines() if ln.startswith("data: "))


@pytest.mark.parametrize("source", ["random", "procedural"])
def test_train_command_runs_random_and_procedural(tmp_path: Path, capsys, monkeypatch, source: str) -> None:
    # 4 procedural samples instead of 64: the command's wiring is under test, not the encode throughput
    monkeypatch.setattr(trainer_mod, "build_train_data", functools.partial(build_train_data, samples=4))
    assert _train(tmp_path / "run", source) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["train_steps"] == 2 and summary["steps_this_run"] == 2
    if source == "procedural":
        assert "data: procedural: 4 samples; latents 0 cached, 4 encoded" in out
    assert _train(tmp_path / "x", source, "--allow-padding") == 2
    assert "allow_padding=True: folder options, for --data folder:PATH only" in capsys.readouterr().err


def test_train_command_on_a_folder_encodes_once(tmp_path: Path, capsys) -> None:
    """`--data folder:PATH` trains on the release layout; the second run reads every latent from the cache."""
    write_procedural_folder(tmp_path / "clips", 2, shots=2, frames_per_shot=[9, 12], seed=3, height=64, width=64)
    data, out = f"folder:{tmp_path / 'clips'}", tmp_path / "run"
    assert _train(out, data) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert _data_line(printed).endswith("2 samples (0 padded, 0 refused, 2 scene cuts, 0 with one caption); "
                                        "latents 0 cached, 2 encoded")
    assert json.loads(printed.strip().splitlines()[-1])["train_steps"] == 2
    files = {p: p.stat().st_mtime_ns for p in (out / "data_cache" / "latents").rglob("*.safetensors")}
    assert len(files) == 2
    assert _train(out, data, "--train-steps", "3") == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert _data_line(printed).endswith("latents 2 cached, 0 encoded")
    assert json.loads(printed.strip().splitlines()[-1])["steps_this_run"] == 1
    assert {p: p.stat().st_mtime_ns for p in (out / "data_cache" / "latents").rglob("*.safetensors")} == files


def test_train_command_folder_options(tmp_path: Path, capsys) -> None:
    """Each option flag reaches the reader: the data line counts what it changed."""
    write_procedural_folder(tmp_path / "clips", 2, shots=2, frames_per_shot=[9, 12], seed=3, height=64, width=64)
    data = f"folder:{tmp_path / 'clips'}"
    runs = {  # flags → the data line's counts (frames 4 = 2 chunks: 5 frames of shot 0, then 8 of shot 1)
        ("--uniform-prompt", "--allow-padding"): "2 samples (2 padded, 0 refused, 0 scene cuts, 2 with one caption)",
        ("--uniform-prompt", "--allow-padding", "--min-latent-frames", "4"): "every sample was refused",
    }
    for flags, expected in runs.items():
        code = _train(tmp_path / re.sub(r"\W", "", "".join(flags)), data, *flags)
        text = capsys.readouterr()
        assert expected in (text.out if code == 0 else text.err), (flags, text.out, text.err)
    long = tmp_path / "long"
    write_procedural_folder(long, 1, shots=1, frames_per_shot=72, seed=1, height=64, width=64)
    assert _train(tmp_path / "k", f"folder:{long}", "--max-chunks-per-shot", "1", frames=6) == 0
    assert "1 samples (0 padded, 0 refused, 2 scene cuts, 0 with one caption)" in capsys.readouterr().out
    assert _train(tmp_path / "bad", data, "--min-latent-frames", "2") == 2
    assert "only applies with allow_padding" in capsys.readouterr().err


def test_run_spec_carries_the_release_options() -> None:
    spec = RunSpec()
    assert (spec.max_chunks_per_shot, spec.min_latent_frames, spec.allow_padding, spec.uniform_prompt) == \
        (0, 0, False, False) == tuple(vars(FolderOptions()).values())
    check_spec(RunSpec(max_chunks_per_shot=4, allow_padding=True, min_latent_frames=8, uniform_prompt=True))
    for bad in ({"max_chunks_per_shot": -1}, {"min_latent_frames": 8}):
        with pytest.raises(ValueError):
            check_spec(RunSpec(**bad))
