"""A DICOM series folder proven whole before it is read as a volume.

GDCM leaves out of a series, without a word, every file it cannot parse (a truncated or
corrupt slice), and ITK then stacks the others with the spacing of the first two: a
dropped slice silently stretches the volume. So every file of the folder is accounted
for: each is a slice of the one series, a DICOM-SEG (masks may sit beside their slices),
or not DICOM at all (notes, a DICOMDIR); a file that is DICOM but none of these is an
error that names it. Each slice must hold all of its pixel data, and the slices must lie
on one orientation at distinct, evenly spaced positions (a gap is a missing slice).
Files whose name starts with "." (system files) are not part of a series.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .dicomseg import import_pydicom, may_hold_slices
from .images import PixelError

# Slice positions agree when within this (mm) or this fraction of the spacing, whichever is
# larger: positions are written with a few decimals.
POSITION_TOLERANCE_MM = 0.01
SPACING_TOLERANCE = 0.01
# Transfer syntaxes whose pixel data is stored as it is (its length is known in advance).
NATIVE = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"}


@dataclass(frozen=True)
class Slice:
    path: Path
    orientation: tuple[float, ...]  # ImageOrientationPatient: row and column cosines
    position: float  # along the slice normal, mm


def _header(path: Path):
    """A file's DICOM header with its pixel data, or None when it is not DICOM at all."""
    pydicom = import_pydicom()
    try:
        return pydicom.dcmread(path)
    except pydicom.errors.InvalidDicomError:
        return None  # no DICOM preamble: not DICOM (a truncated slice keeps its preamble)
    except Exception as exc:  # noqa: BLE001 - a DICOM file that cannot be parsed is unreadable
        raise PixelError(f"unreadable DICOM file ({type(exc).__name__})", path) from exc


def _pixel_bytes(header) -> int | None:
    """Bytes of native pixel data a slice's header declares (None: compressed)."""
    syntax = str(getattr(header.file_meta, "TransferSyntaxUID", "1.2.840.10008.1.2"))
    if syntax not in NATIVE:
        return None
    values = int(header.Rows) * int(header.Columns) * int(header.get("SamplesPerPixel", 1))
    return values * int(header.get("NumberOfFrames", 1) or 1) * int(header.BitsAllocated) // 8


def _check_pixels(path: Path, header) -> None:
    """A slice must hold all of the pixel data its header declares."""
    if "PixelData" not in header:
        raise PixelError("slice has no pixel data (the file is truncated)", path)
    declared, stored = _pixel_bytes(header), len(header.PixelData)
    if declared is not None and stored < declared:
        raise PixelError(
            f"slice holds {stored} bytes of pixel data, its header declares {declared} "
            f"(the file is truncated)",
            path,
        )


def _placed(path: Path, header) -> Slice:
    """A slice with its orientation and its position along its normal."""
    try:
        orientation = tuple(float(v) for v in header.ImageOrientationPatient)
        normal = np.cross(orientation[:3], orientation[3:])
        position = float(np.dot([float(v) for v in header.ImagePositionPatient], normal))
    except (AttributeError, TypeError, ValueError) as exc:
        raise PixelError("slice has no ImagePositionPatient/ImageOrientationPatient", path) from exc
    return Slice(path, orientation, position)


def _check_unlisted(path: Path, series: str) -> None:
    """A file of the folder that is not in the series: fine unless it is DICOM that could be
    one of its slices (an image, a file of this series, or one cut before its series UID)."""
    header = _header(path)
    if header is None or not may_hold_slices(header):
        return  # not a slice: notes, a DICOMDIR, a DICOM-SEG
    uid = header.get("SeriesInstanceUID")
    if uid is not None and str(uid) != series and "Rows" not in header:
        return  # a whole object of its own series without pixels (a report, a state)
    if str(uid) == series:
        _check_pixels(path, header)  # its own reason, where it has one
    raise PixelError("DICOM file the series reader cannot read (corrupt or truncated)", path)


@dataclass(frozen=True)
class Gaps:
    """Where a series allowed to have gaps (`slice_gaps: allow`) has no slice.

    Its slices lie on an even grid of `size` positions: `grid` is the grid index of each
    file, in the series reader's order; `missing` the indices without a slice, each with
    why (the gap, and the files that could not be read).
    """

    grid: tuple[int, ...]
    size: int
    spacing: float  # mm between grid positions: from the first slice to the last, evenly
    missing: tuple[tuple[int, str], ...]


def check_series(
    folder: Path, files: list[str], series: str, allow_gaps: bool = False
) -> Gaps | None:
    """Prove the series `files` (GDCM's, of `folder`) is every slice and evenly spaced.

    With `allow_gaps`, slices that are missing or cannot be read may leave gaps that are
    whole multiples of the spacing: returned as Gaps (None: the series is whole).
    """
    listed = {Path(f).name for f in files}
    entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    for path in entries:  # first: GDCM's listing leaves out more than a dangling link
        if path.is_symlink() and not path.exists():
            raise PixelError("symbolic link that leads to no file (dangling or a loop)", path)
    unreadable = []
    for path in entries:
        if path.name not in listed and path.is_file():
            try:
                _check_unlisted(path, series)
            except PixelError:
                if not allow_gaps:
                    raise
                unreadable.append(path.name)
    slices = []
    for name in files:
        path = Path(name)
        header = _header(path)
        if header is None:
            raise PixelError("not a DICOM file, though its series reader listed it", path)
        _check_pixels(path, header)
        if len(files) > 1:  # one file (a multi-frame object) places its own frames
            slices.append(_placed(path, header))
    for found in slices:
        if not np.allclose(found.orientation, slices[0].orientation, atol=1e-4):
            raise PixelError(
                f"slice orientation {found.orientation} differs from "
                f"{slices[0].path.name}'s {slices[0].orientation}",
                found.path,
            )
    gaps = check_spacing(sorted(slices, key=lambda s: s.position), allow_gaps)
    if not allow_gaps or (not gaps and not unreadable):
        return None
    if not gaps:  # nothing missing between the ends: an unreadable file beyond them
        raise PixelError(
            f"unreadable DICOM file(s) {', '.join(unreadable)} that leave no gap in the "
            f"series (beyond its ends?)",
            folder / unreadable[0],
        )
    return _grid(slices, gaps, unreadable)


def check_spacing(slices: list[Slice], allow_gaps: bool = False) -> list[tuple[int, float]]:
    """Distinct positions at one even spacing (a gap is a missing or unreadable slice).

    With `allow_gaps`, a gap of a whole multiple of the spacing is returned, as (the index
    of the slice before it, its size in mm), instead of an error.
    """
    if len(slices) < 2:
        return []
    steps = np.diff([s.position for s in slices])
    spacing = float(np.median(steps))
    tolerance = max(POSITION_TOLERANCE_MM, SPACING_TOLERANCE * spacing)
    gaps = []
    for index, gap in enumerate(steps):
        before, after = slices[index], slices[index + 1]
        if gap <= tolerance:
            raise PixelError(
                f"{before.path.name} and {after.path.name} lie at the same position "
                f"({after.position:.3f} mm along the slice normal)",
                after.path,
            )
        if abs(gap - spacing) <= tolerance:
            continue
        whole = round(gap / spacing)
        if not allow_gaps or abs(gap - whole * spacing) > tolerance:
            raise PixelError(
                f"uneven slice gap: {gap:g} mm between {before.path.name} and "
                f"{after.path.name} where the series' spacing is {spacing:g} mm (a slice "
                f"missing or unreadable?"
                + (")" if not allow_gaps else "; not a whole number of slices)"),
                after.path,
            )
        gaps.append((index, float(gap)))
    return gaps


def _grid(slices: list[Slice], gaps: list[tuple[int, float]], unreadable: list[str]) -> Gaps:
    """The grid of a series with gaps (`slices` in the reader's order)."""
    ordered = sorted(slices, key=lambda s: s.position)
    spacing = float(np.median(np.diff([s.position for s in ordered])))
    first = ordered[0].position
    rank = {s.path: round((s.position - first) / spacing) for s in ordered}
    size = rank[ordered[-1].path] + 1
    descending = slices[0].position > slices[-1].position  # the reader's order
    grid = tuple(size - 1 - rank[s.path] if descending else rank[s.path] for s in slices)
    extra = f"; unreadable: {', '.join(unreadable)}" if unreadable else ""
    missing = []
    for index, gap in gaps:
        before, after = ordered[index], ordered[index + 1]
        why = (
            f"no slice here: the series jumps {gap:g} mm from {before.path.name} to "
            f"{after.path.name}, its spacing is {spacing:g} mm{extra} (slice_gaps: allow)"
        )
        for k in range(rank[before.path] + 1, rank[after.path]):
            missing.append((size - 1 - k if descending else k, why))
    span = ordered[-1].position - first
    return Gaps(grid, size, span / (size - 1), tuple(sorted(missing)))
