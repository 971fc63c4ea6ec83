"""Shared fixtures; the helpers themselves live in tiny_bundle.py (importable from any test)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tiny_bundle import make_tiny_bundle

# Tests share 2 cores with the rest of the machine; keep libraries from oversubscribing.
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture
def tiny_bundle(tmp_path) -> Path:
    return make_tiny_bundle(tmp_path / "bundle")
