"""Benchmark of one volume's conversion against the floor of reading it and writing its PNGs.

A synthetic CT phantom (512x512xN int16 HU, spacing 0.7x0.7x1.0 mm, LPS, the body centred on
x = 0: air, fat, soft tissue with noise, a bony ring and spine, lungs in the upper slices)
and its uint8 label map (a liver on the patient's right over ~40 % of the slices, a small
tumour in it) are written as .nii.gz with SimpleITK; writing is not measured.

* FLOOR: `SimpleITK.ReadImage` of the image only, then for each slice the conversion writes
  (the axial slices where a label covers >= 10 pixels, taken from the conversion's output)
  a numpy clip/scale to uint8 with the same abdomen window and one PNG with Pillow's
  defaults, as `pipeline.io.images.encode_png`. No label map, no mask PNGs.
* CHECK: `pipeline.io.nifti.check_nifti` of the image and the label map, the read-through
  that proves each NIfTI whole before SimpleITK reads it (part of the conversion's time).
* SERIES: the image written as a DICOM series (one file per slice), read by
  `pipeline.io.volumes.read_volume` (GDCM's listing, the check that every file is a whole,
  evenly spaced slice, SimpleITK's read) against GDCM's listing and SimpleITK's read alone.
* CONVERSION: `pipeline.build.extract.extract_case` of the one case of a YAML spec (read image and
  labels, reorient, choose slices, window, encode image and mask PNGs, facts), with
  `slices: {mode: all}` (the ratio's numerator) and with the default policy (largest, k=3).

Time: median of --runs runs after one warm-up, in this process (time.perf_counter).
Memory: each of floor, conversions and a baseline that only imports the modules runs once
in a fresh subprocess (`--child`), which reports its VmHWM (the peak RSS of its own address
space; ru_maxrss would also count the pre-exec copy of this benchmark). Nothing subtracted.
Targets: conversion (all) <= 3x floor, peak RSS <= 3x the int16 volume's size in memory.
The whole CLI build (Prefect start-up included) is timed once, for context only.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from PIL import Image

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from pipeline.build.cases import SourceMeta  # noqa: E402
from pipeline.build.extract import extract_case  # noqa: E402
from pipeline.build.extract_volume import extract_volume  # noqa: E402, F401 (imported for baseline)
from pipeline.geometry.slicing import CT_WINDOWS  # noqa: E402
from pipeline.io.nifti import check_nifti  # noqa: E402
from pipeline.io.volumes import read_volume  # noqa: E402
from pipeline.sources.base import Case  # noqa: E402
from pipeline.sources.spec import load_spec  # noqa: E402

SIZE, SPACING, MB = 512, (0.7, 0.7, 1.0), 1024 * 1024
TARGET_TIME, TARGET_MEMORY = 3.0, 3.0
SPEC = """name: bench_ct
modality: ct
images: "images/*.nii.gz"
masks: "labels/{{name}}"
labels: {{1: liver, 2: tumour}}
window: abdomen
slice_axis: axial
{slices}"""


def write_phantom(root: Path, slices: int, seed: int = 0) -> None:
    """The CT phantom and its label map under root/images and root/labels."""
    rng = np.random.default_rng(seed)
    mm = (np.arange(SIZE) - (SIZE - 1) / 2) * SPACING[0]  # x = 0 and y = 0 in the middle
    y, x = np.meshgrid(mm, mm, indexing="ij")  # rows: anterior -> posterior (+y)
    body = (x / 160) ** 2 + (y / 115) ** 2
    base = np.full((SIZE, SIZE), -1000.0, dtype=np.float32)
    base[body <= 1] = -90.0  # subcutaneous fat
    base[body <= 0.85] = 40.0  # soft tissue
    base[(body > 0.7) & (body <= 0.78)] = 450.0  # bony ring (ribs)
    base[x**2 + (y - 75) ** 2 <= 20**2] = 650.0  # spine, posterior
    lungs = ((np.abs(x) - 70) / 55) ** 2 + ((y + 5) / 70) ** 2 <= 1
    image = np.empty((slices, SIZE, SIZE), dtype=np.int16)  # [z, y, x], z inferior -> superior
    labels = np.zeros((slices, SIZE, SIZE), dtype=np.uint8)
    liver_z, liver_half = 0.4 * slices, 0.2 * slices
    tumour_z = 0.45 * slices
    for z in range(slices):
        hu = base.copy()
        if z > 0.65 * slices:
            hu[lungs] = -850.0
        shrink = 1 - ((z - liver_z) / liver_half) ** 2
        if shrink > 0:  # the liver on the patient's right: -x in LPS
            liver = ((x + 60) / 65) ** 2 + ((y + 10) / 70) ** 2 <= shrink
            hu[liver], labels[z][liver] = 60.0, 1
            reach = 12.0**2 - ((z - tumour_z) * SPACING[2]) ** 2  # a 12 mm ball in the liver
            tumour = liver & ((x + 75) ** 2 + (y + 5) ** 2 <= reach)
            hu[tumour], labels[z][tumour] = 10.0, 2
        hu += rng.standard_normal((SIZE, SIZE), dtype=np.float32) * 15
        image[z] = np.rint(hu)
    for folder, array in (("images", image), ("labels", labels)):
        volume = sitk.GetImageFromArray(array)
        volume.SetSpacing(SPACING)
        volume.SetOrigin((mm[0], mm[0], 0.0))  # direction: identity (LPS)
        (root / folder).mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(volume, str(root / folder / "ct.nii.gz"))


def write_series(image_path: Path, folder: Path) -> Path:
    """The volume as a DICOM series: one CT file per slice, placed by ImagePositionPatient."""
    volume = sitk.ReadImage(str(image_path))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    folder.mkdir(parents=True, exist_ok=True)
    series = "1.2.826.0.1.3680043.2.1125.2.1"
    for k in range(volume.GetDepth()):
        plane = volume[:, :, k]
        position = volume.TransformIndexToPhysicalPoint((0, 0, k))
        tags = {
            "0008|0060": "CT",
            "0020|000e": series,
            "0020|000d": f"{series}.0",
            "0008|0018": f"{series}.{k + 1}",
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{v:.4f}" for v in position),
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0028|0030": f"{SPACING[1]}\\{SPACING[0]}",
        }
        for tag, value in tags.items():
            plane.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{k:04d}.dcm"))
        writer.Execute(plane)
    return folder


def bare_series_read(folder: Path) -> None:
    """GDCM's listing and SimpleITK's read, unchecked."""
    (series,) = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series))
    reader.Execute()


def write_specs(workdir: Path) -> dict[str, Path]:
    """One spec per slice policy: every labelled slice, and the default (largest, k=3)."""
    specs = {"all": "slices: {mode: all}\n", "default": ""}
    paths = {}
    for name, slices in specs.items():
        paths[name] = workdir / f"bench_ct_{name}.yaml"
        paths[name].write_text(SPEC.format(slices=slices))
    return paths


def load_case(spec: Path, root: Path) -> tuple[Case, SourceMeta]:
    source = load_spec(spec)
    cases = [found for found in source.discover(root) if isinstance(found, Case)]
    return cases[0], SourceMeta.of(source)


def floor(image_path: Path, indices: list[int]) -> int:
    """Read the volume, window the given axial slices to uint8, encode each as PNG."""
    level, width = CT_WINDOWS["abdomen"]
    low, scale = level - width / 2, 255.0 / width
    image = sitk.ReadImage(str(image_path))
    voxels = sitk.GetArrayViewFromImage(image)  # a view: valid while `image` lives
    written = 0
    for z in indices:
        grey = np.clip((voxels[z].astype(np.float32) - low) * scale, 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(grey).save(buffer, format="PNG")
        written += len(buffer.getvalue())
    return written


def conversion(spec: Path, root: Path) -> list:
    return extract_case(*load_case(spec, root))


def timed(function, runs: int) -> float:
    """Median seconds of `runs` calls after one warm-up."""
    function()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_rss_mb() -> float:
    """This process's own peak RSS (VmHWM), in MB; ru_maxrss where /proc is missing."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(what: str, workdir: Path) -> None:
    """One measurement in a fresh process (see --child); prints its peak RSS as JSON."""
    root, specs = workdir / "data", write_specs(workdir)
    if what == "floor":
        indices = json.loads((workdir / "indices.json").read_text())
        floor(root / "images" / "ct.nii.gz", indices)
    elif what != "baseline":
        conversion(specs[what], root)
    print(json.dumps({"peak_rss_mb": peak_rss_mb()}))


def measure_rss(what: str, workdir: Path) -> float:
    command = [sys.executable, __file__, "--child", what, "--workdir", str(workdir)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])["peak_rss_mb"]


def cli_build(spec: Path, root: Path, workdir: Path) -> float:
    """Wall seconds of one whole `mmrs build` (Prefect start-up included)."""
    env = {**os.environ, "PYTHONPATH": str(PROJECT), "PREFECT_HOME": str(workdir / "prefect")}
    env.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    out = str(workdir / "out")
    command = [sys.executable, "-m", "pipeline", "build", "--source", f"{spec}={root}"]
    command += ["--out", out, "--no-cache", "--runner", "threads", "-q"]
    start = time.perf_counter()
    subprocess.run(command, cwd=PROJECT, env=env, capture_output=True, check=True)
    return time.perf_counter() - start


def report(args: argparse.Namespace, workdir: Path) -> None:
    root = workdir / "data"
    start = time.perf_counter()
    write_phantom(root, args.slices)
    print(f"phantom {SIZE}x{SIZE}x{args.slices} written in {time.perf_counter() - start:.1f} s")
    specs = write_specs(workdir)
    slices = conversion(specs["all"], root)
    indices = sorted({s.slice_index for s in slices})
    (workdir / "indices.json").write_text(json.dumps(indices))
    found = {(t.target, t.patient_side) for s in slices for t in s.targets if t.facts.present}
    sides = ", ".join(f"{target} {side}" for target, side in sorted(found))
    default = conversion(specs["default"], root)
    image = root / "images" / "ct.nii.gz"
    t_floor = timed(lambda: floor(image, indices), args.runs)
    t_check = timed(
        lambda: [check_nifti(image), check_nifti(root / "labels" / "ct.nii.gz")], args.runs
    )
    t_all = timed(lambda: conversion(specs["all"], root), args.runs)
    t_default = timed(lambda: conversion(specs["default"], root), args.runs)
    rss = {what: measure_rss(what, workdir) for what in ("baseline", "floor", "all", "default")}
    series = write_series(image, workdir / "series")
    t_bare = timed(lambda: bare_series_read(series), args.runs)
    t_series = timed(lambda: read_volume(series), args.runs)
    t_cli = None if args.no_cli else cli_build(specs["all"], root, workdir)
    volume_mb = SIZE * SIZE * args.slices * 2 / MB

    def verdict(value: float, target: float) -> str:
        return "ok" if value <= target else "MISSED"

    ratio, memory = t_all / t_floor, rss["all"] / volume_mb
    working = (rss["all"] - rss["baseline"]) / volume_mb  # above the interpreter + libraries
    rows = [
        ("baseline (imports only)", None, rss["baseline"], "", ""),
        (
            f"floor (read + {len(indices)} PNGs)",
            t_floor,
            rss["floor"],
            f"peak RSS x{rss['floor'] / volume_mb:.2f} volume "
            f"(x{(rss['floor'] - rss['baseline']) / volume_mb:.2f} above baseline)",
            "",
        ),
        ("whole-file check (image + labels)", t_check, None, f"x{t_check / t_floor:.2f} floor", ""),
        (
            "conversion, slices: all",
            t_all,
            rss["all"],
            f"time x{ratio:.2f} floor; peak RSS x{memory:.2f} volume "
            f"(x{working:.2f} above the imports-only baseline)",
            f"<= {TARGET_TIME:g}: {verdict(ratio, TARGET_TIME)}; "
            f"<= {TARGET_MEMORY:g}: {verdict(memory, TARGET_MEMORY)} "
            f"(above baseline: {verdict(working, TARGET_MEMORY)})",
        ),
        (
            "conversion, default policy",
            t_default,
            rss["default"],
            f"time x{t_default / t_floor:.2f} floor",
            "",
        ),
    ]
    rows += [
        (f"DICOM series ({args.slices} files): listing + read", t_bare, None, "", ""),
        ("DICOM series: read_volume (checked)", t_series, None, f"x{t_series / t_bare:.2f}", ""),
    ]
    if t_cli is not None:
        rows.append(("CLI build, slices: all (once, Prefect included)", t_cli, None, "", ""))
    print(f"\n`{' '.join([Path(sys.executable).name, *sys.argv])}`\n")
    print(
        f"Volume {SIZE}x{SIZE}x{args.slices} int16 ({volume_mb:.0f} MiB in memory); "
        f"{len(indices)} labelled slices written by floor and conversion (mode all), "
        f"{len(default)} by the default policy; median of {args.runs} runs after a warm-up; "
        f"patient's side found: {sides}.\n"
    )
    print("| measurement | time s | peak RSS MiB | ratio | target |")
    print("|---|---:|---:|---|---|")
    for name, seconds, peak, figure, target in rows:
        time_s = "" if seconds is None else f"{seconds:.2f}"
        rss_mb = "" if peak is None else f"{peak:.0f}"
        print(f"| {name} | {time_s} | {rss_mb} | {figure} | {target} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300, help="slices of the volume (300)")
    parser.add_argument("--runs", type=int, default=3, help="timed runs after a warm-up (3)")
    parser.add_argument("--workdir", type=Path, help="folder for the data (default: temporary)")
    parser.add_argument("--no-cli", action="store_true", help="skip the whole CLI build")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # one RSS measurement
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.workdir)
        return 0
    if args.slices < 10 or args.runs < 1:
        parser.error("--slices must be at least 10 and --runs at least 1")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="mmrs-bench-volume-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        report(args, workdir)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
