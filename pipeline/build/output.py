"""The output folder of a build: one build at a time, what a killed build left, and how a
new build replaces an earlier one without touching anything else.

- `hold(out)` takes an exclusive lock on `.<out>.lock` beside the folder: a second build
  into the same folder is refused at once with a clear message. The kernel lets the lock
  go however the process ends; the file is removed when the build ends.
- Under the lock, what a build killed midway left beside the folder is put right:
  `.<out>.partial` (where a build is assembled), `.<out>.previous` (the earlier build's
  files while the new one moves in: moved back, or removed once the new one is whole) and
  the scratch stores `.<out>.store-*` and `.<out>.ahead-*` (removed again as the lock is
  let go, however the build ended).
- A folder holds an MMRS build when its manifest.json says so (format "mmrs/1", the shape
  `mmrs validate` reads) and lists the build's files. `--overwrite` replaces only such a
  build, and only the files its manifest lists (and the manifest): anything a user added
  stays where it is, and a file of the new build that would land on one of them is
  refused before anything moves.
- The new build moves in file by file: the earlier build's manifest leaves first, the new
  one's arrives last, so the folder claims to be a whole build only when it is one.
"""

from __future__ import annotations

import errno
import fcntl
import glob
import os
import shutil
import tempfile
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from ..checks.manifest import ManifestError, read_manifest

MANIFEST = "manifest.json"
SCRATCH = ("store", "ahead")  # scratch folders beside out: a store without cache, ahead's


class BuildError(RuntimeError):
    """A build that cannot go on (bad arguments, or the first bad case under --strict)."""


def sibling(out: Path, what: str) -> Path:
    """`.<out>.<what>` beside the output folder: what a build of it keeps there (named
    after the folder itself, for `--out .` too)."""
    out = Path(os.path.abspath(out))
    return out.parent / f".{out.name}.{what}"


def scratch_folder(out: Path, what: str) -> tempfile.TemporaryDirectory:
    """A new scratch folder `.<out>.<what>-*` beside out (one of SCRATCH), removed when
    its block ends, or by the next build of out when this one is killed."""
    place = sibling(out, f"{what}-")
    return tempfile.TemporaryDirectory(
        prefix=place.name, dir=place.parent, ignore_cleanup_errors=True
    )


def staging_folder(out: Path) -> Path:
    """Where a build of `out` is assembled before it moves in."""
    return sibling(out, "partial")


def check_folder_argument(path: Path, option: str) -> None:
    """Refuse a folder argument that is a file, or lies under one."""
    if path.exists() and not path.is_dir():
        raise BuildError(f"{option} {path} is a file, not a folder")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise BuildError(f"{option} {path}: {parent} is a file, not a folder")
            return


def built_files(folder: Path) -> list[str] | None:
    """The files the MMRS build in `folder` wrote, as its manifest lists them, manifest.json
    last; None when the folder has no manifest.json. A manifest.json that is not an MMRS
    build's (checks/manifest.py: its format, shape and file names inside the folder) is
    refused (BuildError)."""
    if not (folder / MANIFEST).is_file():
        return None
    try:
        manifest = read_manifest(folder)
    except (ManifestError, OSError) as exc:
        raise BuildError(f"{folder / MANIFEST} is not an MMRS build's manifest ({exc})") from exc
    return [*sorted(manifest["files"]), MANIFEST]


def check_out(out: Path, overwrite: bool) -> list[str] | None:
    """Whether a build may write `out`: the files of the earlier build it replaces (see
    built_files), or None when the folder is new or empty. Refuses a file, a folder with
    anything but an MMRS build in it, and an MMRS build without --overwrite."""
    check_folder_argument(out, "--out")
    if not out.is_dir() or not any(out.iterdir()):
        return None
    replaced = built_files(out)
    if replaced is None:
        raise BuildError(
            f"output folder {out} is not empty and is not an MMRS build (no {MANIFEST}): "
            "choose a new or empty folder"
        )
    if not overwrite:
        raise BuildError(
            f"output folder {out} holds an MMRS build (pass --overwrite to replace it)"
        )
    return replaced


_HELD: dict[Path, int] = {}  # lock file -> the thread of this process that holds it
_HELD_LOCK = threading.Lock()


@contextmanager
def hold(out: Path) -> Iterator[None]:
    """Hold the output folder's lock (a hold within one of the same thread's shares it),
    and put right what a killed build left beside the folder. Raises BuildError at once
    when another build holds it."""
    lock = sibling(out, "lock")
    me = threading.get_ident()
    with _HELD_LOCK:
        nested = _HELD.get(lock) == me
    if nested:
        yield
        return
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = _locked(lock, out)
    with _HELD_LOCK:
        _HELD[lock] = me
    try:
        recover(out)
        yield
    finally:
        # Again as the lock is let go: a build removes its scratch store before its worker
        # pool closes, and a worker's job stopped by Ctrl-C may still write as it unwinds.
        _remove_scratch(out)
        with _HELD_LOCK:
            del _HELD[lock]
        lock.unlink(missing_ok=True)  # while still held: the next build opens a new file
        os.close(fd)


def _locked(lock: Path, out: Path) -> int:
    """An open descriptor of the lock file, locked; the lock file is the one at its path
    (a build that ended may have removed the one this opened)."""
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            mine = os.fstat(fd)
            there = os.stat(lock)
        except BlockingIOError:
            os.close(fd)
            raise BuildError(
                f"another build is writing {out} (wait for it to end, or choose another --out)"
            ) from None
        except FileNotFoundError:
            os.close(fd)
            continue
        except OSError:
            os.close(fd)
            raise
        if (mine.st_dev, mine.st_ino) == (there.st_dev, there.st_ino):
            return fd
        os.close(fd)


def recover(out: Path) -> None:
    """Put right what a build of `out` killed midway left beside it (see the module doc)."""
    previous, partial = sibling(out, "previous"), staging_folder(out)
    if previous.is_dir():
        if (out / MANIFEST).is_file():  # the new build had moved in whole
            _drop_previous(previous, out)
        else:  # cut short while moving in: the new build's files out, the earlier's back
            for name in _listed(partial):
                if not os.path.lexists(partial / name) and os.path.lexists(out / name):
                    (out / name).unlink()
            _move_all(previous, out)
            shutil.rmtree(previous)
    if partial.exists():
        shutil.rmtree(partial)
    _remove_scratch(out)


def _remove_scratch(out: Path) -> None:
    """The scratch folders beside out (SCRATCH): only a build holding its lock uses them."""
    for what in SCRATCH:
        place = sibling(out, f"{what}-")
        for scratch in place.parent.glob(glob.escape(place.name) + "*"):
            shutil.rmtree(scratch, ignore_errors=True)


def _listed(folder: Path) -> list[str]:
    """built_files, or nothing for a folder whose manifest is missing or not an MMRS one."""
    try:
        return built_files(folder) or []
    except BuildError:
        return []


def _drop_previous(previous: Path, out: Path) -> None:
    """Remove the earlier build's files; anything else found there (what an older MMRS
    kept in it) goes back into out, or stays, with an error, where that path is taken."""
    for name in _listed(previous):
        path = previous / name
        if path.is_file() or path.is_symlink():
            path.unlink()
    _move_all(previous, out, replace=False)
    left = _files(previous)
    if left:
        raise BuildError(
            f"{previous} holds {len(left)} file(s) whose place in {out} is taken, e.g. "
            f"{left[0].relative_to(previous)}: move them where they belong, then build again"
        )
    shutil.rmtree(previous)


def _move_all(source: Path, target: Path, replace: bool = True) -> None:
    """Move every file under source to the same place under target (where free, unless
    `replace`)."""
    for path in _files(source):
        destination = target / path.relative_to(source)
        if replace or not os.path.lexists(destination):
            _move(path, destination)


def _files(folder: Path) -> list[Path]:
    """Everything under folder but its folders (links included, never followed)."""
    return sorted(p for p in folder.rglob("*") if p.is_symlink() or not p.is_dir())


def _move(path: Path, destination: Path) -> None:
    destination.parent.mkdir(parents=True, exist_ok=True)
    path.replace(destination)


def move_in(out: Path, replaced: list[str] | None) -> None:
    """Move the finished build in staging_folder(out) into out, in place of the earlier
    build whose files `replaced` lists (check_out). Refuses, before anything moves, a file
    of the new build whose path holds something the earlier build did not write."""
    staging = staging_folder(out)
    new = built_files(staging) or []
    old = set(replaced or ())
    for name in new:
        taken = _taken(out, name, old)
        if taken is not None:
            raise BuildError(
                f"refusing to replace {taken}: the build in {out} did not write it (move it "
                "elsewhere, then build again)"
            )
    previous = sibling(out, "previous")
    previous.mkdir()
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name in sorted(old, key=lambda n: n != MANIFEST):  # its manifest first
            if os.path.lexists(out / name):
                _move(out / name, previous / name)
        _prune(out, old)
        for name in new:  # manifest.json last
            _move(staging / name, out / name)
    except BaseException:
        recover(out)  # the earlier build back, as after a kill
        raise
    shutil.rmtree(previous)
    shutil.rmtree(staging)


def _taken(out: Path, name: str, old: set[str]) -> Path | None:
    """What in out, not written by the earlier build, stands where a new file goes: the
    file itself, or a file where one of its folders goes."""
    for folder in reversed(PurePosixPath(name).parents[:-1]):
        path = out / folder
        if os.path.lexists(path) and not path.is_dir() and folder.as_posix() not in old:
            return path
    path = out / name
    return path if os.path.lexists(path) and name not in old else None


def _prune(out: Path, names: Iterable[str]) -> None:
    """Remove the folders of the earlier build's files that are now empty."""
    folders = {parent for name in names for parent in PurePosixPath(name).parents[:-1]}
    for folder in sorted(folders, key=lambda f: len(f.parts), reverse=True):
        try:
            (out / folder).rmdir()
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT, errno.ENOTDIR):
                raise
