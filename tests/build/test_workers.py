"""The worker pool: started ahead by the CLI, warmed up and given the first jobs, then used
by the flow's pool."""

from __future__ import annotations

import gc
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import pytest

from pipeline.build import workers as orchestration
from pipeline.build.workers import on_worker, start_ahead, start_workers, worker_pool


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
    """Without workers started ahead, one worker or another runner means no pool."""
    for runner, workers in (("threads", 1), ("processes", 2), ("dask", 2)):
        with worker_pool(runner, workers) as pool:
            assert pool is None
            assert on_worker(lambda _: os.getpid(), None) == os.getpid()


def _run_once(job: tuple[str, Path]) -> int:
    """A stage that leaves a file per run, named after the job, in the job's folder."""
    name, folder = job
    (folder / f"{name}-{os.getpid()}").touch()
    return os.getpid()


def _same_name(started: tuple[str, Path], job: tuple[str, Path]) -> bool:
    return started[0] == job[0]


def test_jobs_started_ahead_stand_for_the_same_jobs(tmp_path: Path) -> None:
    ahead, later = tmp_path / "ahead", tmp_path / "later"
    ahead.mkdir()
    later.mkdir()
    start_workers(2)
    start_ahead(2, _run_once, [("a", ahead), ("b", ahead)], _same_name)
    with worker_pool("threads", 2):
        pid = on_worker(_run_once, ("a", later))  # taken from the job started ahead
        assert [p.name for p in ahead.glob("a-*")] == [f"a-{pid}"]
        on_worker(_run_once, ("a", later))  # a job is taken once: this one runs
        on_worker(_run_once, ("c", later))  # nothing the same started ahead: it runs
        assert sorted(p.name.split("-")[0] for p in later.iterdir()) == ["a", "c"]
    with worker_pool("threads", 2):  # the started pool is gone, and with it its jobs
        on_worker(_run_once, ("b", later))
        assert sorted(p.name.split("-")[0] for p in later.iterdir()) == ["a", "b", "c"]


class _SlowToStart(ThreadPoolExecutor):
    """A pool whose submit waits, as a process pool's first one waits for its fork server."""

    def __init__(self, ready: threading.Event) -> None:
        super().__init__(2)
        self.ready = ready

    def submit(self, fn, /, *args, **kwargs):
        assert self.ready.wait(5)
        return super().submit(fn, *args, **kwargs)


def test_starting_workers_and_jobs_ahead_does_not_wait_for_the_workers(
    monkeypatch, tmp_path: Path
) -> None:
    ready = threading.Event()
    monkeypatch.setattr(orchestration, "_new_pool", lambda workers: _SlowToStart(ready))
    start_workers(2, partial(_mark, tmp_path))
    start_ahead(2, _run_once, [("a", tmp_path)], _same_name)  # neither waits
    assert not list(tmp_path.iterdir())
    ready.set()
    with worker_pool("threads", 2):
        assert on_worker(_run_once, ("a", tmp_path)) == os.getpid()  # the one started ahead
    assert (tmp_path / str(os.getpid())).exists()  # warmed up
    assert [p.name for p in tmp_path.glob("a-*")] == [f"a-{os.getpid()}"]


def test_workers_start_with_the_fork_servers_modules_frozen() -> None:
    with worker_pool("threads", 2) as pool:
        assert pool is not None
        counts = [pool.submit(gc.get_freeze_count).result() for _ in range(2)]
    assert all(count > 1000 for count in counts)  # every module the fork server imported


def test_flows_run_in_the_command_send_no_heartbeats_unless_asked(monkeypatch) -> None:
    from prefect.settings import get_current_settings

    from pipeline.build.workers import HEARTBEAT_SETTINGS, without_heartbeats

    for name in HEARTBEAT_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    before = get_current_settings().flows.heartbeat_frequency
    with without_heartbeats():
        assert get_current_settings().flows.heartbeat_frequency is None
    assert get_current_settings().flows.heartbeat_frequency == before
    monkeypatch.setenv("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "60")  # the user's setting wins
    with without_heartbeats():
        assert get_current_settings().flows.heartbeat_frequency is not None


def test_one_worker_started_ahead_hands_back_its_jobs_and_the_rest_run_here(
    tmp_path: Path,
) -> None:
    """A build with one worker converts its first batches on a worker started ahead; the
    flow takes those results and runs every other job in its own process."""
    ahead, later = tmp_path / "ahead", tmp_path / "later"
    ahead.mkdir()
    later.mkdir()
    start_workers(1)
    start_ahead(1, _run_once, [("a", ahead)], _same_name)
    with worker_pool("threads", 1) as pool:
        assert pool is None
        worker = on_worker(_run_once, ("a", later))  # taken from the job started ahead
        assert worker != os.getpid()
        assert [p.name for p in ahead.iterdir()] == [f"a-{worker}"]
        assert on_worker(_run_once, ("b", later)) == os.getpid()
    assert [p.name for p in later.iterdir()] == [f"b-{os.getpid()}"]


def _interrupted(job: object) -> None:
    raise orchestration.Interrupted("stopped by Ctrl-C")


def test_ctrl_c_in_a_job_started_ahead_starts_no_job_here(monkeypatch, tmp_path: Path) -> None:
    """Ctrl-C reaches the worker started ahead and this process alike: once a job started
    ahead ends interrupted, no job starts in this process either."""
    monkeypatch.setattr(orchestration, "_STOPPED", False)  # and back after the test
    monkeypatch.setattr(orchestration, "_new_pool", lambda workers: ThreadPoolExecutor(1))
    start_workers(1)
    start_ahead(1, _interrupted, [("a", tmp_path)], _same_name)
    with worker_pool("threads", 1):
        with pytest.raises(orchestration.Interrupted):
            on_worker(_interrupted, ("a", tmp_path))
        with pytest.raises(orchestration.Interrupted):
            on_worker(_run_once, ("b", tmp_path))
    assert not list(tmp_path.iterdir())
