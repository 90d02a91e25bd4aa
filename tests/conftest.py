"""Shared fixtures: CPU only, deterministic, small threads so 2-core CI machines stay responsive."""

import json
from pathlib import Path

import pytest
import torch

torch.set_num_threads(2)

SPEC_DIR = Path(__file__).resolve().parents[1] / "spec"


def published_shapes() -> dict:
    """The published key → shape lists (spec 01), from the repo's copy."""
    return json.loads((SPEC_DIR / "published_state_dict_shapes.json").read_text())


@pytest.fixture
def shapes() -> dict:
    return published_shapes()
