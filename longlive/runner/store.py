"""Append-only results store: one JSON line per finished cell, Parquet snapshots for analysis.

Lines are appended with a single write + fsync, so a killed sweep leaves at worst one torn trailing line. The next
append starts a new line after such a tail, so the torn fragment stays a line of its own and every reader skips
exactly that line (and reports it). A write that fails (a full disk) is taken back and raised as an
`OutputWriteError`, so the file keeps exactly the rows before it. The latest row for a cell id wins. Parquet is
rewritten atomically.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from longlive.output import atomic_path, write_error


class ResultsStore:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.jsonl = self.root / "results.jsonl"
        self.parquet = self.root / "results.parquet"

    def cell_dir(self, cell_id: str) -> Path:
        d = self.root / "cells" / cell_id
        d.mkdir(parents=True, exist_ok=True)
        return d

    def rows(self) -> list[dict[str, Any]]:
        """Every readable row in file order (torn lines from killed writers are skipped and reported)."""
        if not self.jsonl.exists():
            return []
        rows, torn = read_jsonl(self.jsonl)
        for n in torn:
            print(f"results store: ignoring unreadable line {n} of {self.jsonl} (torn write?)", file=sys.stderr)
        return rows

    def latest(self) -> dict[str, dict[str, Any]]:
        return {r["cell_id"]: r for r in self.rows()}

    def append(self, row: dict[str, Any]) -> None:
        """One line, one write, fsync'd. After a torn tail (no final newline) the row starts on a new line."""
        line = (json.dumps(row, default=str, separators=(",", ":")) + "\n").encode("utf-8")
        size = written = 0
        try:
            fd = os.open(self.jsonl, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as exc:
            raise write_error(exc, self.jsonl, f"the row of cell {row.get('cell_id')} to {self.jsonl}") from exc
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                line = b"\n" + line
            while written < len(line):  # a full disk can take part of a write and fail the rest: never drop a tail
                written += os.write(fd, line[written:])
            os.fsync(fd)
        except OSError as exc:
            try:  # take back our partial line (only if no other writer appended since), so the rows before stay whole
                if os.fstat(fd).st_size == size + written:
                    os.ftruncate(fd, size)
            except OSError:
                pass  # then a torn tail, which readers skip and the next append steps over
            raise write_error(exc, self.jsonl, f"the row of cell {row.get('cell_id')} to {self.jsonl}") from exc
        finally:
            os.close(fd)

    def write_parquet(self) -> Path | None:
        """Snapshot of the latest row per cell, nested columns as JSON text (Parquet needs flat types)."""
        latest = list(self.latest().values())
        if not latest:
            return None
        flat = [{k: (json.dumps(v, default=str) if isinstance(v, (dict, list)) else v) for k, v in r.items()}
                for r in latest]
        df = pd.DataFrame(flat)
        with atomic_path(self.parquet) as tmp:
            df.to_parquet(tmp, index=False)
        return self.parquet


def read_jsonl(path: Path) -> tuple[list[dict[str, Any]], list[int]]:
    """(rows, line numbers of torn lines) of a results file: a line that is not a whole JSON object is a write cut
    short by a crash, skipped on its own; blank lines are ignored."""
    rows, torn = [], []
    with Path(path).open("rb") as f:
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                torn.append(n)
                continue
            if isinstance(row, dict) and "cell_id" in row:
                rows.append(row)
            else:
                torn.append(n)
    return rows, torn
