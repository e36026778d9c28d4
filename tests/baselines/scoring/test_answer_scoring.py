"""Answers scored against rows (right, wrong and unreadable, for every question type),
rendered from facts through the row's template, and checked against a predicted mask."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from scoring_rows import hand_row

from baselines.scoring.answers import AnswerFacts, consistent, render_answer, score_answer
from pipeline.qa.templates import load_templates

TEMPLATES = load_templates()


def _mask(*blocks: tuple[slice, slice]) -> np.ndarray:
    mask = np.zeros((90, 90), dtype=bool)
    for rows, cols in blocks:
        mask[rows, cols] = True
    return mask


UPPER_LEFT = (slice(5, 15), slice(5, 15))  # 100 pixels of 8100: small; PRS-Med "top left"
LOWER_RIGHT = (slice(70, 80), slice(70, 80))


def _row(kind: str, question: str, *blocks, **columns) -> dict:
    """A row about the 90 x 90 mask of these blocks."""
    return hand_row(kind, _mask(*blocks), question, **columns)


def _scores(row: dict, answers: dict[str, bool]) -> None:
    for answer, expected in answers.items():
        assert score_answer(row, answer) is expected, answer


def test_position() -> None:
    one = _row("position", "Where is the polyp?", UPPER_LEFT)
    _scores(
        one,
        {
            "The polyp is in the upper left of the image.": True,
            "It lies in the upper left of the image, in its upper left quadrant.": True,
            "It is in the lower right.": False,
            "It lies in the upper left, in its lower right quadrant.": False,  # false quadrant
            "It is in the upper left and the center.": False,
            "The polyp is large, in the upper left.": False,  # false size
            "The polyp is somewhere in the image.": False,  # unreadable
        },
    )
    two = _row("position", "Where is the polyp?", UPPER_LEFT, LOWER_RIGHT)
    _scores(
        two,
        {
            "Two parts, in the lower right and the upper left of the image.": True,
            "It is in the upper left of the image.": False,  # one of its two zones
        },
    )


def test_prsmed() -> None:
    row = _row("prsmed", "Where is the polyp located?", UPPER_LEFT)
    assert row["prsmed_position"] == "top left"
    _scores(
        row,
        {
            "The polyp is located at the top left of the image.": True,
            "It appears at the bottom right of the image.": False,
            "It is at the top left or the center.": False,
            "It is in the image.": False,
        },
    )


def test_multiple_choice() -> None:
    options = ["center", "upper left", "lower right", "middle left"]
    row = _row("multiple_choice", "Where? (A) ... (D)", UPPER_LEFT, options=options)
    _scores(
        row,
        {
            "(B) upper left": True,
            "Option B, the upper left of the image.": True,
            "B": True,
            "(A) center": False,
            "(B) lower right": False,  # the letter and the zone disagree
            "(A) or (B)": False,
            "The upper left one.": False,  # no letter
        },
    )


def test_verification() -> None:
    asked_true = _row("verification", "Is the polyp in the upper left of the image?", UPPER_LEFT)
    _scores(asked_true, {"Yes.": True, "Yes, it is in the upper left.": True, "No.": False})
    _scores(asked_true, {"Perhaps.": False, "It is in the upper left.": False})
    asked_false = _row("verification", "Is the polyp in the lower right region?", UPPER_LEFT)
    _scores(
        asked_false,
        {
            "No, the polyp is in the upper left of the image.": True,
            "No, it is in the center.": False,  # a false zone besides the right "no"
            "Yes.": False,
        },
    )
    several = _row(
        "verification", "Is any polyp region in the lower right?", UPPER_LEFT, LOWER_RIGHT
    )
    _scores(several, {"Yes, there is one in the lower right.": True, "No.": False})


def test_count_and_size() -> None:
    one = _row("count", "How many?", UPPER_LEFT)
    _scores(one, {"One.": True, "The number is 1.": True, "Two.": False, "Several.": False})
    two = _row("count", "How many?", UPPER_LEFT, LOWER_RIGHT)
    _scores(two, {"There are two regions.": True, "The number is 1.": False})
    size = _row("size", "How large?", UPPER_LEFT)
    _scores(size, {"It is small.": True, "It is large.": False, "It is big.": False})
    # The target's name states no fact: "small bowel" is no size.
    bowel = _row("size", "How large?", (slice(0, 60), slice(0, 60)), target="small bowel")
    assert bowel["size"] == "large"
    _scores(bowel, {"The small bowel is large relative to the image.": True})


def test_laterality_and_unknown_sides() -> None:
    row = _row("laterality", "On which side?", UPPER_LEFT, patient_side="right")
    _scores(
        row,
        {
            "The polyp is on the patient's right side.": True,
            "It is on the patient's left side.": False,
            "It is on the right of the image.": False,  # image words are no side
        },
    )
    unknown = _row("position", "Where is the polyp?", UPPER_LEFT)
    assert not score_answer(unknown, "It is on the patient's left, in the upper left.")


def test_relation() -> None:
    inside = {"target": "liver", "kind": "inside"}
    asked = _row("relation", "Is the lesion inside the liver?", UPPER_LEFT, target="lesion")
    asked["relation"] = inside
    _scores(
        asked,
        {
            "Yes, the lesion lies within the liver.": True,
            "No, the lesion lies outside the liver.": False,
            "The lesion is there.": False,
        },
    )
    which = {**asked, "question": "Within which structure of this CT image does the lesion lie?"}
    _scores(
        which,
        {
            "The lesion lies within the liver.": True,
            "The lesion lies within the spleen.": False,
            "No.": False,
            "Yes.": False,  # names no structure
        },
    )
    lungs = _row(
        "relation",
        "Is the left lung inside the right lung?",
        UPPER_LEFT,
        target="left lung",
        relation={"target": "right lung", "kind": "outside"},
    )
    _scores(lungs, {"No, the left lung lies outside the right lung.": True, "Yes.": False})


def test_negative() -> None:
    row = _row("negative", "Is there a polyp in this image?")
    assert row["n_components"] == 0
    _scores(
        row,
        {
            "There is no polyp in this image.": True,
            "No, no polyp is visible in this image.": True,
            "None: no polyp is visible.": True,
            "The polyp is in the center of the image.": False,
            "Yes, there is a polyp.": False,
            "It is absent from the upper left.": False,  # states a position
            "No, but two small ones.": False,
            "Unclear.": False,
        },
    )


def test_referring_and_unknown_types_are_not_scored_by_text() -> None:
    with pytest.raises(ValueError, match="Dice"):
        score_answer(_row("referring", "Segment the polyp in the upper left.", UPPER_LEFT), "x")
    with pytest.raises(ValueError, match="unknown question type"):
        score_answer(_row("caption", "Describe it.", UPPER_LEFT), "x")


def test_render_follows_the_facts_not_the_row() -> None:
    row = _row(
        "verification",
        "Is the polyp in the upper left of the image?",
        UPPER_LEFT,
        template_id="verify_01",
    )
    right = AnswerFacts.from_row(row)
    assert (
        render_answer(row, right, TEMPLATES) == "Yes, the polyp is in the upper left of the image."
    )
    elsewhere = AnswerFacts.from_mask(_mask(LOWER_RIGHT))
    said = render_answer(row, elsewhere, TEMPLATES)
    assert said == "No, the polyp is in the lower right of the image."
    assert not score_answer(row, said)
    # Two instances: verify_01 asks for one, so the family's first that applies (verify_06).
    two = AnswerFacts.from_mask(_mask(UPPER_LEFT, LOWER_RIGHT))
    assert render_answer(row, two, TEMPLATES) == "Yes, one of its parts is there."
    # Absent: the first negative template.
    assert (
        render_answer(row, AnswerFacts(), TEMPLATES)
        == "There is no polyp in this endoscopic image."
    )


def test_render_multiple_choice_and_relation_inputs() -> None:
    options = ["center", "upper left", "lower right", "middle left"]
    row = _row("multiple_choice", "Where?", UPPER_LEFT, options=options, template_id="mc_01")
    assert render_answer(row, AnswerFacts.from_row(row), TEMPLATES) == "(B) upper left"
    assert (
        render_answer(row, AnswerFacts.from_mask(_mask(LOWER_RIGHT)), TEMPLATES)
        == "(C) lower right"
    )
    off = AnswerFacts.from_mask(_mask((slice(5, 15), slice(40, 50))))  # upper center: no option
    assert off.zone == "upper center" and render_answer(row, off, TEMPLATES) == ""
    relation = _row(
        "relation",
        "Is the lesion inside the liver?",
        UPPER_LEFT,
        target="lesion",
        relation={"target": "liver", "kind": "inside"},
        template_id="relation_01",
    )
    facts = AnswerFacts.from_mask(_mask(UPPER_LEFT))
    assert facts.relation is None and render_answer(relation, facts, TEMPLATES) == ""
    outside = AnswerFacts.from_mask(_mask(UPPER_LEFT), relation="outside")
    said = render_answer(relation, outside, TEMPLATES)  # the row's relation_01 needs inside
    assert said == "No, the lesion lies outside the liver." and not score_answer(relation, said)
    # a negative row on which the system sees the target: it says where
    negative = _row("negative", "Is there a polyp?", template_id="negative_02")
    assert "upper left" in render_answer(negative, facts, TEMPLATES)


def test_consistency_with_the_predicted_mask() -> None:
    upper_left = _mask(UPPER_LEFT)
    assert consistent("The polyp is in the upper left of the image.", upper_left)
    assert not consistent("The polyp is in the center of the image.", upper_left)
    assert consistent("In the lower right and the upper left.", _mask(UPPER_LEFT, LOWER_RIGHT))
    assert not consistent("In the upper left.", _mask(UPPER_LEFT, LOWER_RIGHT))
    empty = np.zeros((90, 90), dtype=bool)
    assert consistent("There is no polyp.", empty)
    assert not consistent("The polyp is in the center.", empty)
    assert consistent("The upper left lobe is absent.", empty, "upper left lobe")


def test_round_trip_on_a_real_build(scoring_rows: dict[str, list[dict]]) -> None:
    """Each row's own answer scores True; its facts, read from its mask (and patient frame)
    or its columns, render exactly its answer through its template, which scores True."""
    rows = [row for split in scoring_rows.values() for row in split]
    kinds = Counter(row["question_type"] for row in rows)
    assert set(kinds) >= {"position", "multiple_choice", "verification", "count", "size"}
    assert {"prsmed", "laterality", "relation", "negative", "referring"} <= set(kinds)
    for row in rows:
        relation = (row["relation"] or {}).get("kind")
        facts = AnswerFacts.from_mask(
            row["mask"], patient_frame=row["patient_frame"], relation=relation
        )
        assert facts == AnswerFacts.from_row(row), row["row_id"]
        assert render_answer(row, facts, TEMPLATES) == row["answer"], row["row_id"]
        if row["question_type"] != "referring":
            assert score_answer(row, row["answer"]), row["row_id"]
        if row["question_type"] == "position":
            assert consistent(row["answer"], np.asarray(row["mask"]) > 127, row["target"])


def test_wrong_facts_score_false_on_a_real_build(scoring_rows: dict[str, list[dict]]) -> None:
    """The answers of facts moved to another zone, size or count are wrong."""
    wrong = 0
    for row in scoring_rows["train"]:
        kind = row["question_type"]
        if kind not in ("position", "multiple_choice", "size", "count") or row["n_components"] != 1:
            continue
        truth = AnswerFacts.from_row(row)
        zone = "upper left" if truth.zone != "upper left" else "lower right"
        moved = AnswerFacts(
            zone=zone,
            quadrant=truth.quadrant,
            size="tiny" if truth.size != "tiny" else "large",
            n_components=2,
            zones=tuple(sorted({zone, "center"})),
            prsmed_position=truth.prsmed_position,
            present=True,
        )
        answer = render_answer(row, moved, TEMPLATES)
        assert not score_answer(row, answer), (row["row_id"], answer)
        wrong += 1
    assert wrong > 20
