"""Read result stores into one pandas table, one row per cell.

The store is append-only (a re-run cell appends a new row), so the last row of a cell_id is the truth.
Each row remembers the folder of the file it came from, because artifact paths are relative to it.
A `longlive generate` result.json ({"rows": [...], "manifest": ...} in the runner's schema) reads like a store; a file
of the retired bench scripts is refused with the command that converts it (longlive.report.legacy).
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import pandas as pd

from longlive.report.compare import flag
from longlive.report.legacy import is_runner_row, legacy_files, legacy_message, legacy_script
from longlive.runner.schema import AXES, IDENTITY, METRICS, NESTED, TIMES
from longlive.runner.store import read_jsonl

RESULTS_NAMES = ("results.jsonl", "results.parquet", "result.json")
"""Looked for in a folder, in this order: a sweep's store (JSONL, else its Parquet snapshot), a generate's result."""
INT_COLUMNS = ("sp", "steps", "frames", "seed", "dp")
SOURCE_COLUMNS = ("source_dir", "source_file")
DERIVED_COLUMNS = ("gpu_name",)


def resolve_results_path(path: Path) -> Path:
    """A results file for `path`: the file itself, or results.jsonl (else .parquet, else a generate's result.json)
    inside a folder. A file (or a folder of files) of the retired bench scripts is a ValueError naming the command
    that converts it."""
    path = Path(path)
    if path.is_dir():
        for name in RESULTS_NAMES:
            if (path / name).is_file():
                return _not_legacy(path / name)
        if legacy_files(path, max_checked=200):
            raise ValueError(legacy_message(path))
        raise FileNotFoundError(f"{path} holds neither {' nor '.join(RESULTS_NAMES)}")
    if not path.is_file():
        raise FileNotFoundError(f"results file {path} does not exist")
    if path.suffix not in (".jsonl", ".parquet", ".json"):
        raise ValueError(f"{path}: expected a .jsonl / .parquet results file, a generate's result.json, or a folder "
                         "holding one")
    return _not_legacy(path)


def _not_legacy(path: Path) -> Path:
    script = legacy_script(path) if path.suffix in (".jsonl", ".json") else None
    if script is not None:
        raise ValueError(legacy_message(path, script))
    return path


def _read_jsonl(path: Path) -> list[dict]:
    """Rows of a JSONL store; torn lines (a writer killed mid-append) are dropped with a warning each."""
    rows, torn = read_jsonl(path)
    for lineno in torn:
        warnings.warn(f"{path}:{lineno}: ignoring a torn line (a write cut short)", stacklevel=3)
    return rows


def _read_json(path: Path) -> list[dict]:
    """The rows of a JSON results file: `longlive generate`'s {"rows": [...], "manifest": ...}, runner schema."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not JSON ({exc})") from None
    rows = data.get("rows") if isinstance(data, dict) else None
    if not isinstance(rows, list) or not all(is_runner_row(r) for r in rows):
        raise ValueError(f"{path}: not a results file (a JSON with 'rows' in the runner's schema, as `longlive "
                         "generate` writes)")
    return rows


def _as_dict(v: Any) -> dict:
    """Parquet may hold nested columns as JSON text, structs or key/value pairs: give back a plain dict."""
    if isinstance(v, dict):
        return v
    if isinstance(v, (str, bytes)):
        try:
            parsed = json.loads(v)
        except json.JSONDecodeError:
            return {"value": v}
        return parsed if isinstance(parsed, dict) else {"value": parsed}
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return {}
    try:  # a map column arrives as a sequence of (key, value) pairs
        return {k: val for k, val in v}
    except (TypeError, ValueError):
        return {"value": v}


def _plain(v: Any) -> Any:
    """Parquet structs come back with every field of the union (None where a row had none) and arrays as
    numpy: drop the None fields and give lists, so a skipped row's empty manifest stays empty."""
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items() if x is not None}
    if hasattr(v, "tolist") and not isinstance(v, (str, bytes)):
        return _plain(v.tolist())
    if isinstance(v, list):
        return [_plain(x) for x in v]
    return v


def _read_parquet(path: Path) -> list[dict]:
    rows = pd.read_parquet(path).to_dict(orient="records")
    for r in rows:
        for n in NESTED:
            if isinstance(r.get(n), dict):
                r[n] = _plain(r[n])
    return rows


def _coerce(df: pd.DataFrame) -> pd.DataFrame:
    """Numbers as numbers (NaN where absent), nested columns as dicts: the plots and tables rely on it."""
    for m in METRICS:
        df[m] = pd.to_numeric(df[m], errors="coerce").astype("float64")
    for c in INT_COLUMNS:
        num = pd.to_numeric(df[c], errors="coerce")
        if num.notna().sum() == df[c].notna().sum() and (num.dropna() % 1 == 0).all():
            df[c] = num.astype("Int64")
    for n in NESTED:
        df[n] = [_as_dict(v) for v in df[n]]
    df["status"] = [str(s).lower() if isinstance(s, str) else "unknown" for s in df["status"]]
    # a boolean axis: parquet may give numpy bools or floats, an override the string "false"; None stays None
    df["error_recycling"] = pd.Series([v if flag(v) is None else flag(v) for v in df["error_recycling"]],
                                      index=df.index, dtype="object")
    # the hardware axis names the *request* (e.g. "gpu" = whatever is there); the manifest names the device
    df["gpu_name"] = [m.get("gpu") or g for m, g in zip(df["manifest"], df["hardware"], strict=True)]
    return df


LEGACY_COLUMNS = {"gpu": "hardware", "dmd_lora_rank": "lora_rank"}
"""Row columns renamed since rows were first written (old name -> one name per concept); read, never rewritten."""


def upgrade_row(row: dict) -> dict:
    """A row written before a column was renamed, in today's names (in place; also returned)."""
    for old, new in LEGACY_COLUMNS.items():
        if old in row and new not in row:
            row[new] = row.pop(old)
    return row


def load_results(paths: list[Path]) -> pd.DataFrame:
    """All rows of the given stores (files or folders), the last row per cell_id winning, in store order.

    Adds `source_dir` (absolute folder of the results file, for artifact paths), `source_file`, and
    `gpu_name` (the device in the row's manifest, else the hardware axis value).
    """
    rows: list[dict] = []
    for p in paths:
        f = resolve_results_path(Path(p))
        batch = {".jsonl": _read_jsonl, ".json": _read_json}.get(f.suffix, _read_parquet)(f)
        folder = str(f.resolve().parent)
        for r in batch:
            r["source_dir"], r["source_file"] = folder, str(f.resolve())
            upgrade_row(r)
        rows.extend(batch)
    columns = list(dict.fromkeys([*IDENTITY, *AXES, *METRICS, *NESTED, *TIMES, *SOURCE_COLUMNS]))
    df = pd.DataFrame(rows) if rows else pd.DataFrame(columns=columns)
    for c in columns:
        if c not in df.columns:
            df[c] = None
    df = df[columns + [c for c in df.columns if c not in columns]]
    keyed = df["cell_id"].notna()
    df = pd.concat([df[keyed].drop_duplicates("cell_id", keep="last"), df[~keyed]]).sort_index()
    return _coerce(df.reset_index(drop=True))


def artifact_path(row: pd.Series | dict, name: str) -> Path | None:
    """The absolute path of artifact `name` of a row, or None when it is not recorded or not on disk."""
    rel = (row["artifacts"] or {}).get(name) if isinstance(row["artifacts"], dict) else None
    if not rel or not isinstance(rel, str):
        return None
    p = Path(rel) if Path(rel).is_absolute() else Path(row["source_dir"]) / rel
    return p if p.is_file() else None
