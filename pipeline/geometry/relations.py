"""Relations between the structures of one image: is one inside another?

A structure A lies INSIDE B when at least 95 % of A's pixels lie in B with B's holes filled
(a lesion labelled apart from its organ is a hole in the organ's label) and A is the
smaller; OUTSIDE when no pixel of A does. Anything between is not stated. Both masks are
in the image, so `mmrs validate` re-derives a relation from the two rows' masks.

Per present structure, at most two relations are asked about: its smallest container
("inside") and one structure it lies outside of (chosen by a stable hash), so yes and no
answers are balanced and a label map with many structures does not flood the rows.
"""

from __future__ import annotations

import hashlib

import numpy as np

from .patient import fill_holes

INSIDE_FRACTION = 0.95


def _box(mask: np.ndarray) -> tuple[slice, slice]:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def _relation(inner: np.ndarray, pixels: int, filled: np.ndarray, filled_pixels: int) -> str | None:
    """The relation of a mask to another's hole-filled mask (see the module docstring)."""
    inside = int((inner & filled).sum())
    if inside == 0:
        return "outside"
    if inside >= INSIDE_FRACTION * pixels and pixels < filled_pixels:
        return "inside"
    return None


def relation(inner: np.ndarray, outer: np.ndarray) -> str | None:
    """ "inside", "outside" or None (partly inside, or either mask empty)."""
    pixels = int(inner.sum())
    if pixels == 0 or not outer.any():
        return None
    filled = fill_holes(outer)
    return _relation(inner, pixels, filled, int(filled.sum()))


def relations_of(masks: dict[str, np.ndarray], key: str) -> dict[str, list[tuple[str, str]]]:
    """Per target: the (other target, relation) pairs to ask about (see the docstring).

    `key` (the image's id) seeds the choice of the "outside" structure. Each mask is filled
    once, and pairs whose boxes do not meet are outside without a pixel compared, so label
    maps with a hundred structures stay cheap.
    """
    present = {t: m for t, m in masks.items() if m.any()}
    if len(present) < 2:
        return {}
    boxes = {t: _box(m) for t, m in present.items()}
    sizes = {t: int(m.sum()) for t, m in present.items()}
    filled: dict[str, np.ndarray] = {}  # filled on first use: most pairs never need it
    filled_sizes: dict[str, int] = {}
    chosen: dict[str, list[tuple[str, str]]] = {}
    for target, mask in present.items():
        rows, cols = boxes[target]
        inside, outside = [], []
        for other in present:
            if other == target:
                continue
            other_rows, other_cols = boxes[other]  # the filled mask has the same box
            meets = (
                rows.start < other_rows.stop
                and other_rows.start < rows.stop
                and cols.start < other_cols.stop
                and other_cols.start < cols.stop
            )
            if not meets:
                outside.append(other)
                continue
            if other not in filled:
                filled[other] = fill_holes(present[other])
                filled_sizes[other] = int(filled[other].sum())
            found = _relation(
                mask[rows, cols], sizes[target], filled[other][rows, cols], filled_sizes[other]
            )
            if found == "inside":
                inside.append((filled_sizes[other], other))
            elif found == "outside":
                outside.append(other)
        pairs = []
        if inside:
            pairs.append((min(inside)[1], "inside"))
        if outside:
            outside.sort(key=lambda o: hashlib.sha256(f"{key}|{target}|{o}".encode()).digest())
            pairs.append((outside[0], "outside"))
        if pairs:
            chosen[target] = pairs
    return chosen
