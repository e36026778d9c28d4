"""Mask metrics of one row: Dice and IoU at a threshold, the PRS-Med threshold sweep, the
false-positive test of negative rows, and the seeded bootstrap interval of a mean.

Masks are boolean arrays (True = target); probability maps are float arrays in [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

THRESHOLD = 0.5  # a probability map's mask: prob >= THRESHOLD
# The PRS-Med sweep: 256 thresholds from 1 down to 0, as the paper's evaluation uses.
SWEEP = np.linspace(1, 0, 256)
# A negative row's prediction is a false positive above this fraction of the image.
FALSE_POSITIVE_FRACTION = 0.001


def _pair(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, truth = np.asarray(pred, dtype=bool), np.asarray(truth, dtype=bool)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction {pred.shape} and truth {truth.shape} differ in shape")
    return pred, truth


def _dice(overlap: np.ndarray, predicted: np.ndarray, true: int) -> np.ndarray:
    """2|P∩T| / (|P| + |T|), 1.0 where both are empty (counts may be arrays)."""
    total = predicted + true
    return np.where(total == 0, 1.0, 2.0 * overlap / np.maximum(total, 1))


def _iou(overlap: np.ndarray, predicted: np.ndarray, true: int) -> np.ndarray:
    """|P∩T| / |P∪T|, 1.0 where both are empty (counts may be arrays)."""
    union = predicted + true - overlap
    return np.where(union == 0, 1.0, overlap / np.maximum(union, 1))


def binarise(prob: np.ndarray) -> np.ndarray:
    """The mask of a probability map: prob >= THRESHOLD."""
    return np.asarray(prob) >= THRESHOLD


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two boolean masks of one shape: 2|P∩T| / (|P| + |T|).

    Both empty (a correct "nothing here") is 1.0; one empty and the other not is 0.0.
    """
    pred, truth = _pair(pred, truth)
    overlap = np.count_nonzero(pred & truth)
    return float(_dice(overlap, np.count_nonzero(pred), np.count_nonzero(truth)))


def iou(pred: np.ndarray, truth: np.ndarray) -> float:
    """Intersection over union of two boolean masks of one shape.

    Both empty is 1.0; one empty and the other not is 0.0.
    """
    pred, truth = _pair(pred, truth)
    overlap = np.count_nonzero(pred & truth)
    return float(_iou(overlap, np.count_nonzero(pred), np.count_nonzero(truth)))


def minmax(prob: np.ndarray) -> np.ndarray:
    """The map scaled to [0, 1] by its own minimum and maximum; a constant map is all 0.

    PRS-Med's inference (as PraNet's) scales `(p - min) / (max - min + 1e-8)` and writes
    the map as an 8-bit PNG, whose rounding brings the maximum back to exactly 1; here the
    scale is exact and no 8-bit rounding happens (it would move a pixel by at most one of
    the sweep's 256 steps). A constant map becomes 0 everywhere, as theirs does.
    """
    prob = np.asarray(prob, dtype=np.float64)
    low, high = prob.min(), prob.max()
    if high == low:
        return np.zeros_like(prob)
    return (prob - low) / (high - low)


def prsmed_scores(prob: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """The PRS-Med paper's (mean Dice, mean IoU) over 256 thresholds, for one row.

    The map is min-max normalised per image (`minmax`), then compared with each threshold
    of `np.linspace(1, 0, 256)` as `map >= threshold` (the comparison of the paper's
    evaluation script, inherited from PraNet/UACANet: threshold 0 keeps every pixel, and a
    constant map is empty at every threshold above 0). The row's value is the mean over
    thresholds of its Dice (IoU). The paper reports, per data set, the mean over thresholds
    of the mean over rows; both means are over the same rows x thresholds table, so the
    mean over rows of this per-row value is the same number. Threshold 0 keeps the whole
    image, so a perfect 0/1 map scores (255 + Dice of the whole image) / 256, just under 1,
    in the paper's script as here.

    One deviation: where both masks are empty, Dice and IoU are 1.0 here (as `dice`);
    the paper's script scores any threshold without overlap as 0. Only rows with a target
    are meant for this sweep, where the two agree.
    """
    prob = np.asarray(prob)
    _, truth = _pair(prob, truth)
    scaled = minmax(prob).ravel()
    inside = np.sort(scaled[truth.ravel()])
    everything = np.sort(scaled)
    # Pixels >= t, for every threshold t at once: n - (number of values < t).
    overlap = inside.size - np.searchsorted(inside, SWEEP, side="left")
    predicted = everything.size - np.searchsorted(everything, SWEEP, side="left")
    true = inside.size
    return (
        float(np.mean(_dice(overlap, predicted, true))),
        float(np.mean(_iou(overlap, predicted, true))),
    )


def is_false_positive(pred: np.ndarray) -> bool:
    """Whether a prediction covers more than FALSE_POSITIVE_FRACTION (0.1 %) of the image."""
    pred = np.asarray(pred, dtype=bool)
    return bool(np.count_nonzero(pred) > FALSE_POSITIVE_FRACTION * pred.size)


def resize_prob(prob: np.ndarray, width: int, height: int) -> np.ndarray:
    """A probability map of any size, resized bilinearly to (height, width), float32.

    Pillow's bilinear filter (area-weighted when shrinking); a map already of that size is
    returned unchanged (as float32). Values must be finite and in [0, 1].
    """
    prob = np.asarray(prob, dtype=np.float32)
    if prob.ndim != 2 or prob.size == 0:
        raise ValueError(f"a probability map must be a non-empty 2D array, got shape {prob.shape}")
    if not np.isfinite(prob).all() or prob.min() < 0 or prob.max() > 1:
        raise ValueError("a probability map must hold finite values in [0, 1]")
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if prob.shape == (height, width):
        return prob
    resized = Image.fromarray(prob, mode="F").resize((width, height), Image.Resampling.BILINEAR)
    return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)


def bootstrap_ci(
    values: Sequence[float] | np.ndarray, seed: int, n_resamples: int = 1000
) -> tuple[float, float]:
    """The 95 % percentile bootstrap interval of the mean of `values` (seeded).

    `n_resamples` resamples of len(values) drawn with replacement by NumPy's default
    generator seeded with `seed`; the interval is their means' 2.5th and 97.5th percentiles.
    """
    data = np.asarray(values, dtype=np.float64)
    if data.ndim != 1 or data.size == 0:
        raise ValueError("bootstrap_ci needs a non-empty 1D sequence of values")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}")
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples)
    chunk = max(1, 2_000_000 // data.size)  # resamples drawn at once: bounded memory
    for start in range(0, n_resamples, chunk):
        stop = min(n_resamples, start + chunk)
        picks = rng.integers(0, data.size, size=(stop - start, data.size))
        means[start:stop] = data[picks].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)
