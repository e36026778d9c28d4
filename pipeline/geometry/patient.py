"""The patient's side of a target: physical left/right against the body midline.

A `PatientFrame` maps a display pixel to its signed distance from the body midline along
the patient's left-right axis (positive = the patient's LEFT), in millimetres for volumes
or in pixels for 2D images without spacing:

    d(col, row) = col_step * (col + 0.5) + row_step * (row + 0.5) + offset

The frame exists only where the geometry makes the midline knowable:
- the body is seen whole from left to right (its largest connected part, found by a
  threshold, covers at least 10 % of the image and touches neither lateral edge; in a
  volume it is at least 80 mm wide): the midline is the median of the middles of the
  body's extent row by row, with a midline band of +/- max(2 pixels, 3 % of the body's
  width) for its uncertainty. A target gets this frame only if it lies in that body (at
  least 95 % of it, and at most 75 % of the body: see inside_body);
- or, for a crop that does not show the body, the volume is in scanner coordinates
  (DICOM; NIfTI with a scanner qform/sform, not at the world origin; see
  volumeio.in_scanner_coordinates) and the target lies wholly more than
  `WORLD_MARGIN_MM` from the scanner's x = 0 (patients lie centred on the table; the
  margin covers how far off centre they may lie). Such frames are `strict`;
- or, for a frontal (PA or AP) chest radiograph in radiological display, the thorax's
  midline is the spine and mediastinum: the brightest column band between two darker lung
  fields (see radiograph_frame); the band is 3 % of the image's width (a chest film's
  thorax fills most of it: a wider band, so fewer sides, never a wrong one). Everything a
  projection shows lies within the patient, so every target of the film gets this frame.

`patient_side` of a mask, per instance (the instances of facts.py):
- "left": no pixel lies right of the band and the centroid lies left of it (strict frames:
  every pixel lies left of the band); "right" likewise;
- "midline": the instance reaches both sides of the band, or stays inside it, with its
  centroid inside the band (not for strict frames);
- otherwise unknown (e.g. a liver crossing the midline with its centroid on the right).
A mask's side: its instances' common side; "bilateral" for instances on the left and on
the right only; None as soon as one instance is unknown or sides mix with the midline.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .facts import Instance

WORLD_MARGIN_MM = 50.0
MIN_BODY_FRACTION = 0.1  # of the image: smaller bright parts are not a body
MIN_BODY_WIDTH_MM = 80.0  # narrower is no body (a neonate's head is wider): a crop
BAND_FRACTION = 0.03  # of the body's width


@dataclass(frozen=True)
class PatientFrame:
    """Signed distance to the body midline (positive = patient's left) of display pixels."""

    col_step: float
    row_step: float
    offset: float
    band: float
    strict: bool = False

    def as_row(self) -> list[float]:
        return [self.col_step, self.row_step, self.offset, self.band, float(self.strict)]

    @classmethod
    def from_row(cls, values: list[float] | None) -> PatientFrame | None:
        if values is None:
            return None
        col_step, row_step, offset, band, strict = values
        return cls(col_step, row_step, offset, band, bool(strict))

    def distances(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        return self.col_step * (cols + 0.5) + self.row_step * (rows + 0.5) + self.offset


def _instance_side(instance: Instance, frame: PatientFrame) -> str | None:
    rows, cols = np.nonzero(instance.patch)
    d = frame.distances(rows + instance.top, cols + instance.left)
    low, high, centre, band = float(d.min()), float(d.max()), float(d.mean()), frame.band
    if frame.strict:
        return "left" if low > band else "right" if high < -band else None
    if low >= -band and centre > band:
        return "left"
    if high <= band and centre < -band:
        return "right"
    if abs(centre) <= band:
        return "midline"
    return None


def instances_side(instances: list[Instance], frame: PatientFrame | None) -> str | None:
    """The common side of a mask's instances (see the module docstring)."""
    if frame is None or not instances:
        return None
    sides = {_instance_side(instance, frame) for instance in instances}
    if None in sides:
        return None
    if len(sides) == 1:
        return sides.pop()
    return "bilateral" if sides == {"left", "right"} else None


def otsu_threshold(values: np.ndarray) -> float:
    """Otsu's threshold of finite values, ignoring the minimum (scanner padding)."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.inf
    low = finite.min()
    above = finite[finite > low]
    if above.size == 0:
        return np.inf
    counts, edges = np.histogram(above, bins=256)
    centres = (edges[:-1] + edges[1:]) / 2
    weight = np.cumsum(counts)
    total = weight[-1]
    mean = np.cumsum(counts * centres)
    between = (mean[-1] * weight - mean * total) ** 2 / np.maximum(weight * (total - weight), 1)
    return float(centres[int(np.argmax(between[:-1]))])


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """A 2D mask with its holes filled: the background parts that touch no border become
    foreground (what scipy's binary_fill_holes gives, about twice as fast)."""
    from scipy import ndimage  # on first use (see facts._instances)

    background, count = ndimage.label(~mask)
    if count == 0:
        return mask.copy()
    edges = np.concatenate([background[0], background[-1], background[:, 0], background[:, -1]])
    outside = np.zeros(count + 1, dtype=bool)
    outside[edges] = True
    outside[0] = False
    return ~outside[background]


def body_outline(pixels: np.ndarray, threshold: float) -> np.ndarray:
    """The largest 8-connected part of a 2D slice above the threshold, holes filled (all
    False when nothing is above it)."""
    from scipy import ndimage  # on first use (see facts._instances)

    labelled, count = ndimage.label(pixels > threshold, structure=np.ones((3, 3), dtype=bool))
    if count == 0:
        return np.zeros(pixels.shape, dtype=bool)
    sizes = np.bincount(labelled.ravel(), minlength=count + 1)
    sizes[0] = 0
    return fill_holes(labelled == int(np.argmax(sizes)))


def seen_whole(body: np.ndarray) -> bool:
    """Whether a body outline is a body seen whole: at least MIN_BODY_FRACTION of its slice,
    touching neither the first nor the last column."""
    return bool(
        body.sum() >= MIN_BODY_FRACTION * body.size and not (body[:, 0].any() or body[:, -1].any())
    )


def body_mask(pixels: np.ndarray, threshold: float) -> np.ndarray | None:
    """The body in a 2D slice (body_outline), None when it is not seen whole."""
    body = body_outline(pixels, threshold)
    return body if seen_whole(body) else None


def body_midline(body: np.ndarray) -> tuple[float, float]:
    """Midline column (pixel-edge coordinates) and width of a body mask.

    The median over rows of the middle of the body's extent in that row (robust to arms
    and to a lopsided outline).
    """
    rows = body[body.any(axis=1)]
    first = np.argmax(rows, axis=1)
    last = body.shape[1] - 1 - np.argmax(rows[:, ::-1], axis=1)
    return float(np.median((first + last + 1) / 2)), float(last.max() + 1 - first.min())


def inside_body(mask: np.ndarray, body: np.ndarray | None) -> bool:
    """Whether a target lies in the body: at least 95 % of its pixels in it, and the body
    well beyond the target (the target at most 75 % of it). Only then is the midline
    found from that body a reference for the target: a target outside the body, or one
    that is itself what was taken for the body, says the "body" is something else."""
    if body is None:
        return False
    pixels = int(mask.sum())
    inside = int((mask & body).sum())
    return pixels > 0 and inside >= 0.95 * pixels and pixels <= 0.75 * int(body.sum())


def frame_2d(pixels: np.ndarray) -> tuple[PatientFrame, np.ndarray] | None:
    """The patient frame (in pixel units) and body of a 2D grey display image whose
    columns run from the patient's right to left (radiological display)."""
    grey = pixels.astype(np.float32)
    body = body_mask(grey, otsu_threshold(grey))
    if body is None:
        return None
    middle, width = body_midline(body)
    return PatientFrame(1.0, 0.0, -middle, max(2.0, BAND_FRACTION * width)), body


# A frontal chest film's rows and columns searched for the mediastinum (fractions of the
# image): rows of the upper and middle thorax; its column in the central half; the lowest
# point of each lung field between 4 % and 45 % of the width from it.
CHEST_ROWS = (0.2, 0.6)
MEDIASTINUM_COLUMNS = (0.25, 0.75)
LUNG_REACH = (0.04, 0.45)
LUNG_CONTRAST = 0.15  # of the image's grey range (1st to 99th percentile)
LUNG_BALANCE = 2.5  # one lung field at most this much farther from the midline than the other


def _lung_field(profile: np.ndarray, peak: int, step: int, contrast: float) -> int | None:
    """Distance from the peak to the lowest point of the lung field on one side (step -1:
    toward column 0), None without one: walking outward, the profile must fall by
    `contrast` below the peak, never rising above it first, then rise by `contrast` again
    (the chest wall) before the image's edge."""
    lowest, at = profile[peak], None
    index = peak + step
    while 0 <= index < profile.size:
        value = profile[index]
        if at is None and value > profile[peak]:
            return None  # something brighter than the mediastinum before any lung field
        if value < lowest:
            lowest, at = value, index
        elif profile[peak] - lowest >= contrast and value - lowest >= contrast:
            return abs(at - peak)
        index += step
    return None


def radiograph_midline(pixels: np.ndarray) -> float | None:
    """The thorax midline (pixel-edge column) of a frontal chest radiograph, None when the
    film does not show it.

    The column profile (median over the rows of the upper and middle thorax, smoothed over
    2 % of the width) peaks at the spine and mediastinum, the brightest structures between
    the two dark lung fields. The midline is that peak within the central half, and only
    where a lung field lies on each side of it, with a chest wall beyond (_lung_field):
    their lowest points between LUNG_REACH of the width from the peak, neither more than
    LUNG_BALANCE times farther from it than the other.
    """
    from scipy import ndimage  # on first use (see facts._instances)

    grey = pixels.astype(np.float32)
    height, width = grey.shape
    top, bottom = (round(f * height) for f in CHEST_ROWS)
    if bottom - top < 4 or width < 16:
        return None
    profile = ndimage.uniform_filter1d(
        np.median(grey[top:bottom], axis=0), max(3, width // 50), mode="nearest"
    )
    start, stop = (round(f * width) for f in MEDIASTINUM_COLUMNS)
    peak = start + int(np.argmax(profile[start:stop]))
    low, high = np.percentile(grey[::4, ::4], (1, 99))  # a sample is enough
    contrast = LUNG_CONTRAST * float(high - low)
    if contrast <= 0:
        return None
    fields = [_lung_field(profile, peak, step, contrast) for step in (-1, 1)]
    near, far = (f * width for f in LUNG_REACH)
    if any(f is None or not near <= f <= far for f in fields):
        return None
    if max(fields) > LUNG_BALANCE * min(fields):
        return None
    return peak + 0.5


def radiograph_frame(pixels: np.ndarray) -> tuple[PatientFrame, np.ndarray] | None:
    """The patient frame (pixel units) and "body" (the whole film) of a frontal chest
    radiograph in radiological display, None when its midline is not found."""
    middle = radiograph_midline(pixels)
    if middle is None:
        return None
    band = max(2.0, BAND_FRACTION * pixels.shape[1])
    return PatientFrame(1.0, 0.0, -middle, band), np.ones(pixels.shape, dtype=bool)
