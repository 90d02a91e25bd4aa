"""The Hydra config tree (model, precision, kv, decode, hardware, workload groups and the experiment presets), shipped
as package data so that an installed wheel runs `longlive sweep +experiment=smoke` as a checkout does."""

from pathlib import Path

EXPERIMENTS_DIR = Path(__file__).resolve().parent
PRECISION_DIR = EXPERIMENTS_DIR / "precision"
