"""Running the real VBench (optional extra `vbench==0.1.5`) offline, from a pre-filled weight cache.

VBench downloads each dimension's weights with wget/urlretrieve on first use. Here that must never happen: before
anything runs, every file the requested dimensions need is checked and one error names *all* missing paths.
VBench is always run with `local=True`, the only mode whose files all live in `VBENCH_CACHE_DIR` (the default,
`local=False`, pulls DINO from GitHub through torch.hub and CLIP into ~/.cache/clip).

Tables (as vbench 0.1.5's `vbench/utils.py::init_submodules` and the dimension modules expect them):
- `VBENCH_WEIGHT_FILES`: dimension → paths relative to `VBENCH_CACHE_DIR` (default `~/.cache/vbench`).
- `EXTERNAL_WEIGHT_FILES`: files VBench loads from other caches even in local mode: DINO's hubconf loads its
  checkpoint through `torch.hub.load_state_dict_from_url` (torch hub dir), and Tag2Text/GRiT load
  `bert-base-uncased` through transformers (Hugging Face hub cache).

VBench 0.1.5 pins `transformers==4.33.2` and `numpy<2`, which conflict with this package's own requirements, so it
usually lives in a separate environment: pass `python=` (or set `LONGLIVE_VBENCH_PYTHON`) to run it there in a
subprocess; without it VBench is imported lazily in this interpreter.
"""

from __future__ import annotations

import glob
import importlib
import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from .scoring import canonical_dimension

VBENCH_VERSION = "0.1.5"


class VBenchUnavailableError(ImportError):
    """The optional `vbench` package cannot be imported (here or in the given interpreter)."""


class MissingWeightsError(FileNotFoundError):
    """Weight files the requested dimensions need are not in the caches; `missing` lists (dimension, path)."""

    def __init__(self, message: str, missing: list[tuple[str, str]]) -> None:
        super().__init__(message)
        self.missing = missing
        self.args = (message, missing)  # picklable with both; OSError would read two args as (errno, strerror)

    def __str__(self) -> str:
        return str(self.args[0])


def install_hint() -> str:
    """What to do when `vbench` is missing: it is optional, and best kept in its own environment."""
    return (
        f"vbench is an optional extra: `pip install longlive[vbench]` (vbench=={VBENCH_VERSION}); nothing else in "
        "longlive needs it, and temporal_flickering is computed without it. vbench pins transformers==4.33.2 and "
        "numpy<2, which conflict with longlive's own requirements, so the usual setup is a separate environment "
        f"(`python -m venv .venv-vbench && .venv-vbench/bin/pip install vbench=={VBENCH_VERSION}` with the same "
        "torch) passed as run_vbench(python='.venv-vbench/bin/python') or LONGLIVE_VBENCH_PYTHON; never let it "
        "reinstall torch in this environment."
    )


# ---------------------------------------------------------------------------------------------------------------
# Which files each dimension needs.

VBENCH_WEIGHT_FILES: dict[str, tuple[str, ...]] = {
    "subject_consistency": (
        "dino_model/facebookresearch_dino_main/hubconf.py",  # a clone of github.com/facebookresearch/dino
        "dino_model/facebookresearch_dino_main/vision_transformer.py",
        "dino_model/dino_vitbase16_pretrain.pth",
    ),
    "background_consistency": ("clip_model/ViT-B-32.pt",),
    "temporal_flickering": (),
    "motion_smoothness": ("amt_model/amt-s.pth",),
    "dynamic_degree": ("raft_model/models/raft-things.pth",),
    "aesthetic_quality": ("clip_model/ViT-L-14.pt", "aesthetic_model/emb_reader/sa_0_4_vit_l_14_linear.pth"),
    "imaging_quality": ("pyiqa_model/musiq_spaq_ckpt-358bb6af.pth",),
    "object_class": ("grit_model/grit_b_densecap_objectdet.pth",),
    "multiple_objects": ("grit_model/grit_b_densecap_objectdet.pth",),
    "human_action": ("umt_model/l16_ptk710_ftk710_ftk400_f16_res224.pth",),
    "color": ("grit_model/grit_b_densecap_objectdet.pth",),
    "spatial_relationship": ("grit_model/grit_b_densecap_objectdet.pth",),
    "scene": ("caption_model/tag2text_swin_14m.pth",),
    "appearance_style": ("clip_model/ViT-B-32.pt",),
    "temporal_style": ("ViCLIP/ViClip-InternVid-10M-FLT.pth", "ViCLIP/bpe_simple_vocab_16e6.txt.gz"),
    "overall_consistency": ("ViCLIP/ViClip-InternVid-10M-FLT.pth", "ViCLIP/bpe_simple_vocab_16e6.txt.gz"),
}
"""dimension → files relative to VBENCH_CACHE_DIR that vbench 0.1.5 loads with `local=True` (it wgets any that are
missing, hence the pre-check)."""


@dataclass(frozen=True)
class ExternalFile:
    """A file VBench loads from a cache other than VBENCH_CACHE_DIR; any one of `alternatives` satisfies it."""

    root: Literal["torch_hub", "hf_hub"]
    alternatives: tuple[str, ...]
    """Relative to `torch.hub.get_dir()` or to the HF hub cache (`*` matches the snapshot revision)."""


_BERT = "models--bert-base-uncased/snapshots/*/"
EXTERNAL_WEIGHT_FILES: dict[str, tuple[ExternalFile, ...]] = {
    "subject_consistency": (ExternalFile("torch_hub", ("checkpoints/dino_vitbase16_pretrain.pth",)),),
    "scene": (
        ExternalFile("hf_hub", (_BERT + "config.json",)),
        ExternalFile("hf_hub", (_BERT + "vocab.txt",)),
        ExternalFile("hf_hub", (_BERT + "model.safetensors", _BERT + "pytorch_model.bin")),
    ),
    **{
        d: (ExternalFile("hf_hub", (_BERT + "vocab.txt",)),)
        for d in ("object_class", "multiple_objects", "color", "spatial_relationship")
    },
}
"""dimension → files outside VBENCH_CACHE_DIR: DINO's checkpoint via torch.hub, bert-base-uncased via transformers."""

CUSTOM_INPUT_UNSUPPORTED = (
    "object_class",
    "multiple_objects",
    "scene",
    "appearance_style",
    "color",
    "spatial_relationship",
)
"""Dimensions VBench refuses in `custom_input` mode: they need the standard prompt suite's auxiliary info."""


def default_cache_dir() -> Path:
    """`$VBENCH_CACHE_DIR`, else `~/.cache/vbench` (VBench's own rule)."""
    env = os.environ.get("VBENCH_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "vbench"


def _torch_hub_dir() -> Path:
    return Path(torch.hub.get_dir())


def _hf_hub_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HUGGINGFACE_HUB_CACHE"):
        return Path(os.environ["HUGGINGFACE_HUB_CACHE"])
    hf_home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(hf_home).expanduser() / "hub"


def _dimension_list(dimensions: Iterable[str]) -> list[str]:
    if isinstance(dimensions, str):
        dimensions = [dimensions]
    dims: list[str] = []
    for d in dimensions:
        c = canonical_dimension(d)
        if c not in dims:
            dims.append(c)
    if not dims:
        raise ValueError("no VBench dimensions requested")
    return dims


def missing_weights(
    dimensions: Iterable[str], cache_dir: str | os.PathLike | None = None, *, check_external: bool = True
) -> list[tuple[str, str]]:
    """(dimension, absolute path) of every required file that is absent; alternatives are joined with ' | '."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    missing: list[tuple[str, str]] = []
    for dim in _dimension_list(dimensions):
        for rel in VBENCH_WEIGHT_FILES[dim]:
            if not (root / rel).is_file():
                missing.append((dim, str(root / rel)))
        if not check_external:
            continue
        for ext in EXTERNAL_WEIGHT_FILES.get(dim, ()):
            base = _torch_hub_dir() if ext.root == "torch_hub" else _hf_hub_dir()
            paths = [str(base / rel) for rel in ext.alternatives]
            if not any(glob.glob(p) for p in paths):
                missing.append((dim, " | ".join(paths)))
    return missing


def check_weights(
    dimensions: Iterable[str], cache_dir: str | os.PathLike | None = None, *, check_external: bool = True
) -> None:
    """Raise `MissingWeightsError` naming every missing file, so one look at the message says what to copy."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    missing = missing_weights(dimensions, root, check_external=check_external)
    if missing:
        lines = "\n".join(f"  [{dim}] {path}" for dim, path in missing)
        raise MissingWeightsError(
            f"VBench weights missing for an offline run (VBENCH_CACHE_DIR={root}); longlive never downloads them. "
            f"Fill the cache on a machine with internet access (VBench fetches them on first use with local=True) "
            f"and copy it here. Missing:\n{lines}",
            missing,
        )


# ---------------------------------------------------------------------------------------------------------------
# Running it.

_SUBPROCESS_SCRIPT = """
import json, os, sys
args = json.loads(sys.argv[1])
import vbench
from vbench import VBench
full_info = os.path.join(os.path.dirname(vbench.__file__), "VBench_full_info.json")
VBench(args["device"], full_info, args["out_dir"]).evaluate(
    videos_path=args["videos_dir"], name=args["name"], dimension_list=args["dimensions"], local=True, mode=args["mode"])
"""


@contextmanager
def _env(values: dict[str, str]) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _offline_env(cache_dir: Path) -> dict[str, str]:
    return {"VBENCH_CACHE_DIR": str(cache_dir), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def _import_vbench_here(cache_dir: Path):
    """Import vbench in this interpreter with VBENCH_CACHE_DIR set first (VBench reads it once, at import)."""
    loaded = sys.modules.get("vbench.utils")
    if loaded is not None and getattr(loaded, "CACHE_DIR", None) is not None:
        if Path(loaded.CACHE_DIR).expanduser().resolve() != cache_dir.resolve():
            raise RuntimeError(
                f"vbench was already imported with VBENCH_CACHE_DIR={loaded.CACHE_DIR}; it cannot be changed to "
                f"{cache_dir} in this process (use python= to run VBench in a subprocess)"
            )
    with _env({"VBENCH_CACHE_DIR": str(cache_dir)}):
        try:
            return importlib.import_module("vbench")
        except ImportError as e:
            raise VBenchUnavailableError(f"cannot import vbench ({e}). {install_hint()}") from e


def _check_vbench_in(python: str) -> None:
    try:
        proc = subprocess.run([python, "-c", "import vbench"], capture_output=True, text=True, timeout=600)
    except OSError as e:
        raise VBenchUnavailableError(f"cannot run {python!r} ({e}). {install_hint()}") from e
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["(no message)"]
        raise VBenchUnavailableError(f"`import vbench` fails in {python}: {tail[0]}. {install_hint()}")


def unavailable_reason(
    dimensions: Iterable[str],
    cache_dir: str | os.PathLike | None = None,
    *,
    python: str | None = None,
    check_external: bool = True,
) -> str | None:
    """Why `run_vbench` cannot score these dimensions here (a skip reason for the runner), or None.

    Checks the package without importing it in this process (importing would pin VBENCH_CACHE_DIR), then the
    weights; a cheap pre-flight before any video is generated.
    """
    python = python or os.environ.get("LONGLIVE_VBENCH_PYTHON") or None
    try:
        if python is None:
            try:
                found = importlib.util.find_spec("vbench") is not None
            except ValueError:  # in sys.modules without a spec (already imported some other way)
                found = True
            if not found:
                raise VBenchUnavailableError(f"vbench is not installed. {install_hint()}")
        else:
            _check_vbench_in(python)
        check_weights(dimensions, cache_dir, check_external=check_external)
    except VBenchUnavailableError as e:
        return f"missing extra: {e}"
    except MissingWeightsError as e:
        return f"missing VBench weights: {len(e.missing)} file(s), first {e.missing[0][1]}"
    return None


def read_results(path: str | os.PathLike) -> dict[str, float]:
    """VBench's `<name>_eval_results.json` ({dim: [mean, per-video list]}) → {dim: mean raw fraction}."""
    data = json.loads(Path(path).read_text())
    out: dict[str, float] = {}
    for dim, value in data.items():
        mean = value[0] if isinstance(value, list | tuple) else value
        out[dim] = float(mean)
    return out


def read_per_video_results(path: str | os.PathLike) -> dict[str, dict[str, float]]:
    """VBench's `<name>_eval_results.json` → {dim: {video file name: score}} from each dimension's per-video list
    (entries carry `video_path` and `video_results`); what quality-over-time needs when VBench scores a folder of
    window clips in one run. A dimension without a per-video list is left out."""
    data = json.loads(Path(path).read_text())
    out: dict[str, dict[str, float]] = {}
    for dim, value in data.items():
        if not isinstance(value, list | tuple) or len(value) < 2 or not isinstance(value[1], list):
            continue
        per = {Path(str(e["video_path"])).name: float(e["video_results"]) for e in value[1]
               if isinstance(e, dict) and "video_path" in e and "video_results" in e}
        if per:
            out[dim] = per
    return out


def run_vbench(
    videos_dir: str | os.PathLike,
    dimensions: Iterable[str],
    cache_dir: str | os.PathLike | None = None,
    out_dir: str | os.PathLike = "vbench_results",
    *,
    name: str = "longlive",
    mode: str = "custom_input",
    device: str | None = None,
    python: str | None = None,
    check_external: bool = True,
    timeout_s: float | None = None,
) -> dict[str, float]:
    """Run VBench on the videos in `videos_dir` (or one video file) and return {dimension: raw fraction}.

    Offline by construction: the weight caches are checked first (`MissingWeightsError` lists every missing
    file), VBench runs with `local=True`, `VBENCH_CACHE_DIR` set to `cache_dir` (default: `$VBENCH_CACHE_DIR` or
    `~/.cache/vbench`) and HF offline flags on. `mode="custom_input"` takes prompts from file names and cannot
    score the dimensions in `CUSTOM_INPUT_UNSUPPORTED`; `"vbench_standard"` expects VBench's prompt-suite file
    names (`{prompt}-{i}.mp4`). `python` (default `$LONGLIVE_VBENCH_PYTHON`) runs VBench in that interpreter.
    Feed the result to `scoring.vbench_scores` for the quality/semantic/total columns.
    """
    dims = _dimension_list(dimensions)
    if mode == "custom_input":
        bad = [d for d in dims if d in CUSTOM_INPUT_UNSUPPORTED]
        if bad:
            raise ValueError(
                f"VBench cannot score {', '.join(bad)} in custom_input mode (needs the standard "
                "prompt suite: mode='vbench_standard' with its file names)"
            )
    videos = Path(videos_dir)
    if not videos.exists():
        raise FileNotFoundError(f"no videos at {videos}")
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    out = Path(out_dir)
    python = python or os.environ.get("LONGLIVE_VBENCH_PYTHON") or None

    if python is None:
        vbench = _import_vbench_here(cache)
    else:
        _check_vbench_in(python)
    check_weights(dims, cache, check_external=check_external)

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    out.mkdir(parents=True, exist_ok=True)
    args = {
        "device": device,
        "out_dir": str(out),
        "videos_dir": str(videos),
        "name": name,
        "dimensions": dims,
        "mode": mode,
    }
    if python is None:
        full_info = Path(vbench.__file__).parent / "VBench_full_info.json"
        with _env(_offline_env(cache)):
            vbench.VBench(device, str(full_info), str(out)).evaluate(
                videos_path=str(videos), name=name, dimension_list=dims, local=True, mode=mode
            )
    else:
        env = {**os.environ, **_offline_env(cache)}
        proc = subprocess.run(
            [python, "-c", _SUBPROCESS_SCRIPT, json.dumps(args)],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"VBench failed in {python} (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    results = read_results(out / f"{name}_eval_results.json")
    absent = [d for d in dims if d not in results]
    if absent:
        raise RuntimeError(f"VBench wrote no result for {', '.join(absent)} in {out / f'{name}_eval_results.json'}")
    return {d: results[d] for d in dims}
