"""What Prefect needs from the project: its defaults, task runners and the cache store.

Kept apart from flows.py so the defaults are set before Prefect is first imported.
"""

from __future__ import annotations

import os
from pathlib import Path

# A fresh Prefect database can take ~20 s to start the embedded (ephemeral) API; analytics
# would try to reach the network. Users' own settings win (setdefault).
PREFECT_DEFAULTS = {
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
}
RUNNERS = ("threads", "processes", "dask")


def apply_prefect_defaults() -> None:
    for key, value in PREFECT_DEFAULTS.items():
        os.environ.setdefault(key, value)


def default_cache_dir() -> Path:
    """$MMRS_CACHE_DIR, else $XDG_CACHE_HOME/mmrs, else ~/.cache/mmrs."""
    if os.environ.get("MMRS_CACHE_DIR"):
        return Path(os.environ["MMRS_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "mmrs"


def make_task_runner(runner: str, workers: int, dask_address: str | None = None):
    """A Prefect task runner: threads (default), processes, or Dask (local or attached)."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if dask_address or runner == "dask":
        from prefect_dask import DaskTaskRunner

        if dask_address:
            return DaskTaskRunner(address=dask_address)
        cluster = {"n_workers": workers, "threads_per_worker": 1, "dashboard_address": None}
        return DaskTaskRunner(cluster_kwargs=cluster)
    from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner

    if runner == "processes":
        return ProcessPoolTaskRunner(max_workers=workers)
    if runner == "threads":
        return ThreadPoolTaskRunner(max_workers=workers)
    raise ValueError(f"unknown runner {runner!r} (expected one of {', '.join(RUNNERS)})")
