"""Performance benchmark of the core build (`make bench`).

For each size N it writes N synthetic ISIC 2018 Task 1 cases in their native layout
(600x500 RGB JPEG, quality 90, with a 0/255 PNG lesion mask) into a temporary folder, then
measures, each in its own fresh subprocess:

* the FLOOR: Pillow doing the bare work of the same conversion and nothing else: read and
  fully decode every input image and mask, keep the JPEG bytes as they are, and encode one
  'L' PNG per target mask (Pillow defaults). Referring rows of multi-component images would
  add one more mask PNG each; the phantoms have one lesion per image, so there are none.
* the DECODE-ONLY FLOOR: the same without the mask PNGs. The build keeps a source mask that
  already is a single-channel 0/255 PNG as it is (these are), so it encodes no output here;
  the build's time is reported against both floors.
* the BUILD: `python -m pipeline build --source isic2018=ROOT --out OUT -q --overwrite
  --workers W --no-cache --runner R --batch-size B` (discovery, conversion, Parquet, card,
  manifest and the final validation), through the build-mmrs Prefect flow. By default one
  Prefect server on 127.0.0.1 serves every build (PREFECT_API_URL), as in a deployment;
  --ephemeral lets each build start Prefect's embedded API instead.

The MIXED case (--mixed, default 650,200,150 cases; 0 leaves it out) is a build of three
sources of unequal sizes in different native formats, as real sources come: PNG crops of
varied sizes with GIF masks read through a YAML spec (the image kept, each mask encoded), PH2
BMP dermoscopy (768x560; image and mask encoded) and BUSI grey ultrasound PNGs (image and
0/255 mask kept). Its floor does the same bare Pillow work: decode every input, encode each
BMP image at the build's --png-level and each mask the build encodes at its mask level
(its decode-only floor encodes nothing). It is reported like one size of the single-source
case, next to it.

Each case also reports the shards the build wrote: how many, per split, and their sizes.

Across sizes, the cost of one more image (the difference between the smallest and largest
N, divided by the difference in N) separates the per-image ratio from the build's fixed
cost (interpreter, imports, Prefect's flow run, the card's figures), which a larger N
amortises.

Before the first size, one build per worker count runs uncounted (Prefect registers the
flow once). Before every timed run, floors included, the inputs are read once, untimed: each
run starts with them in the page cache, whatever the run before it left there.

Timing: wall clock of the WHOLE subprocess (fork/exec, interpreter start and imports
included) for both floor and build, so `ratio = build wall (workers=1) / floor wall`. The
floor's own work loop, timed inside its process with time.perf_counter, is reported as
well, with `build wall / floor loop` as a stricter second ratio, and the CPU time (user +
system, from os.wait4: the process and the children it reaped; not a Prefect server it talks
to, nor the worker processes its fork server starts: a one-worker build's converts its
first batches, so its CPU ratio leaves them out) with `build cpu / floor cpu` at one
worker, which other load on the machine moves less than wall time. Ratios and speed-up
are taken between medians; their range over the repeats (each repeat runs the floors, then
every build, back to back, then every build again for its memory) is printed with them.

Memory: each repeat runs every build a second time, untimed, while /proc of the subprocess
and all its descendants is polled (default every 50 ms): peak of the summed VmRSS, peak of
the summed Pss (shared copy-on-write pages counted once; read at every 5th sample and at
every new high of the summed VmRSS) and the largest single-process VmHWM. Polling takes
CPU from the measured processes (one Pss read of a build process takes milliseconds), and
with two workers on two cores there is none to spare: polled, a two-worker build ran about
7% longer. So no timed run is polled. The floor, a single process, reports its own VmHWM.
os.wait4's ru_maxrss of a polled build (itself and its reaped workers, max not sum) is
recorded in the JSON only: Linux also counts in it the pre-exec copy of the benchmark
process that forked the child.

Only the standard library, NumPy, Pillow and the project itself (with its own pyarrow, to
read the output back) are used. Every temporary folder is removed and every process it
starts is stopped, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

PROJECT = Path(__file__).resolve().parent.parent
if str(PROJECT) not in sys.path:
    sys.path.insert(0, str(PROJECT))

from pipeline.build.run import BATCH_SIZE  # noqa: E402
from pipeline.demo import phantom, random_lesion  # noqa: E402
from pipeline.io.images import MASK_COMPRESS_LEVEL, PNG_LEVEL  # noqa: E402

WIDTH, HEIGHT = 600, 500  # a typical ISIC 2018 image is larger; 600x500 keeps runs short
JPEG_QUALITY = 90
LESION_SCALE = 2.5  # ISIC lesions fill a good part of the frame
INPUT_DIR = "ISIC2018_Task1-2_Training_Input"
TRUTH_DIR = "ISIC2018_Task1_Training_GroundTruth"
MB = 1024 * 1024

TARGET_FLOOR_RATIO = 1.5
TARGET_SPEEDUP = 1.7
TARGET_BYTES_RATIO = 1.25
TARGET_MEMORY_GROWTH = 1.10  # "flat": peak at the largest N within 10 % of the smallest

# The end of every floor script: its loop's time, what it did, and its peak RSS.
FLOOR_REPORT = """
loop = time.perf_counter() - start
hwm = [line for line in open("/proc/self/status") if line.startswith("VmHWM:")]
print(json.dumps({"loop_s": loop, "images": len(CASES), "masks_encoded": masks,
                  "image_bytes": kept, "mask_bytes": encoded,
                  "vm_hwm_mb": int(hwm[0].split()[1]) / 1024}))
"""

# Runs in a fresh interpreter: argv[1] is the data root, argv[2] "encode" (one mask PNG per
# image) or "decode" (no output encoded). Only the loop is timed inside.
FLOOR_CODE = """
import io, json, sys, time
from pathlib import Path
from PIL import Image

root = Path(sys.argv[1])
encode = sys.argv[2] == "encode"
images = sorted((root / INPUT_DIR).glob("ISIC_*.jpg"))
truth = root / TRUTH_DIR
start = time.perf_counter()
kept = encoded = masks = 0
for path in images:
    data = path.read_bytes()  # the build keeps these bytes as they are
    image = Image.open(io.BytesIO(data))
    image.load()
    mask_data = (truth / (path.stem + "_segmentation.png")).read_bytes()
    mask = Image.open(io.BytesIO(mask_data))
    mask.load()
    kept += len(data)
    if encode:
        buffer = io.BytesIO()
        mask.convert("L").save(buffer, format="PNG")  # one target mask PNG per image
        encoded += len(buffer.getvalue())
        masks += 1
""".replace("INPUT_DIR", repr(INPUT_DIR)).replace("TRUTH_DIR", repr(TRUTH_DIR))
FLOOR_CODE += FLOOR_REPORT.replace("CASES", "images")


# -- synthetic data --------------------------------------------------------------------------


def write_cases(root: Path, count: int, seed: int) -> int:
    """Write `count` ISIC 2018 Task 1 training cases under root; returns the bytes written."""
    images, truth = root / INPUT_DIR, root / TRUTH_DIR
    images.mkdir(parents=True)
    truth.mkdir()
    rng, noise = random.Random(seed), np.random.default_rng(seed)
    written = 0
    for index in range(count):
        lesion = random_lesion(rng, scale=LESION_SCALE)
        name = f"ISIC_{index:07d}"
        pixels = phantom(WIDTH, HEIGHT, [lesion], noise, rgb=True)
        Image.fromarray(pixels).save(images / f"{name}.jpg", quality=JPEG_QUALITY)
        mask = lesion.mask(WIDTH, HEIGHT).astype(np.uint8) * 255
        Image.fromarray(mask, mode="L").save(truth / f"{name}_segmentation.png")
        written += (images / f"{name}.jpg").stat().st_size
        written += (truth / f"{name}_segmentation.png").stat().st_size
    return written


# The mixed case's floor: argv[1] is the data root, whose floor.json lists every case as
# [image, mask, encode the image, encode the mask]; argv[2] "encode" or "decode" as above.
MIXED_FLOOR_CODE = """
import io, json, sys, time
from pathlib import Path
from PIL import Image

root = Path(sys.argv[1])
encode = sys.argv[2] == "encode"
cases = json.loads((root / "floor.json").read_text())
start = time.perf_counter()
kept = encoded = masks = 0
for image_name, mask_name, encode_image, encode_mask in cases:
    data = (root / image_name).read_bytes()
    image = Image.open(io.BytesIO(data))
    image.load()
    mask = Image.open(io.BytesIO((root / mask_name).read_bytes()))
    mask.load()
    if encode and encode_image:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", compress_level=PNG_LEVEL)
        encoded += len(buffer.getvalue())
    else:
        kept += len(data)
    if encode and encode_mask:
        buffer = io.BytesIO()
        mask.convert("L").save(buffer, format="PNG", compress_level=MASK_COMPRESS_LEVEL)
        encoded += len(buffer.getvalue())
        masks += 1
""".replace("MASK_COMPRESS_LEVEL", str(MASK_COMPRESS_LEVEL)).replace("PNG_LEVEL", str(PNG_LEVEL))
MIXED_FLOOR_CODE += FLOOR_REPORT.replace("CASES", "cases")

POLYP_SPEC = """name: bench_polyps
modality: endoscopy
target: polyp
images: "images/*.png"
masks: "masks/{stem}.gif"
license: "CC BY 4.0"
"""
PH2_SIZE = (768, 560)
BUSI_SIZE = (560, 450)


def write_mixed(root: Path, counts: list[int], seed: int) -> tuple[int, list[str]]:
    """Write the mixed case's three sources under root and its floor.json; returns the bytes
    written and the build's --source values."""
    rng, noise = random.Random(seed), np.random.default_rng(seed)
    floor: list[tuple[str, str, bool, bool]] = []
    polyps, ph2, busi = root / "polyps", root / "PH2Dataset" / "PH2 Dataset images", root / "BUSI"
    (polyps / "images").mkdir(parents=True)
    (polyps / "masks").mkdir()
    for index in range(counts[0]):  # PNG crops of varied sizes, palette GIF masks
        size = (rng.randrange(384, 577, 8), rng.randrange(320, 481, 8))
        lesion = random_lesion(rng, scale=LESION_SCALE)
        name = f"crop{index:05d}"
        Image.fromarray(phantom(*size, [lesion], noise, rgb=True)).save(
            polyps / "images" / f"{name}.png"
        )
        mask = Image.fromarray(lesion.mask(*size).astype(np.uint8), mode="P")
        mask.putpalette([0, 0, 0, 255, 255, 255])
        mask.save(polyps / "masks" / f"{name}.gif")
        floor.append((f"polyps/images/{name}.png", f"polyps/masks/{name}.gif", False, True))
    for index in range(counts[1]):  # PH2: BMP image and mask, both encoded by the build
        case = f"IMD{index + 1:03d}"
        folder = ph2 / case
        (folder / f"{case}_Dermoscopic_Image").mkdir(parents=True)
        (folder / f"{case}_lesion").mkdir()
        lesion = random_lesion(rng, scale=LESION_SCALE)
        image = f"{case}_Dermoscopic_Image/{case}.bmp"
        mask = f"{case}_lesion/{case}_lesion.bmp"
        Image.fromarray(phantom(*PH2_SIZE, [lesion], noise, rgb=True)).save(folder / image)
        pixels = lesion.mask(*PH2_SIZE).astype(np.uint8) * 255
        Image.fromarray(pixels, mode="L").save(folder / mask)
        prefix = f"PH2Dataset/PH2 Dataset images/{case}"
        floor.append((f"{prefix}/{image}", f"{prefix}/{mask}", True, True))
    for index in range(counts[2]):  # BUSI: grey PNG with a 0/255 PNG mask, both kept
        label = ("benign", "malignant")[index % 2]
        (busi / label).mkdir(parents=True, exist_ok=True)
        stem = f"{label} ({index + 1})"
        lesion = random_lesion(rng)
        grey = phantom(*BUSI_SIZE, [lesion], noise, rgb=True).mean(axis=2).astype(np.uint8)
        Image.fromarray(grey, mode="L").save(busi / label / f"{stem}.png")
        pixels = lesion.mask(*BUSI_SIZE).astype(np.uint8) * 255
        Image.fromarray(pixels, mode="L").save(busi / label / f"{stem}_mask.png")
        floor.append((f"BUSI/{label}/{stem}.png", f"BUSI/{label}/{stem}_mask.png", False, False))
    (root / "polyps.yaml").write_text(POLYP_SPEC)
    (root / "floor.json").write_text(json.dumps(floor))
    written = sum(path.stat().st_size for path in root.rglob("*") if path.is_file())
    sources = [f"{root / 'polyps.yaml'}={polyps}", f"ph2={root / 'PH2Dataset'}", f"busi={busi}"]
    return written, sources


@dataclass(frozen=True)
class Workload:
    """What one benchmarked case writes, builds and floors."""

    name: str
    count: int  # cases
    describe: str
    floor_code: str
    write: Any  # (root, seed) -> (input bytes, --source values)


def single_source(count: int) -> Workload:
    def write(root: Path, seed: int) -> tuple[int, list[str]]:
        return write_cases(root, count, seed), [f"isic2018={root}"]

    describe = f"{WIDTH}x{HEIGHT} RGB JPEG q{JPEG_QUALITY} + PNG mask, source isic2018"
    return Workload(f"N={count}", count, describe, FLOOR_CODE, write)


def mixed(counts: list[int]) -> Workload:
    def write(root: Path, seed: int) -> tuple[int, list[str]]:
        return write_mixed(root, counts, seed)

    describe = (
        f"mixed: {counts[0]} PNG crops + GIF masks via a spec, {counts[1]} PH2 BMP "
        f"{PH2_SIZE[0]}x{PH2_SIZE[1]}, {counts[2]} BUSI grey PNG {BUSI_SIZE[0]}x{BUSI_SIZE[1]}"
    )
    return Workload(f"mixed {sum(counts)}", sum(counts), describe, MIXED_FLOOR_CODE, write)


# -- measured subprocesses -------------------------------------------------------------------


@dataclass
class Measured:
    """One subprocess run: wall time, CPU time, exit status, output and memory peaks (MB)."""

    wall_s: float
    cpu_s: float  # user + system of the process and the children it reaped (see Timing)
    returncode: int
    stdout: str
    stderr: str
    peak_rss_sum_mb: float
    peak_pss_sum_mb: float
    peak_single_mb: float
    wait4_maxrss_mb: float
    max_processes: int
    samples: int
    timed_out: bool


def _children(pid: int) -> list[int]:
    """Direct children of pid (/proc/PID/task/*/children, or a /proc scan without it)."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as handle:
                found += [int(child) for child in handle.read().split()]
        except FileNotFoundError:
            return _children_by_scan(pid)
        except OSError:
            continue
    return found


def _children_by_scan(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                stat = handle.read()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry))
    return found


def _process_memory(pid: int) -> tuple[int, int] | None:
    """(VmRSS, VmHWM) of one process in kB; None when it is gone."""
    rss = hwm = 0
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1])
    except OSError:  # gone
        return None
    return rss, hwm


def _process_pss(pid: int) -> int | None:
    """Pss of one process in kB; None when it cannot be read (gone, or not ours)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            for line in handle:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class MemoryPoller(threading.Thread):
    """Polls the memory of a process tree until stopped (unless told not to measure); kills
    the tree past a deadline."""

    # Reading Pss (smaps_rollup walks every mapping of a process, under its memory lock)
    # costs milliseconds per process, so it is read every PSS_EVERY-th sample and at each
    # new high of the summed VmRSS (where Pss peaks too): once a second alone missed the
    # peaks of short runs by tens of MB.
    PSS_EVERY = 5

    def __init__(self, pid: int, interval: float, timeout: float, measure: bool) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.interval = interval
        self.measure = measure
        self.deadline = time.monotonic() + timeout
        self.stopped = threading.Event()
        self.peak_rss_sum_kb = 0
        self.peak_pss_sum_kb = 0
        self.peak_single_kb = 0
        self.max_processes = 0
        self.samples = 0
        self.timed_out = False

    def sample(self) -> None:
        pids, index = [self.pid], 0
        while index < len(pids):
            pids += _children(pids[index])
            index += 1
        alive: dict[int, int] = {}  # pid -> VmRSS
        for pid in pids:
            memory = _process_memory(pid)
            if memory is None:
                continue
            rss, hwm = memory
            alive[pid] = rss
            self.peak_single_kb = max(self.peak_single_kb, hwm, rss)
        if not alive:
            return
        rss_sum = sum(alive.values())
        if self.samples % self.PSS_EVERY == 0 or rss_sum > self.peak_rss_sum_kb:
            pss_sum = sum(_process_pss(pid) or rss for pid, rss in alive.items())
            self.peak_pss_sum_kb = max(self.peak_pss_sum_kb, pss_sum)
        self.samples += 1
        self.peak_rss_sum_kb = max(self.peak_rss_sum_kb, rss_sum)
        self.max_processes = max(self.max_processes, len(alive))

    def run(self) -> None:
        while not self.stopped.is_set():
            if self.measure:
                self.sample()
            if time.monotonic() > self.deadline and not self.timed_out:
                self.timed_out = True
                _signal_group(self.pid, signal.SIGKILL)
            self.stopped.wait(self.interval if self.measure else 1.0)

    def stop(self) -> None:
        self.stopped.set()
        self.join()


def _signal_group(pgid: int, signum: int) -> bool:
    """Send signum to the process group we created; False when it has no process left."""
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _stop_group(proc: subprocess.Popen, reaped: bool) -> None:
    """Stop a subprocess and every descendant left in its process group."""
    if not _signal_group(proc.pid, signal.SIGTERM):
        return
    if not reaped:
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
    time.sleep(0.2)
    _signal_group(proc.pid, signal.SIGKILL)
    if not reaped:
        proc.wait()


def run_measured(
    command: list[str],
    cwd: Path,
    interval: float,
    timeout: float,
    env: dict[str, str],
    measure_memory: bool,
) -> Measured:
    """Run one command in its own process group; time it whole, and poll its memory when
    measure_memory (which takes CPU from it: such a run's time is not a figure)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(
            command, cwd=cwd, stdout=out, stderr=err, env=env, start_new_session=True
        )
        poller = MemoryPoller(proc.pid, interval, timeout, measure_memory)
        poller.start()
        reaped = False
        try:
            _, status, usage = os.wait4(proc.pid, 0)
            wall = time.perf_counter() - start
            reaped = True
            proc.returncode = os.waitstatus_to_exitcode(status)
        finally:
            poller.stop()
            # Nothing should be left in the group; stop anything that is (or everything on
            # Ctrl-C or an error here).
            _stop_group(proc, reaped)
        out.seek(0)
        err.seek(0)
        return Measured(
            wall_s=wall,
            cpu_s=usage.ru_utime + usage.ru_stime,
            returncode=proc.returncode,
            stdout=out.read().decode(errors="replace"),
            stderr=err.read().decode(errors="replace"),
            peak_rss_sum_mb=poller.peak_rss_sum_kb / 1024,
            peak_pss_sum_mb=poller.peak_pss_sum_kb / 1024,
            peak_single_mb=poller.peak_single_kb / 1024,
            # Linux, kB: the child and its reaped descendants (max, not sum); it also counts
            # the pre-exec copy of this benchmark process, so it is a cross-check only.
            wait4_maxrss_mb=usage.ru_maxrss / 1024,
            max_processes=poller.max_processes,
            samples=poller.samples,
            timed_out=poller.timed_out,
        )


def _check(measured: Measured, what: str) -> None:
    if measured.returncode != 0 or measured.timed_out:
        reason = "timed out" if measured.timed_out else f"exit status {measured.returncode}"
        tail = (measured.stderr or measured.stdout)[-2000:]
        raise RuntimeError(f"{what}: {reason}\n{tail}")


# -- output folder ---------------------------------------------------------------------------


def folder_bytes(folder: Path) -> tuple[int, int]:
    """(all files, Parquet shards) bytes under an output folder."""
    total = parquet = 0
    for path in folder.rglob("*"):
        if path.is_file():
            size = path.stat().st_size
            total += size
            if path.suffix == ".parquet":
                parquet += size
    return total, parquet


def unique_payload_bytes(folder: Path) -> tuple[int, int, int, int]:
    """(distinct image bytes, distinct mask bytes, #images, #masks) stored in the shards."""
    import pyarrow.parquet as pq  # the project's own dependency, imported only here

    sizes: dict[str, dict[bytes, int]] = {"image": {}, "mask": {}}
    for shard in sorted((folder / "data").glob("*.parquet")):
        parquet = pq.ParquetFile(shard)
        for group in range(parquet.num_row_groups):
            table = parquet.read_row_group(group, columns=["image", "mask"])
            for column, seen in sizes.items():
                values = table.column(column).combine_chunks().field("bytes")
                for value in values:
                    data = value.as_py()
                    seen[hashlib.sha256(data).digest()] = len(data)
            del table
    image, mask = sizes["image"], sizes["mask"]
    return sum(image.values()), sum(mask.values()), len(image), len(mask)


def shard_hashes(folder: Path) -> dict[str, str]:
    """The manifest's hashes of the Parquet shards (to check workers give the same bytes)."""
    manifest = json.loads((folder / "manifest.json").read_text())
    return {name: digest for name, digest in manifest["files"].items() if name.endswith(".parquet")}


# -- one size ----------------------------------------------------------------------------------


@dataclass
class Series:
    """Repeated measurements of one command, with their medians."""

    runs: list[dict[str, Any]] = field(default_factory=list)

    def add(self, measured: Measured, **extra: Any) -> None:
        record = asdict(measured)
        record.pop("stdout")
        record.pop("stderr")
        record.update(extra)
        self.runs.append(record)

    def median(self, key: str) -> float:
        """The median over the runs (NaN when there are none: memory not measured)."""
        if not self.runs:
            return float("nan")
        return float(statistics.median(run[key] for run in self.runs))


def build_command(
    python: str, sources: list[str], out: Path, workers: int, args: argparse.Namespace
) -> list[str]:
    given = [arg for source in sources for arg in ("--source", source)]
    return [
        python, "-m", "pipeline", "build", *given, "--out", str(out),
        "-q", "--overwrite", "--workers", str(workers), "--no-cache",
        "--runner", args.runner, "--batch-size", str(args.batch_size),
    ]  # fmt: skip


def shard_sizes(folder: Path) -> list[dict[str, Any]]:
    """Each shard of the manifest with its split, source and size on disk."""
    manifest = json.loads((folder / "manifest.json").read_text())
    return [
        {**shard, "bytes": (folder / shard["path"]).stat().st_size} for shard in manifest["shards"]
    ]


def read_inputs(root: Path) -> None:
    """Read every input file once (untimed), so that each timed run starts with its inputs
    in the page cache whatever the runs before it left there: a kernel may page out files
    not touched for a while, and a run that follows a long one would read from disk."""
    for path in sorted(root.rglob("*")):
        if path.is_file():
            with path.open("rb") as handle:
                while handle.read(1 << 20):
                    pass


def bench_workload(
    workload: Workload, args: argparse.Namespace, env: dict[str, str], warm_up: bool = False
) -> dict[str, Any]:
    """Every figure for one workload (data written once, outside the timed runs)."""
    python, label = args.python, workload.name
    with tempfile.TemporaryDirectory(prefix="mmrs-bench-") as tmp:
        root, out = Path(tmp) / "data", Path(tmp) / "out"
        root.mkdir()
        started = time.perf_counter()
        input_bytes, sources = workload.write(root, args.seed)
        print(
            f"{label}: wrote {workload.count} cases ({input_bytes / MB:.1f} MB) in "
            f"{time.perf_counter() - started:.1f} s",
            file=sys.stderr,
        )
        floor, decode_floor = Series(), Series()
        builds = {workers: Series() for workers in args.workers}  # timed
        memory = {workers: Series() for workers in args.workers}  # polled
        hashes: dict[int, set[str]] = {workers: set() for workers in args.workers}
        manifest: dict[str, Any] = {}

        def build(workers: int, series: Series, polled: bool) -> None:
            nonlocal manifest
            command = build_command(python, sources, out, workers, args)
            read_inputs(root)
            measured = run_measured(command, PROJECT, args.interval, args.timeout, env, polled)
            _check(measured, f"build {label} workers={workers}")
            manifest = json.loads((out / "manifest.json").read_text())
            rows = sum(manifest["rows_per_split"].values())
            series.add(measured, rows=rows, images=manifest["images"])
            hashes[workers].add(json.dumps(shard_hashes(out), sort_keys=True))

        if warm_up:  # not counted: the first build pays Prefect's one-time flow registration
            for workers in args.workers:
                build(workers, Series(), polled=False)
        for repeat in range(args.repeats):
            for mode, series in (("encode", floor), ("decode", decode_floor)):
                command = [python, "-c", workload.floor_code, str(root), mode]
                read_inputs(root)
                measured = run_measured(command, PROJECT, args.interval, args.timeout, env, False)
                _check(measured, f"floor ({mode}) {label}")
                series.add(measured, **json.loads(measured.stdout.strip().splitlines()[-1]))
            for workers in args.workers:
                build(workers, builds[workers], polled=False)
            for workers in args.workers if args.memory else ():
                build(workers, memory[workers], polled=True)
            print(f"{label}: repeat {repeat + 1}/{args.repeats} done", file=sys.stderr)
        total_bytes, parquet_bytes = folder_bytes(out)
        image_bytes, mask_bytes, n_images, n_masks = unique_payload_bytes(out)
        result = summarise(
            workload.count, floor, decode_floor, builds, memory, manifest, hashes,
            (total_bytes, parquet_bytes, image_bytes, mask_bytes, n_images, n_masks),
            input_bytes,
        )  # fmt: skip
        result.update(name=label, describe=workload.describe, shards=shard_sizes(out))
        return result


def summarise(
    count: int,
    floor: Series,
    decode_floor: Series,
    builds: dict[int, Series],
    memory: dict[int, Series],
    manifest: dict[str, Any],
    hashes: dict[int, set[str]],
    sizes: tuple[int, int, int, int, int, int],
    input_bytes: int,
) -> dict[str, Any]:
    """The medians and ratios of one N as a JSON-able dict: times from the timed runs,
    memory from the polled ones."""
    total_bytes, parquet_bytes, image_bytes, mask_bytes, n_images, n_masks = sizes
    rows = sum(manifest["rows_per_split"].values())
    result: dict[str, Any] = {
        "n": count,
        "images": manifest["images"],
        "rows": rows,
        "input_bytes": input_bytes,
        "floor": {
            "wall_s": floor.median("wall_s"),
            "cpu_s": floor.median("cpu_s"),
            "loop_s": floor.median("loop_s"),
            "vm_hwm_mb": floor.median("vm_hwm_mb"),
            "masks_encoded": floor.runs[0]["masks_encoded"],
            "runs": floor.runs,
        },
        "decode_floor": {
            "wall_s": decode_floor.median("wall_s"),
            "loop_s": decode_floor.median("loop_s"),
            "runs": decode_floor.runs,
        },
        "build": {},
        "output": {
            "folder_bytes": total_bytes,
            "parquet_bytes": parquet_bytes,
            "unique_image_bytes": image_bytes,
            "unique_mask_bytes": mask_bytes,
            "unique_images": n_images,
            "unique_masks": n_masks,
            "bytes_ratio": total_bytes / max(image_bytes + mask_bytes, 1),
            "parquet_bytes_ratio": parquet_bytes / max(image_bytes + mask_bytes, 1),
        },
        # over every build of this N, timed and polled
        "identical_shards_across_workers": len(set().union(*hashes.values())) == 1,
    }
    for workers, series in builds.items():
        wall, polled = series.median("wall_s"), memory[workers]
        result["build"][str(workers)] = {
            "wall_s": wall,
            "cpu_s": series.median("cpu_s"),
            "images_per_s": count / wall,
            "rows_per_s": rows / wall,
            "peak_rss_sum_mb": polled.median("peak_rss_sum_mb"),
            "peak_pss_sum_mb": polled.median("peak_pss_sum_mb"),
            "peak_single_mb": polled.median("peak_single_mb"),
            "wait4_maxrss_mb": polled.median("wait4_maxrss_mb"),
            "max_processes": max((run["max_processes"] for run in polled.runs), default=0),
            "runs": series.runs,
            "memory_runs": polled.runs,
        }
    one = result["build"].get("1")
    if one:
        result["ratio_build_w1_to_floor_wall"] = one["wall_s"] / result["floor"]["wall_s"]
        result["ratio_build_w1_to_floor_wall_per_repeat"] = _per_repeat(one, result["floor"])
        result["ratio_build_w1_to_floor_loop"] = one["wall_s"] / result["floor"]["loop_s"]
        result["ratio_build_w1_to_floor_cpu"] = one["cpu_s"] / result["floor"]["cpu_s"]
        result["ratio_build_w1_to_decode_floor_wall"] = (
            one["wall_s"] / result["decode_floor"]["wall_s"]
        )
    if one and "2" in result["build"]:
        result["speedup_w2_vs_w1"] = one["wall_s"] / result["build"]["2"]["wall_s"]
        result["speedup_w2_vs_w1_per_repeat"] = _per_repeat(one, result["build"]["2"])
    return result


def _per_repeat(top: dict[str, Any], bottom: dict[str, Any]) -> list[float]:
    """top's wall time over bottom's, repeat by repeat: the runs of one repeat follow each
    other, so the spread of these shows how far the machine's speed drifted between runs."""
    return [a["wall_s"] / b["wall_s"] for a, b in zip(top["runs"], bottom["runs"], strict=True)]


def _spread(values: list[float]) -> str:
    return f"; per repeat {min(values):.2f}-{max(values):.2f}" if len(values) > 1 else ""


# -- report ------------------------------------------------------------------------------------


def _verdict(value: float | None, target: float, upper: bool) -> str:
    if value is None:
        return "n/a"
    good = value <= target if upper else value >= target
    return "ok" if good else "MISSED"


def print_size(result: dict[str, Any], repeats: int) -> None:
    """The table of one N."""
    floor, output = result["floor"], result["output"]
    print(
        f"\n{result['name']} cases ({result['describe']}), "
        f"{result['images']} images, {result['rows']} rows; median of {repeats} run(s)"
    )
    header = (
        f"  {'':<20}{'wall s':>9}{'cpu s':>8}{'images/s':>10}{'rows/s':>10}"
        f"{'RSS sum MB':>12}{'PSS sum MB':>12}{'max proc MB':>13}"
    )
    print(header)
    print(
        f"  {'floor (Pillow only)':<20}{floor['wall_s']:>9.2f}{floor['cpu_s']:>8.2f}"
        f"{result['n'] / floor['wall_s']:>10.1f}{'':>10}{'':>12}{'':>12}"
        f"{floor['vm_hwm_mb']:>13.0f}"
    )
    for workers, build in result["build"].items():
        print(
            f"  {'build workers=' + workers:<20}{build['wall_s']:>9.2f}{build['cpu_s']:>8.2f}"
            f"{build['images_per_s']:>10.1f}{build['rows_per_s']:>10.1f}"
            f"{build['peak_rss_sum_mb']:>12.0f}{build['peak_pss_sum_mb']:>12.0f}"
            f"{build['peak_single_mb']:>13.0f}"
        )
    print(
        f"  floor work loop in-process: {floor['loop_s']:.2f} s "
        f"({floor['masks_encoded']} mask PNGs encoded; referring rows of multi-component "
        f"images would add one each, none here)"
    )
    ratio = result.get("ratio_build_w1_to_floor_wall")
    if ratio is not None:
        print(
            f"  ratio build(w=1) wall / floor wall  = {ratio:.2f}  "
            f"(target <= {TARGET_FLOOR_RATIO}: {_verdict(ratio, TARGET_FLOOR_RATIO, True)}"
            f"{_spread(result['ratio_build_w1_to_floor_wall_per_repeat'])})"
        )
        print(
            f"  ratio build(w=1) wall / floor loop  = "
            f"{result['ratio_build_w1_to_floor_loop']:.2f}  (stricter: no interpreter start "
            f"in the floor)"
        )
        print(
            f"  ratio build(w=1) cpu / floor cpu    = "
            f"{result['ratio_build_w1_to_floor_cpu']:.2f}  (user + system of the command's "
            f"process, not of the worker that converts its first batches)"
        )
        print(
            f"  ratio build(w=1) wall / decode-only floor wall = "
            f"{result['ratio_build_w1_to_decode_floor_wall']:.2f}  (decode-only floor "
            f"{result['decode_floor']['wall_s']:.2f} s: nothing encoded)"
        )
    speedup = result.get("speedup_w2_vs_w1")
    if speedup is not None:
        print(
            f"  speed-up workers=2 vs workers=1     = {speedup:.2f}  "
            f"(target >= {TARGET_SPEEDUP}: {_verdict(speedup, TARGET_SPEEDUP, False)}"
            f"{_spread(result['speedup_w2_vs_w1_per_repeat'])})"
        )
    unique = output["unique_image_bytes"] + output["unique_mask_bytes"]
    print(
        f"  output folder {output['folder_bytes'] / MB:.2f} MB (Parquet "
        f"{output['parquet_bytes'] / MB:.2f} MB) vs unique images + masks {unique / MB:.2f} MB "
        f"({output['unique_images']} images, {output['unique_masks']} masks): "
        f"ratio {output['bytes_ratio']:.3f} "
        f"(target <= {TARGET_BYTES_RATIO}: "
        f"{_verdict(output['bytes_ratio'], TARGET_BYTES_RATIO, True)})"
    )
    same = "yes" if result["identical_shards_across_workers"] else "NO"
    print(f"  identical Parquet bytes for every worker count: {same}")
    print_shards(result["shards"])


def print_shards(shards: list[dict[str, Any]]) -> None:
    """How many shards, and their sizes, per split and source."""
    print(f"  shards: {len(shards)}")
    groups: dict[tuple[str, str], list[int]] = {}
    for shard in shards:
        groups.setdefault((shard["split"], shard["source"]), []).append(shard["bytes"])
    for (split, source), sizes in groups.items():
        listed = ", ".join(f"{size / MB:.1f}" for size in sizes)
        print(f"    {split:<11}{source:<16}{len(sizes):>3} file(s): {listed} MB")


def per_image(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The cost of one more image between the smallest and largest N, and the fixed cost."""
    small, large = results[0], results[-1]
    extra = large["n"] - small["n"]
    found: dict[str, Any] = {"from_n": small["n"], "to_n": large["n"]}
    floors = {name: (large[name]["wall_s"] - small[name]["wall_s"]) / extra
              for name in ("floor", "decode_floor")}  # fmt: skip
    found.update({f"{name}_ms": value * 1000 for name, value in floors.items()})
    for workers, build in small["build"].items():
        marginal = (large["build"][workers]["wall_s"] - build["wall_s"]) / extra
        found[f"w{workers}_ms"] = marginal * 1000
        found[f"w{workers}_fixed_s"] = build["wall_s"] - small["n"] * marginal
        found[f"w{workers}_to_floor"] = marginal / floors["floor"]
        found[f"w{workers}_to_decode_floor"] = marginal / floors["decode_floor"]
    return found


def print_per_image(found: dict[str, Any]) -> None:
    print(
        f"\none more image, from N={found['from_n']} to N={found['to_n']}: floor "
        f"{found['floor_ms']:.2f} ms, decode-only floor {found['decode_floor_ms']:.2f} ms"
    )
    for key in sorted(k for k in found if k.endswith("_fixed_s")):
        workers = key.split("_")[0]
        print(
            f"  build {workers}: {found[workers + '_ms']:.2f} ms per image "
            f"(x{found[workers + '_to_floor']:.2f} the floor's, "
            f"x{found[workers + '_to_decode_floor']:.2f} the decode-only floor's), "
            f"fixed cost {found[key]:.2f} s"
        )


def memory_growth(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Peak memory of the largest N over the smallest N, per worker count."""
    small, large = results[0], results[-1]
    growth: dict[str, Any] = {"from_n": small["n"], "to_n": large["n"]}
    for workers in small["build"]:
        for key in ("peak_single_mb", "peak_pss_sum_mb", "peak_rss_sum_mb"):
            a, b = small["build"][workers][key], large["build"][workers][key]
            ratio = b / a if a else float("inf")
            growth[f"w{workers}_{key}"] = {"small": a, "large": b, "mb": b - a, "ratio": ratio}
    return growth


def print_growth(growth: dict[str, Any]) -> None:
    print(
        f"\nmemory growth N={growth['from_n']} -> N={growth['to_n']} "
        f"(target: flat, ratio <= {TARGET_MEMORY_GROWTH})"
    )
    for key, value in growth.items():
        if not isinstance(value, dict):
            continue
        print(
            f"  {key:<24}{value['small']:>8.0f} MB -> {value['large']:>6.0f} MB  "
            f"({value['mb']:+.0f} MB, x{value['ratio']:.2f}: "
            f"{_verdict(value['ratio'], TARGET_MEMORY_GROWTH, True)})"
        )


# -- main --------------------------------------------------------------------------------------


def _ints(text: str) -> list[int]:
    values = sorted({int(part) for part in text.replace(",", " ").split()})
    if not values or values[0] < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _sizes(text: str) -> list[int]:
    return [] if text.strip() == "0" else _ints(text)


def _counts(text: str) -> list[int]:
    """'650,200,150' (three case counts) or '0' (no mixed case)."""
    values = [int(part) for part in text.replace(",", " ").split()]
    if values == [0]:
        return []
    if len(values) != 3 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected three positive case counts or 0, got {text!r}")
    return values


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sizes",
        type=_sizes,
        default=[800, 3200],
        help="case counts N of the single-source case (default 800,3200; 0 leaves it out)",
    )
    parser.add_argument(
        "--mixed",
        type=_counts,
        default=[650, 200, 150],
        metavar="CROPS,PH2,BUSI",
        help="cases of each source of the mixed case (default 650,200,150; 0 leaves it out)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs per measurement (median)")
    parser.add_argument(
        "--no-memory",
        dest="memory",
        action="store_false",
        help="leave out the second, polled run of each build (no memory figures)",
    )
    parser.add_argument(
        "--workers", type=_ints, default=[1, 2], help="build worker counts (default 1,2)"
    )
    parser.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic data")
    parser.add_argument(
        "--interval", type=float, default=0.05, help="memory polling interval in s (0.05)"
    )
    parser.add_argument(
        "--timeout", type=float, default=3600, help="kill a measured run after this many s"
    )
    parser.add_argument("--python", default=sys.executable, help="interpreter of the measured runs")
    parser.add_argument(
        "--runner", default="threads", help="Prefect task runner of the builds (threads)"
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=BATCH_SIZE,
        help=f"cases per task (default {BATCH_SIZE}, as mmrs build)",
    )
    parser.add_argument(
        "--ephemeral",
        action="store_true",
        help="let every build start Prefect's embedded API (default: one Prefect server on "
        "127.0.0.1 for all builds, as a deployment has)",
    )
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


def start_prefect_server(python: str, env: dict[str, str]) -> subprocess.Popen:
    """One Prefect server on 127.0.0.1 for every build; sets PREFECT_API_URL in env."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server_env = {**env, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
    server_env.pop("PREFECT_API_URL", None)
    command = [python, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port",
               str(port)]  # fmt: skip
    server = subprocess.Popen(
        command, env=server_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                env["PREFECT_API_URL"] = url
                return server
        except OSError:
            time.sleep(0.5)
    _stop_group(server, reaped=False)
    raise RuntimeError("the Prefect server did not start in 120 s")


def _terminate(signum: int, _frame: Any) -> None:
    """SIGTERM/SIGHUP: unwind like Ctrl-C, so running builds are stopped and folders removed."""
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Ctrl-C (even when started with SIGINT ignored, as `cmd &` does) and SIGTERM unwind through
    # the finally blocks that stop every measured process group and remove every temp folder.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    if not Path("/proc/self/status").exists():
        print("bench_build: needs Linux /proc to measure memory", file=sys.stderr)
        return 2
    env = {**os.environ, "PYTHONPATH": str(PROJECT), "PYTHONUNBUFFERED": "1"}
    env.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    with tempfile.TemporaryDirectory(prefix="mmrs-bench-prefect-") as home:
        env["PREFECT_HOME"] = home
        server = None if args.ephemeral else start_prefect_server(args.python, env)
        try:
            results = [
                bench_workload(single_source(count), args, env, warm_up=index == 0)
                for index, count in enumerate(args.sizes)
            ]
            both = None
            if args.mixed:
                both = bench_workload(mixed(args.mixed), args, env, warm_up=not results)
        finally:
            if server is not None:
                _stop_group(server, reaped=False)
    print(
        f"\nMMRS build benchmark: python {platform.python_version()}, "
        f"{os.cpu_count()} CPU(s), seed {args.seed}\n"
        "wall s = whole subprocess (interpreter start and imports included) for floor and "
        "build alike; the build includes its final validation.\n"
        "Memory comes from a second, untimed run of each build: RSS/PSS sum = peak over "
        f"{args.interval * 1000:.0f} ms samples of the process tree's summed VmRSS / Pss (Pss "
        f"every {MemoryPoller.PSS_EVERY}th sample and at new highs of the RSS sum); max proc = "
        "largest single-process VmHWM (the floor's: its own)."
    )
    for result in [*results, *([both] if both else [])]:
        print_size(result, args.repeats)
    growth = memory_growth(results) if len(results) > 1 else None
    marginal = per_image(results) if len(results) > 1 else None
    if marginal:
        print_per_image(marginal)
    if growth:
        print_growth(growth)
    if args.json:
        report = {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "repeats": args.repeats,
            "seed": args.seed,
            "image_size": [WIDTH, HEIGHT],
            "timing": "wall clock of whole subprocesses (interpreter start included) for floor "
            "and build; floor loop_s is the in-process perf_counter time of the work loop",
            "ratio": "build wall (workers=1) / floor wall; also / floor loop",
            "targets": {
                "build_to_floor": TARGET_FLOOR_RATIO,
                "speedup_w2_vs_w1": TARGET_SPEEDUP,
                "bytes_ratio": TARGET_BYTES_RATIO,
                "memory_growth_ratio": TARGET_MEMORY_GROWTH,
            },
            "sizes": results,
            "mixed": both,
            "per_image": marginal,
            "memory_growth": growth,
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nfigures written to {args.json}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("bench_build: interrupted; measured processes stopped, temp folders removed")
        sys.exit(130)
