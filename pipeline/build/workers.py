"""What Prefect needs from the project: its defaults, task runners, worker pool and store.

Kept apart from flows.py so the defaults are set before Prefect is first imported.

The default `threads` runner runs tasks on threads of the flow's process; with several
workers, each CPU-bound task hands its job to a pool of that many worker processes
(`worker_pool`, `on_worker`); the command starts them ahead, a build even its one worker,
for its first batches. Threads alone would share one interpreter lock, and
Prefect's own process runner starts the whole task engine (Prefect included) in every
worker; the pool's processes hold only the stage code, forked from a server that
imported it once.
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing
import os
import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
from multiprocessing import forkserver
from pathlib import Path
from typing import Any, TypeVar

from .malloc import keep_freed_buffers

# A fresh Prefect database can take ~20 s to start the embedded (ephemeral) API; analytics
# would try to reach the network. Users' own settings win (setdefault).
PREFECT_DEFAULTS = {
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
}
RUNNERS = ("threads", "processes", "dask")
# Imported once by the pool's fork server, so every worker starts with them: the stages,
# scipy.ndimage (imported on first use by geometry/facts.py), and pandas where installed (datasets
# needs it): pyarrow imports it on a process's first pa.array call, about 0.3 s that each
# worker would pay again. The fork server skips what is missing.
WORKER_MODULES = ["pipeline.build.stages", "pipeline.checks.folder", "scipy.ndimage", "pandas"]


# The fewest --workers with which each command starts its worker processes before Prefect
# is imported (cli.py): a build's one worker converts its first batches while Prefect starts.
FEWEST_STARTED = {"build": 1, "validate": 2}


def at_least_one(value: str) -> int:
    """A whole number of at least 1, for argparse."""
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got {value!r}")
    return number


def add_worker_options(command: argparse.ArgumentParser) -> None:
    """--workers, --runner and --dask-address: of the commands that run stages (cli.py),
    and of the first look at a command's arguments (__main__.py)."""
    command.add_argument(
        "--workers", type=at_least_one, default=1, help="parallel workers (default 1)"
    )
    command.add_argument(
        "--runner",
        choices=RUNNERS,
        default="threads",
        help="Prefect task runner (default threads; their CPU work on --workers processes)",
    )
    command.add_argument("--dask-address", help="attach to a running Dask scheduler")


def starts_workers(command: str | None, args: argparse.Namespace) -> bool:
    """Whether `command` with these worker options starts its worker processes before
    Prefect is imported (the threads runner's own pool, FEWEST_STARTED)."""
    fewest = FEWEST_STARTED.get(command or "")
    return (
        fewest is not None
        and args.runner == "threads"
        and not args.dask_address
        and args.workers >= fewest
    )


def apply_prefect_defaults() -> None:
    for key, value in PREFECT_DEFAULTS.items():
        os.environ.setdefault(key, value)


HEARTBEAT_SETTINGS = ("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "PREFECT_RUNNER_HEARTBEAT_FREQUENCY")


@contextmanager
def without_heartbeats() -> Iterator[None]:
    """Flow runs started in this block, in this thread, send no heartbeats, unless the
    environment sets their frequency (HEARTBEAT_SETTINGS). For a flow the command runs in
    its own process, which sees its own end: Prefect's heartbeat thread sleeps in steps of
    a second, and the end of each run waits for it (half a second on average)."""
    if any(name in os.environ for name in HEARTBEAT_SETTINGS):
        yield
        return
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


def default_cache_dir() -> Path:
    """$MMRS_CACHE_DIR, else $XDG_CACHE_HOME/mmrs, else ~/.cache/mmrs."""
    if os.environ.get("MMRS_CACHE_DIR"):
        return Path(os.environ["MMRS_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "mmrs"


def cache_store(cache: bool, cache_dir: str | None) -> Path | None:
    """The store of a build's stage results: cache_dir or the default; None without cache."""
    if not cache:
        return None
    return Path(cache_dir).expanduser() if cache_dir else default_cache_dir()


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


JOBS_AHEAD_PER_SLOT = 2


def in_flight(task_runner: Any, workers: int) -> int:
    """How many jobs a stage keeps submitted beyond the one whose result it waits for: two
    for each task the runner runs at once (`workers`, or the threads of the Dask cluster it
    is attached to, as the flow starts). Every worker then has its next job while the stage
    waits, and a stage never holds the jobs of a whole build."""
    client = getattr(task_runner, "client", None)  # a DaskTaskRunner's, once it is entered
    threads = sum(client.nthreads().values()) if client is not None else 0
    return JOBS_AHEAD_PER_SLOT * max(workers, threads)


_POOL: ContextVar[Executor | None] = ContextVar("mmrs_worker_pool", default=None)
Job = TypeVar("Job")
Result = TypeVar("Result")


def _forkserver() -> multiprocessing.context.BaseContext:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(WORKER_MODULES)
    return context


def start_fork_server() -> None:
    """Start the workers' fork server now: it imports WORKER_MODULES (about 0.7 s) in a
    process of its own while the caller goes on (__main__.py: before the command's own
    imports). The pools started later fork their workers from it."""
    _forkserver()
    forkserver.ensure_running()


# Pools started ahead, by worker count, each with the thread that hands it its first jobs.
_STARTED: dict[int, tuple[ProcessPoolExecutor, ThreadPoolExecutor]] = {}
# Jobs given to a pool started ahead before the orchestrator asks for them, by stage: the
# test of sameness, and each job with its handing (a future of the pool's future).
_AHEAD: dict[Callable, tuple[Callable[[Any, Any], bool], list[tuple[Any, Future]]]] = {}
_AHEAD_LOCK = threading.Lock()


def _new_pool(workers: int) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(workers, mp_context=_forkserver(), initializer=_start_worker)


def _start_worker() -> None:
    """Each worker keeps its freed buffers (malloc.py), its collections skip the modules
    the fork server imported (frozen: see collector.py), and Ctrl-C stops its job quietly
    (_interrupted)."""
    keep_freed_buffers()
    gc.freeze()
    signal.signal(signal.SIGINT, _interrupted)


_RUNNING = False  # whether this worker is running a job (_run)
_STOPPED = False  # whether Ctrl-C has reached this worker (or the one a build started ahead)


class Interrupted(Exception):
    """A worker's job, stopped (or not started) because Ctrl-C reached the worker."""


def _interrupted(signum: int, frame: object) -> None:
    """A terminal's Ctrl-C reaches the whole process group, the workers too; the command
    reports it. A worker stops the job it runs and starts no other (see _run): the pool
    stays whole, so every job cleans up as it unwinds and the workers end as it closes."""
    global _STOPPED
    _STOPPED = True
    if _RUNNING:
        raise KeyboardInterrupt


def _run(function: Callable[..., Result], *args: Any) -> Result:
    """function(*args), a job, in a worker. Once Ctrl-C has reached the worker, the job
    ends (or does not start) with Interrupted, an ordinary exception that the pool hands
    back as the job's outcome, as it does any other."""
    global _RUNNING
    _RUNNING = True
    try:
        if _STOPPED:  # checked once marked running: a Ctrl-C in between raises here
            raise KeyboardInterrupt
        return function(*args)
    except KeyboardInterrupt:
        raise Interrupted("stopped by Ctrl-C") from None
    finally:
        _RUNNING = False


def _nothing() -> None:
    return None


def start_workers(workers: int, warm_up: Callable[[], object] | None = None) -> None:
    """Start the worker processes now (from their fork server), for the next worker_pool
    of that size: their start, and one warm_up job per worker (normally each takes one),
    overlap the caller's own work.

    The jobs are handed to the pool on a thread of its own, because the first submit waits
    until the fork server has imported the workers' modules (about 0.7 s): the caller
    goes on meanwhile.
    """
    pool = _new_pool(workers)
    hand = ThreadPoolExecutor(1, thread_name_prefix="mmrs-start-workers")
    for _ in range(workers):  # one job per worker: the pool forks them all now
        hand.submit(pool.submit, _run, warm_up or _nothing)
    _STARTED[workers] = (pool, hand)


def start_ahead(
    workers: int,
    stage: Callable[[Job], Result],
    jobs: Iterable[Job],
    same: Callable[[Job, Job], bool],
) -> None:
    """Run stage on jobs now, on the workers start_workers(workers) started: on_worker then
    takes, for a job same(started, job) as one of these, its result instead of running it
    again. What the orchestrator never asks for is cancelled when the pool closes."""
    pool, hand = _STARTED[workers]
    _AHEAD[stage] = (same, [(job, hand.submit(pool.submit, _run, stage, job)) for job in jobs])


def _started_ahead(stage: Callable[[Job], Result], job: Job) -> Future | None:
    with _AHEAD_LOCK:
        same, started = _AHEAD.get(stage, (None, []))
        for index, (other, future) in enumerate(started):
            if same(other, job):
                del started[index]
                return future
    return None


def _cancel_ahead() -> None:
    """Cancel the jobs started ahead that nobody asked for (all of them handed by now)."""
    with _AHEAD_LOCK:
        for _, started in _AHEAD.values():
            for _, handed in started:
                if handed.exception() is None:
                    handed.result().cancel()
        _AHEAD.clear()


@contextmanager
def worker_pool(
    runner: str, workers: int, dask_address: str | None = None
) -> Iterator[Executor | None]:
    """The worker processes of a threads-runner build with several workers (else none).

    While open, `on_worker` runs jobs there, from any thread that inherits this context
    (Prefect's thread runner copies it into every task). Workers started ahead by
    start_workers are used, else new ones are started. A build with one worker runs its
    jobs in its own process; a worker started ahead for it only hands back the jobs it was
    given ahead, and is stopped as this closes.
    """
    if runner != "threads" or dask_address:
        yield None
        return
    started = _STARTED.pop(workers, None)
    if started is None and workers < 2:
        yield None
        return
    pool, hand = started or (_new_pool(workers), None)
    with pool:
        used = pool if workers > 1 else None
        token = _POOL.set(used)
        try:
            yield used
        finally:
            _POOL.reset(token)
            if hand is not None:
                hand.shutdown()
            _cancel_ahead()


def on_worker(stage: Callable[[Job], Result], job: Job) -> Result:
    """stage(job): the result of the same job started ahead, if it was, else on the open
    worker pool when there is one, else in this thread.

    Either way the process that runs it keeps its freed buffers (pipeline/build/malloc.py),
    whichever runner started it; a flow's process whose tasks go to the pool does not
    (it converts no images, and would only hold on to what it frees).
    """
    global _STOPPED
    handed = _started_ahead(stage, job)
    if handed is not None:
        try:
            return handed.result().result()
        except Interrupted:  # Ctrl-C reached the worker, so this process too: no job starts
            _STOPPED = True
            raise
    pool = _POOL.get()
    if pool is None:
        if _STOPPED:
            raise Interrupted("stopped by Ctrl-C")
        keep_freed_buffers()
        return stage(job)
    return pool.submit(_run, stage, job).result()
