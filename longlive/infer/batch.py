"""Many videos from one command, the model assembled once: the release's `data_path` inputs, `num_samples` and data
parallel inference over videos.

Prompt sources (the release's `utils/dataset.py`, `MultiTextConcatDataset`):

- a prompt file (`prompt_file`): one video per non-blank line, the line (right-stripped) conditioning every chunk;
- the multi-shot caption layout (`caption_dir`): `ROOT/caption/<sample>/*.json` (or `ROOT/<sample>/*.json`), one
  video per sample folder in sorted order; each JSON's `caption` is one shot, files in numeric order (non-numeric
  stems first, `global.json` skipped). Shot lengths in chunks come from the folder's `shot_durations.txt` (integers
  separated by spaces or commas, one per shot, extra ones ignored), else `chunks_per_shot` for every shot, else the
  chunks spread evenly (the first `chunks mod shots` shots one longer). Lengths are clamped to the video and the last
  shot takes any chunks left over; every shot after the first opens with the scene-cut prefix. Where the release
  silently reads an unreadable caption or a malformed `shot_durations.txt` as "" or as absent, this reader stops
  with an error naming the file.

Each source entry becomes `samples` videos with seeds seed, seed+1, ... (the release draws its `num_samples` as one
batch from one noise tensor; here every sample is its own video, so sample k equals a single generation with seed
+ k). Videos are named `<index:04d>-<sample>` (the release's `save_with_index` order); under data parallelism rank r
of N takes every N-th video (`dp_share`, a strided split as the release's SP script uses: no video dropped or
repeated). `run_videos` assembles once (`assemble.build` with every text), runs each video into its own folder and
hands each result, or its error, to a callback as soon as it exists, so a later failure never loses an earlier
video.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from longlive.infer.assemble import VideoResult, build, for_request, generation_spec, run
from longlive.infer.pipeline import chunk_texts
from longlive.infer.video import VideoRequest, validate
from longlive.model.presets import ModelConfig
from longlive.output import write_text_atomic

CAPTION_FIELD = "caption"
SHOT_DURATIONS = "shot_durations.txt"
SKIPPED_JSON = "global.json"


@dataclass(frozen=True)
class PromptEntry:
    """One entry of a prompt source: the prompts and switch chunks of one video (before samples)."""

    index: int
    source: str                    # the prompt-file line number or the caption folder
    prompts: tuple[str, ...]
    switch_at: tuple[int, ...] | None


@dataclass(frozen=True)
class VideoItem:
    """One video of a batch: a prompt entry and a sample of it."""

    entry: PromptEntry
    sample: int
    seed: int

    @property
    def name(self) -> str:
        """The video's folder under --out and its row's cell_id."""
        return f"{self.entry.index:04d}-{self.sample}"


def read_prompt_file(path: str | Path) -> list[PromptEntry]:
    """One entry per non-blank line of a text file (the release's txt `data_path`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--prompt-file {path} is not a file")
    entries: list[PromptEntry] = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            entries.append(PromptEntry(len(entries), f"{path.name}:{n}", (line.rstrip(),), None))
    if not entries:
        raise ValueError(f"--prompt-file {path} holds no prompt (one video per non-blank line)")
    return entries


def caption_folders(root: str | Path) -> list[Path]:
    """The sample folders of a caption layout: ROOT/caption/<s>/ if ROOT/caption exists, else ROOT/<s>/."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"--caption-dir {root} is not a folder (expected ROOT/caption/<sample>/*.json)")
    base = root / "caption" if (root / "caption").is_dir() else root
    folders = sorted(d for d in base.iterdir() if d.is_dir())
    if not folders:
        raise ValueError(f"--caption-dir {root}: no sample folders in {base} (expected {base}/<sample>/*.json)")
    return folders


def _json_order(p: Path) -> tuple[bool, int, str]:
    """The release's order: non-numeric stems first (by name), then numeric stems by value."""
    return p.stem.isdigit(), int(p.stem) if p.stem.isdigit() else 0, p.stem


def read_captions(folder: Path) -> list[str]:
    """The folder's shot captions in shot order (one JSON file per shot, field `caption`)."""
    files = sorted((f for f in folder.glob("*.json") if f.name != SKIPPED_JSON), key=_json_order)
    if not files:
        raise ValueError(f"{folder}: no caption file (<shot>.json with a {CAPTION_FIELD!r} field)")
    captions = []
    for f in files:
        try:
            data = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{f}: not a readable JSON caption file ({exc})") from None
        caption = data.get(CAPTION_FIELD) if isinstance(data, dict) else None
        if not isinstance(caption, str) or not caption.strip():
            raise ValueError(f"{f}: no non-empty {CAPTION_FIELD!r} string")
        captions.append(caption)
    return captions


def read_shot_durations(folder: Path) -> list[int] | None:
    """The folder's shot_durations.txt (chunks per shot), or None when there is none."""
    path = folder / SHOT_DURATIONS
    if not path.exists():
        return None
    parts = path.read_text(encoding="utf-8").replace(",", " ").split()
    try:
        durations = [int(x) for x in parts]
    except ValueError:
        raise ValueError(f"{path}: expected whole numbers of chunks separated by spaces or commas") from None
    if not durations or any(d < 0 for d in durations):
        raise ValueError(f"{path}: expected one number ≥ 0 of chunks per shot, got {parts}")
    return durations


def shot_chunks(num_shots: int, num_chunks: int, durations: list[int] | None, chunks_per_shot: int) -> list[int]:
    """Chunks per shot, as the release resolves them: the file's durations, else `chunks_per_shot` each, else an
    even spread; clamped to `num_chunks`, the last shot taking whatever is left over."""
    if durations is not None:
        wanted = durations[:num_shots]
    elif chunks_per_shot > 0:
        wanted = [chunks_per_shot] * num_shots
    else:
        base, extra = divmod(num_chunks, num_shots)
        wanted = [base + (1 if i < extra else 0) for i in range(num_shots)]
    clamped, remaining = [], num_chunks
    for d in wanted:
        if remaining <= 0:
            break
        clamped.append(min(d, remaining))
        remaining -= clamped[-1]
    if remaining > 0 and clamped:
        clamped[-1] += remaining
    return clamped


def shot_prompts(captions: list[str], chunks: list[int], prefix: str) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """(prompts, switch chunks) of shots: shot k > 0 opens with the scene-cut prefix at its first chunk; a shot of
    zero chunks is skipped (the next one still opens with the prefix)."""
    prompts, starts, start = [], [], 0
    for k, (caption, n) in enumerate(zip(captions, chunks, strict=False)):
        if n > 0:
            prompts.append(prefix + caption if k > 0 else caption)
            starts.append(start)
        start += n
    return tuple(prompts), tuple(starts[1:])


def read_caption_dir(root: str | Path, num_chunks: int, chunks_per_shot: int, prefix: str) -> list[PromptEntry]:
    """One entry per sample folder of the multi-shot caption layout (module docstring)."""
    if chunks_per_shot < 0:
        raise ValueError(f"--chunks-per-shot {chunks_per_shot} must be ≥ 0 (0: spread the shots evenly)")
    entries = []
    for i, folder in enumerate(caption_folders(root)):
        captions = read_captions(folder)
        chunks = shot_chunks(len(captions), num_chunks, read_shot_durations(folder), chunks_per_shot)
        prompts, switch_at = shot_prompts(captions, chunks, prefix)
        entries.append(PromptEntry(i, folder.name, prompts, switch_at))
    return entries


def video_items(entries: list[PromptEntry], samples: int, seed: int) -> list[VideoItem]:
    """Every entry `samples` times, sample k with seed + k."""
    if samples < 1:
        raise ValueError(f"--samples {samples} must be ≥ 1")
    return [VideoItem(e, k, seed + k) for e in entries for k in range(samples)]


def dp_share(items: list[VideoItem], rank: int, world: int) -> list[VideoItem]:
    """Rank `rank`'s videos of `world` data-parallel ranks: every world-th, from its own rank on."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in 0..{world - 1}")
    return items[rank::world]


def item_request(base: VideoRequest, item: VideoItem) -> VideoRequest:
    """The request of one video: the base request with the item's prompts, switch chunks and seed."""
    switch = list(item.entry.switch_at) if item.entry.switch_at is not None else None
    return dataclasses.replace(base, prompts=list(item.entry.prompts), switch_at=switch, seed=item.seed)


def write_prompts(req: VideoRequest, cfg: ModelConfig, path: Path) -> None:
    """The chunks each text conditioned, as the release's `_prompts.txt` ("[0,1] text" per run of chunks)."""
    n = req.frames // cfg.chunk_frames
    texts = [plan.text for plan in generation_spec(req, cfg).plan(n)]
    lines, start = [], 0
    for c in range(1, n + 1):
        if c == n or texts[c] != texts[start]:
            lines.append(f"[{','.join(str(i) for i in range(start, c))}] {texts[start]}")
            start = c
    write_text_atomic(path, "\n".join(lines) + "\n")


OnVideo = Callable[[VideoItem, VideoRequest, VideoResult | None, BaseException | None], None]


def run_videos(base: VideoRequest, items: list[VideoItem], out: Path, on_video: OnVideo, *,
               progress: bool = True) -> dict[str, int]:
    """Generate `items` into out/<name>/ with one assembled pipeline. Every video's request is checked before the
    build; each finished (or failed) video goes to `on_video` at once. Returns {"ok": n, "failed": n}."""
    counts = {"ok": 0, "failed": 0}
    if not items:
        return counts
    quiet = dataclasses.replace(base, progress=False)  # one bar over the videos, none per video
    reqs = [item_request(quiet, it) for it in items]
    cfg, _ = validate(reqs[0])
    n_chunks = base.frames // cfg.chunk_frames
    for it, r in zip(items, reqs, strict=True):
        try:
            chunk_texts(r.prompts, n_chunks, r.switch_at, r.scene_cut_prefix)
        except ValueError as exc:
            raise ValueError(f"video {it.name} ({it.entry.source}): {exc}") from None
    texts = [t for r in reqs for t in generation_spec(r, cfg).texts]
    # Built from the base seed, so seeded random components (no weight files) are the same on every rank whatever
    # its first video; each video's own seed then only draws its noise.
    pipe = build(dataclasses.replace(reqs[0], seed=quiet.seed), texts=texts)
    bar = tqdm(total=len(items), desc=f"{len(items)} videos", unit="video", disable=not progress, file=sys.stderr)
    for i, (it, r) in enumerate(zip(items, reqs, strict=True)):
        folder = out / it.name
        try:
            res = run(pipe if i == 0 and r == pipe.request else for_request(pipe, r), folder)
            if res.is_main:
                write_prompts(r, cfg, folder / "prompts.txt")
                res.artifacts["prompts"] = "prompts.txt"
        except Exception as exc:  # noqa: BLE001  (recorded as the video's failed row; the next video still runs)
            print(f"video {it.name} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            counts["failed"] += 1
            on_video(it, r, None, exc)
        else:
            counts["ok"] += 1
            on_video(it, r, res, None)
        bar.update(1)
    bar.close()
    return counts
