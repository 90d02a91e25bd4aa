"""Matrix expansion with Hydra: an experiment preset's `hydra.sweeper.params` plus command-line sweeps
(`steps=4,2`) are expanded by Hydra's own basic sweeper into cells; each cell is one composed config.

A cell's id is a hash of its resolved config (minus run-time knobs such as timeouts), so the same cell in a
re-run has the same id and a finished one is never redone. Every cell is checked when the matrix is expanded, before
any runs: one with an invalid value stops the sweep, and the message lists every invalid cell.

An experiment may add `matrices:` — further sub-matrices, each `{overrides: [...], params: {...}}` expanded the
same way — whose cells join the main matrix's (a union: training cells need not be multiplied by the inference-only
axes).
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from longlive.experiments import EXPERIMENTS_DIR
from longlive.experiments.spec import from_config
from longlive.names import INFERENCE_WORKLOADS
from longlive.runner.schema import AXES
from longlive.workloads import get_workload

NOT_IDENTITY = ("cell_timeout_s", "hydra", "matrices", "results_dir", "force", "gates")
"""Keys that do not change what a cell measures (excluded from its id): `gates` judge rows when they are read."""


@dataclass
class Cell:
    overrides: list[str]
    config: dict[str, Any]
    cell_id: str
    axes: dict[str, Any] = field(default_factory=dict)

    @property
    def experiment(self) -> str:
        return self.config.get("experiment", "adhoc")


def cell_hash(config: dict[str, Any]) -> str:
    ident = {k: v for k, v in config.items() if k not in NOT_IDENTITY}
    blob = json.dumps(ident, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]




def axes_of(config: dict[str, Any]) -> dict[str, Any]:
    """The result columns of the matrix axes, read off a resolved config: None where the workload ignores an axis
    (a training row has no decode mode, an inference row no train layout)."""
    wl = config["workload"]["name"]
    infer = wl in INFERENCE_WORKLOADS
    sp = int(config["sp"])
    return {
        "model": config["model"]["name"], "precision": config["precision"]["name"],
        "attn": config.get("attn", "auto") if infer or wl == "attn_error" else None,
        "kv_quant": config["kv_quant"]["name"] if infer else None, "sp": sp,
        "exchange": config.get("exchange", "none") if infer else None,
        "steps": int(config["steps"]) if infer else None, "decode": config["decode"]["mode"] if infer else None,
        "hardware": config["hardware"]["name"], "compile": config.get("compile", "none"),
        "dp": int(config.get("dp", 1)) if wl == "train" else None,
        "train_layout": (config.get("train_layout", "none") if sp > 1 else "none") if wl == "train" else None,
        "error_recycling": bool(config.get("error_recycling", False)) if wl == "train" else None,
        "dmd_quantised": config.get("dmd_quantised", "none") if wl == "dmd" else None,
    }


_ACTIVE_DIR: list[Path] = []  # set while a sweep's cells are composed inside one Hydra context


def _compose(overrides: list[str], config_dir: Path, hydra_cfg: bool = False):
    if _ACTIVE_DIR and _ACTIVE_DIR[-1] == config_dir:
        return compose("config", overrides=overrides, return_hydra_config=hydra_cfg)
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        return compose("config", overrides=overrides, return_hydra_config=hydra_cfg)


class HydraContext:
    """One Hydra initialisation for many compositions (hundreds of cells in a large matrix)."""

    def __init__(self, config_dir: Path):
        self.config_dir = config_dir
        self.ctx = initialize_config_dir(config_dir=str(config_dir), version_base="1.3")

    def __enter__(self):
        self.ctx.__enter__()
        _ACTIVE_DIR.append(self.config_dir)
        return self

    def __exit__(self, *exc):
        _ACTIVE_DIR.pop()
        return self.ctx.__exit__(*exc)


def _resolve(cfg) -> dict[str, Any]:
    out = OmegaConf.to_container(cfg, resolve=True)
    out.pop("hydra", None)
    return out


def make_cell(overrides: list[str], config_dir: Path = EXPERIMENTS_DIR) -> Cell:
    """Compose one cell's config from a full list of (non-sweep) overrides. Compositions are kept for this process
    (one costs about 0.25 s; a sweep asks for each reference cell once per cell, the tests for the smoke matrix many
    times) and redone when a file under `config_dir` changes; each caller gets its own copy."""
    key = (tuple(overrides), str(config_dir), _fingerprint(config_dir))
    if key not in _CELLS:
        config = _resolve(_compose(list(overrides), config_dir))
        assert set(axes_of(config)) == set(AXES)
        _CELLS[key] = Cell(overrides=list(overrides), config=config, cell_id=cell_hash(config), axes=axes_of(config))
    return copy.deepcopy(_CELLS[key])


_CELLS: dict[tuple[tuple[str, ...], str, tuple], Cell] = {}
"""Cells composed in this process, by (overrides, config folder, the folder's file fingerprint)."""


def _fingerprint(config_dir: Path) -> tuple:
    """(relative path, mtime_ns, size) of every file under the config folder: an edited preset is composed anew."""
    return tuple(sorted((str(f.relative_to(config_dir)), st.st_mtime_ns, st.st_size)
                        for f in config_dir.rglob("*") if f.is_file() for st in (f.stat(),)))


def expand(experiment: str | None, overrides: list[str] = (), config_dir: Path = EXPERIMENTS_DIR) -> list[Cell]:
    """All cells of `+experiment=NAME` with extra overrides (sweeps like `steps=4,2` allowed), in Hydra's order."""
    if experiment is not None:
        known = sorted(p.stem for p in (config_dir / "experiment").glob("*.yaml"))
        if experiment not in known:
            raise ValueError(f"unknown experiment {experiment!r}; known: {', '.join(known)}")
    parser = OverridesParser.create()
    user = parser.parse_overrides(list(overrides))
    fixed = [o.input_line for o in user if not o.is_sweep_override()]
    swept_user = {o.get_key_element(): o.input_line for o in user if o.is_sweep_override()}
    base = ([f"+experiment={experiment}"] if experiment else []) + fixed
    try:
        root = _compose(base, config_dir, hydra_cfg=True)
    except Exception as exc:  # unknown group option or key, wrong type: Hydra's first lines say which, before any work
        root_cause = exc
        while root_cause.__cause__ is not None:  # Hydra wraps OmegaConf's ValidationError, which names key and type
            root_cause = root_cause.__cause__
        lines = [ln.strip() for ln in str(root_cause).splitlines() if ln.strip()][:2]
        raise ValueError(f"cannot compose the config for {base}: {'; '.join(lines)}") from exc
    fixed_keys = _keys(fixed, parser)
    # (base overrides, sweep params, user sweeps that apply): the main matrix takes every sweep from the command
    # line; a sub-matrix only those of keys it sweeps itself (steps=4,2 must not multiply training cells)
    matrices = [(base, dict(root.hydra.sweeper.params or {}), list(swept_user.values()))]
    for extra in root.get("matrices") or []:  # further sub-matrices: a union, not a product, of cell sets
        own = [o for o in (extra.get("overrides") or [])
               if o.split("=", 1)[0].lstrip("+~") not in fixed_keys | set(swept_user)]
        params = dict(extra.get("params") or {})
        matrices.append((base + own, params, [v for k, v in swept_user.items() if k in params]))
    cells, seen = [], set()
    with HydraContext(config_dir):
        for mbase, params, user_sweeps in matrices:
            lines = [f"{k}={v}" for k, v in params.items() if k not in swept_user and k not in fixed_keys]
            lines += user_sweeps
            combos = ([c for batch in BasicSweeper.split_arguments(parser.parse_overrides(lines), max_batch_size=None)
                       for c in batch] if lines else [[]])
            for combo in combos:
                cell = make_cell(mbase + list(combo), config_dir)
                if cell.cell_id not in seen:
                    seen.add(cell.cell_id)
                    cells.append(cell)
    # values (types were checked by composing): every invalid cell named before any runs
    invalid = [f"  {describe(cell)}: {err}" for cell in cells if (err := cell_error(cell)) is not None]
    if invalid:
        raise ValueError(f"{len(invalid)} of {len(cells)} cells are invalid; nothing ran:\n" + "\n".join(invalid))
    return cells


def cell_error(cell: Cell) -> str | None:
    """Why the cell's values are invalid on any machine (the run spec's rules, then its workload's own), else None.
    A workload's returned reason (this machine lacks a GPU, a backend, weights) is not an error: the cell becomes an
    explained skip when it is reached. Answers are kept for this process, by the whole config (a check through the
    typed spec costs about 0.15 s)."""
    key = json.dumps(cell.config, sort_keys=True, default=str)
    if key not in _ERRORS:
        try:
            spec = from_config(cell.config)
            get_workload(spec.workload.name).check(spec)
            _ERRORS[key] = None
        except ValueError as exc:
            _ERRORS[key] = str(exc)
    return _ERRORS[key]


_ERRORS: dict[str, str | None] = {}


def describe(cell: Cell) -> str:
    """A cell as its axes and the overrides that made it, for messages."""
    axes = " ".join(f"{k}={v}" for k, v in cell.axes.items() if v is not None)
    return f"{axes} [{' '.join(cell.overrides) or 'defaults'}]"


def _keys(lines: list[str], parser) -> set[str]:
    return {o.get_key_element() for o in parser.parse_overrides(lines)} if lines else set()


def reference_cell(cell: Cell, config_dir: Path = EXPERIMENTS_DIR) -> Cell | None:
    """The cell that differs from `cell` only in the axes named by `quality.reference` (fidelity baseline)."""
    ref = (cell.config.get("quality") or {}).get("reference")
    if not ref or cell.config["workload"]["name"] not in INFERENCE_WORKLOADS:
        return None
    ref = {k: v for k, v in ref.items() if v is not None}  # null: the cell's own value (see config.yaml)
    kept = [o for o in cell.overrides if o.split("=", 1)[0].lstrip("+~") not in ref]
    overrides = tuple(kept + [f"{k}={v}" for k, v in ref.items()])
    return make_cell(list(overrides), config_dir)  # composed once per process (make_cell keeps compositions)
