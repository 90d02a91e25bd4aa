"""Shared fixtures: CPU only, deterministic, small threads so 2-core CI machines stay responsive."""

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

# One torch thread per xdist worker (`make test` runs 2 workers on 2 cores): 2 threads each oversubscribed the cores.
# Measured 2026-12-08 on the 2-core VM: a CPU-heavy subset 143 -> 116 s, the whole suite 684 s (CI) -> 579 s.
torch.set_num_threads(1 if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1 else 2)

SPEC_DIR = Path(__file__).resolve().parents[1] / "spec"


def published_shapes() -> dict:
    """The published key → shape lists (spec 01), from the repo's copy."""
    return json.loads((SPEC_DIR / "published_state_dict_shapes.json").read_text())


@pytest.fixture
def shapes() -> dict:
    return published_shapes()


CHROMIUM = next((Path(p) for p in map(shutil.which, (os.environ.get("LONGLIVE_CHROMIUM", "chromium"), "chromium",
                                                     "chromium-browser", "google-chrome")) if p), None)
"""A headless browser found on PATH (or LONGLIVE_CHROMIUM); where `.ci/run` installed one it requires the tests."""


@pytest.fixture
def chromium_screenshot(tmp_path: Path) -> Callable[[Path, tuple[int, int]], Path]:
    """shoot(html, (width, height)) → a PNG of the page in headless Chromium. Skips where no browser is found, unless
    `.ci/run` installed one (LONGLIVE_REQUIRE_CHROMIUM), where a missing browser fails."""
    if CHROMIUM is None:
        assert not os.environ.get("LONGLIVE_REQUIRE_CHROMIUM"), (
            ".ci/run installed chromium and asks for this test, but no chromium is on PATH (or LONGLIVE_CHROMIUM)")
        pytest.skip("no chromium on PATH (apt-get install -y chromium, or set LONGLIVE_CHROMIUM)")

    def shoot(html: Path, size: tuple[int, int]) -> Path:
        shot = tmp_path / "shot.png"
        cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
               f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", f"--window-size={size[0]},{size[1]}",
               html.resolve().as_uri()]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert shot.exists(), f"no screenshot; chromium rc={proc.returncode}: {proc.stderr[-2000:]}"
        return shot

    return shoot
