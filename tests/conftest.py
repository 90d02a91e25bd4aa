"""Shared fixtures: CPU only, deterministic, small threads so 2-core CI machines stay responsive."""

import json
from pathlib import Path

import pytest
import torch

torch.set_num_threads(2)

SPEC_DIR = Path(__file__).resolve().parents[1] / "spec"


def published_shapes() -> dict:
    """The published key → shape lists (spec 01), from the repo copy or the shared folder beside it."""
    for cand in (SPEC_DIR, Path(__file__).resolve().parents[2] / "shared" / "spec"):
        f = cand / "published_state_dict_shapes.json"
        if f.exists():
            return json.loads(f.read_text())
    pytest.skip("published_state_dict_shapes.json not found")


@pytest.fixture
def shapes() -> dict:
    return published_shapes()
