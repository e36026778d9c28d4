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


def relation(inner: np.ndarray, outer: np.ndarray) -> str | None:
    """ "inside", "outside" or None (partly inside, or either mask empty)."""
    pixels = int(inner.sum())
    if pixels == 0 or not outer.any():
        return None
    filled = fill_holes(outer)
    inside = int((inner & filled).sum())
    if inside == 0:
        return "outside"
    if inside >= INSIDE_FRACTION * pixels and pixels < int(filled.sum()):
        return "inside"
    return None


def relations_of(masks: dict[str, np.ndarray], key: str) -> dict[str, list[tuple[str, str]]]:
    """Per target: the (other target, relation) pairs to ask about (see the docstring).

    `key` (the image's id) seeds the choice of the "outside" structure.
    """
    present = {t: m for t, m in masks.items() if m.any()}
    chosen: dict[str, list[tuple[str, str]]] = {}
    for target, mask in present.items():
        inside, outside = [], []
        for other, other_mask in present.items():
            if other == target:
                continue
            found = relation(mask, other_mask)
            if found == "inside":
                inside.append((int(other_mask.sum()), other))
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
