"""The same cells through Hydra's own multirun, for launchers such as hydra-submitit-launcher (Slurm):

    python -m longlive.runner.hydra_app -m +experiment=table3_inference hydra/launcher=slurm

Each Hydra job is one cell, run by the same store-aware executor (a finished cell is reused), with results in
`results_dir` (default results/<experiment>) so a local `longlive report` reads them like any other sweep.

A job that gets SIGTERM while its cell runs (scancel, preemption, the time limit) writes no row for that cell, as a
killed local sweep writes none, and fails with a message saying so: re-submitting the sweep redoes that cell only.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import hydra
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from longlive.measure.manifest import slurm_job_id
from longlive.runner.executor import run_cell
from longlive.runner.matrix import EXPERIMENTS_DIR, Cell, make_cell
from longlive.runner.store import ResultsStore


class CellTerminated(RuntimeError):
    """The job was told to stop mid-cell; the cell has no row, so a rerun redoes it."""


@contextmanager
def app_hydra_set_aside() -> Iterator[None]:
    """The matrix composes a cell (and its reference) under its own Hydra initialisation, which Hydra refuses while
    this app's is live ("GlobalHydra is already initialized"): set the app's aside meanwhile, then put it back."""
    app_hydra = GlobalHydra.instance().hydra
    GlobalHydra.instance().clear()
    try:
        yield
    finally:
        GlobalHydra.instance().clear()
        if app_hydra is not None:
            GlobalHydra.instance().initialize(app_hydra)


@hydra.main(config_path=str(EXPERIMENTS_DIR), config_name="config", version_base="1.3")
def app(cfg: DictConfig) -> str:
    overrides = list(HydraConfig.get().overrides.task)
    with app_hydra_set_aside():
        return run_one(make_cell(overrides), cfg)


def run_one(cell: Cell, cfg: DictConfig) -> str:
    """The cell's row into the store unless it has one (or the job is stopped mid-cell); the row's status."""
    results = Path(cfg.get("results_dir") or Path(hydra.utils.get_original_cwd()) / "results" / cell.experiment)
    store = ResultsStore(results)
    prev = store.latest().get(cell.cell_id)
    if prev is not None and not cfg.get("force", False):
        return prev["status"]
    job = slurm_job_id()
    print(f"cell {cell.cell_id} in Slurm job {job}", flush=True)  # which job to scancel, which log to read
    # submitit only logs SIGTERM; recorded here, so the cell's death by the same signal is not stored as a failure
    stopped: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: stopped.append(signum))
    try:
        row = run_cell(cell, store)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if stopped:
        raise CellTerminated(f"cell {cell.cell_id}: Slurm job {job} got SIGTERM mid-cell (scancel, preemption or "
                             f"time limit); no row written, re-submit the sweep to redo this cell")
    store.append(row)
    return row["status"]


if __name__ == "__main__":
    app()
