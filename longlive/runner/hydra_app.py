"""The same cells through Hydra's own multirun, for launchers such as hydra-submitit-launcher (Slurm):

    python -m longlive.runner.hydra_app -m +experiment=table3_inference hydra/launcher=slurm

Each Hydra job is one cell, run by the same store-aware executor (a finished cell is reused), with results in
`results_dir` (default results/<experiment>) so a local `longlive report` reads them like any other sweep.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from longlive.runner.executor import run_cell
from longlive.runner.matrix import EXPERIMENTS_DIR, make_cell
from longlive.runner.store import ResultsStore


@hydra.main(config_path=str(EXPERIMENTS_DIR), config_name="config", version_base="1.3")
def app(cfg: DictConfig) -> str:
    overrides = list(HydraConfig.get().overrides.task)
    cell = make_cell(overrides)
    results = Path(cfg.get("results_dir") or Path(hydra.utils.get_original_cwd()) / "results" / cell.experiment)
    store = ResultsStore(results)
    prev = store.latest().get(cell.cell_id)
    if prev is not None and not cfg.get("force", False):
        return prev["status"]
    row = run_cell(cell, store)
    store.append(row)
    return row["status"]


if __name__ == "__main__":
    app()
