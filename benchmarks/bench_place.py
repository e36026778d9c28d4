"""How a build's output shards can be made from the parts in its task cache, timed.

The output must not share its bytes with the cache (an edit in place of one would change
the other). Candidates: a hard link (shares them: the old way, for reference), a hard link
made read-only (an edit must first chmod it, which the cache then shares; root writes
anyway), a reflink (copy-on-write; only on filesystems that offer it: btrfs, XFS, ...), a
kernel copy (shutil.copyfile: copy_file_range/sendfile), and a copy hashed in the same pass
(pipeline.store.place_file, what the build does where no reflink is offered).

    python benchmarks/bench_place.py [--mib 256] [--files 4] [--repeats 3] [--dir DIR]

Each figure is the median over repeats of the seconds to place every file, with the page
cache warm (the parts were just written or verified), and its throughput.
"""

from __future__ import annotations

import argparse
import os
import shutil
import stat
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from pipeline.store import file_digest, place_file, reflink


def _hard_link(src: Path, dst: Path, sha256: str) -> None:
    os.link(src, dst)


def _read_only_link(src: Path, dst: Path, sha256: str) -> None:
    os.chmod(src, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
    os.link(src, dst)


def _reflink(src: Path, dst: Path, sha256: str) -> None:
    if not reflink(src, dst):
        raise OSError("no reflink on this filesystem")


def _kernel_copy(src: Path, dst: Path, sha256: str) -> None:
    shutil.copyfile(src, dst)


def _kernel_copy_then_hash(src: Path, dst: Path, sha256: str) -> None:
    shutil.copyfile(src, dst)
    if file_digest(dst) != sha256:
        raise OSError("copy differs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mib", type=int, default=256, help="total size of the parts")
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: tmp)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as scratch:
        root = Path(scratch)
        parts = []
        for index in range(args.files):
            part = root / "cache" / f"part-{index}.parquet"
            part.parent.mkdir(parents=True, exist_ok=True)
            part.write_bytes(os.urandom(args.mib * 2**20 // args.files))
            parts.append((part, file_digest(part)))
        ways: dict[str, Callable[[Path, Path, str], object]] = {
            "hard link (shares bytes)": _hard_link,
            "read-only hard link": _read_only_link,
            "reflink": _reflink,
            "kernel copy": _kernel_copy,
            "kernel copy, then hash": _kernel_copy_then_hash,
            "place_file (reflink, else copy hashed in one pass)": place_file,
        }
        print(f"{args.files} files, {args.mib} MiB in all, in {root}")
        for name, place in ways.items():
            times = []
            try:
                for repeat in range(args.repeats):
                    out = root / f"out-{repeat}"
                    out.mkdir()
                    started = time.perf_counter()
                    for part, sha256 in parts:
                        place(part, out / part.name, sha256)
                    times.append(time.perf_counter() - started)
                    shutil.rmtree(out)
            except OSError as exc:
                shutil.rmtree(out, ignore_errors=True)
                print(f"  {name:50s} not available ({exc})")
                continue
            for part, _ in parts:
                os.chmod(part, stat.S_IRUSR | stat.S_IWUSR)
            median = statistics.median(times)
            print(f"  {name:50s} {median:8.3f} s  {args.mib / median:9.0f} MiB/s")


if __name__ == "__main__":
    main()
