"""File checks before loading: what a weight file, shard folder or image really is, and whether it is whole.

A damaged file otherwise fails deep inside PyTorch, safetensors or PIL with a message about their internals ("mmap can
only be used with files saved with `_use_new_zipfile_serialization=True`", "Unsupported operand 50", "header too
large", `UnidentifiedImageError`). Here each loader names its expected layout (`Layout`) and `check_weights` sniffs
the container from the first bytes (torch zip archive, legacy torch pickle, safetensors, a folder of safetensors
shards with its index json) and checks its integrity cheaply: the safetensors header (length, JSON, every tensor's
byte range against the file size) and the zip end record and central directory, never the tensor data, so an 11 GB
file costs a few reads. A problem raises `FileCheckError` (a ValueError, so every command prints it cleanly) saying
what the file is, what it is not, which layout was expected and what to do.

The ground floor: imports only the standard library, torch, safetensors and PIL, so every layer may use it.
"""

from __future__ import annotations

import contextlib
import json
import math
import pickle
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from PIL import Image, UnidentifiedImageError
from safetensors import SafetensorError
from safetensors.torch import load_file

ZIP = "torch zip archive"
LEGACY = "legacy torch pickle"
SAFETENSORS = "safetensors file"
SHARDS = "folder of safetensors shards"
TORCH_FORMATS = (ZIP, LEGACY)

ZIP_MAGIC = b"PK\x03\x04"
LEGACY_MAGIC = b"\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19"  # pickle LONG1 of torch's legacy magic number, after b"\x80<proto>"
MAX_SAFETENSORS_HEADER = 100_000_000  # safetensors' own limit
SAFETENSORS_DTYPE_BYTES = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2,
                           "U16": 2, "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1}
ZIP_LOCAL_HEADER = 30  # bytes of a zip local file header before its name
IMAGE_END_MARKERS = {"PNG": b"IEND\xaeB`\x82", "JPEG": b"\xff\xd9"}  # the IEND chunk with its CRC; EOI
IMAGE_TAIL = 4096  # where the end marker is looked for (a JPEG may carry a short trailer after EOI)


class FileCheckError(ValueError):
    """A file that is not what its loader expects: the message names it, says what it is and what was expected."""


@dataclass(frozen=True)
class Layout:
    """One of the project's expected file layouts: how messages call it and which containers may hold it."""

    description: str
    formats: tuple[str, ...]


GENERATOR = Layout("the published BF16 generator layout (model_bf16.pt: a torch .pt state dict; or a .safetensors "
                   "file, or a folder of *.safetensors shards)", (ZIP, LEGACY, SAFETENSORS, SHARDS))
NVFP4_GENERATOR = Layout("the packed NVFP4 generator layout (model_4o6.pt: a torch .pt archive)", TORCH_FORMATS)
VAE = Layout("a VAE state dict (Wan2.x_VAE.pth: a torch .pth archive; the tiny codec: vae.safetensors)",
             (ZIP, LEGACY, SAFETENSORS))
UMT5 = Layout("the umT5-XXL encoder state dict (models_t5_umt5-xxl-enc-bf16.pth: a torch .pth archive, or a "
              ".safetensors file)", (ZIP, LEGACY, SAFETENSORS))
TINY_TEXT = Layout("the tiny text encoder (text_encoder.safetensors, written by save_tiny_text_encoder)",
                   (SAFETENSORS,))
LORA = Layout("a LoRA file ({generator_lora, critic_lora, step}: a torch .pt archive; or an adapter .safetensors)",
              (ZIP, LEGACY, SAFETENSORS))
TRAINING = Layout("a longlive training checkpoint (checkpoints/step_*.pt: a torch .pt archive)", TORCH_FORMATS)
GENERATOR_ANY = Layout("a generator checkpoint (model_bf16.pt, model_4o6.pt or a training step_*.pt: a torch .pt "
                       "archive; or a .safetensors file, or a folder of *.safetensors shards)",
                       (ZIP, LEGACY, SAFETENSORS, SHARDS))
LATENTS = Layout("generate's latents.safetensors (written by --decode none or --save-latents)", (SAFETENSORS,))


class _Damage(Exception):
    """Internal: what is wrong with a file of a known container (turned into a FileCheckError with the layout)."""


def _size_text(n: int) -> str:
    return f"{n} byte{'s' if n != 1 else ''}"


def _fail(path: Path, what: str, layout: Layout, fix: str) -> FileCheckError:
    return FileCheckError(f"{path}: {what}: expected {layout.description} — {fix}")


def sniff(path: str | Path) -> tuple[str | None, str]:
    """(container format or None, what the first bytes say it is) of a file, from at most its first 32 bytes."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(32)
    if size == 0:
        return None, "an empty file (0 bytes)"
    if head.startswith(ZIP_MAGIC):
        return ZIP, ZIP
    if head[:1] == b"\x80" and len(head) > 2 and LEGACY_MAGIC.startswith(head[2:2 + len(LEGACY_MAGIC)]):
        return LEGACY, LEGACY
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") <= MAX_SAFETENSORS_HEADER:
        return SAFETENSORS, SAFETENSORS
    if size < 9:
        return None, f"a file of only {_size_text(size)}, too short to be a torch archive or a safetensors file"
    known = ((b"version https://git-lfs", "a Git LFS pointer, not the file itself (run `git lfs pull`)"),
             (b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"\x1f\x8b", "a gzip archive"),
             (b"<", "an HTML/XML page (a failed download?)"), (b"{", "a JSON/text file"))
    for magic, what in known:
        if head.lstrip().startswith(magic):
            return None, what
    return None, f"unrecognised bytes (starts {head[:8].hex(' ')}), neither a torch archive nor a safetensors file"


def safetensors_header(path: str | Path) -> dict[str, Any]:
    """The JSON header of a safetensors file after checking it against the file size (raises _Damage)."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if n > MAX_SAFETENSORS_HEADER:
            raise _Damage(f"a damaged safetensors file (header length {n} is over the {MAX_SAFETENSORS_HEADER} limit)")
        if 8 + n > size:
            raise _Damage(f"a truncated safetensors file (its header alone should be {n} bytes; the file has "
                          f"{_size_text(size)} in all)")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _Damage(f"a damaged safetensors file (its header is not valid JSON: {exc})") from None
    if not isinstance(header, dict):
        raise _Damage("a damaged safetensors file (its header is not a JSON object)")
    data = size - 8 - n
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (b, e) = entry["dtype"], [int(s) for s in entry["shape"]], entry["data_offsets"]
            b, e = int(b), int(e)
        except (TypeError, KeyError, ValueError):
            raise _Damage(f"a damaged safetensors file (header entry {name!r} lacks dtype/shape/data_offsets)"
                          ) from None
        nbytes = math.prod(shape) * SAFETENSORS_DTYPE_BYTES.get(dtype, 0)
        if not 0 <= b <= e or (dtype in SAFETENSORS_DTYPE_BYTES and e - b != nbytes):
            raise _Damage(f"a damaged safetensors file (tensor {name!r} {dtype} {shape} has byte range [{b}, {e}))")
        end = max(end, e)
    if end > data:
        raise _Damage(f"a truncated safetensors file ({_size_text(size)}; its header places tensor data up to byte "
                      f"{8 + n + end})")
    if end < data:
        raise _Damage(f"a damaged safetensors file ({_size_text(data - end)} after the last tensor's data)")
    return header


def check_torch_zip(path: str | Path) -> None:
    """Check a torch zip archive's end record, central directory, data.pkl and entry offsets (raises _Damage)."""
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            start = getattr(zf, "start_dir", None)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as exc:
        raise _Damage(f"a truncated or damaged torch zip archive (no readable central directory at the end: {exc})"
                      ) from None
    if not any(i.filename.endswith("data.pkl") for i in infos):
        raise _Damage("a zip archive but not a torch one (no data.pkl in it)")
    if start is not None:
        for i in infos:
            if i.header_offset + ZIP_LOCAL_HEADER + len(i.filename.encode()) + i.compress_size > start:
                raise _Damage(f"a damaged torch zip archive (entry {i.filename} runs past the central directory)")


def _expected_formats(path: Path, layout: Layout) -> tuple[str, ...]:
    """The containers this path may hold: the name decides where a layout allows several (.safetensors or torch)."""
    torch_ok = tuple(f for f in layout.formats if f in TORCH_FORMATS)
    if SAFETENSORS in layout.formats and (path.suffix == ".safetensors" or not torch_ok):
        return (SAFETENSORS,)
    return torch_ok


def check_weights(path: str | Path, layout: Layout) -> str:
    """Check a weight file or shard folder before loading; returns its container (ZIP, LEGACY, SAFETENSORS, SHARDS).

    FileNotFoundError when it does not exist; FileCheckError (what it is, what was expected) when it is damaged or
    of another format.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: expected {layout.description}")
    if path.is_dir():
        if SHARDS not in layout.formats:
            raise _fail(path, "a folder, not a file", layout, "give the file itself")
        check_shard_folder(path, layout)
        return SHARDS
    fmt, what = sniff(path)
    expected = _expected_formats(path, layout)
    if fmt is None:
        raise _fail(path, what, layout, "re-copy the file or give the right one")
    if fmt not in expected:
        want = " or ".join(expected)
        if fmt in layout.formats:
            fix = "rename it to match its content (.safetensors for safetensors, .pt/.pth for a torch archive)"
        else:
            fix = "give a file in that layout"
        raise _fail(path, f"a {fmt}, not a {want}", layout, fix)
    try:
        if fmt == ZIP:
            check_torch_zip(path)
        elif fmt == SAFETENSORS:
            safetensors_header(path)
    except _Damage as exc:
        raise _fail(path, str(exc), layout, "re-copy the file") from None
    return fmt


def check_shard_folder(path: str | Path, layout: Layout = GENERATOR) -> list[Path]:
    """Check a folder of *.safetensors shards: every shard's header, and that its index json (if any) names shards
    that exist and tensors they hold. Returns the shards, sorted."""
    path = Path(path)
    shards = sorted(path.glob("*.safetensors"))
    if not shards:
        raise FileNotFoundError(f"no *.safetensors shards in {path}: expected {layout.description}")
    headers: dict[str, dict[str, Any]] = {}
    for shard in shards:
        fmt, what = sniff(shard)
        if fmt != SAFETENSORS:
            raise _fail(shard, f"{what}, not a safetensors shard", layout, "re-copy the shard")
        try:
            headers[shard.name] = safetensors_header(shard)
        except _Damage as exc:
            raise _fail(shard, str(exc), layout, "re-copy the shard") from None
    for index in sorted(path.glob("*.safetensors.index.json")):
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            if not isinstance(weight_map, dict):
                raise TypeError("weight_map is not an object")
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
            raise _fail(index, f"a damaged shard index ({type(exc).__name__}: {exc})", layout,
                        "re-copy the index json (or remove it: the shards are read without it)") from None
        for key, shard_name in weight_map.items():
            if shard_name not in headers:
                raise _fail(index, f"a shard index naming shard {shard_name} (for {key}), which is not in the folder",
                            layout, "copy the missing shard")
            if key not in headers[shard_name]:
                raise _fail(index, f"a shard index placing {key} in {shard_name}, which holds no such tensor", layout,
                            "re-copy the shards and their index")
    return shards


def check_present(files: Iterable[tuple[str | Path | None, Layout]]) -> None:
    """`check_weights` on each (path, layout) whose path exists: a command's cheap check of every weight file it will
    load, before any work (a missing optional file is left to the loader: seeded weights or its own message)."""
    for path, layout in files:
        if path is not None and Path(path).exists():
            check_weights(path, layout)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def load_torch(path: str | Path, layout: Layout, *, mmap: bool = True, map_location: Any = "cpu",
               safe_globals: Iterable[Any] = ()) -> Any:
    """`torch.load(weights_only=True)` after `check_weights`; memory-mapped when asked and the file is a zip archive
    (a legacy pickle cannot be mapped). A failure inside torch still names the file and the layout."""
    path = Path(path)
    fmt = check_weights(path, layout)
    if fmt not in TORCH_FORMATS:
        raise _fail(path, f"a {fmt}, not a torch archive", layout, "give a torch .pt/.pth file")
    allowed = list(safe_globals)
    try:
        with torch.serialization.safe_globals(allowed) if allowed else contextlib.nullcontext():
            return torch.load(str(path), map_location=map_location, weights_only=True, mmap=mmap and fmt == ZIP)
    except pickle.UnpicklingError as exc:
        if "weights only" in str(exc).lower():
            raise _fail(path, f"a {fmt} holding Python objects other than tensors and plain containers "
                              f"(weights_only refused: {_first_line(exc)})", layout,
                        "re-export it with tensors only") from None
        raise _fail(path, f"a damaged {fmt} ({_first_line(exc)})", layout, "re-copy the file") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise _fail(path, f"a damaged {fmt} ({_first_line(exc)})", layout, "re-copy the file") from None


def load_safetensors(path: str | Path, layout: Layout, *, device: str = "cpu") -> dict[str, torch.Tensor]:
    """`safetensors.torch.load_file` after `check_weights` (a failure inside safetensors still names the file)."""
    path = Path(path)
    fmt = check_weights(path, layout)
    if fmt != SAFETENSORS:
        raise _fail(path, f"a {fmt}, not a safetensors file", layout, "give a .safetensors file")
    try:
        return load_file(str(path), device=device)
    except (SafetensorError, OSError) as exc:
        raise _fail(path, f"a damaged safetensors file ({_first_line(exc)})", layout, "re-copy the file") from None


def check_image(path: str | Path, what: str = "image") -> None:
    """Open, verify and decode an image before any work (FileNotFoundError / FileCheckError naming `what`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist" + (" (it is a folder)" if path.is_dir() else ""))
    expected = "an image PIL can read (PNG, JPEG, WebP, ...)"
    size = path.stat().st_size
    if size == 0:
        raise FileCheckError(f"{what} {path}: an empty file (0 bytes): expected {expected}")
    fmt, kind = sniff(path)
    if fmt is not None:  # a weight file: PIL would guess some headerless format for it and fail obscurely
        raise FileCheckError(f"{what} {path}: not an image ({kind}): expected {expected}")
    try:
        with Image.open(path) as im:
            im.verify()  # structure and checksums, without decoding
            image_format = im.format or ""
            end = IMAGE_END_MARKERS.get(image_format)
        with Image.open(path) as im:  # verify() leaves the image unusable: reopen and decode every pixel
            im.load()
    except UnidentifiedImageError:
        raise FileCheckError(f"{what} {path}: not an image ({kind}): expected {expected}") from None
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        raise FileCheckError(f"{what} {path}: a truncated or damaged image ({_first_line(exc)}): expected {expected}"
                             " — re-copy or re-export it") from None
    if end is not None:  # PIL decodes a PNG without its IEND chunk and a JPEG without its end marker
        with open(path, "rb") as f:
            f.seek(max(0, size - IMAGE_TAIL))
            tail = f.read()
        if end not in tail:
            raise FileCheckError(f"{what} {path}: a truncated {image_format} image (no end marker): expected {expected}"
                                 " — re-copy or re-export it")


def check_lora_targets(model: nn.Module, targets: Iterable[str], source: str) -> None:
    """Every module a LoRA's keys target must be a module of `model`, checked before any weight changes: else a
    ValueError naming the first missing one and the model's layer count (a LoRA of a deeper model names blocks past
    the last; without this, torch says "ModuleList has no attribute '999'")."""
    have = dict(model.named_modules())
    blocks = getattr(model, "blocks", None)
    layers = (f"{len(blocks)} layers, blocks.0 … blocks.{len(blocks) - 1}"
              if isinstance(blocks, nn.ModuleList) and len(blocks) else "no module of that name")
    for name in targets:
        if name not in have:
            raise ValueError(f"{source}: the LoRA keys {name}.lora_A/lora_B name a module this model lacks (it has "
                             f"{layers}): the LoRA was trained for another model or preset")


__all__ = [
    "GENERATOR", "GENERATOR_ANY", "LATENTS", "LEGACY", "LORA", "NVFP4_GENERATOR", "SAFETENSORS", "SHARDS", "TINY_TEXT",
    "TRAINING", "UMT5", "VAE", "ZIP", "FileCheckError", "Layout", "check_image", "check_lora_targets", "check_present",
    "check_shard_folder", "check_torch_zip", "check_weights", "load_safetensors", "load_torch", "safetensors_header",
    "sniff",
]
