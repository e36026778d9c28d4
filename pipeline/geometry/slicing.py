"""A volume -> display-ready 2D slices: orientation, slice choice, windows, square pixels.

Orientation: the voxel array is turned, by axis permutations and flips only (numpy views,
no copy), to the nearest LPS orientation, exactly as `sitk.DICOMOrient(image, "LPS")`
would: the oriented array is indexed [S, P, L] (index 0 inferior -> superior, anterior ->
posterior, right -> left). Display (DESIGN.md):
- axial slice s: view[s] -> rows anterior to posterior, columns the patient's right to
  left (radiological: the patient's left on the image's right, anterior at the top);
- coronal slice p: view[:, p][::-1] -> rows superior to inferior, columns right to left;
- sagittal slice l: view[:, :, l][::-1] -> rows superior to inferior, columns anterior to
  posterior (anterior on the image's left).
Where a slice's pixels are not square they are resampled in-plane to the finer spacing
(zones are geometric, not index-based): bilinear for the image, nearest for masks.
`slice_index` is the slice's index along that axis in the SOURCE file's voxel grid.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
from PIL import Image

from .patient import (
    BAND_FRACTION,
    MIN_BODY_FRACTION,
    MIN_BODY_WIDTH_MM,
    WORLD_MARGIN_MM,
    PatientFrame,
    body_mask,
    body_midline,
    body_outline,
    otsu_threshold,
    seen_whole,
)

SLICE_AXES = ("axial", "coronal", "sagittal")
# Named CT windows: (level, width) in HU.
CT_WINDOWS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "mediastinum": (50.0, 350.0),
    "abdomen": (40.0, 400.0),
    "liver": (60.0, 160.0),
    "brain": (40.0, 80.0),
    "bone": (400.0, 1800.0),
}
PERCENTILES = (0.5, 99.5)
CT_BODY_HU = -500.0  # CT voxels above this are body (air and lung parenchyma are below)
MIDLINE_SLICES = 32  # axial slices looked at to find the body midline
BODY_REACH_MM = 40.0  # a slice's body joins the fullest outline of the slices this close
OUTLINE_STEP_MM = 5.0  # those slices, sampled about this far apart


class VolumeError(ValueError):
    """A volume setting or geometry that cannot give true slices."""


Window = str | tuple[float, float]  # a CT preset, "percentile", or (low, high)


def parse_window(value: object) -> Window:
    """A window setting: a preset name, "percentile", or [low, high]."""
    if isinstance(value, str):
        if value != "percentile" and value not in CT_WINDOWS:
            names = ", ".join(["percentile", *CT_WINDOWS])
            raise VolumeError(f"window {value!r} is not one of {names} or [low, high]")
        return value
    if (
        isinstance(value, (list, tuple))
        and len(value) == 2
        and all(isinstance(v, (int, float)) for v in value)
        and value[0] < value[1]
    ):
        return (float(value[0]), float(value[1]))
    raise VolumeError(f"window must be a preset name or [low, high] with low < high, got {value!r}")


@dataclass(frozen=True)
class SlicePolicy:
    """Which slices of a volume become images (recorded per row by slice_index).

    A slice counts for a target when the target covers at least `min_pixels` of it.
    - "largest": for each target, the `k` slices where it is largest (ties: lower index);
    - "all": every slice where some target counts;
    - "stride": every `stride`-th of those slices, starting with the first.
    A volume whose labels are all empty gives its middle slice, for negative rows.
    On a chosen slice, every target present is asked about, and up to `negatives` absent
    ones (negative rows; chosen by a stable hash of case, slice and target).
    """

    mode: str = "largest"
    k: int = 3
    stride: int = 5
    min_pixels: int = 10
    negatives: int = 2

    def __post_init__(self) -> None:
        if self.mode not in ("largest", "all", "stride"):
            raise VolumeError(f"slice policy must be largest, all or stride, got {self.mode!r}")
        if self.k < 1 or self.stride < 1 or self.min_pixels < 1 or self.negatives < 0:
            raise VolumeError("slice policy k, stride and min_pixels must be at least 1")

    def choose(self, areas: Mapping[str, np.ndarray], n_slices: int) -> list[int]:
        """Slice indices (along the oriented axis), sorted, from each target's areas."""
        counting = {t: np.flatnonzero(a >= self.min_pixels) for t, a in areas.items()}
        if self.mode == "largest":
            chosen: set[int] = set()
            for target, area in areas.items():
                candidates = counting[target]
                order = candidates[np.argsort(-area[candidates], kind="stable")]
                chosen.update(int(i) for i in order[: self.k])
        else:
            union = sorted({int(i) for found in counting.values() for i in found})
            chosen = set(union if self.mode == "all" else union[:: self.stride])
        if not chosen and not any(a.any() for a in areas.values()):
            return [n_slices // 2]  # an empty label volume: negative rows
        return sorted(chosen)


def parse_slice_policy(value: str) -> SlicePolicy:
    """A policy from the command line: "all", "largest[:K]" or "stride[:N]"."""
    mode, _, number = value.partition(":")
    try:
        if mode == "largest":
            return SlicePolicy("largest", k=int(number or 3))
        if mode == "stride":
            return SlicePolicy("stride", stride=int(number or 5))
        if mode == "all" and not number:
            return SlicePolicy("all")
    except ValueError:
        pass
    raise VolumeError(f"slices must be all, largest[:K] or stride[:N], got {value!r}")


@dataclass(frozen=True)
class VolumeSettings:
    """How a source's volumes become slices."""

    slice_axis: str = "axial"
    window: Window = "percentile"
    target_windows: tuple[tuple[str, Window], ...] = ()
    slices: SlicePolicy = field(default_factory=SlicePolicy)
    channel: int | None = None
    # DICOM series: convert one with missing slices (gaps), each reported (slice_gaps: allow)
    allow_gaps: bool = False

    def __post_init__(self) -> None:
        if self.slice_axis not in SLICE_AXES:
            raise VolumeError(
                f"slice_axis must be one of {', '.join(SLICE_AXES)}, got {self.slice_axis!r}"
            )

    def window_for(self, target: str) -> Window:
        return dict(self.target_windows).get(target, self.window)

    def describe(self) -> dict:
        """The settings as plain data (manifest and data card)."""
        return {
            "slice_axis": self.slice_axis,
            "window": list(self.window) if isinstance(self.window, tuple) else self.window,
            "target_windows": {
                t: list(w) if isinstance(w, tuple) else w for t, w in self.target_windows
            },
            "slices": vars(self.slices),
            "channel": self.channel,
            **({"slice_gaps": "allow"} if self.allow_gaps else {}),
        }


@dataclass(frozen=True)
class Oriented:
    """A voxel array seen in LPS order [S, P, L], and where each of its voxels lies.

    world(s, p, l) = origin + matrix @ (s, p, l), in LPS millimetres. `flipped[a]`: oriented
    axis a runs against its source axis (for the slice index in the source file's grid).
    """

    view: np.ndarray
    matrix: np.ndarray  # 3x3: columns = world step of one voxel along S, P, L
    origin: np.ndarray
    spacing: tuple[float, float, float]  # along S, P, L
    flipped: tuple[bool, bool, bool]

    def source_index(self, axis: int, index: int) -> int:
        n = self.view.shape[axis]
        return n - 1 - index if self.flipped[axis] else index


def orient(array: np.ndarray, spacing, origin, direction) -> Oriented:
    """The LPS view of a SimpleITK voxel array [z, y, x] (see the module docstring)."""
    cosines = np.asarray(direction, dtype=float).reshape(3, 3)  # column c: index axis c
    spacing = np.asarray(spacing, dtype=float)
    # world axis of each index axis (x, y, z), choosing the best match without repeats
    order = sorted(range(3), key=lambda c: -np.abs(cosines[:, c]).max())
    world_of: dict[int, int] = {}
    for c in order:
        free = [w for w in range(3) if w not in world_of.values()]
        world_of[c] = max(free, key=lambda w: abs(cosines[w, c]))
    index_of_world = {w: c for c, w in world_of.items()}
    # oriented axis a (0=S, 1=P, 2=L) holds world axis 2 - a
    axes = []
    flips = []
    step = cosines * spacing  # world step of one voxel along each index axis
    matrix = np.zeros((3, 3))
    origin = np.asarray(origin, dtype=float).copy()
    for a in range(3):
        c = index_of_world[2 - a]
        flip = cosines[2 - a, c] < 0
        axes.append(2 - c)  # numpy axis of index axis c
        flips.append(bool(flip))
        n = array.shape[2 - c]
        if flip:
            origin = origin + step[:, c] * (n - 1)
            matrix[:, a] = -step[:, c]
        else:
            matrix[:, a] = step[:, c]
    view = array.transpose(axes)
    view = view[tuple(slice(None, None, -1) if f else slice(None) for f in flips)]
    oriented_spacing = tuple(float(spacing[index_of_world[2 - a]]) for a in range(3))
    return Oriented(view, matrix, origin, oriented_spacing, tuple(flips))


AXIS_OF = {"axial": 0, "coronal": 1, "sagittal": 2}


def display_slice(volume: np.ndarray, axis: str, index: int) -> np.ndarray:
    """One oriented slice in display order (see the module docstring)."""
    if axis == "axial":
        return volume[index]
    if axis == "coronal":
        return volume[:, index][::-1]
    return volume[:, :, index][::-1]


def slice_geometry(oriented: Oriented, axis: str, index: int) -> tuple[np.ndarray, np.ndarray]:
    """World position of display pixel centres: origin (row 0, col 0) and steps (row, col)."""
    s_axis = AXIS_OF[axis]
    rows_axis, cols_axis = {"axial": (1, 2), "coronal": (0, 2), "sagittal": (0, 1)}[axis]
    start = np.zeros(3)
    start[s_axis] = index
    row_step = oriented.matrix[:, rows_axis].copy()
    if axis != "axial":  # rows run superior to inferior: from the last S index down
        start[0] = oriented.view.shape[0] - 1
        row_step = -row_step
    corner = oriented.origin + oriented.matrix @ start
    return corner, np.stack([row_step, oriented.matrix[:, cols_axis]])


def pixel_spacing(oriented: Oriented, axis: str) -> tuple[float, float, float]:
    """(row, column, slice) spacing in mm of a display slice."""
    spacing = oriented.spacing
    if axis == "axial":
        return spacing[1], spacing[2], spacing[0]
    if axis == "coronal":
        return spacing[0], spacing[2], spacing[1]
    return spacing[0], spacing[1], spacing[2]


def square_shape(shape: tuple[int, int], row_mm: float, col_mm: float) -> tuple[int, int]:
    """Display size with square pixels at the finer of the two spacings."""
    if math.isclose(row_mm, col_mm, rel_tol=1e-3):
        return shape
    finest = min(row_mm, col_mm)
    return (max(1, round(shape[0] * row_mm / finest)), max(1, round(shape[1] * col_mm / finest)))


def resize(pixels: np.ndarray, shape: tuple[int, int], nearest: bool) -> np.ndarray:
    if pixels.shape == shape:
        return pixels
    mode = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    image = Image.fromarray(pixels.astype(np.uint8) * (255 if nearest else 1))
    out = np.asarray(image.resize((shape[1], shape[0]), mode))
    return out > 127 if nearest else out


def window_range(window: Window, volume: np.ndarray, modality: str) -> tuple[float, float]:
    """(low, high) intensities mapped to 0 and 255."""
    if isinstance(window, tuple):
        return window
    if window in CT_WINDOWS:
        if modality != "ct":
            raise VolumeError(f"window {window!r} is a CT preset; the source is {modality}")
        level, width = CT_WINDOWS[window]
        return level - width / 2, level + width / 2
    sample = volume[::2, ::2, ::2] if volume.size > 2**22 else volume
    finite = sample[np.isfinite(sample)] if np.issubdtype(sample.dtype, np.floating) else sample
    if finite.size == 0:
        return 0.0, 1.0
    low, high = np.percentile(finite, PERCENTILES)
    return float(low), float(high)


def body_threshold(volume: np.ndarray, modality: str) -> float:
    """Body/background threshold: -500 HU for CT in HU, else Otsu (padding ignored)."""
    sample = volume[:: max(1, volume.shape[0] // MIDLINE_SLICES), ::2, ::2]
    sample = sample.astype(np.float32)
    finite = sample[np.isfinite(sample)]
    if modality == "ct" and finite.size and finite.min() < CT_BODY_HU:
        return CT_BODY_HU
    return otsu_threshold(finite)


def midline(oriented: Oriented, threshold: float) -> tuple[float, float] | None:
    """World x (LPS, mm) of the body midline and the body's width, None if not seen whole.

    Found on up to MIDLINE_SLICES evenly spaced axial slices; the body must be seen whole,
    and at least MIN_BODY_WIDTH_MM wide, on at least half of those where there is one.
    """
    volume = oriented.view
    n = volume.shape[0]
    picks = sorted({round(i) for i in np.linspace(0, n - 1, min(n, MIDLINE_SLICES))})
    seen, whole = 0, []
    for index in picks:
        pixels = volume[index].astype(np.float32)
        body = body_mask(pixels, threshold)
        if body is None:
            seen += int((pixels > threshold).mean() >= MIN_BODY_FRACTION)
            continue
        seen += 1
        middle, width = body_midline(body)
        corner, steps = slice_geometry(oriented, "axial", index)
        width_mm = width * float(np.linalg.norm(steps[1]))
        if width_mm < MIN_BODY_WIDTH_MM:
            continue  # seen, but too narrow to be a body: a crop's bright structure
        point = corner + steps[0] * (pixels.shape[0] / 2 - 0.5) + steps[1] * (middle - 0.5)
        whole.append((point[0], width_mm))
    if not whole or len(whole) * 2 < seen:
        return None
    middles, widths = zip(*whole, strict=True)
    return float(np.median(middles)), float(np.median(widths))


class VolumeBody:
    """The body on each slice of a volume, seen in the whole volume: what a target must lie
    in for the volume's midline to give its side (patient.inside_body).

    One slice's threshold may miss part of the body (MR intensity falls off toward the
    edges of the coil: the first and last slices, or one slice in the middle). An axial
    slice's body is therefore its own outline (patient.body_outline) joined with the fullest
    outline (largest area) among the slices within BODY_REACH_MM along the axis, sampled
    about every OUTLINE_STEP_MM, that are seen whole (those found on every other row and
    column: they only widen the body). It is not seen (None) where the own outline touches
    a lateral edge of the field of view, or where the joined one covers less than
    MIN_BODY_FRACTION of the slice. A coronal slice's body is the coronal section of the
    axial slices' bodies. Outlines are found once each, as slices ask for them.
    """

    def __init__(self, oriented: Oriented, threshold: float) -> None:
        self.view = oriented.view
        self.threshold = threshold
        spacing = max(oriented.spacing[0], 1e-6)
        self.reach = max(1, round(BODY_REACH_MM / spacing))
        self.step = max(1, round(OUTLINE_STEP_MM / spacing))
        self._coarse: dict[int, tuple[int, np.ndarray | None]] = {}

    def _whole(self, index: int) -> tuple[int, np.ndarray | None]:
        """(area, outline) of a slice's outline on every other row and column; None where
        it is not seen whole."""
        if index not in self._coarse:
            pixels = self.view[index, ::2, ::2].astype(np.float32)
            outline = body_outline(pixels, self.threshold)
            whole = seen_whole(outline)
            self._coarse[index] = (int(outline.sum()) if whole else 0, outline if whole else None)
        return self._coarse[index]

    def axial(self, index: int) -> np.ndarray | None:
        own = body_outline(self.view[index].astype(np.float32), self.threshold)
        if own[:, 0].any() or own[:, -1].any():
            return None
        n = self.view.shape[0]
        near = range(max(0, index - self.reach), min(n, index + self.reach + 1))
        candidates = [i for i in near if (i - index) % self.step == 0 or i == near[-1]]
        _, fullest = max((self._whole(i) for i in candidates), key=lambda found: found[0])
        if fullest is not None:
            rows, cols = own.shape
            own = own | fullest.repeat(2, axis=0).repeat(2, axis=1)[:rows, :cols]
        return own if own.sum() >= MIN_BODY_FRACTION * own.size else None

    def slice(self, axis: str, index: int) -> np.ndarray | None:
        """The body on a display slice (axial or coronal), None where it is not seen."""
        if axis == "axial":
            return self.axial(index)
        body = display_slice(self._stack, axis, index)
        return body if body.any() else None

    @cached_property
    def _stack(self) -> np.ndarray:
        """Every axial slice's body (none: all False), as a volume [S, P, L]."""
        empty = np.zeros(self.view.shape[1:], dtype=bool)
        return np.stack([b if (b := self.axial(i)) is not None else empty
                         for i in range(self.view.shape[0])])  # fmt: skip


def patient_frame(
    oriented: Oriented,
    axis: str,
    index: int,
    shape: tuple[int, int],
    body: tuple[float, float] | None,
    scanner: bool,
) -> PatientFrame | None:
    """The patient frame of one display slice resized to `shape` (see patient.py)."""
    corner, steps = slice_geometry(oriented, axis, index)
    rows, cols = display_slice(oriented.view, axis, index).shape
    row_step = steps[0][0] * rows / shape[0]  # world x per display pixel, after resizing
    col_step = steps[1][0] * cols / shape[1]
    # world x of the pixel-edge point (0, 0) of the resized grid
    edge = corner[0] - 0.5 * steps[0][0] - 0.5 * steps[1][0]
    if body is not None:
        middle, width = body
        band = max(2 * max(abs(col_step), abs(row_step)), BAND_FRACTION * width)
        return PatientFrame(col_step, row_step, edge - middle, band)
    if scanner:
        return PatientFrame(col_step, row_step, edge, WORLD_MARGIN_MM, strict=True)
    return None
