"""One extracted case -> its QA rows (the row contract), with its split.

Reads no source file: everything comes from the extract stage, so changing templates,
seed or split ratios re-renders rows without decoding a single image.
"""

from __future__ import annotations

from typing import Any

from ..io.images import encode_mask
from ..qa.names import text_name
from ..qa.templates import QAPlanner
from ..splits import SplitRatios, assign_split
from .cases import ExtractedCase


def render_case(
    extracted: ExtractedCase, planner: QAPlanner, ratios: SplitRatios
) -> list[dict[str, Any]]:
    """Every row of one case: one question about one target each."""
    case, source = extracted.case, extracted.source
    split = assign_split(source.name, case.patient_id, case.official_split, ratios)
    common = {
        "image": {"bytes": extracted.image_bytes, "path": None},
        "modality": source.modality,
        "source": source.name,
        "case_id": case.case_id,
        "patient_id": case.patient_id,
        "split": split,
        "image_id": extracted.image_id,
        "source_file": case.image.name,
        "slice_axis": extracted.slice_axis,
        "slice_index": extracted.slice_index,
        "spacing_mm": list(extracted.spacing_mm) if extracted.spacing_mm else None,
        "license": source.license,
        "width": extracted.width,
        "height": extracted.height,
        "rewrite": None,
    }
    names = dict(source.display_names)
    rows: list[dict[str, Any]] = []
    for item in extracted.targets:
        facts_row = item.facts.as_row()
        mask = {"bytes": item.mask_png, "path": None}
        plans = planner.plan(
            item.facts,
            item.target,
            source.modality,
            extracted.image_id,
            item.instances,
            item.patient_side,
            item.frame,
            item.relations,
            names,
        )
        frame = item.frame.as_row() if item.frame else None
        for qa in plans:
            rows.append(
                {
                    **common,
                    "mask": mask
                    if qa.mask is None
                    else {"bytes": encode_mask(qa.mask), "path": None},
                    "question": qa.question,
                    "answer": qa.answer,
                    "question_type": qa.question_type,
                    "options": qa.options,
                    "target": item.target,
                    "target_name": text_name(item.target, names),
                    "template_id": qa.template_id,
                    "patient_side": qa.patient_side,
                    "patient_frame": frame,
                    "relation": {
                        "target": qa.relation[0],
                        "kind": qa.relation[1],
                        "name": text_name(qa.relation[0], names),
                    }
                    if qa.relation
                    else None,
                    **(qa.facts.as_row() if qa.facts else facts_row),
                }
            )
    for index, row in enumerate(rows):
        row["row_id"] = f"{extracted.image_id[:16]}-{index:03d}"
    return rows
