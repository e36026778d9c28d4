"""Content-addressed stage results: file and code digests, cache keys, atomic pickles.

What every stage (build, llm, checks) shares to make its results cacheable by any
orchestrator. Imports no wing.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

# Runs a stage on every job, each submitted as soon as the iterable yields it; the results
# come in job order. What runs them is the caller's: a loop here (build.inline_runner) or
# Prefect tasks on a task runner (flows.py).
StageRunner = Callable[[Callable[[Any], Any], Iterable[Any]], Iterator[Any]]


def file_digest(path: Path) -> str:
    """SHA-256 of a file's content, read in blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


# Device, inode, size and modification time (ns): a file rewritten or replaced gets a new
# one; a hard link or a rename keeps it. What lets a content hash be known without reading.
FileIdentity = tuple[int, int, int, int]


def file_identity(path: Path) -> FileIdentity:
    """The identity of a file's current content (see FileIdentity)."""
    status = path.stat()
    return status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns


def code_digest(modules: tuple) -> str:
    """SHA-256 of the source of the modules that produce a stage's output."""
    digest = hashlib.sha256()
    for module in modules:
        digest.update(Path(module.__file__).read_bytes())
    return digest.hexdigest()


def cache_key(*parts: object) -> str:
    """SHA-256 of the repr of a key's parts."""
    return hashlib.sha256(repr(parts).encode()).hexdigest()


def atomic_pickle(value: object, path: Path) -> None:
    """Write a pickle so that readers see all of it or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("wb") as handle:
        pickle.dump(value, handle, protocol=pickle.HIGHEST_PROTOCOL)
    tmp.replace(path)


def stored_result(path: Path) -> object | None:
    """A stored stage result, or None when absent (or cut short by a crash)."""
    try:
        with path.open("rb") as handle:
            return pickle.load(handle)
    except (OSError, EOFError, pickle.UnpicklingError):
        return None
