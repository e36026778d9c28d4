"""Content-addressed stage results: file and code digests, cache keys, verified pickles.

What every stage (build, llm, checks) shares to make its results cacheable by any
orchestrator. Nothing is taken from a store unverified: a stored result carries the SHA-256
of its own bytes, the files it names (payloads, Parquet parts) are checked against the
hashes it records, and an entry that fails is dropped with a CacheWarning so that its stage
runs again. Stored results name their files relative to the store (STORE_ROOT), so a store
copied or moved elsewhere still serves them. Files leave a store as copies of their own
(place_file): an output never shares its bytes with the cache. Imports no wing.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import hashlib
import os
import pickle
import shutil
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, TypeVar

# Runs a stage on every job, each submitted as soon as the iterable yields it; the results
# come in job order. What runs them is the caller's: a loop here (build.inline_runner) or
# Prefect tasks on a task runner (flows.py).
StageRunner = Callable[[Callable[[Any], Any], Iterable[Any]], Iterator[Any]]
Stored = TypeVar("Stored")


def file_digest(path: Path) -> str:
    """SHA-256 of a file's content, read in blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


class HashedFile:
    """A file written through, its SHA-256 made from the bytes as they pass: what is
    written need not be read back to be hashed."""

    def __init__(self, path: Path) -> None:
        self._handle = path.open("wb")
        self._digest = hashlib.sha256()

    @property
    def closed(self) -> bool:
        return self._handle.closed

    def write(self, data: Any) -> int:
        self._digest.update(data)
        return self._handle.write(data)

    def tell(self) -> int:
        return self._handle.tell()

    def flush(self) -> None:
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> HashedFile:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def hexdigest(self) -> str:
        return self._digest.hexdigest()


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


def private_name(path: Path, suffix: str = "tmp") -> Path:
    """A hidden sibling of path that no other process or thread uses: builds sharing a
    store write the same paths at the same time."""
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.{suffix}")


@contextmanager
def atomic_file(path: Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """A file written under a private name and renamed to path when the block ends without
    error (removed when it raises): readers see all of one version or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = private_name(path)
    try:
        with tmp.open(mode, encoding=None if "b" in mode else "utf-8") as handle:
            yield handle
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def place_folder(staging: Path, folder: Path, stored: Callable[[], Stored | None]) -> Stored | None:
    """Move a finished staging folder to `folder` in one rename; returns None once it is
    there. A folder already there (another build stored the same key first) is kept when
    stored() finds its result complete, which is then returned and staging removed; an
    incomplete one (left by a crash) is replaced."""
    while True:
        try:
            staging.replace(folder)
            return None
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
        found = stored()
        if found is not None:
            shutil.rmtree(staging, ignore_errors=True)
            return found
        old = private_name(folder, "old")
        try:
            folder.replace(old)
        except FileNotFoundError:  # another build moved it first
            continue
        shutil.rmtree(old, ignore_errors=True)


class CacheWarning(UserWarning):
    """An entry of the task cache failed its content check and was dropped."""


class StoreError(RuntimeError):
    """A file of the store changed while the build was using it."""


# Where a stored result's paths into its store are rebased to while stored (see _rebased).
STORE_ROOT = Path("<store>")
_MAGIC = b"MMRS-RESULT-1\n"  # + the SHA-256 of the pickle that follows


def _rebased(value: Any, old: Path, new: Path) -> Any:
    """The value with every Path under `old` moved under `new` (walking dataclasses, tuples
    and lists; what a stage result holds)."""
    if isinstance(value, Path):
        return new / value.relative_to(old) if value.is_relative_to(old) else value
    if isinstance(value, (tuple, list)):
        return type(value)(_rebased(item, old, new) for item in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changed = {
            f.name: _rebased(getattr(value, f.name), old, new)
            for f in dataclasses.fields(value)
            if f.init
        }
        return dataclasses.replace(value, **changed)
    return value


def drop(path: Path, why: str) -> None:
    """Remove a cache entry that failed its check, saying so (CacheWarning)."""
    warnings.warn(f"task cache: {path}: {why}; dropped, computing it again", CacheWarning,
                  stacklevel=3)  # fmt: skip
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def atomic_pickle(value: object, path: Path, store: Path | None = None) -> None:
    """Write a stage result so that readers see all of it or nothing, with the hash of its
    bytes; paths under `store` are kept relative to it."""
    if store is not None:
        value = _rebased(value, store, STORE_ROOT)
    data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    with atomic_file(path) as handle:
        handle.write(_MAGIC + hashlib.sha256(data).digest() + data)


def stored_result(path: Path, store: Path | None = None) -> object | None:
    """A stored stage result (its paths under `store` again), or None when absent. One whose
    bytes fail their hash (cut short, edited, not written by atomic_pickle) is dropped."""
    try:
        blob = path.read_bytes()
    except OSError:
        return None
    head, digest, data = (
        blob[: len(_MAGIC)],
        blob[len(_MAGIC) : len(_MAGIC) + 32],
        blob[len(_MAGIC) + 32 :],
    )
    if head != _MAGIC or hashlib.sha256(data).digest() != digest:
        drop(path, "stored result does not match its hash")
        return None
    try:
        value = pickle.loads(data)
    except Exception:  # noqa: BLE001 - hashed bytes that no longer load (a class changed)
        drop(path, "stored result no longer loads")
        return None
    return value if store is None else _rebased(value, STORE_ROOT, store)


def verified(path: Path, sha256: str) -> bool:
    """Whether a stored file is there with this content hash (one that differs is dropped)."""
    if not path.is_file():
        return False
    if file_digest(path) != sha256:
        drop(path, "content differs from the hash recorded when it was written")
        return False
    return True


FICLONE = 0x40049409  # linux/fs.h: _IOW(0x94, 9, int)


def reflink(src: Path, dst: Path) -> bool:
    """Make dst a copy-on-write clone of src where the filesystem offers it (btrfs, XFS,
    ...); False, with dst absent, where it does not."""
    try:
        with src.open("rb") as source, dst.open("wb") as target:
            fcntl.ioctl(target.fileno(), FICLONE, source.fileno())
        return True
    except OSError:
        dst.unlink(missing_ok=True)
        return False


def place_file(src: Path, dst: Path, sha256: str | None) -> FileIdentity:
    """Give dst src's bytes in a file of its own: a reflink where the filesystem offers one,
    else a copy hashed as it is written (measured in benchmarks/bench_place.py). A copy whose
    bytes are not `sha256` (src changed since it was verified) is removed: StoreError.
    Returns dst's identity, whose content hash is then `sha256`."""
    if sha256 is None or not reflink(src, dst):
        digest = hashlib.sha256()
        with src.open("rb") as source, dst.open("wb") as target:
            for block in iter(lambda: source.read(2**20), b""):
                digest.update(block)
                target.write(block)
        if sha256 is not None and digest.hexdigest() != sha256:
            dst.unlink()
            raise StoreError(f"{src} changed after it was verified (content hash differs)")
    return file_identity(dst)
