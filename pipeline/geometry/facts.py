"""Spatial facts of a binary mask, exactly as DESIGN.md defines them.

Image frame: x to the right, y down, both normalised to [0, 1] over pixel centres
(x = (col + 0.5) / W). Ties go right and lower. Every function here is pure: the same
mask gives the same facts, which is what `mmrs validate` relies on to re-derive them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# A connected component counts as an instance when it holds at least this fraction of the
# image's pixels (and at least one pixel). Smaller specks (typically JPEG or annotation
# noise) stay in the mask and in its area, centroid and bbox, but are not counted or named
# as instances. If no component reaches the minimum, the largest one still counts, so a
# non-empty mask always has at least one instance.
MIN_COMPONENT_FRACTION = 1e-4

# Size words by area fraction: [lower bound, word], checked from the largest bound down.
SIZE_WORDS: tuple[tuple[float, str], ...] = (
    (0.15, "large"),
    (0.05, "medium"),
    (0.01, "small"),
    (0.0, "tiny"),
)

ZONES: tuple[str, ...] = (
    "upper left",
    "upper center",
    "upper right",
    "middle left",
    "center",
    "middle right",
    "lower left",
    "lower center",
    "lower right",
)

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)
# The row columns that Facts.as_row fills (re-derived from every row's mask by validate).
FACT_COLUMNS = (
    "centroid",
    "bbox",
    "area_fraction",
    "n_components",
    "components",
    "quadrant",
    "zone",
    "size",
    "prsmed_position",
    "prsmed_near_center",
)


@dataclass(frozen=True)
class Component:
    """One connected instance of a target."""

    centroid: tuple[float, float]
    bbox: tuple[float, float, float, float]
    area_fraction: float
    zone: str
    quadrant: str


@dataclass(frozen=True)
class Facts:
    """Every spatial fact of one target mask; None where the fact cannot be derived."""

    centroid: tuple[float, float] | None
    bbox: tuple[float, float, float, float] | None
    area_fraction: float
    n_components: int
    components: tuple[Component, ...]
    quadrant: str | None
    zone: str | None
    size: str | None
    prsmed_position: str | None
    prsmed_near_center: bool | None

    @property
    def present(self) -> bool:
        return self.n_components > 0

    def as_row(self) -> dict:
        """The facts as row columns (plain lists and dicts)."""
        row = {
            "centroid": list(self.centroid) if self.centroid else None,
            "bbox": list(self.bbox) if self.bbox else None,
            "area_fraction": self.area_fraction,
            "n_components": self.n_components,
            "quadrant": self.quadrant,
            "zone": self.zone,
            "size": self.size,
            "prsmed_position": self.prsmed_position,
            "prsmed_near_center": self.prsmed_near_center,
        }
        row["components"] = [
            {
                "centroid": list(c.centroid),
                "bbox": list(c.bbox),
                "area_fraction": c.area_fraction,
                "zone": c.zone,
            }
            for c in self.components
        ]
        return row


def quadrant_of(x: float, y: float) -> str:
    """Quadrant name of a normalised point; x = 0.5 is right, y = 0.5 is lower."""
    vertical = "upper" if y < 0.5 else "lower"
    horizontal = "left" if x < 0.5 else "right"
    return f"{vertical} {horizontal}"


def zone_of(x: float, y: float) -> str:
    """3x3 zone name of a normalised point; boundaries go right and lower."""
    vertical = "upper" if y < 1 / 3 else ("middle" if y < 2 / 3 else "lower")
    horizontal = "left" if x < 1 / 3 else ("center" if x < 2 / 3 else "right")
    if vertical == "middle" and horizontal == "center":
        return "center"
    return f"{vertical} {horizontal}"


def size_word(area_fraction: float) -> str:
    """Size word for an area fraction (see SIZE_WORDS)."""
    for bound, word in SIZE_WORDS:
        if area_fraction >= bound:
            return word
    raise ValueError(f"area fraction must be >= 0, got {area_fraction}")


@dataclass(frozen=True)
class Instance:
    """One instance's pixels: a boolean patch at (top, left) of an image of `shape`."""

    top: int
    left: int
    patch: np.ndarray
    shape: tuple[int, int]

    def full(self) -> np.ndarray:
        """The instance as a full-frame boolean mask."""
        mask = np.zeros(self.shape, dtype=bool)
        height, width = self.patch.shape
        mask[self.top : self.top + height, self.left : self.left + width] = self.patch
        return mask


def _extent(patch: np.ndarray, top: int, left: int, shape: tuple[int, int]):
    """Pixel count, centroid and bbox of a boolean patch placed at (top, left)."""
    height, width = shape
    row_counts = patch.sum(axis=1)
    col_counts = patch.sum(axis=0)
    count = int(row_counts.sum())
    rows = np.flatnonzero(row_counts)
    cols = np.flatnonzero(col_counts)
    mean_row = float(np.dot(np.arange(patch.shape[0]), row_counts)) / count + top
    mean_col = float(np.dot(np.arange(patch.shape[1]), col_counts)) / count + left
    centroid = ((mean_col + 0.5) / width, (mean_row + 0.5) / height)
    bbox = (
        (left + int(cols[0])) / width,
        (top + int(rows[0])) / height,
        (left + int(cols[-1]) + 1) / width,
        (top + int(rows[-1]) + 1) / height,
    )
    return count, centroid, bbox


def _prsmed(box: tuple[int, int, int, int], shape: tuple[int, int]) -> tuple[str, bool]:
    """PRS-Med's label from a pixel-index box (x0, y0, x1, y1), inclusive."""
    height, width = shape
    x0, y0, x1, y1 = box
    cx, cy = width // 2, height // 2
    if x0 <= cx <= x1 and y0 <= cy <= y1:
        return "center", True
    bx, by = (x0 + x1) // 2, (y0 + y1) // 2
    near = math.hypot(bx - cx, by - cy) < 0.2 * width
    vertical = "top" if by < cy else "bottom"
    horizontal = "left" if bx < cx else "right"
    return f"{vertical} {horizontal}", near


def _box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Inclusive pixel-index box (x0, y0, x1, y1) of a mask, None when empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask[rows[0] : rows[-1] + 1].any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1])


def prsmed_label(mask: np.ndarray) -> tuple[str | None, bool | None]:
    """The official PRS-Med position label and its near-centre flag.

    PRS-Med takes the bounding box of the mask in pixel indices and the integer image centre
    (W // 2, H // 2): a box that contains the centre is "center"; otherwise the integer
    middle of the box decides "top/bottom left/right" (ties right and bottom), and the box
    middle is "near" when closer to the centre than 20 % of the image width.
    Kept in its own column so results stay comparable with the paper.
    """
    box = _box(mask)
    return (None, None) if box is None else _prsmed(box, mask.shape)


def _one_run_per_row(crop: np.ndarray) -> bool:
    """Whether a mask cropped to its bbox is one 8-connected component by the simplest
    proof: every row holds exactly one run of pixels, and each row's run touches the next
    row's (sideways or diagonally). False means only that the proof does not apply.

    Compact targets pass; ragged edges, holes and separate parts are labelled instead.
    The test costs about a fifth of labelling.
    """
    height, width = crop.shape
    # Row by row, the columns where a run starts and where it ends (exclusive), in order.
    edges = np.empty((height, width + 1), dtype=bool)
    edges[:, 0] = crop[:, 0]
    edges[:, -1] = crop[:, -1]
    np.not_equal(crop[:, 1:], crop[:, :-1], out=edges[:, 1:-1])
    flips = np.flatnonzero(edges)
    if flips.size != 2 * height:
        return False
    rows, cols = np.divmod(flips, width + 1)
    every_row = np.arange(height)
    if not (np.array_equal(rows[::2], every_row) and np.array_equal(rows[1::2], every_row)):
        return False
    starts, ends = cols[::2], cols[1::2]
    return bool(np.all((starts[1:] <= ends[:-1]) & (starts[:-1] <= ends[1:])))


def _instances(crop: np.ndarray, top: int, left: int, shape: tuple[int, int]) -> list[Instance]:
    """The instances of a cropped mask, in a deterministic order.

    8-connectivity; components below MIN_COMPONENT_FRACTION are not instances (see above).
    Order: largest area first; equal areas by their first pixel in row-major order.
    """
    if _one_run_per_row(crop):
        return [Instance(top, left, crop, shape)]
    from scipy import ndimage  # on first use: a process that labels no mask skips 0.25 s

    labelled, count = ndimage.label(crop, structure=_EIGHT_CONNECTED)
    if count == 1:
        return [Instance(top, left, crop, shape)]
    sizes = np.bincount(labelled.ravel(), minlength=count + 1)[1:]
    found = []
    for index, (row_slice, col_slice) in enumerate(ndimage.find_objects(labelled)):
        patch = labelled[row_slice, col_slice] == index + 1
        first = (row_slice.start, col_slice.start + int(np.argmax(patch[0])))
        found.append((-int(sizes[index]), first, row_slice, col_slice, patch))
    found.sort(key=lambda item: (item[0], item[1]))
    minimum = max(1, math.ceil(MIN_COMPONENT_FRACTION * shape[0] * shape[1]))
    kept = [item for item in found if -item[0] >= minimum] or found[:1]
    return [Instance(top + r.start, left + c.start, patch, shape) for _, _, r, c, patch in kept]


def compute_facts(mask: np.ndarray) -> Facts:
    """All spatial facts of a 2D boolean mask (True = target)."""
    return analyse(mask)[0]


def analyse(mask: np.ndarray) -> tuple[Facts, list[Instance]]:
    """The facts of a 2D boolean mask and its instances (in `components` order)."""
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2D, got shape {mask.shape}")
    mask = mask.astype(bool, copy=False)
    shape = (mask.shape[0], mask.shape[1])
    box = _box(mask)
    if box is None:
        return Facts(None, None, 0.0, 0, (), None, None, None, None, None), []
    x0, y0, x1, y1 = box
    crop = mask[y0 : y1 + 1, x0 : x1 + 1]
    total = shape[0] * shape[1]
    count, centroid, bbox = _extent(crop, y0, x0, shape)
    instances = _instances(crop, y0, x0, shape)
    components = []
    for instance in instances:
        if instance.patch is crop:  # a single instance: the mask itself
            pixels, c_centroid, c_bbox = count, centroid, bbox
        else:
            pixels, c_centroid, c_bbox = _extent(instance.patch, instance.top, instance.left, shape)
        components.append(
            Component(
                centroid=c_centroid,
                bbox=c_bbox,
                area_fraction=pixels / total,
                zone=zone_of(*c_centroid),
                quadrant=quadrant_of(*c_centroid),
            )
        )
    area_fraction = count / total
    position, near = _prsmed(box, shape)
    facts = Facts(
        centroid=centroid,
        bbox=bbox,
        area_fraction=area_fraction,
        n_components=len(components),
        components=tuple(components),
        quadrant=quadrant_of(*centroid),
        zone=zone_of(*centroid),
        size=size_word(area_fraction),
        prsmed_position=position,
        prsmed_near_center=near,
    )
    return facts, instances


def facts_of_row(row: dict) -> Facts:
    """A row's Facts from its own columns (what `mmrs validate` re-derives from the mask)."""
    components = tuple(
        Component(
            centroid=tuple(c["centroid"]),
            bbox=tuple(c["bbox"]),
            area_fraction=c["area_fraction"],
            zone=c["zone"],
            quadrant=quadrant_of(*c["centroid"]),
        )
        for c in row["components"] or []
    )
    return Facts(
        centroid=tuple(row["centroid"]) if row["centroid"] else None,
        bbox=tuple(row["bbox"]) if row["bbox"] else None,
        area_fraction=row["area_fraction"],
        n_components=row["n_components"],
        components=components,
        quadrant=row["quadrant"],
        zone=row["zone"],
        size=row["size"],
        prsmed_position=row["prsmed_position"],
        prsmed_near_center=row["prsmed_near_center"],
    )
