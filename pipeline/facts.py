"""Spatial facts of a binary mask, exactly as DESIGN.md defines them.

Image frame: x to the right, y down, both normalised to [0, 1] over pixel centres
(x = (col + 0.5) / W). Ties go right and lower. Every function here is pure: the same
mask gives the same facts, which is what `mmrs validate` relies on to re-derive them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

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
QUADRANTS: tuple[str, ...] = ("upper left", "upper right", "lower left", "lower right")
PRSMED_POSITIONS: tuple[str, ...] = (
    "top left",
    "top right",
    "bottom left",
    "bottom right",
    "center",
)

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


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
        row = asdict(self)
        row["centroid"] = list(self.centroid) if self.centroid else None
        row["bbox"] = list(self.bbox) if self.bbox else None
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


def _centroid_bbox(rows: np.ndarray, cols: np.ndarray, height: int, width: int):
    centroid = ((float(cols.mean()) + 0.5) / width, (float(rows.mean()) + 0.5) / height)
    bbox = (
        int(cols.min()) / width,
        int(rows.min()) / height,
        (int(cols.max()) + 1) / width,
        (int(rows.max()) + 1) / height,
    )
    return centroid, bbox


def prsmed_label(mask: np.ndarray) -> tuple[str | None, bool | None]:
    """The official PRS-Med position label and its near-centre flag.

    PRS-Med takes the bounding box of the mask in pixel indices and the integer image centre
    (W // 2, H // 2): a box that contains the centre is "center"; otherwise the integer
    middle of the box decides "top/bottom left/right" (ties right and bottom), and the box
    middle is "near" when closer to the centre than 20 % of the image width.
    Kept in its own column so results stay comparable with the paper.
    """
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return None, None
    height, width = mask.shape
    cx, cy = width // 2, height // 2
    x0, x1, y0, y1 = int(cols.min()), int(cols.max()), int(rows.min()), int(rows.max())
    if x0 <= cx <= x1 and y0 <= cy <= y1:
        return "center", True
    bx, by = (x0 + x1) // 2, (y0 + y1) // 2
    near = math.hypot(bx - cx, by - cy) < 0.2 * width
    vertical = "top" if by < cy else "bottom"
    horizontal = "left" if bx < cx else "right"
    return f"{vertical} {horizontal}", near


def components_of(mask: np.ndarray) -> list[np.ndarray]:
    """The instances of a mask as boolean masks, in a deterministic order.

    8-connectivity; components below MIN_COMPONENT_FRACTION are not instances (see above).
    Order: largest area first; equal areas by their first pixel in row-major order.
    """
    labelled, count = ndimage.label(mask, structure=_EIGHT_CONNECTED)
    if count == 0:
        return []
    sizes = np.bincount(labelled.ravel(), minlength=count + 1)[1:]
    # First pixel (row-major) of each label, for a stable tie-break.
    flat = labelled.ravel()
    nonzero = np.flatnonzero(flat)
    first = np.full(count, flat.size, dtype=np.int64)
    np.minimum.at(first, flat[nonzero] - 1, nonzero)
    minimum = max(1, math.ceil(MIN_COMPONENT_FRACTION * mask.size))
    order = sorted(range(count), key=lambda i: (-int(sizes[i]), int(first[i])))
    kept = [i for i in order if sizes[i] >= minimum] or order[:1]
    return [labelled == (i + 1) for i in kept]


def compute_facts(mask: np.ndarray) -> Facts:
    """All spatial facts of a 2D boolean mask (True = target)."""
    return analyse(mask)[0]


def analyse(mask: np.ndarray) -> tuple[Facts, list[np.ndarray]]:
    """The facts of a 2D boolean mask and its instances' masks (in `components` order)."""
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2D, got shape {mask.shape}")
    mask = mask.astype(bool, copy=False)
    height, width = mask.shape
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return Facts(None, None, 0.0, 0, (), None, None, None, None, None), []
    total = mask.size
    centroid, bbox = _centroid_bbox(rows, cols, height, width)
    components = []
    instance_masks = components_of(mask)
    for component in instance_masks:
        c_rows, c_cols = np.nonzero(component)
        c_centroid, c_bbox = _centroid_bbox(c_rows, c_cols, height, width)
        components.append(
            Component(
                centroid=c_centroid,
                bbox=c_bbox,
                area_fraction=c_rows.size / total,
                zone=zone_of(*c_centroid),
                quadrant=quadrant_of(*c_centroid),
            )
        )
    area_fraction = rows.size / total
    position, near = prsmed_label(mask)
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
    return facts, instance_masks
