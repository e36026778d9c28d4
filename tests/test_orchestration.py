"""The worker pool: started ahead by the CLI, warmed up, then used by the flow's pool."""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

from pipeline.orchestration import on_worker, start_workers, worker_pool


def _mark(folder: Path) -> None:
    """A warm-up job: leaves a file named after the process that ran it."""
    (folder / str(os.getpid())).touch()


def test_workers_started_ahead_are_warmed_up_and_used(tmp_path: Path) -> None:
    start_workers(2, partial(_mark, tmp_path))
    with worker_pool("threads", 2) as pool:
        pids = {pool.submit(os.getpid).result() for _ in range(8)}
        warmed = {int(p.name) for p in tmp_path.iterdir()}
        assert os.getpid() not in pids | warmed
        assert len(pids) <= 2
        assert pids & warmed  # the processes that warmed up are the ones that work
    with worker_pool("threads", 2) as fresh:  # the started pool is used once only
        assert fresh is not pool


def test_no_pool_for_one_worker_or_other_runners() -> None:
    for runner, workers in (("threads", 1), ("processes", 2), ("dask", 2)):
        with worker_pool(runner, workers) as pool:
            assert pool is None
            assert on_worker(lambda _: os.getpid(), None) == os.getpid()
