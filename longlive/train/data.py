"""Training data (spec 04, "Data layout (release)"): procedural videos, the published folder layout, and caches.

* `ProceduralVideos`: bouncing coloured shapes with captions, so the tiny preset can be trained and
  evaluated on CPU without downloading a data set; a caption names every colour and shape kind, so even
  a byte-level text encoder can tell prompts apart.
* `FolderVideos`: `root/video/<sample>/<n>.mp4` + `root/caption/<sample>/<n>.json` (field `caption`),
  clips of a sample in numeric order being consecutive shots; frames resampled to the target fps by
  nearest timestamp, resized (bilinear, no crop), normalised to [-1, 1]. `write_procedural_folder`
  writes procedural samples in that layout so the release path is exercised end to end.
* `LatentCache` + `training_samples`: VAE latents and prompt embeddings are computed once per
  (model identity, sample) and reused, since encoding dominates the cost of a tiny training step.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import json
import os
import uuid
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

import imageio.v2 as iio
import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from longlive.eval.shapes import SHAPES, shape_sdf
from longlive.output import write_mp4, write_text_atomic
from longlive.text import EmbeddingCache, TextEncoder
from longlive.text.prompts import SCENE_CUT_PREFIX, with_prefix
from longlive.weights import default_paths, load_text_for, load_vae_for

# Well separated RGB values; names are what captions say.
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


def resample_indices(num_src: int, src_fps: float, fps: float) -> np.ndarray:
    """Source frame for each target frame by nearest timestamp; the clip's duration num_src/src_fps is kept."""
    n = max(1, int(np.floor(num_src * fps / src_fps + 0.5)))
    return np.minimum(np.floor(np.arange(n) * src_fps / fps + 0.5).astype(np.int64), num_src - 1)


def read_mp4(path: str | os.PathLike) -> tuple[np.ndarray, float]:
    """All frames uint8 [T, H, W, 3] and the container's fps."""
    reader = iio.get_reader(str(path), format="FFMPEG")
    try:
        fps = float(reader.get_meta_data()["fps"])
        frames = np.stack([np.asarray(f)[..., :3] for f in reader])
    finally:
        reader.close()
    return frames, fps


def _numeric_stems(folder: Path, suffix: str) -> list[Path]:
    files = [p for p in folder.iterdir() if p.suffix == suffix and p.stem.isdigit()]
    return sorted(files, key=lambda p: int(p.stem))


class FolderVideos:
    """The release layout as a map-style dataset: item i → (video [3, T, H, W] in [-1, 1], captions, bounds).

    `captions[k]` is shot k's stored caption (no transition prefix: `training_samples` adds it where a
    chunk crosses a cut); `bounds` = shot start frames plus T, so shot k is frames bounds[k]:bounds[k+1].
    Each clip is resampled to `fps` on its own, then clips are concatenated.
    """

    def __init__(self, root: str | os.PathLike, height: int, width: int, fps: int = 24) -> None:
        self.root = Path(root)
        self.height, self.width, self.fps = height, width, fps
        video_dir = self.root / "video"
        if not video_dir.is_dir():
            raise FileNotFoundError(f"{video_dir} not found (expected root/video/<sample>/<n>.mp4)")
        self.samples = sorted(p.name for p in video_dir.iterdir() if p.is_dir() and _numeric_stems(p, ".mp4"))

    def __len__(self) -> int:
        return len(self.samples)

    def sample_key(self, index: int) -> str:
        """Latent-cache key: the sample's path and the read settings (a change of size or fps must miss)."""
        return f"folder:{self.root.resolve()}/{self.samples[index]}@{self.height}x{self.width}@{self.fps}fps"

    def __getitem__(self, index: int) -> tuple[Tensor, list[str], list[int]]:
        name = self.samples[index]
        videos, captions, bounds = [], [], [0]
        for mp4 in _numeric_stems(self.root / "video" / name, ".mp4"):
            cap_path = self.root / "caption" / name / f"{mp4.stem}.json"
            captions.append(str(json.loads(cap_path.read_text())["caption"]))
            frames, src_fps = read_mp4(mp4)
            frames = frames[resample_indices(len(frames), src_fps, self.fps)]
            videos.append(uint8_to_video(frames, self.height, self.width))
            bounds.append(bounds[-1] + videos[-1].shape[1])
        return torch.cat(videos, dim=1), captions, bounds


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

    def encode(self, vae: Any, video: Tensor, key: str) -> Tensor:
        """Latents [z, F, h, w] (CPU) of video [3, T, H, W] in [-1, 1]; the VAE runs only on a miss.

        A miss returns the tensor read back from the file just written, so hit and miss are bit-identical.
        """
        if video.ndim != 4 or video.shape[0] != 3:
            raise ValueError(f"expected video [3, T, H, W], got {tuple(video.shape)}")
        identity = vae_identity(vae)
        shape = tuple(video.shape)
        hit = self.get(identity, key, shape)
        if hit is not None:
            self.hits += 1
            return hit
        self.misses += 1
        latents = vae.encode(video.unsqueeze(0))[0]
        self.put(identity, key, latents, shape)
        out = self.get(identity, key, shape)
        assert out is not None
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
    source: VideoSource,
    vae: Any,
    text_encoder: TextEncoder,
    latent_cache: LatentCache,
    emb_cache: EmbeddingCache,
    num_latents: int,
    *,
    indices: Sequence[int] | None = None,
    transition_latents: int | None = 2,
) -> Iterator[dict[str, Any]]:
    """Yield trainer inputs for each sample long enough for `num_latents` latent frames (others skipped).

    Each dict: latents [1, z, F, h, w] (first 1 + 4(F−1) frames, through `latent_cache`), prompt_embeds
    [P, Lt, D] (through `emb_cache`), frame_prompt int64 [F] indexing prompt_embeds, plus prompts and key.
    """
    fix_mmap_threshold()
    stride_t = int(getattr(vae, "stride", (4,))[0])
    needed = 1 + stride_t * (num_latents - 1)
    for i in range(len(source)) if indices is None else indices:
        video, captions, bounds = source[i]
        if video.shape[1] < needed:
            continue
        base = source.sample_key(i) if hasattr(source, "sample_key") else f"{type(source).__name__}/{i}"
        key = f"{base}/frames=0:{needed}"
        latents = latent_cache.encode(vae, video[:, :needed], key)
        shots, frame_idx = frame_prompts(bounds, num_latents, stride_t, transition_latents)
        prompts = [with_prefix(captions[s]) if t else captions[s] for s, t in shots]
        embeds = emb_cache.encode(text_encoder, prompts, device="cpu")
        yield {
            "latents": latents.unsqueeze(0),
            "prompt_embeds": embeds,
            "frame_prompt": torch.tensor(frame_idx, dtype=torch.long),
            "prompts": prompts,
            "key": key,
        }


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
                     samples: int = 64, cache_dir: str | os.PathLike = Path(".cache") / "train") -> CycledSamples:
    """`--data procedural` (multi-shot procedural clips, 2 shots) or `--data folder:PATH` (the release's
    video/<sample>/<n>.mp4 + caption/<sample>/<n>.json layout), encoded once through the preset's VAE and text
    encoder (`longlive.weights`: the shipped tiny components, or the published files) into latent and embedding
    caches. A shot's first chunk gets the scene-cut caption, its later chunks the bare one. Data-parallel rank
    `rank` of `ranks` takes samples rank, rank + ranks, ..."""
    needed = 1 + 4 * (frames - 1)
    if spec == "procedural":
        gen = ProceduralVideos(model_cfg.height, model_cfg.width, model_cfg.fps, seed=seed)
        source: VideoSource = ProceduralDataset(gen, n_samples=samples, shots=2, frames_per_shot=-(-needed // 2))
    elif spec.startswith("folder:"):
        root = Path(spec.split(":", 1)[1])
        if not root.is_dir():
            raise FileNotFoundError(f"--data {spec}: {root} is not a folder (expected {root}/video/<sample>/<n>.mp4 "
                                    f"and {root}/caption/<sample>/<n>.json)")
        source = FolderVideos(root, model_cfg.height, model_cfg.width, model_cfg.fps)
        if not len(source):
            raise FileNotFoundError(f"--data {spec}: no samples under {root / 'video'} (folders of <n>.mp4)")
    else:
        raise ValueError(f"unknown --data {spec!r}; use random, procedural or folder:PATH")
    paths = default_paths(model_cfg)
    vae, vae_note = load_vae_for(model_cfg, paths.vae, seed=seed)
    text, text_note = load_text_for(model_cfg, paths.text, paths.tokenizer, seed=seed)
    for note in filter(None, (vae_note, text_note)):
        print(f"note: {note}", flush=True)
    cache = Path(cache_dir)
    out = list(training_samples(source, vae, text, LatentCache(cache / "latents"), EmbeddingCache(cache / "text"),
                                num_latents=frames, indices=range(rank, len(source), ranks),
                                transition_latents=model_cfg.chunk_frames))
    return CycledSamples(out)
