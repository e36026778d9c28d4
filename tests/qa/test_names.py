"""Readable structure names in the text; the side a name carries is no stated side."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.geometry.facts import analyse, compute_facts
from pipeline.geometry.patient import PatientFrame
from pipeline.llm.guard import row_problem
from pipeline.qa.factcheck import check_answer
from pipeline.qa.names import named_side, readable_name, side_for, text_name
from pipeline.qa.templates import QAPlanner, load_templates


@pytest.mark.parametrize(
    ("source", "text"),
    [
        ("kidney_left", "left kidney"),
        ("iliopsoas_right", "right iliopsoas"),
        ("lung_upper_lobe_right", "right lung upper lobe"),
        ("vertebrae_L2", "L2 vertebra"),
        ("vertebrae_t12", "T12 vertebra"),
        ("vertebrae_C1", "C1 vertebra"),
        ("rib_left_3", "left 3rd rib"),
        ("rib_right_12", "right 12th rib"),
        ("rib_left_1", "left 1st rib"),
        ("rib_right_2", "right 2nd rib"),
        ("spinal_cord", "spinal cord"),
        ("left lung", "left lung"),
        ("Left_Kidney", "Left Kidney"),
        ("vertebrae", "vertebrae"),
        ("liver_2", "liver 2"),  # a number of something that is no vertebra or rib
        ("covid-19 infection", "covid-19 infection"),
        ("left", "left"),
    ],
)
def test_readable_names_follow_the_documented_rules(source: str, text: str) -> None:
    assert readable_name(source) == text


def test_a_display_names_map_wins_over_the_rules() -> None:
    names = {"lung_upper_lobe_right": "right upper lobe"}
    assert text_name("lung_upper_lobe_right", names) == "right upper lobe"
    assert text_name("kidney_left", names) == "left kidney"


def test_the_side_a_name_carries() -> None:
    assert named_side("left kidney") == "left"
    assert named_side("Right-Cerebral-White-Matter") == "right"
    assert named_side("left lateral ventricle") == "left"  # the brain's: a patient side
    assert named_side("upright lung") is None  # whole words only
    assert named_side("L2 vertebra") is None
    assert named_side("left and right lungs") is None
    # heart chambers are named by the heart's sides, not the patient's
    assert named_side("heart ventricle right") is None
    assert named_side("left atrium") is None
    assert side_for("left kidney", "left") == "left"
    assert side_for("left kidney", "midline") is None
    assert side_for("left kidney", "bilateral") is None
    assert side_for("left kidney", None) is None
    assert side_for("spinal cord", "midline") == "midline"


def _mask() -> np.ndarray:
    mask = np.zeros((90, 90), dtype=bool)
    mask[30:60, 62:80] = True  # the image's right: the patient's left in radiological display
    return mask


FRAME = PatientFrame(1.0, 0.0, -45.0, 2.0)


def test_questions_use_the_readable_name_and_rows_keep_the_source_name() -> None:
    facts, instances = analyse(_mask())
    planner = QAPlanner(load_templates(), seed=0)
    rows = planner.plan(
        facts, "kidney_left", "ct", "img", instances, "left", FRAME, (("vertebrae_L2", "outside"),)
    )
    assert rows
    for qa in rows:
        assert "kidney_left" not in qa.question + qa.answer
        assert "left kidney" in (qa.question + qa.answer).lower(), qa
        assert (
            check_answer(
                qa.question_type,
                qa.question,
                qa.answer,
                qa.options,
                facts,
                target="kidney_left",
                patient_side=qa.patient_side,
                relation=("L2 vertebra", qa.relation[1]) if qa.relation else None,
                name="left kidney",
            )
            == []
        ), qa
    (relation,) = [qa for qa in rows if qa.question_type == "relation"]
    assert "L2 vertebra" in relation.question and relation.relation == ("vertebrae_L2", "outside")
    named = planner.plan(facts, "x_1", "ct", "img", instances, None, None, (), {"x_1": "gland"})
    assert all("x_1" not in qa.question and "gland" in qa.question for qa in named)


def test_a_name_is_no_stated_side_and_must_agree_with_the_row() -> None:
    facts = compute_facts(_mask())
    answer = "The left kidney is in the middle right of the image."
    # "left" in the name states no side: fine where the side is unknown ...
    assert check_answer("position", "Where?", answer, None, facts, "kidney_left") == []
    assert check_answer("position", "Where?", answer, None, facts, name="left kidney") == []
    # ... but a row whose side contradicts the name is caught
    problems = check_answer(
        "position", "Where?", answer, None, facts, "kidney_left", "right", name="left kidney"
    )
    assert problems and "named left" in problems[0]
    said = "The left kidney is on the patient's right side."
    assert check_answer("laterality", "Which side?", said, None, facts, name="left kidney")


def _row(question: str, answer: str, **extra) -> dict:
    return {
        **compute_facts(_mask()).as_row(),
        "question": question,
        "answer": answer,
        "question_type": "laterality",
        "options": None,
        "target": "kidney_left",
        "target_name": "left kidney",
        "patient_side": "left",
        **extra,
    }


def test_the_guard_reads_sides_from_patient_phrases_not_from_names() -> None:
    row = _row(
        "On which side of the patient is the left kidney?",
        "The left kidney is on the patient's left side.",
    )
    assert row_problem(row, "Which side of the patient holds the left kidney?", row["answer"]) is (
        None
    )
    assert row_problem(row, row["question"], "It is on the patient's right side.") == (
        "changed-side"
    )
    unknown = _row(
        "Where is the left kidney in this CT image?",
        "The left kidney is in the middle right of the image.",
        question_type="position",
        patient_side=None,
    )
    kept = "You can find the left kidney in the middle right of the image."
    assert row_problem(unknown, "Where is the left kidney in this CT image?", kept) is None
    stated = "The left kidney is on the patient's left, in the middle right of the image."
    assert row_problem(unknown, unknown["question"], stated) == "unknown-side"
    dropped = "It sits in the middle right of the image."
    assert row_problem(unknown, unknown["question"], dropped) == "dropped-target"
