"""What extracting a case gives, 2D or volume alike: its types and the analysis of its targets."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..geometry.facts import Facts, Instance, analyse
from ..geometry.patient import PatientFrame, inside_body, instances_side
from ..geometry.relations import relations_of
from ..geometry.slicing import VolumeSettings
from ..io.images import PNG_LEVEL, encode_mask
from ..qa.names import side_for, text_name
from ..sources.base import Case, SourceInfo


class CaseError(ValueError):
    """A case whose files are readable but whose content cannot give true rows."""


@dataclass(frozen=True)
class SourceMeta:
    """What a worker needs of a source (picklable, unlike the adapter's functions)."""

    name: str
    modality: str
    license: str
    display: Any
    volume: VolumeSettings | None = None
    png_level: int = PNG_LEVEL  # of the images whose pixels are re-encoded
    display_names: tuple[tuple[str, str], ...] = ()  # see SourceInfo

    @classmethod
    def of(cls, source: SourceInfo, png_level: int = PNG_LEVEL) -> SourceMeta:
        return cls(
            source.name,
            source.modality,
            source.license,
            source.display,
            source.volume,
            png_level,
            source.display_names,
        )


@dataclass(frozen=True)
class ExtractedTarget:
    """One target of one image: its mask (PNG), facts and, when several, its instances."""

    target: str
    mask_png: bytes
    facts: Facts
    instances: list[Instance]  # empty for a single instance (the mask itself)
    patient_side: str | None = None
    frame: PatientFrame | None = None  # the image's, where the target lies in the body
    relations: tuple[tuple[str, str], ...] = ()  # (other target, "inside" | "outside")


@dataclass(frozen=True)
class ExtractedCase:
    """What the QA stage needs of one case; no source file is read after this."""

    case: Case
    source: SourceMeta
    image_bytes: bytes
    image_id: str
    width: int
    height: int
    targets: list[ExtractedTarget]
    slice_axis: str | None = None
    slice_index: int | None = None
    spacing_mm: tuple[float, float, float] | None = None  # column, row, slice
    # The case's slices that could not be written, (slice index, why): a series' gaps, and
    # slices whose image is the same as an earlier slice's (one image, one set of rows)
    left_out: tuple[tuple[int, str], ...] = ()


def label_layers(values: np.ndarray, labels: Mapping) -> dict[str, np.ndarray]:
    """One boolean layer per structure of a label map; a key may be one value or several."""
    layers: dict[str, np.ndarray] = {}
    for key, target in labels.items():
        layer = np.isin(values, key) if isinstance(key, tuple) else values == key
        layers[target] = layers[target] | layer if target in layers else layer
    return layers


def analyse_targets(
    masks: dict[str, np.ndarray],
    frame: PatientFrame | None,
    body: np.ndarray | None,
    image_id: str,
    kept: Mapping[str, bytes] | None = None,
    display_names: tuple[tuple[str, str], ...] = (),
) -> list[ExtractedTarget]:
    """Facts, instances, the patient's side and relations of every target of one image.

    A target has the image's patient frame when the frame is strict (world coordinates) or
    the target lies in the body the midline was found from; its side is not stated where
    it contradicts the side its name carries (qa/names.side_for). `kept` gives the mask PNG
    of a target whose source file already is one.
    """
    names = dict(display_names)
    related = relations_of(masks, image_id)
    kept = kept or {}
    targets = []
    for target, mask in masks.items():
        facts, instances = analyse(mask)
        own = frame if frame is not None and (frame.strict or inside_body(mask, body)) else None
        targets.append(
            ExtractedTarget(
                target,
                kept.get(target) or encode_mask(mask),
                facts,
                instances if len(instances) > 1 else [],
                side_for(text_name(target, names), instances_side(instances, own)),
                own,
                tuple(related.get(target, ())),
            )
        )
    return targets
