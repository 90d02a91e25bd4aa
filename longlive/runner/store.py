"""Append-only results store: one JSON line per finished cell, Parquet snapshots for analysis.

Lines are appended with a single write + fsync, so a killed sweep leaves at worst one torn trailing line,
which the reader drops (and reports). The latest row for a cell id wins. Parquet is rewritten atomically.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any


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
        """Every parseable row in file order (a torn last line from a killed writer is skipped)."""
        if not self.jsonl.exists():
            return []
        out = []
        with self.jsonl.open("r", encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    print(f"results store: ignoring unreadable line {n} of {self.jsonl} (torn write?)", file=sys.stderr)
        return out

    def latest(self) -> dict[str, dict[str, Any]]:
        return {r["cell_id"]: r for r in self.rows()}

    def append(self, row: dict[str, Any]) -> None:
        line = json.dumps(row, default=str, separators=(",", ":")) + "\n"
        fd = os.open(self.jsonl, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)

    def write_parquet(self) -> Path | None:
        """Snapshot of the latest row per cell, nested columns as JSON text (Parquet needs flat types)."""
        latest = list(self.latest().values())
        if not latest:
            return None
        import pandas as pd

        flat = [{k: (json.dumps(v, default=str) if isinstance(v, (dict, list)) else v) for k, v in r.items()}
                for r in latest]
        df = pd.DataFrame(flat)
        tmp = self.parquet.with_name(self.parquet.name + ".tmp")
        df.to_parquet(tmp, index=False)
        tmp.replace(self.parquet)
        return self.parquet
