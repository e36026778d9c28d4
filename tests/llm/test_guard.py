"""The guard: rewrites may change words, never facts."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.geometry.facts import compute_facts
from pipeline.llm.guard import row_problem


def _row(question: str, answer: str, question_type: str = "position", **extra) -> dict:
    mask = np.zeros((90, 90), dtype=bool)
    mask[5:20, 5:25] = True  # one instance in the upper left zone and quadrant
    return {
        **compute_facts(mask).as_row(),
        "question": question,
        "answer": answer,
        "question_type": question_type,
        "options": None,
        "target": "polyp",
        "patient_side": None,
        **extra,
    }


POSITION = _row(
    "Where is the polyp in this endoscopic image?", "The polyp is in the upper left of the image."
)


@pytest.mark.parametrize(
    ("question", "answer", "reason"),
    [
        (
            "In this endoscopic image, where does the polyp sit?",
            "You can find the polyp in the upper left of the image.",
            None,
        ),
        (
            "Where is the polyp in this endoscopic image?",
            "The polyp is in the upper right of the image.",
            "changed-position",
        ),
        (
            "Where is the polyp in this endoscopic image?",
            "The polyp is visible.",
            "dropped-position",
        ),
        (
            "Where is the polyp in this endoscopic image?",
            "The polyp is in the upper left of the image, on the patient's left.",
            "unknown-side",
        ),
        (
            "Where is the polyp in this endoscopic image?",
            "The polyp is in the upper left, near the right edge.",
            "changed-position",
        ),
        ("Where is the {{ target }}?", "The polyp is in the upper left.", "placeholder"),
        ("Where is the polyp?", "", "empty"),
        (
            "Where is the polyp in this CT image?",
            "The polyp is in the upper left of the image.",
            "changed-modality",
        ),
        (
            "Where is the lesion in this endoscopic image?",
            "It is in the upper left of the image.",
            "dropped-target",
        ),
        (
            "Where is the polyp in this endoscopic image?",
            "The small polyp is in the upper left of the image.",
            "changed-size",
        ),
    ],
)
def test_position_rewrites(question: str, answer: str, reason: str | None) -> None:
    assert row_problem(POSITION, question, answer) == reason


def test_yes_no_option_and_count_are_kept() -> None:
    verification = _row(
        "Is the polyp in the upper left of the image?", "Yes.", question_type="verification"
    )
    assert (
        row_problem(
            verification, "Does the upper left of the image hold the polyp?", "Yes, it does."
        )
        is None
    )
    assert row_problem(verification, "Is the polyp in the upper left of the image?", "No.") == (
        "changed-answer"
    )
    assert row_problem(verification, "Is the polyp in the lower left of the image?", "Yes.") == (
        "changed-position"
    )
    options = ["center", "upper left", "lower right", "middle left"]
    mc = _row(
        "Where is the polyp? Options: (A) center (B) upper left (C) lower right (D) middle left",
        "(B) upper left",
        question_type="multiple_choice",
        options=options,
    )
    question = "Pick the polyp's region: (A) center (B) upper left (C) lower right (D) middle left"
    assert row_problem(mc, question, "The answer is (B) upper left.") is None
    assert row_problem(mc, question, "(C) upper left") == "changed-options"
    assert row_problem(mc, question, "The answer is C, upper left.") == "dropped-options"
    assert row_problem(mc, question.replace(" (D) middle left", ""), "(B) upper left") == (
        "dropped-options"
    )
    count = _row("How many polyp regions are there?", "There is one.", question_type="count")
    assert row_problem(count, "Count the polyp regions.", "A total of 1.") is None
    assert row_problem(count, "Count the polyp regions.", "There are two.") == "changed-count"


def test_a_known_side_must_be_kept_and_a_wrong_one_is_refused() -> None:
    row = _row(
        "Where is the polyp?", "The polyp is in the upper left, on the patient's right.",
        patient_side="right",
    )  # fmt: skip
    assert (
        row_problem(row, "Where is the polyp?", "The polyp: patient's right, upper left.") is None
    )
    assert row_problem(row, "Where is the polyp?", "The polyp: patient's left, upper left.") == (
        "changed-side"
    )
