"""Training data (spec 04, "Data layout (release)"): procedural videos, the published folder layout, and caches.

* `ProceduralVideos`: bouncing coloured shapes with captions, so the tiny preset can be trained and
  evaluated on CPU without downloading a data set; a caption names every colour and shape kind, so even
  a byte-level text encoder can tell prompts apart.
* `FolderVideos`: the release's `MultiVideoConcatDataset` over `root/video/<sample>/<n>.mp4` +
  `root/caption/<sample>/<n>.json` (field `caption`): a sample's videos in numeric order are consecutive shots,
  read chunk by chunk (a chunk never spans two videos; a chunk from a new video, or after a virtual cut of
  `max_chunks_per_shot`, carries the scene-cut prefix), with the release's options (`FolderOptions`). Every sample
  is planned from file metadata first, so bad input fails before any decoding or encoding.
  `write_procedural_folder` writes procedural samples in that layout so the release path is exercised end to end.
* `LatentCache` + `training_samples`: VAE latents and prompt embeddings are computed once per
  (model identity, sample) and reused, since encoding dominates the cost of a tiny training step; under sequence
  parallelism each rank encodes only its halo window of a sample (`parallel.vae_encode`) and the entry equals the
  sp = 1 encode.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import json
import os
import uuid
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Protocol

import imageio.v2 as iio
import imageio_ffmpeg
import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor
from tqdm import tqdm

from longlive.eval.palette import COLOURS  # the procedural palette by caption name (one table)
from longlive.eval.shapes import SHAPES, shape_sdf
from longlive.output import write_mp4, write_text_atomic
from longlive.parallel.vae_encode import RELEASE_HALO, encode_gathered
from longlive.text import EmbeddingCache, TextEncoder
from longlive.text.prompts import SCENE_CUT_PREFIX, with_prefix
from longlive.weights import default_paths, load_text_for, load_vae_for

DEFAULT_MAX_SHAPES = 3
DEFAULT_RADIUS = (0.08, 0.16)  # fraction of the shorter side
DEFAULT_COLOUR_CHANGE = 0.5  # probability that one shape of a clip changes colour part-way
DEFAULT_SPEED = (0.25, 0.75)  # shorter sides per second
DEFAULT_START_SPREAD = 1.0  # start positions from the whole free range
_COLOUR_NAMES = tuple(COLOURS)
_BLOCK = 64  # frames drawn per vectorised block (bounds memory for long clips)


def _shot_lengths(shots: int, frames_per_shot: int | Sequence[int]) -> list[int]:
    lengths = [frames_per_shot] * shots if isinstance(frames_per_shot, int) else list(frames_per_shot)
    if len(lengths) != shots or shots < 1:
        raise ValueError(f"need one length per shot ({shots}), got {frames_per_shot}")
    return lengths


def _article(word: str) -> str:
    return "An" if word[0] in "aeiou" else "A"


def _join(items: list[str]) -> str:
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


def _bounce(p0: np.ndarray, v: np.ndarray, t: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Closed-form position of a point moving at constant speed and reflecting off [lo, hi] (triangle wave).

    No per-frame state, so any frame range is computed directly and positions can never leave [lo, hi].
    """
    span = np.maximum(hi - lo, 1e-6)
    u = np.mod(p0 - lo + v * t, 2 * span)
    return lo + span - np.abs(u - span)


class ProceduralVideos:
    """Deterministic captioned clips of 1–3 shapes bouncing on a plain background (see module docstring).

    `clip(index, T)` depends only on (seed, index, T, size, fps). Speeds are drawn in pixels per second,
    so motion looks the same at any fps.
    """

    def __init__(self, height: int = 128, width: int = 128, fps: int = 24, seed: int = 0,
                 backgrounds: Sequence[str] | None = None, max_shapes: int = DEFAULT_MAX_SHAPES,
                 radius: tuple[float, float] = DEFAULT_RADIUS, colour_change: float = DEFAULT_COLOUR_CHANGE,
                 speed: tuple[float, float] = DEFAULT_SPEED, start_spread: float = DEFAULT_START_SPREAD) -> None:
        """backgrounds / max_shapes / radius (fraction of the shorter side) / colour_change (probability that a shape
        changes colour mid-clip) / speed (shorter sides per second) / start_spread (share of the free range, centred,
        that start positions are drawn from: 0 starts every shape at the frame centre) narrow the distribution (a
        smaller task for tiny models); the defaults draw from every palette colour, 1–3 shapes of radius 8–16 %
        moving at 0.25–0.75 sides per second from anywhere, a change in half the clips, and narrowing keeps the draw
        order, so every other draw is unchanged."""
        unknown = [c for c in backgrounds or () if c not in COLOURS]
        if unknown:
            raise ValueError(f"unknown background colour(s) {unknown}; known: {', '.join(COLOURS)}")
        if not 1 <= max_shapes <= len(SHAPES):
            raise ValueError(f"max_shapes must be in 1..{len(SHAPES)}, got {max_shapes}")
        self.height, self.width, self.fps, self.seed = height, width, fps, seed
        self.backgrounds = tuple(backgrounds) if backgrounds else None
        self.max_shapes = max_shapes
        if not 0 < radius[0] <= radius[1] < 0.5:
            raise ValueError(f"radius range must satisfy 0 < lo <= hi < 0.5 of the side, got {radius}")
        self.radius = (float(radius[0]), float(radius[1]))
        if not 0.0 <= colour_change <= 1.0:
            raise ValueError(f"colour_change is a probability, got {colour_change}")
        self.colour_change = float(colour_change)
        if not 0 <= speed[0] <= speed[1]:
            raise ValueError(f"speed range must satisfy 0 <= lo <= hi (shorter sides per second), got {speed}")
        self.speed = (float(speed[0]), float(speed[1]))
        if not 0.0 <= start_spread <= 1.0:
            raise ValueError(f"start_spread is a share of the free range in [0, 1], got {start_spread}")
        self.start_spread = float(start_spread)
        self._yy = (np.arange(height, dtype=np.float32) + 0.5)[:, None]
        self._xx = (np.arange(width, dtype=np.float32) + 0.5)[None, :]

    # ---- scene description --------------------------------------------------------------------------
    def _scene(self, rng: np.random.Generator, num_frames: int, avoid_background: str | None = None) -> dict:
        """Draw one scene's parameters (all random draws happen here, in a fixed order)."""
        pool = self.backgrounds or _COLOUR_NAMES
        bgs = [c for c in pool if c != avoid_background] or list(pool)
        background = bgs[int(rng.integers(len(bgs)))]
        n = int(rng.integers(1, self.max_shapes + 1))
        kinds = [SHAPES[i] for i in rng.permutation(len(SHAPES))[:n]]
        palette = [c for c in _COLOUR_NAMES if c != background]
        colours = [palette[i] for i in rng.permutation(len(palette))[:n]]
        side = min(self.height, self.width)
        radius = rng.uniform(*self.radius, size=n) * side
        lo = np.stack([radius, radius], axis=1)  # [n, 2] (x, y)
        hi = np.stack([self.width - radius, self.height - radius], axis=1)
        u = rng.random((n, 2))
        # the default keeps its exact arithmetic, so its clips stay bit-identical
        if self.start_spread != DEFAULT_START_SPREAD:
            u = 0.5 + (u - 0.5) * self.start_spread
        p0 = lo + u * (hi - lo)
        speed = rng.uniform(*self.speed, size=n) * side / self.fps  # px per frame
        angle = rng.uniform(0, 2 * np.pi, size=n)
        vel = np.stack([np.cos(angle), np.sin(angle)], axis=1) * speed[:, None]
        change = bool(rng.random() < self.colour_change) and num_frames >= 2
        who = int(rng.integers(n))
        spare = [c for c in palette if c not in colours]
        new_colour = spare[int(rng.integers(len(spare)))]
        change_frame = int(round(rng.uniform(0.3, 0.7) * (num_frames - 1))) if num_frames >= 2 else 0
        shapes = []
        for i in range(n):
            changes = change and i == who
            shapes.append(
                {
                    "kind": kinds[i],
                    "colour": colours[i],
                    "radius": float(radius[i]),
                    "new_colour": new_colour if changes else None,
                    "change_frame": max(change_frame, 1) if changes else None,
                }
            )
        return {"background": background, "shapes": shapes, "p0": p0, "vel": vel, "lo": lo, "hi": hi}

    @staticmethod
    def caption(scene: dict) -> str:
        """Names every colour and kind: "A red circle bounces on a grey background; the circle turns green."."""
        shapes = scene["shapes"]
        phrases = [f"{_article(s['colour']).lower()} {s['colour']} {s['kind']}" for s in shapes]
        phrases[0] = phrases[0][0].upper() + phrases[0][1:]
        verb = "bounces" if len(shapes) == 1 else "bounce"
        text = f"{_join(phrases)} {verb} on {_article(scene['background']).lower()} {scene['background']} background"
        turns = [f"the {s['kind']} turns {s['new_colour']}" for s in shapes if s["new_colour"]]
        return text + ("; " + "; ".join(turns) if turns else "") + "."

    # ---- drawing ------------------------------------------------------------------------------------
    def _render(self, scene: dict, num_frames: int) -> tuple[np.ndarray, np.ndarray]:
        """uint8 frames [T, H, W, 3] and shape centres [T, n, 2] (x, y), drawn in blocks of frames."""
        t = np.arange(num_frames, dtype=np.float64)[:, None, None]
        centres = _bounce(scene["p0"][None], scene["vel"][None], t, scene["lo"][None], scene["hi"][None])
        out = np.empty((num_frames, self.height, self.width, 3), dtype=np.uint8)
        bg = np.asarray(COLOURS[scene["background"]], dtype=np.float32)
        for a in range(0, num_frames, _BLOCK):
            b = min(a + _BLOCK, num_frames)
            img = np.broadcast_to(bg, (b - a, self.height, self.width, 3)).copy()
            for i, s in enumerate(scene["shapes"]):
                cx = centres[a:b, i, 0].astype(np.float32)[:, None, None]
                cy = centres[a:b, i, 1].astype(np.float32)[:, None, None]
                dx, dy = self._xx - cx, self._yy - cy
                sdf = shape_sdf(s["kind"], dx, dy, np.float32(s["radius"]))
                alpha = np.clip(sdf + 0.5, 0.0, 1.0)[..., None]  # ~1 px anti-aliased edge
                col = np.broadcast_to(np.asarray(COLOURS[s["colour"]], np.float32), (b - a, 3)).copy()
                if s["new_colour"] is not None:
                    col[max(s["change_frame"] - a, 0) :] = COLOURS[s["new_colour"]]
                img += alpha * (col[:, None, None, :] - img)
            out[a:b] = np.rint(img)
        return out, centres

    # ---- public API ---------------------------------------------------------------------------------
    def clip(self, index: int, num_frames: int = 48) -> tuple[Tensor, str, dict]:
        """(uint8 frames [T, H, W, 3], caption, meta), deterministic by (seed, index).

        meta: background, shapes (kind, colour, radius, new_colour, change_frame), centres [T, n, 2] (x, y px).
        """
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        rng = np.random.default_rng([self.seed, index, 0])
        scene = self._scene(rng, num_frames)
        frames, centres = self._render(scene, num_frames)
        meta = self._meta(scene, centres)
        return torch.from_numpy(frames), self.caption(scene), meta

    def multishot(
        self, index: int, shots: int = 2, frames_per_shot: int | Sequence[int] = 48
    ) -> tuple[Tensor, list[str], dict]:
        """(frames [ΣT, H, W, 3], per-shot captions, meta) with hard scene cuts between shots.

        Every shot gets new shapes and a background different from the previous shot's. Captions of shots
        after the first carry the "The scene transitions. " prefix; meta["raw_captions"] are without it
        (that is what the folder layout stores), meta["bounds"] the shot start frames plus the total.
        """
        lengths = _shot_lengths(shots, frames_per_shot)
        rng = np.random.default_rng([self.seed, index, 1])
        frames, raw, metas, bounds, prev = [], [], [], [0], None
        for n in lengths:
            scene = self._scene(rng, n, avoid_background=prev)
            prev = scene["background"]
            f, centres = self._render(scene, n)
            frames.append(f)
            raw.append(self.caption(scene))
            metas.append(self._meta(scene, centres))
            bounds.append(bounds[-1] + n)
        captions = [c if k == 0 else SCENE_CUT_PREFIX + c for k, c in enumerate(raw)]
        meta = {"shots": metas, "raw_captions": raw, "bounds": bounds}
        return torch.from_numpy(np.concatenate(frames)), captions, meta

    def multishot_captions(self, index: int, shots: int = 2, frames_per_shot: int | Sequence[int] = 48) -> list[str]:
        """`multishot(...)`'s raw captions (meta["raw_captions"]) without rendering a frame: the scene draws alone
        decide them, so text-only work (pretraining the text encoder) need not render the clips."""
        lengths = _shot_lengths(shots, frames_per_shot)
        rng = np.random.default_rng([self.seed, index, 1])
        raw, prev = [], None
        for n in lengths:
            scene = self._scene(rng, n, avoid_background=prev)
            prev = scene["background"]
            raw.append(self.caption(scene))
        return raw

    def _meta(self, scene: dict, centres: np.ndarray) -> dict:
        return {
            "background": scene["background"],
            "shapes": [dict(s) for s in scene["shapes"]],
            "centres": centres.astype(np.float32),
            "fps": self.fps,
            "height": self.height,
            "width": self.width,
        }


# ---- folder layout ------------------------------------------------------------------------------------
def uint8_to_video(frames: Tensor | np.ndarray, height: int | None = None, width: int | None = None) -> Tensor:
    """uint8 [T, H, W, 3] → float32 [3, T, H', W'] in [-1, 1], bilinearly resized (no crop) when asked."""
    x = torch.as_tensor(np.asarray(frames)).permute(0, 3, 1, 2).float()  # [T, 3, H, W]
    h, w = x.shape[-2:]
    if (height, width) != (None, None) and (height, width) != (h, w):
        height, width = height or h, width or w
        x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
    return (x / 127.5 - 1.0).clamp_(-1.0, 1.0).permute(1, 0, 2, 3).contiguous()


VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm")
"""Video files a sample folder may hold (the release's list; lower or upper case)."""


@dataclass(frozen=True)
class FolderOptions:
    """The release's folder-data options, under its config keys and with its defaults (0 / False: off).

    * ``max_chunks_per_shot`` k > 0: after k chunks from one video, skip 1 s of it and start a virtual shot (the next
      chunk gets the scene-cut prefix), so long takes still teach cuts;
    * ``allow_padding``: a sample whose videos run out is padded with its last frame and last prompt, and carries
      ``num_valid_latent_frames`` (the release masks the padded latents from the loss), instead of being refused;
    * ``min_latent_frames``: with ``allow_padding``, a sample with fewer real latents is refused (a multiple of the
      chunk; 0: any);
    * ``uniform_prompt``: every chunk comes from the sample's first video, so one caption (the release passes it to
      the reader as ``single_video_only``).
    """

    max_chunks_per_shot: int = 0
    min_latent_frames: int = 0
    allow_padding: bool = False
    uniform_prompt: bool = False

    def __str__(self) -> str:
        """The options that differ from the release's defaults, as `name=value` (for messages)."""
        changed = [f"{f.name}={getattr(self, f.name)}" for f in fields(self) if getattr(self, f.name) != f.default]
        return ", ".join(changed) or "the release's defaults"

    def check(self, frames: int, chunk_frames: int) -> None:
        """Clear errors for values the reader would reject or silently ignore, before any file is read."""
        for name in ("max_chunks_per_shot", "min_latent_frames"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")
        if self.min_latent_frames:
            if not self.allow_padding:
                raise ValueError(f"min_latent_frames={self.min_latent_frames} only applies with allow_padding "
                                 f"(without padding every sample must fill all {frames} latent frames)")
            if self.min_latent_frames % chunk_frames or self.min_latent_frames > frames:
                raise ValueError(f"min_latent_frames={self.min_latent_frames} must be a multiple of the chunk "
                                 f"({chunk_frames} latents) and at most frames={frames}")


@dataclass(frozen=True)
class VideoInfo:
    """A video's decoded frame count and frame rate."""

    frames: int
    fps: float


def probe_video(path: Path, cache_dir: Path | None = None) -> VideoInfo:
    """Frame count (decoded, like the release's decord / `ffprobe -count_frames`) and fps of one video file.

    With `cache_dir` the answer is kept per (path, size, mtime), so a second run does not decode every file again.
    A file ffmpeg cannot read is a ValueError naming it.
    """
    st = path.stat()
    entry = None
    if cache_dir is not None:
        k = hashlib.sha256(json.dumps([str(path.resolve()), st.st_size, st.st_mtime_ns]).encode()).hexdigest()
        entry = cache_dir / k[:2] / f"{k}.json"
        try:
            known = json.loads(entry.read_text())
            return VideoInfo(int(known["frames"]), float(known["fps"]))
        except (OSError, ValueError, KeyError, TypeError):
            pass
    try:
        reader = iio.get_reader(str(path), format="FFMPEG")
        try:
            fps = float(reader.get_meta_data()["fps"])
        finally:
            reader.close()
        frames, _ = imageio_ffmpeg.count_frames_and_secs(str(path))
    except (OSError, RuntimeError, ValueError, KeyError, IndexError) as e:
        last = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise ValueError(f"{path}: not a readable video ({last})") from e
    if not frames or not fps > 0:
        raise ValueError(f"{path}: not a readable video ({frames} frames at {fps} fps)")
    if entry is not None:
        write_text_atomic(entry, json.dumps({"frames": int(frames), "fps": fps}))
    return VideoInfo(int(frames), fps)


def read_frames(path: Path, indices: Sequence[int]) -> dict[int, np.ndarray]:
    """The frames at `indices` (uint8 [H, W, 3] each), decoded in one pass that stops after the last one needed."""
    want = set(indices)
    last = max(want)
    got: dict[int, np.ndarray] = {}
    reader = iio.get_reader(str(path), format="FFMPEG")
    try:
        for i, frame in enumerate(reader):
            if i in want:
                got[i] = np.asarray(frame)[..., :3]
            if i >= last:
                break
    finally:
        reader.close()
    if len(got) != len(want):
        raise ValueError(f"{path}: decoded {len(got)} of the {len(want)} frames planned (up to frame {last}); "
                         f"the file changed since it was probed, or its frame count is not what ffmpeg reported")
    return got


@dataclass(frozen=True)
class ChunkRead:
    """One chunk of a sample: which video, which of its frames (already at the target fps), and its text."""

    video: int
    indices: tuple[int, ...]
    prompt: str


@dataclass(frozen=True)
class SamplePlan:
    """What a folder sample is, decided from file metadata alone (so every check runs before any decoding).

    `chunks` are the chunks read from video; `prompts` has one text per chunk of the sample (padded chunks repeat
    the last); `valid_latents` counts the latents from real frames (fewer than the sample's only when padded).
    """

    name: str
    videos: tuple[Path, ...]
    chunks: tuple[ChunkRead, ...]
    prompts: tuple[str, ...]
    valid_latents: int

    @property
    def cuts(self) -> int:
        """Scene cuts inside the sample (chunks after the first that start a shot: another video or a virtual cut)."""
        return sum(1 for c in self.chunks[1:] if c.prompt.startswith(SCENE_CUT_PREFIX))


def _chunk_indices(start: int, n: int, step: float, total: int) -> tuple[int, ...]:
    """Source frames of an n-frame chunk from `start`, stepping `step` (source fps / target fps), nearest frame.

    The release's arithmetic: a running float position, NumPy's round-half-to-even, clamped to the last frame.
    """
    out, pos = [], float(start)
    for _ in range(n):
        out.append(min(int(np.round(pos)), total - 1))
        pos += step
        if pos >= total:
            out.extend([total - 1] * (n - len(out)))
            break
    return tuple(out)


def plan_chunks(infos: Sequence[VideoInfo], captions: Sequence[str], *, fps: float, frames: int, chunk_frames: int,
                stride_t: int = 4, options: FolderOptions = FolderOptions(),
                prefix: str = SCENE_CUT_PREFIX) -> tuple[list[ChunkRead], str | None, bool]:
    """The release's walk through one sample's videos from the start of the first (its deterministic reading).

    The first chunk takes 1 + 4(c−1) frames, every later one 4c; a chunk never spans two videos: one that does not
    fit in what is left of a video is taken from the start of the next (what is left is dropped), and a chunk from
    another video than the chunk before, or after a virtual cut (`max_chunks_per_shot`), gets `prefix` + caption.
    Returns (chunks read, why the sample is short or None, whether padding may fill the rest).
    """
    first, later, n_later = 1 + stride_t * (chunk_frames - 1), stride_t * chunk_frames, frames // chunk_frames - 1
    k, single = options.max_chunks_per_shot, options.uniform_prompt
    chunks: list[ChunkRead] = []

    def step(v: int) -> float:
        return infos[v].fps / fps

    def fits(v: int, n: int, start: int) -> bool:
        return start < infos[v].frames and int(np.round(start + (n - 1) * step(v))) < infos[v].frames

    def take(v: int, n: int, start: int, cut: bool) -> int:
        chunks.append(ChunkRead(v, _chunk_indices(start, n, step(v), infos[v].frames),
                                prefix + captions[v] if cut else captions[v]))
        return int(np.round(start + n * step(v)))

    v, start = 0, 0
    while not fits(v, first, start):
        if single:
            return chunks, f"its first video is shorter than the first chunk ({first} frames at {fps:g} fps)", False
        v, start = v + 1, 0
        if v >= len(infos):
            return chunks, f"no video holds the first chunk ({first} frames at {fps:g} fps)", False
    nxt, prev = take(v, first, start, False), v
    if nxt < infos[v].frames:
        start = nxt
    elif single:
        if n_later:
            return chunks, "its first video ends after the first chunk (uniform_prompt: one video per sample)", False
    else:
        v, start = v + 1, 0
    count = 1 if v == prev else 0
    for i in range(n_later):
        if v >= len(infos):
            return chunks, f"its videos end after {len(chunks)} of {n_later + 1} chunks", True
        forced = bool(k) and count >= k
        if forced:  # a virtual cut: skip 1 s of this video
            start, count = start + int(np.round(infos[v].fps)), 0
        while not fits(v, later, start):
            if single or v + 1 >= len(infos):
                return chunks, f"its videos hold only {len(chunks)} of {n_later + 1} chunks", True
            v, start, count = v + 1, 0, 0
        nxt = take(v, later, start, v != prev or forced)
        prev, count = v, count + 1
        if nxt < infos[v].frames:
            start = nxt
        elif single:
            if i < n_later - 1:
                return chunks, f"its first video ends after {len(chunks)} of {n_later + 1} chunks (uniform_prompt)", \
                    False
        else:
            v, start, count = v + 1, 0, 0
    return chunks, None, False


def _caption(path: Path, video: Path) -> str:
    """The caption of `video` from its json (field `caption`); a clear error naming both files otherwise."""
    if not path.is_file():
        raise FileNotFoundError(f"{video} has no caption: expected {path} (a json with a 'caption' field)")
    try:
        caption = json.loads(path.read_text(encoding="utf-8")).get("caption")
    except (ValueError, AttributeError) as e:
        raise ValueError(f"{path}: not a json object with a 'caption' field ({e})") from e
    if not isinstance(caption, str) or not caption.strip():
        raise ValueError(f"{path}: 'caption' must be a non-empty string (the caption of {video}), got {caption!r}")
    return caption


class FolderVideos:
    """The release's training folder (`MultiVideoConcatDataset`) as fixed samples of `frames` latent frames.

    `root/video/<sample>/<n>.mp4` with `root/caption/<sample>/<n>.json` (field `caption`); a sample's videos in
    numeric order of their names are consecutive shots. Each sample is read chunk by chunk (`plan_chunks`): frames
    at the target fps by the release's nearest-frame stepping, resized without crop (bilinear, antialiased), in
    [-1, 1]. The release draws a random start each epoch; samples here read from the start of the first video (the
    release's deterministic reading), so each is encoded once and its latents cached.

    Everything is checked at construction from file metadata (one probe per video, cached under `probe_cache`):
    a missing folder, no videos, a video without caption, an unreadable file, or (without `allow_padding`) a
    sample too short for `frames` is an error naming the file. Samples refused under `allow_padding` (below
    `min_latent_frames`, or short in a way padding cannot fix) are listed in `rejected`. Items: `plan(i)`, `read(i)`.
    """

    def __init__(self, root: str | os.PathLike, height: int, width: int, fps: int = 24, *, frames: int,
                 chunk_frames: int, stride_t: int = 4, options: FolderOptions = FolderOptions(),
                 prefix: str = SCENE_CUT_PREFIX, probe_cache: str | os.PathLike | None = None,
                 progress: bool = False) -> None:
        self.root = Path(root)
        self.height, self.width, self.fps, self.frames, self.chunk_frames = height, width, fps, frames, chunk_frames
        self.stride_t, self.options = stride_t, options
        if frames < chunk_frames or frames % chunk_frames:
            raise ValueError(f"frames={frames} must be a positive multiple of the chunk ({chunk_frames} latents): "
                             f"the release reads whole chunks")
        options.check(frames, chunk_frames)
        video_dir, caption_dir = self.root / "video", self.root / "caption"
        for d in (self.root, video_dir, caption_dir):
            if not d.is_dir():
                raise FileNotFoundError(f"{d} is not a folder (expected {self.root}/video/<sample>/<n>.mp4 and "
                                        f"{self.root}/caption/<sample>/<n>.json)")
        names = sorted(p.name for p in video_dir.iterdir() if p.is_dir())
        if not names:
            raise FileNotFoundError(f"no sample folders under {video_dir} (expected {video_dir}/<sample>/<n>.mp4)")
        exts = VIDEO_EXTENSIONS + tuple(e.upper() for e in VIDEO_EXTENSIONS)
        probe_dir = Path(probe_cache) if probe_cache is not None else None
        self.plans: list[SamplePlan] = []
        self.rejected: list[tuple[str, str]] = []
        for name in tqdm(names, desc="probe videos", unit="sample", disable=not progress):
            videos = sorted((p for p in (video_dir / name).iterdir() if p.is_file() and p.suffix in exts),
                            key=lambda p: (int(p.stem) if p.stem.isdigit() else float("inf"), p.name))
            if not videos:
                raise FileNotFoundError(f"{video_dir / name} holds no video ({', '.join(VIDEO_EXTENSIONS)})")
            captions = [_caption(caption_dir / name / f"{p.stem}.json", p) for p in videos]
            infos = [probe_video(p, probe_dir) for p in videos]
            plan = self._plan(name, tuple(videos), infos, captions, prefix)
            if isinstance(plan, SamplePlan):
                self.plans.append(plan)
            else:
                self.rejected.append((name, plan))

    def _plan(self, name: str, videos: tuple[Path, ...], infos: list[VideoInfo], captions: list[str],
              prefix: str) -> SamplePlan | str:
        """The sample's plan, or why it is refused (allow_padding only; without it a short sample is an error)."""
        opts, c = self.options, self.chunk_frames
        chunks, short, paddable = plan_chunks(infos, captions, fps=self.fps, frames=self.frames, chunk_frames=c,
                                              stride_t=self.stride_t, options=opts, prefix=prefix)
        where = f"{self.root / 'video' / name}: {short}" if short else ""
        if short and not opts.allow_padding:
            lengths = ", ".join(f"{p.name} {i.frames} frames at {i.fps:g} fps" for p, i in zip(videos, infos,
                                                                                                  strict=True))
            raise ValueError(f"{where}, too short for frames={self.frames} ({lengths}); use fewer --frames, "
                             f"--allow-padding, or remove the sample")
        if short and not paddable:
            return where
        valid = c * len(chunks)
        if opts.min_latent_frames and valid < opts.min_latent_frames:
            return (f"{self.root / 'video' / name}: {valid} real latent frames, fewer than "
                    f"min_latent_frames={opts.min_latent_frames}")
        prompts = [ch.prompt for ch in chunks]
        prompts += [prompts[-1]] * (self.frames // c - len(prompts))
        return SamplePlan(name, videos, tuple(chunks), tuple(prompts), valid)

    def __len__(self) -> int:
        return len(self.plans)

    def plan(self, index: int) -> SamplePlan:
        return self.plans[index]

    @property
    def raw_frames(self) -> int:
        """Raw frames of every sample: 1 + 4(F−1)."""
        return 1 + self.stride_t * (self.frames - 1)

    def sample_key(self, index: int) -> str:
        """Latent-cache key: the frames read (files with size and mtime, frame indices, padding) and the read size."""
        plan = self.plans[index]
        reads = [[plan.videos[ch.video].name, plan.videos[ch.video].stat().st_size,
                  plan.videos[ch.video].stat().st_mtime_ns, list(ch.indices)] for ch in plan.chunks]
        digest = hashlib.sha256(json.dumps([reads, self.raw_frames]).encode()).hexdigest()[:16]
        return f"folder:{self.root.resolve()}/{plan.name}@{self.height}x{self.width}@{self.fps}fps/reads={digest}"

    def read(self, index: int) -> Tensor:
        """Sample `index` as video [3, 1 + 4(F−1), H, W] in [-1, 1] (padded with its last frame past its real ones)."""
        plan = self.plans[index]
        wanted: dict[int, list[int]] = {}
        for ch in plan.chunks:
            wanted.setdefault(ch.video, []).extend(ch.indices)
        decoded = {v: read_frames(plan.videos[v], idx) for v, idx in wanted.items()}
        parts = [uint8_to_video(np.stack([decoded[ch.video][i] for i in ch.indices]), self.height, self.width)
                 for ch in plan.chunks]
        video = torch.cat(parts, dim=1)
        pad = self.raw_frames - video.shape[1]
        if pad:
            video = torch.cat([video, video[:, -1:].expand(-1, pad, -1, -1)], dim=1)
        return video


def write_procedural_folder(
    root: str | os.PathLike,
    n_samples: int,
    shots: int = 2,
    frames_per_shot: int | Sequence[int] = 48,
    seed: int = 0,
    *,
    height: int = 128,
    width: int = 128,
    fps: int = 24,
) -> list[str]:
    """Write `n_samples` multi-shot procedural samples in the release layout; returns the sample names.

    Captions are stored without the transition prefix, as in the release (the reader adds it at cuts).
    `fps` is the files' frame rate (e.g. 30, to exercise resampling to 24).
    """
    root = Path(root)
    gen = ProceduralVideos(height, width, fps, seed)
    names = []
    for i in range(n_samples):
        name = f"{i:06d}"
        frames, _, meta = gen.multishot(i, shots, frames_per_shot)
        bounds = meta["bounds"]
        for k, caption in enumerate(meta["raw_captions"]):
            write_mp4(frames[bounds[k] : bounds[k + 1]], root / "video" / name / f"{k}.mp4", fps)
            write_text_atomic(root / "caption" / name / f"{k}.json", json.dumps({"caption": caption}))
        names.append(name)
    return names


class ProceduralDataset:
    """Procedural multi-shot samples behind the same interface as `FolderVideos` (no files involved)."""

    def __init__(
        self, gen: ProceduralVideos, n_samples: int, shots: int = 2, frames_per_shot: int | Sequence[int] = 48
    ) -> None:
        self.gen, self.n, self.shots, self.frames_per_shot = gen, n_samples, shots, frames_per_shot

    def __len__(self) -> int:
        return self.n

    def sample_key(self, index: int) -> str:
        g = self.gen
        narrowed = "" if (g.backgrounds, g.max_shapes, g.radius) == (None, DEFAULT_MAX_SHAPES, DEFAULT_RADIUS) else \
            f"/bg={','.join(g.backgrounds or ())}/max_shapes={g.max_shapes}/radius={g.radius[0]}-{g.radius[1]}"
        if g.colour_change != DEFAULT_COLOUR_CHANGE:
            narrowed += f"/colour_change={g.colour_change}"
        if g.speed != DEFAULT_SPEED:
            narrowed += f"/speed={g.speed[0]}-{g.speed[1]}"
        if g.start_spread != DEFAULT_START_SPREAD:
            narrowed += f"/start_spread={g.start_spread}"
        return (
            f"procedural:seed={g.seed}/i={index}/shots={self.shots}x{self.frames_per_shot}"
            f"@{g.height}x{g.width}@{g.fps}fps{narrowed}"
        )

    def captions(self, index: int) -> list[str]:
        """Item `index`'s captions, without rendering it."""
        if not 0 <= index < self.n:
            raise IndexError(index)
        return self.gen.multishot_captions(index, self.shots, self.frames_per_shot)

    def bounds(self) -> list[int]:
        """Shot start frames plus the total (the same for every item), without rendering."""
        return [0, *np.cumsum(_shot_lengths(self.shots, self.frames_per_shot)).tolist()]

    def __getitem__(self, index: int) -> tuple[Tensor, list[str], list[int]]:
        if not 0 <= index < self.n:
            raise IndexError(index)
        frames, _, meta = self.gen.multishot(index, self.shots, self.frames_per_shot)
        return uint8_to_video(frames), meta["raw_captions"], meta["bounds"]


# ---- caches -------------------------------------------------------------------------------------------
LATENT_FORMAT = "longlive_latents"
_VAE_IDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def vae_identity(vae: Any) -> str:
    """A string that changes whenever the VAE's config, weights or dtype change (keys `LatentCache`).

    Uses `vae.identity` when the object has one; otherwise hashes the config and the state dict once per
    module (a Wan2.2 VAE takes about a second; frozen VAEs do not change afterwards).
    """
    ident = getattr(vae, "identity", None)
    if isinstance(ident, str):
        return ident
    if vae in _VAE_IDS:
        return _VAE_IDS[vae]
    h = hashlib.sha256()
    config = getattr(vae, "config", None)
    h.update(json.dumps(asdict(config) if config is not None else None, sort_keys=True, default=str).encode())
    for name, t in sorted(vae.state_dict().items()):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    name = getattr(config, "name", type(vae).__name__)
    dtype = str(getattr(vae, "dtype", "")).removeprefix("torch.")
    ident = f"vae/{name}/{dtype}/w={h.hexdigest()[:16]}"
    _VAE_IDS[vae] = ident
    return ident


class LatentCache:
    """Video → VAE latents [z, F, h, w] stored under `root`, one safetensors file per (VAE identity, key).

    Writes go to a temp name then `os.replace`, so a killed run never leaves a truncated entry. An entry
    whose recorded input shape differs from the video given is treated as a miss and overwritten.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.hits = 0
        self.misses = 0

    def path(self, identity: str, key: str) -> Path:
        k = hashlib.sha256(json.dumps([identity, key], ensure_ascii=False).encode()).hexdigest()
        return self.root / k[:2] / f"{k}.safetensors"

    def get(self, identity: str, key: str, video_shape: Sequence[int] | None = None) -> Tensor | None:
        path = self.path(identity, key)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
            latents = load_file(str(path))["latents"]
        except (SafetensorError, OSError, KeyError, ValueError):
            return None
        if meta.get("format") != LATENT_FORMAT or meta.get("identity") != identity or meta.get("key") != key:
            return None
        if video_shape is not None and meta.get("video_shape") != json.dumps(list(video_shape)):
            return None
        return latents

    def put(self, identity: str, key: str, latents: Tensor, video_shape: Sequence[int]) -> Path:
        meta = {"format": LATENT_FORMAT, "identity": identity, "key": key, "video_shape": json.dumps(list(video_shape))}
        path = self.path(identity, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            save_file({"latents": latents.detach().to("cpu").contiguous()}, str(tmp), metadata=meta)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    def encode(self, vae: Any, video: Tensor, key: str, *, sp_group: dist.ProcessGroup | None = None,
               halo: int = RELEASE_HALO) -> Tensor:
        """Latents [z, F, h, w] (CPU) of video [3, T, H, W] in [-1, 1]; the VAE runs only on a miss."""
        if video.ndim != 4 or video.shape[0] != 3:
            raise ValueError(f"expected video [3, T, H, W], got {tuple(video.shape)}")
        return self.encode_lazy(vae, key, tuple(video.shape), lambda: video, sp_group=sp_group, halo=halo)

    def encode_lazy(self, vae: Any, key: str, video_shape: Sequence[int], load: Callable[[], Tensor], *,
                    sp_group: dist.ProcessGroup | None = None, halo: int = RELEASE_HALO) -> Tensor:
        """`encode` with the video loaded only on a miss (a cached folder sample is never decoded).

        With an SP group of sp > 1 ranks this is a collective: all ranks miss together (if any rank misses), each
        encodes only its halo window (`parallel.vae_encode.encode_gathered`), the group all-gathers, and the group's
        first rank writes the entry; it equals the sp = 1 encode, so a cache filled at any sp serves every sp.
        A miss returns the tensor read back from the file just written, so hit and miss are bit-identical.
        """
        identity, shape = vae_identity(vae), tuple(video_shape)
        hit = self.get(identity, key, shape)
        sp = dist.get_world_size(sp_group) if sp_group is not None else 1
        if sp > 1:
            missed = torch.tensor([float(hit is None)])
            missed = missed.cuda() if dist.get_backend(sp_group) == "nccl" else missed
            dist.all_reduce(missed, op=dist.ReduceOp.MAX, group=sp_group)
            hit = None if missed.item() else hit
        if hit is not None:
            self.hits += 1
            return hit
        self.misses += 1
        video = load()
        if tuple(video.shape) != shape:
            raise ValueError(f"{key}: loaded video {tuple(video.shape)}, expected {shape}")
        if sp > 1:
            latents = encode_gathered(vae, video.unsqueeze(0), sp_group, halo)[0].cpu()
            if dist.get_rank(sp_group) == 0:
                self.put(identity, key, latents, shape)
            dist.barrier(group=sp_group)
            return latents if dist.get_rank(sp_group) else self._read_back(identity, key, shape)
        self.put(identity, key, vae.encode(video.unsqueeze(0))[0], shape)
        return self._read_back(identity, key, shape)

    def _read_back(self, identity: str, key: str, shape: tuple[int, ...]) -> Tensor:
        out = self.get(identity, key, shape)
        if out is None:
            raise OSError(f"latent cache entry {self.path(identity, key)} unreadable right after writing it")
        return out


class VideoSource(Protocol):
    def __len__(self) -> int: ...
    def __getitem__(self, index: int) -> tuple[Tensor, list[str], list[int]]: ...


def frame_prompts(
    bounds: Sequence[int], num_latents: int, stride_t: int = 4, transition_latents: int | None = 2
) -> tuple[list[tuple[int, bool]], list[int]]:
    """Which (shot, transition?) prompt each latent frame uses; returns (unique prompts, index per latent).

    Latent f covers raw frames 4f−3..4f (f=0: frame 0) and belongs to the shot of its last raw frame.
    The first `transition_latents` latents of every shot after the first (the chunk that crosses the
    cut; None = the whole shot) use the "The scene transitions. " caption, the rest the plain caption.
    """
    prompts: list[tuple[int, bool]] = []
    index: list[int] = []
    first_latent: dict[int, int] = {}
    for f in range(num_latents):
        last_raw = 0 if f == 0 else stride_t * f
        shot = int(np.searchsorted(np.asarray(bounds[1:]), last_raw, side="right"))
        first_latent.setdefault(shot, f)
        since = f - first_latent[shot]
        transition = shot > 0 and (transition_latents is None or since < transition_latents)
        p = (shot, transition)
        if p not in prompts:
            prompts.append(p)
        index.append(prompts.index(p))
    return prompts, index


def fix_mmap_threshold(nbytes: int = 1 << 20) -> bool:
    """Pin glibc's mmap threshold so every video-sized buffer is mmapped and returned to the OS on free.

    glibc raises the threshold after the first large free, so later clip tensors come from the heap; the small
    cached tensors each sample keeps then sit between them and the heap can neither shrink nor reuse the holes.
    Measured on the tiny task: RSS grew by about 17 MB per cache-hit sample (23 GB for 2,000), and stays flat
    with the threshold pinned. No-op (False) off glibc.
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        return bool(libc is not None and libc.mallopt(-3, int(nbytes)))  # -3: M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


def training_samples(
    source: VideoSource | FolderVideos,
    vae: Any,
    text_encoder: TextEncoder,
    latent_cache: LatentCache,
    emb_cache: EmbeddingCache,
    num_latents: int,
    *,
    indices: Sequence[int] | None = None,
    transition_latents: int | None = 2,
    sp_group: dist.ProcessGroup | None = None,
    halo: int = RELEASE_HALO,
    progress: bool = False,
) -> Iterator[dict[str, Any]]:
    """Yield trainer inputs for each sample long enough for `num_latents` latent frames (others skipped).

    Each dict: latents [1, z, F, h, w] (first 1 + 4(F−1) frames, through `latent_cache`; at sp > 1 encoded in halo
    windows across `sp_group`), prompt_embeds [P, Lt, D] (through `emb_cache`), frame_prompt int64 [F] indexing
    prompt_embeds, num_valid_latent_frames (F unless a folder sample was padded), plus prompts and key.
    A `FolderVideos` sample brings its per-chunk texts (scene-cut prefix where a shot starts); other sources give
    shot bounds and captions, and a shot's first `transition_latents` latents get the prefix (`frame_prompts`).
    """
    fix_mmap_threshold()
    stride_t = int(getattr(vae, "stride", (4,))[0])
    needed = 1 + stride_t * (num_latents - 1)
    if isinstance(source, FolderVideos) and (source.frames, source.stride_t) != (num_latents, stride_t):
        raise ValueError(f"FolderVideos plans {source.frames} latents at stride {source.stride_t}; asked for "
                         f"{num_latents} at the VAE's stride {stride_t}")
    pending: list[dict[str, Any]] = []
    order = range(len(source)) if indices is None else indices
    for n, i in enumerate(tqdm(order, desc="encode samples", unit="sample", disable=not progress)):
        item = _sample(source, i, num_latents, needed, stride_t, transition_latents)
        if item is not None:
            key, shape, load = item.pop("key"), item.pop("shape"), item.pop("load")
            latents = latent_cache.encode_lazy(vae, key, shape, load, sp_group=sp_group, halo=halo)
            pending.append({"latents": latents.unsqueeze(0), **item, "key": key})
        if len(pending) == _TEXT_BATCH or (pending and n == len(order) - 1):
            # one text-encoder call for a batch of samples' prompts: per-sample calls dominated the encode time
            union = list(dict.fromkeys(p for s in pending for p in s["prompts"]))
            rows = dict(zip(union, emb_cache.encode(text_encoder, union, device="cpu"), strict=True))
            for s in pending:
                yield {**s, "prompt_embeds": torch.stack([rows[p] for p in s["prompts"]])}
            pending = []


_TEXT_BATCH = 16  # samples whose prompts are encoded in one text-encoder call


def _sample(source: VideoSource | FolderVideos, i: int, num_latents: int, needed: int, stride_t: int,
            transition_latents: int | None) -> dict[str, Any] | None:
    """Sample i's cache key, video shape, video loader (run on a cache miss only) and prompts; None if too short."""
    if isinstance(source, FolderVideos):
        plan = source.plan(i)
        prompts = list(dict.fromkeys(plan.prompts))
        return {"key": source.sample_key(i), "shape": (3, needed, source.height, source.width),
                "load": lambda: source.read(i), "prompts": prompts,
                "frame_prompt": torch.tensor([prompts.index(p) for p in plan.prompts
                                              for _ in range(source.chunk_frames)], dtype=torch.long),
                "num_valid_latent_frames": plan.valid_latents}
    if isinstance(source, ProceduralDataset):  # captions and bounds without rendering: a cache hit renders nothing
        captions, bounds = source.captions(i), source.bounds()
        if bounds[-1] < needed:
            return None
        g = source.gen
        shape = (3, needed, g.height, g.width)

        def load() -> Tensor:
            return source[i][0][:, :needed]
    else:
        video, captions, bounds = source[i]
        if video.shape[1] < needed:
            return None
        shape = (3, needed, *video.shape[2:])

        def load() -> Tensor:
            return video[:, :needed]
    base = source.sample_key(i) if hasattr(source, "sample_key") else f"{type(source).__name__}/{i}"
    shots, frame_idx = frame_prompts(bounds, num_latents, stride_t, transition_latents)
    return {"key": f"{base}/frames=0:{needed}", "shape": shape, "load": load,
            "prompts": [with_prefix(captions[s]) if t else captions[s] for s, t in shots],
            "frame_prompt": torch.tensor(frame_idx, dtype=torch.long), "num_valid_latent_frames": num_latents}


class CycledSamples:
    """Trainer input over a finite list of samples, endlessly, with its position in state_dict (resume continues
    the stream exactly)."""

    def __init__(self, samples: list[dict[str, Any]]) -> None:
        if not samples:
            raise ValueError("no training samples: every clip is shorter than the frames asked for")
        self.samples, self.index = samples, 0

    def __iter__(self) -> CycledSamples:
        return self

    def __next__(self) -> dict[str, Any]:
        s = self.samples[self.index % len(self.samples)]
        self.index += 1
        return s

    def state_dict(self) -> dict[str, int]:
        return {"index": self.index}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.index = int(state["index"])


def build_train_data(spec: str, *, model_cfg, frames: int, seed: int = 0, rank: int = 0, ranks: int = 1,
                     samples: int = 64, cache_dir: str | os.PathLike = Path(".cache") / "train",
                     options: FolderOptions | None = None, sp_group: dist.ProcessGroup | None = None,
                     progress: bool = True) -> CycledSamples:
    """`--data procedural` (multi-shot procedural clips, 2 shots) or `--data folder:PATH` (the release's
    video/<sample>/<n>.mp4 + caption/<sample>/<n>.json layout read with `options`), encoded once through the preset's
    VAE and text encoder (`longlive.weights`: the shipped tiny components, or the published files) into latent and
    embedding caches under `cache_dir`. Every folder sample is checked before any encoding. Data-parallel rank `rank`
    of `ranks` takes samples rank, rank + ranks, ...; the ranks of an SP group (`sp_group`, all with the same `rank`)
    share each sample's encode in halo windows."""
    options = options or FolderOptions()
    needed = 1 + 4 * (frames - 1)
    cache = Path(cache_dir)
    sp = dist.get_world_size(sp_group) if sp_group is not None else 1
    lead = rank == 0 and (sp == 1 or dist.get_rank(sp_group) == 0)  # the one process that prints
    if spec != "procedural" and not spec.startswith("folder:"):
        raise ValueError(f"unknown --data {spec!r}; use random, procedural or folder:PATH")
    if spec == "procedural":
        if options != FolderOptions():
            raise ValueError(f"{options}: folder options, for --data folder:PATH only (not --data {spec})")
        gen = ProceduralVideos(model_cfg.height, model_cfg.width, model_cfg.fps, seed=seed)
        source: VideoSource | FolderVideos = ProceduralDataset(gen, n_samples=samples, shots=2,
                                                               frames_per_shot=-(-needed // 2))
        order: list[int] = list(range(rank, samples, ranks))
    else:
        root = Path(spec.split(":", 1)[1])
        if not root.is_dir():
            raise FileNotFoundError(f"--data {spec}: {root} is not a folder (expected {root}/video/<sample>/<n>.mp4 "
                                    f"and {root}/caption/<sample>/<n>.json)")
        source = FolderVideos(root, model_cfg.height, model_cfg.width, model_cfg.fps, frames=frames,
                              chunk_frames=model_cfg.chunk_frames, stride_t=model_cfg.vae_stride[0], options=options,
                              probe_cache=cache / "probe", progress=progress)
        for name, why in source.rejected if lead else ():
            print(f"note: --data {spec}: sample {name} refused: {why}", flush=True)
        if not len(source):
            raise ValueError(f"--data {spec}: every sample was refused ({len(source.rejected)}; see the notes above)")
        order = list(range(rank, len(source), ranks))
    paths = default_paths(model_cfg)
    vae, vae_note = load_vae_for(model_cfg, paths.vae, seed=seed)
    text, text_note = load_text_for(model_cfg, paths.text, paths.tokenizer, seed=seed)
    for note in filter(None, (vae_note, text_note)):
        print(f"note: {note}", flush=True)
    latents = LatentCache(cache / "latents")
    out = list(training_samples(source, vae, text, latents, EmbeddingCache(cache / "text"), num_latents=frames,
                                indices=order, transition_latents=model_cfg.chunk_frames, sp_group=sp_group,
                                progress=progress and lead))
    if lead:
        shape = ""
        if isinstance(source, FolderVideos):
            plans = [source.plan(i) for i in order]
            padded = sum(p.valid_latents < frames for p in plans)
            shape = (f" ({padded} padded, {len(source.rejected)} refused, {sum(p.cuts for p in plans)} scene cuts, "
                     f"{sum(len(set(p.prompts)) == 1 for p in plans)} with one caption)")
        halo = f", sp={sp}: halo windows of {RELEASE_HALO} latents" if sp > 1 else ""
        print(f"data: {spec}: {len(out)} samples{shape}; latents {latents.hits} cached, {latents.misses} encoded"
              f"{halo}", flush=True)
    return CycledSamples(out)
