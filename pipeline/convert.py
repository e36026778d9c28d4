"""One case -> its rows: read pixels, turn to display, compute facts, render QA.

A pure function of the case, its source's metadata and the QA planner, so it runs the same
in any worker process. Bad cases raise CaseError (skipped: the data is wrong) or PixelError
(failed: a file cannot be read); the build records either and goes on.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from .facts import analyse
from .imageio import (
    KEPT_FORMATS,
    encode_mask,
    encode_png,
    read_binary_mask,
    read_image,
    read_label_map,
)
from .qa import QAPlanner
from .sources.base import Case, SourceInfo
from .splits import SplitRatios, assign_split

_EXIF_ORIENTATION = 0x0112


class CaseError(ValueError):
    """A case whose files are readable but whose content cannot give true rows."""


@dataclass(frozen=True)
class SourceMeta:
    """What a worker needs of a source (picklable, unlike the adapter's functions)."""

    name: str
    modality: str
    license: str
    display: Any

    @classmethod
    def of(cls, source: SourceInfo) -> SourceMeta:
        return cls(source.name, source.modality, source.license, source.display)


@dataclass(frozen=True)
class Converted:
    case_id: str
    image_id: str
    split: str
    rows: list[dict[str, Any]]


def _read_masks(case: Case, shape: tuple[int, int]) -> dict[str, np.ndarray]:
    """Union of every mask file per target, checked against the image size."""
    masks: dict[str, np.ndarray] = {t: np.zeros(shape, dtype=bool) for t in case.targets}
    for mask_file in case.masks:
        if mask_file.labels is not None:
            values = read_label_map(mask_file.path)
            layers = {target: values == value for value, target in mask_file.labels.items()}
        else:
            layers = {mask_file.target: read_binary_mask(mask_file.path)}
        for target, layer in layers.items():
            if layer.shape != shape:
                raise CaseError(
                    f"image/mask size mismatch: {case.image.name} is {shape[1]}x{shape[0]}, "
                    f"{mask_file.path.name} is {layer.shape[1]}x{layer.shape[0]}"
                )
            masks[target] = masks.get(target, np.zeros(shape, dtype=bool)) | layer
    return masks


def convert_case(
    case: Case, source: SourceMeta, planner: QAPlanner, ratios: SplitRatios
) -> Converted:
    """All rows of one case (see the module docstring for its errors)."""
    decoded = read_image(case.image)
    orientation = decoded.image.getexif().get(_EXIF_ORIENTATION, 1)
    if orientation not in (0, 1):
        raise CaseError(
            f"{case.image.name}: EXIF orientation {orientation} makes the displayed image "
            f"differ from its stored pixels; the mask's frame is ambiguous"
        )
    shape = (decoded.height, decoded.width)
    masks = _read_masks(case, shape)
    empty = [t for t, m in masks.items() if not m.any() and t not in case.absent_ok]
    if empty:
        files = ", ".join(f.path.name for f in case.masks)
        raise CaseError(f"empty mask for {', '.join(empty)} ({files})")

    display = source.display
    if display.changes_pixels:
        image_bytes = encode_png(display.apply(np.asarray(decoded.image)))
        masks = {t: display.apply(m) for t, m in masks.items()}
    elif decoded.format in KEPT_FORMATS:
        image_bytes = decoded.data  # no pixel changes: the source's own bytes
    else:
        image_bytes = encode_png(decoded.image)  # lossless, for formats viewers lack
    image_id = hashlib.sha256(image_bytes).hexdigest()
    split = assign_split(source.name, case.patient_id, case.official_split, ratios)
    height, width = next(iter(masks.values())).shape if masks else shape

    common = {
        "image": {"bytes": image_bytes, "path": None},
        "modality": source.modality,
        "source": source.name,
        "case_id": case.case_id,
        "patient_id": case.patient_id,
        "split": split,
        "image_id": image_id,
        "source_file": case.image.name,
        "slice_axis": None,
        "slice_index": None,
        "spacing_mm": None,
        "license": source.license,
        "width": width,
        "height": height,
        "patient_side": None,
        "rewrite": None,
    }
    rows: list[dict[str, Any]] = []
    for target, mask in masks.items():
        facts, instances = analyse(mask)
        facts_row = facts.as_row()
        mask_bytes = encode_mask(mask)
        for qa in planner.plan(facts, target, source.modality, image_id, instances):
            rows.append(
                {
                    **common,
                    "mask": {
                        "bytes": encode_mask(qa.mask) if qa.mask is not None else mask_bytes,
                        "path": None,
                    },
                    "question": qa.question,
                    "answer": qa.answer,
                    "question_type": qa.question_type,
                    "options": qa.options,
                    "target": target,
                    "template_id": qa.template_id,
                    **(qa.facts.as_row() if qa.facts else facts_row),
                }
            )
    for index, row in enumerate(rows):
        row["row_id"] = f"{image_id[:16]}-{index:03d}"
    return Converted(case.case_id, image_id, split, rows)
