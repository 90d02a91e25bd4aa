"""The device scripts' sweeps expand on this machine: issue 20's `run.sh` phases, dry (`DRY_RUN=1`), so that an
override a later commit renamed fails here rather than after a device machine was started for it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "reports" / "perf" / "attn20" / "run.sh"


def _dry(out: Path, phase: str, **extra: str) -> subprocess.CompletedProcess:
    """`run.sh` dry for one phase, with this interpreter's folder first on PATH (its python3 has longlive)."""
    env = {**os.environ, "DRY_RUN": "1", "OUT": str(out), "PHASE": phase, **extra,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(["bash", str(RUN)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("phase", ["kernels", "ladder2", "memory2", "decode2"])
def test_every_sweep_of_the_next_device_phases_expands(tmp_path, phase):
    done = _dry(tmp_path, phase)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    said = [ln for ln in done.stdout.splitlines() if ln.startswith("dry run: sweep")]
    assert said and all(ln.endswith(" cells") and " 0 cells" not in ln for ln in said), done.stdout
    listed = sorted(tmp_path.glob("dry_*.txt"))
    assert listed and all(f.read_text().strip() for f in listed)
    assert not list(tmp_path.glob("sweep_*.jsonl"))  # nothing ran


def test_a_bad_override_in_a_phase_fails_the_dry_run(tmp_path):
    done = _dry(tmp_path, "ladder2", ARGS="kv_rulez=mse")
    assert done.returncode == 1 and "refused" in done.stdout and "Key 'kv_rulez' not in 'RunSpec'" in done.stderr
