"""Shared fixtures: the shared samples, and one Prefect test server for the whole session."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Before Prefect is imported anywhere: its own home, no analytics, a patient startup, and a
# task cache that is not the user's.
_SCRATCH = Path(tempfile.mkdtemp(prefix="mmrs-tests-"))
os.environ["PREFECT_HOME"] = str(_SCRATCH / "prefect")
os.environ["MMRS_CACHE_DIR"] = str(_SCRATCH / "cache")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# A datasets cache of the session's own: load_dataset must read the files just built, never
# a cached table of an earlier build at an equal path.
os.environ["HF_DATASETS_CACHE"] = str(_SCRATCH / "hf-datasets")

PROJECT = Path(__file__).resolve().parents[1]
SHARED = PROJECT.parent / "shared"


@pytest.fixture(scope="session")
def shared() -> Path:
    """../shared, or a skip that says why."""
    if not (SHARED / "real_samples").is_dir():
        pytest.skip("../shared/real_samples not found: real-sample tests need the shared samples")
    return SHARED


@pytest.fixture(scope="session")
def prefect_api() -> str:
    """One Prefect test server for every flow test; yields its API URL."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield PREFECT_API_URL.value()
