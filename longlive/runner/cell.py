"""One cell in its own process: `python -m longlive.runner.cell CELL_JSON ROW_JSON` (or under torchrun).

Reads the cell spec the executor wrote, runs the workload (`repeats` times, unless it repeats its timed part
itself), writes the finished row atomically. Any exception becomes a `failed` row with a classified reason, so the
sweep records it and moves on.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from longlive.experiments.spec import RunSpec, from_config
from longlive.measure.manifest import manifest
from longlive.measure.spread import aggregate_repeats
from longlive.output import write_text_atomic
from longlive.parallel.groups import shutdown_parallel
from longlive.runner.schema import TIMED_METRICS, empty_row
from longlive.workloads import CellContext, Workload, get_workload


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def classify_failure(text: str) -> str:
    """A short reason from an exception text or a stderr tail: OOM, missing extra, or the last error line."""
    low = text.lower()
    if "out of memory" in low or "outofmemoryerror" in low:
        return "OOM: " + _last_error_line(text)
    if "no module named" in low:
        mod = text[low.index("no module named") :].split("\n")[0]
        return f"missing extra: {mod}"
    return _last_error_line(text)


def _last_error_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "Error" in ln or "Exception" in ln or ln.startswith("error"):
            return ln[:500]
    return (lines[-1] if lines else "unknown failure")[:500]


def build_row(spec: dict[str, Any], status: str, reason: str | None, metrics: dict[str, Any] | None,
              started: str, t0: float) -> dict[str, Any]:
    cfg = spec["config"]
    row = empty_row(spec["cell_id"], cfg.get("experiment", "adhoc"), cfg["workload"]["name"], spec["axes"],
                    cfg.get("frames"), cfg.get("seed"))
    row.update(status=status, reason=reason, config=cfg, started_at=started, finished_at=now(),
               duration_s=time.perf_counter() - t0, repeats=int(cfg.get("repeats") or 1))
    for k, v in (metrics or {}).items():
        row[k] = v
    row["manifest"] = manifest(cfg, cfg.get("seed"))
    return row


def run_workload(workload: Workload, spec: RunSpec, ctx: CellContext) -> dict[str, Any]:
    """The row's metrics: one run, or `spec.repeats` runs aggregated (median and interval of each timed metric,
    longlive.measure.spread); a workload with `repeats_inside` repeats its own timed part instead."""
    if spec.repeats == 1 or getattr(workload, "repeats_inside", False):
        return workload.run(spec, ctx)
    return aggregate_repeats([workload.run(spec, ctx.for_repeat(k)) for k in range(spec.repeats)], TIMED_METRICS)


def write_json_atomic(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, default=str))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    spec_path, row_path = Path(argv[0]), Path(argv[1])
    spec = json.loads(spec_path.read_text())
    rank = int(os.environ.get("RANK", "0"))
    started, t0 = now(), time.perf_counter()
    ref = spec.get("reference_dir")
    ctx = CellContext(out=Path(spec["out"]), reference_dir=Path(ref) if ref else None)
    try:
        workload = get_workload(spec["config"]["workload"]["name"])
        metrics = run_workload(workload, from_config(spec["config"]), ctx)
        row = build_row(spec, "ok", None, metrics, started, t0)
        code = 0
    except Exception as exc:  # recorded as a failed row; the sweep goes on
        tb = traceback.format_exc()
        (ctx.out / "traceback.txt").write_text(tb)
        row = build_row(spec, "failed", classify_failure(f"{type(exc).__name__}: {exc}\n{tb}"), None, started, t0)
        code = 1
    if rank == 0:
        write_json_atomic(row_path, row)
    shutdown_parallel()  # SP cells: tear gloo/NCCL down cleanly so the ranks exit without aborting
    return code


if __name__ == "__main__":
    sys.exit(main())
