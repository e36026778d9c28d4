"""Shared fixtures: hand-built masks and small builds on phantom data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

PROJECT = Path(__file__).resolve().parents[1]
SHARED = PROJECT.parent / "shared"


@pytest.fixture(scope="session")
def shared() -> Path:
    """../shared, or a skip that says why."""
    if not (SHARED / "real_samples").is_dir():
        pytest.skip("../shared/real_samples not found: real-sample tests need the shared samples")
    return SHARED
