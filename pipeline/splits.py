"""Split assignment by patient: hash-stable, official splits honoured.

A patient's split is a pure function of (source, patient_id, ratios): adding or removing
other cases never moves it, and every image of a patient lands in the same split.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class SplitRatios:
    train: float = 0.8
    validation: float = 0.1
    test: float = 0.1

    def __post_init__(self) -> None:
        values = (self.train, self.validation, self.test)
        if any(v < 0 for v in values) or abs(sum(values) - 1.0) > 1e-6:
            raise ValueError(f"split ratios must be >= 0 and sum to 1, got {values}")

    @classmethod
    def parse(cls, text: str) -> SplitRatios:
        """ "0.8,0.1,0.1" -> SplitRatios (train, validation, test)."""
        try:
            values = [float(part) for part in text.split(",")]
        except ValueError as exc:
            raise ValueError(
                f"split ratios must be three numbers like 0.8,0.1,0.1, got {text!r}"
            ) from exc
        if len(values) != 3:
            raise ValueError(f"split ratios must be three numbers like 0.8,0.1,0.1, got {text!r}")
        return cls(*values)


def patient_fraction(source: str, patient_id: str) -> float:
    """A uniform number in [0, 1) fixed by the patient's identity."""
    digest = hashlib.sha256(f"{source}\0{patient_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_split(source: str, patient_id: str, official: str | None, ratios: SplitRatios) -> str:
    """The official split when the source has one, else the patient's hashed split."""
    if official is not None:
        if official not in SPLITS:
            raise ValueError(f"unknown official split {official!r} (expected one of {SPLITS})")
        return official
    u = patient_fraction(source, patient_id)
    if u < ratios.train:
        return "train"
    if u < ratios.train + ratios.validation:
        return "validation"
    return "test"
