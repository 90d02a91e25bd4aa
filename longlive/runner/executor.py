"""Run a matrix: skip finished cells, check each cell cheaply, run the rest one process each, append rows.

A killed sweep loses nothing: rows are appended as each cell finishes, and a re-run skips every cell that
already has a row (`force` redoes them, `retry_failed` redoes failed ones). Ctrl-C or SIGTERM stops the running
cell's process with the sweep (no orphan keeps computing or writing); `longlive sweep` then says how to resume.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tqdm import tqdm

from longlive.experiments.spec import from_config
from longlive.runner.cell import build_row, classify_failure, now, write_json_atomic
from longlive.runner.matrix import EXPERIMENTS_DIR, Cell, HydraContext, expand, reference_cell
from longlive.runner.store import ResultsStore
from longlive.workloads import get_workload


def cell_command(cell: Cell, spec_path: Path, row_path: Path) -> list[str]:
    """The cell's process: plain Python, or torchrun with sp × dp ranks (dp: data-parallel training replicas)."""
    ranks = int(cell.config["sp"]) * int(cell.config.get("dp", 1))
    args = ["-m", "longlive.runner.cell", str(spec_path), str(row_path)]
    if ranks > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}", *args]
    return [sys.executable, *args]


def run_cell(cell: Cell, store: ResultsStore, config_dir: Path = EXPERIMENTS_DIR) -> dict[str, Any]:
    """One cell → one row (ok, failed or skipped), never an exception."""
    started, t0 = now(), time.perf_counter()
    spec = {"cell_id": cell.cell_id, "config": cell.config, "axes": cell.axes, "overrides": cell.overrides}
    try:
        workload = get_workload(cell.config["workload"]["name"])
        reason = workload.check(from_config(cell.config))
    except Exception as exc:
        return build_row(spec, "failed", classify_failure(f"{type(exc).__name__}: {exc}"), None, started, t0)
    if reason:
        return build_row(spec, "skipped", reason, None, started, t0)
    out = store.cell_dir(cell.cell_id)
    ref = reference_cell(cell, config_dir)
    ref_row = store.latest().get(ref.cell_id) if ref is not None else None
    spec["out"] = str(out)
    if ref is not None and ref.cell_id == cell.cell_id:
        spec["reference_dir"] = str(out)  # the reference itself: error 0, PSNR inf, by construction
    elif ref_row and ref_row["status"] == "ok":
        spec["reference_dir"] = str(store.cell_dir(ref.cell_id))
    else:
        spec["reference_dir"] = None
    spec_path, row_path = out / "cell.json", out / "row.json"
    row_path.unlink(missing_ok=True)
    write_json_atomic(spec_path, spec)
    env = dict(os.environ, PYTHONUNBUFFERED="1", NCCL_NVLS_ENABLE="0")
    timeout = float(cell.config.get("cell_timeout_s") or 1800)
    with (out / "stdout.log").open("w") as so, (out / "stderr.log").open("w") as se:
        proc = subprocess.Popen(cell_command(cell, spec_path, row_path), stdout=so, stderr=se, env=env)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop_process(proc)
            return build_row(spec, "failed", f"timeout after {timeout:.0f} s", None, started, t0)
        except BaseException:  # the sweep itself stopped (Ctrl-C, SIGTERM): no orphaned cell keeps running
            stop_process(proc)
            raise
    if row_path.exists():
        row = json.loads(row_path.read_text())
        row["artifacts"] = {k: f"cells/{cell.cell_id}/{v}" for k, v in (row.get("artifacts") or {}).items()}
        return row
    tail = (out / "stderr.log").read_text(errors="replace")[-4000:]
    reason = signal_reason(code, tail) or classify_failure(tail) or f"exit code {code}"
    return build_row(spec, "failed", reason, None, started, t0)


def stop_process(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM (torchrun passes it to its ranks), then SIGKILL after `grace_s`; waits, so no zombie is left."""
    proc.terminate()
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Interrupted(KeyboardInterrupt):
    """SIGTERM (`kill`, a scheduler's cancel) raised like Ctrl-C, so cleanup runs: the running cell is stopped, temp
    files are removed, rows already appended stay, and a rerun resumes."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


@contextmanager
def sigterm_interrupts() -> Iterator[list[int]]:
    """While inside, SIGTERM raises `Interrupted` (main thread only; elsewhere signals cannot be handled). The list
    yielded records the signals received: Python drops an exception raised while a garbage-collector callback runs,
    so a loop checks it at safe points too."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handler(signum: int, frame: object) -> None:
        received.append(signum)
        raise Interrupted(signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield received
    finally:
        signal.signal(signal.SIGTERM, previous)


def signal_reason(code: int, stderr_tail: str) -> str | None:
    """'killed by SIGKILL (signal 9)...' when the cell's process (or, under torchrun, a rank) died of a signal."""
    num = -code if code < 0 else None
    if num is None:  # torchrun reports a rank's death: "exitcode  : -9" / "Signal 9 (SIGKILL) received by PID"
        m = re.search(r"exitcode\s*:\s*-(\d+)", stderr_tail) or re.search(r"Signal (\d+) \(SIG\w+\) received",
                                                                         stderr_tail)
        num = int(m.group(1)) if m else None
    if num is None:
        return None
    try:
        name = signal.Signals(num).name
    except ValueError:
        name = f"signal {num}"
    hint = " (the host's out-of-memory killer sends SIGKILL)" if name == "SIGKILL" else ""
    return f"killed by {name} (signal {num}){hint}"


def order_cells(cells: list[Cell], config_dir: Path = EXPERIMENTS_DIR) -> list[Cell]:
    """Reference cells first, so every other cell can be compared with its reference; a reference the matrix does
    not hold is added, once, where the cell's `quality.add_reference` asks for it (perf_ladder's FP32 eager cell)."""
    ids = {c.cell_id for c in cells}
    refs: dict[str, Cell] = {}
    with HydraContext(config_dir):
        for c in cells:
            r = reference_cell(c, config_dir)
            if r is not None and (r.cell_id in ids or (c.config.get("quality") or {}).get("add_reference")):
                refs.setdefault(r.cell_id, r)
    return [*refs.values(), *(c for c in cells if c.cell_id not in refs)]


def run_sweep(experiment: str | None, overrides: list[str], results: Path, *, force: bool = False,
              retry_failed: bool = False, progress: bool = True, config_dir: Path = EXPERIMENTS_DIR) -> dict[str, int]:
    """Expand, resume and run a matrix; returns counts of ok / failed / skipped / reused rows (and of reused rows
    that had failed: `failed_earlier`). SIGTERM stops it like Ctrl-C (`Interrupted`), its running cell with it."""
    with sigterm_interrupts() as received:
        return _run_sweep(experiment, overrides, results, force, retry_failed, progress, config_dir, received)


def _run_sweep(experiment: str | None, overrides: list[str], results: Path, force: bool, retry_failed: bool,
               progress: bool, config_dir: Path, received: list[int]) -> dict[str, int]:
    cells = order_cells(expand(experiment, overrides, config_dir), config_dir)
    store = ResultsStore(results)
    done = store.latest()
    counts = {"ok": 0, "failed": 0, "skipped": 0, "reused": 0, "failed_earlier": 0}
    bar = tqdm(cells, desc=f"sweep {experiment or 'adhoc'}", unit="cell", disable=not progress, file=sys.stderr)
    for cell in bar:
        if received:  # a SIGTERM whose exception Python dropped (raised inside a GC callback): stop here
            raise Interrupted(received[0])
        prev = done.get(cell.cell_id)
        if prev is not None and not force and not (retry_failed and prev["status"] == "failed"):
            counts["reused"] += 1
            counts["failed_earlier"] += prev["status"] == "failed"
            continue
        bar.set_postfix_str(" ".join(f"{k}={v}" for k, v in cell.axes.items()))
        row = run_cell(cell, store, config_dir)
        store.append(row)
        counts[row["status"]] += 1
    store.write_parquet()
    return counts
