"""Sweeps on Slurm for real: a one-node cluster on this machine (.ci/slurm-single-node.sh), a sweep through
`longlive sweep --launcher slurm` (hydra-submitit-launcher), one job cancelled mid-cell with scancel, a rerun that
redoes that cell only, and rows that name the Slurm job that ran them.

CI runs it as root (.ci/run installs slurm-wlm first); elsewhere it is skipped with the reason."""

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / ".ci" / "slurm-single-node.sh"
SLURM_DIR = Path(os.environ.get("LONGLIVE_SLURM_DIR", "/tmp/longlive-slurm"))
FAST = ["frames=4", "quality.metrics=[temporal_flickering]", "decode=batch"]
# the tiny CPU cells on a 2-CPU node: no GPUs, one CPU and 1 GB each (the launcher's defaults are for GPU nodes)
ONE_CPU = ["hydra.launcher.gpus_per_node=null", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1",
           "hydra.launcher.timeout_min=15"]


def why_no_slurm() -> str | None:
    """Why this machine cannot start the single-node cluster, or None."""
    if importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is None:
        return "hydra-submitit-launcher is not installed (pip install hydra-submitit-launcher)"
    if os.geteuid() != 0:
        return "not root: slurmctld and slurmd must run as root here (CI runs this test as root)"
    if shutil.which("slurmctld") is None or shutil.which("slurmd") is None:
        if shutil.which("apt-get") is None:
            return "Slurm is not installed and there is no apt-get to install slurm-wlm"
        return "Slurm is not installed: `.ci/slurm-single-node.sh install` (as root) adds slurm-wlm and munge"
    return None


@pytest.fixture(scope="session")
def slurm_env():
    """The single node, started once for the session and stopped after it; the environment its clients need."""
    why = why_no_slurm()
    if why:
        pytest.skip(why)
    env = dict(os.environ, LONGLIVE_SLURM_DIR=str(SLURM_DIR))
    proc = subprocess.run([str(SCRIPT), "start"], env=env, capture_output=True, text=True, timeout=240)
    if proc.returncode != 0:
        subprocess.run([str(SCRIPT), "stop"], env=env, capture_output=True, timeout=60)
        lines = (proc.stdout + proc.stderr).strip().splitlines()
        pytest.skip(f"single-node Slurm failed to start (exit {proc.returncode}): {' | '.join(lines[-8:][::-1])}")
    env.update(SLURM_CONF=str(SLURM_DIR / "slurm.conf"), PATH=f"{SLURM_DIR / 'bin'}:{env['PATH']}")
    yield env
    subprocess.run([str(SCRIPT), "stop"], env=env, capture_output=True, timeout=60)


def _rows(results: Path) -> list[dict]:
    path = results / "results.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def _jobs_of_cells(sweep_dir: Path) -> dict[str, list[str]]:
    """cell id -> the Slurm jobs that ran it, from the line hydra_app prints in each job's log."""
    jobs: dict[str, list[str]] = {}
    for log in sweep_dir.rglob("*_log.out"):
        for cell, job in re.findall(r"cell (\w+) in Slurm job (\d+_\d+)", log.read_text(errors="replace")):
            jobs.setdefault(cell, []).append(job)
    return jobs


def _wait_queue_empty(env: dict, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        out = subprocess.run(["squeue", "-h", "-o", "%i %T"], env=env, capture_output=True, text=True).stdout
        if not out.strip():
            return
        time.sleep(0.5)
    raise AssertionError(f"jobs still queued after {timeout:.0f} s: {out}")


@pytest.mark.slow
def test_sweep_on_slurm_resumes_after_scancel_and_rows_carry_the_job_id(slurm_env, tmp_path):
    results, sweep_dir = tmp_path / "res", tmp_path / "multirun"
    cmd = [sys.executable, "-m", "longlive.cli", "sweep", *FAST, "steps=2,3,4", f"hydra.sweep.dir={sweep_dir}",
           *ONE_CPU, "--launcher", "slurm", "--results", str(results)]
    log = tmp_path / "first.log"
    with log.open("w") as f:
        first = subprocess.Popen(cmd, env=slurm_env, cwd=tmp_path, stdout=f, stderr=subprocess.STDOUT)
    victim, job, deadline = None, None, time.time() + 300
    while job is None and time.time() < deadline and first.poll() is None:
        done = {r["cell_id"] for r in _rows(results)}
        # mid-cell: the cell's own process has started (its stdout.log exists) and it has no row yet
        running = [p.parent.name for p in (results / "cells").glob("*/stdout.log") if p.parent.name not in done]
        jobs = _jobs_of_cells(sweep_dir)
        for cell in running:
            if cell in jobs:
                victim, job = cell, jobs[cell][-1]
                break
        time.sleep(0.1)
    assert job is not None, f"no cell seen running under Slurm: {log.read_text()[-3000:]}"
    cancel = subprocess.run(["scancel", job], env=slurm_env, capture_output=True, text=True)
    assert cancel.returncode == 0 and not cancel.stderr, cancel.stderr  # scancel says "Invalid job id" on stderr
    first.wait(timeout=600)
    out = log.read_text()
    _wait_queue_empty(slurm_env, 300)  # the sweep stops at the cancelled job; the other jobs finish on their own
    assert first.returncode != 0, out[-3000:]  # a cancelled cell is not a finished sweep
    before = _rows(results)
    assert victim not in {r["cell_id"] for r in before}, "the cancelled cell left a row"
    assert len(before) == 2 and all(r["status"] == "ok" for r in before), [r["reason"] for r in before]

    again = subprocess.run(cmd, env=slurm_env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    after = _rows(results)
    assert after[: len(before)] == before  # nothing finished was lost or rewritten
    ids = [r["cell_id"] for r in after]
    assert len(ids) == len(set(ids)) == 3 and ids[-1] == victim  # only the cancelled cell was redone
    assert {r["steps"] for r in after} == {2, 3, 4} and all(r["status"] == "ok" for r in after)
    ran = _jobs_of_cells(sweep_dir)
    for r in after:  # each row names the job that ran it; the redone cell a later job than the cancelled one
        assert r["manifest"]["slurm_job_id"] in ran[r["cell_id"]], (r["cell_id"], r["manifest"]["slurm_job_id"])
    assert after[-1]["manifest"]["slurm_job_id"] != job
