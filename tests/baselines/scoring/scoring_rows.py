"""Hand-made rows for the scoring tests: a mask's facts as the build writes them."""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.geometry.facts import compute_facts


def hand_row(
    kind: str, mask: np.ndarray, question: str = "Where is the polyp?", /, **columns: Any
) -> dict:
    """A row about a polyp in an endoscopic image whose target is `mask` (boolean);
    `columns` override any column (the `mask` column too)."""
    height, width = mask.shape
    row = {
        **compute_facts(mask).as_row(),
        "mask": mask,
        "question_type": kind,
        "question": question,
        "target": "polyp",
        "modality": "endoscopy",
        "source": "kvasir_seg",
        "patient_side": None,
        "options": None,
        "relation": None,
        "template_id": None,
        "row_id": f"{kind}-0",
        "image_id": "0",
        "split": "test",
        "width": width,
        "height": height,
    }
    return {**row, **columns}
