"""The fact parser rejects answers that disagree with their mask."""

from __future__ import annotations

import numpy as np

from pipeline.geometry.facts import compute_facts
from pipeline.qa.factcheck import check_answer, numbers_in, zones_in


def _facts():
    mask = np.zeros((90, 90), dtype=bool)
    mask[5:15, 5:15] = True  # upper left, one instance, small
    return compute_facts(mask)


def test_parser_reads_zone_words_but_not_quadrant_phrases() -> None:
    text = "It lies in the center of the image, in its upper left quadrant, near the lower right."
    assert zones_in(text) == ["center", "lower right"]
    assert numbers_in("There are two, not 3.") == [2, 3]


def test_true_answers_pass() -> None:
    facts = _facts()
    assert facts.zone == "upper left" and facts.size == "small"
    assert (
        check_answer(
            "position", "Where?", "The polyp is in the upper left of the image.", None, facts
        )
        == []
    )
    assert check_answer("count", "How many?", "One.", None, facts) == []
    assert check_answer("size", "How big?", "It is small.", None, facts) == []


def test_wrong_facts_are_caught() -> None:
    facts = _facts()
    assert check_answer("position", "Where?", "It is in the lower right.", None, facts)
    assert check_answer("position", "Where?", "It is somewhere.", None, facts)  # no position
    assert check_answer("count", "How many?", "Two.", None, facts)
    assert check_answer("size", "How big?", "It is large.", None, facts)
    assert check_answer(
        "position", "Where?", "In the upper left, lower right quadrant.", None, facts
    )
    assert check_answer("prsmed", "Where?", "At the bottom right of the image.", None, facts)


def test_yes_no_and_option_letters_are_checked() -> None:
    facts = _facts()
    assert check_answer("verification", "Is it in the upper left?", "Yes.", None, facts) == []
    assert check_answer("verification", "Is it in the upper left?", "No.", None, facts)
    assert check_answer("verification", "Is it in the center?", "Yes.", None, facts)
    options = ["center", "upper left", "lower left", "middle right"]
    asked = "Where? (A) center (B) upper left (C) lower left (D) middle right"
    assert check_answer("multiple_choice", asked, "(B) upper left", options, facts) == []
    assert check_answer("multiple_choice", asked, "(A) upper left", options, facts)


def test_the_options_offered_are_the_rows_options() -> None:
    """An option's text changed in the question, the letter left as it was, is caught."""
    facts = _facts()
    options = ["center", "upper left", "lower left", "middle right"]
    edited = "Where? (A) center (B) lower right (C) lower left (D) middle right"
    problems = check_answer("multiple_choice", edited, "(B)", options, facts)
    assert problems == [
        "question offers [('A', 'center'), ('B', 'lower right'), ('C', 'lower left'), "
        "('D', 'middle right')]; the row's options are "
        "['center', 'upper left', 'lower left', 'middle right']"
    ]
    asked = "Where? (A) center (B) upper left (C) lower left (D) center"
    twice = ["center", "upper left", "lower left", "center"]
    assert (
        "are not 4 distinct zones" in check_answer("multiple_choice", asked, "(B)", twice, facts)[0]
    )


def test_negations_are_read_back() -> None:
    facts = _facts()
    answer = "The breast tumor is in the upper left of the image."
    negated = "The upper left region of the image does not contain the breast tumor."
    ask = ("position", "Where is the breast tumor?")
    assert check_answer(*ask, answer, None, facts, target="breast tumor") == []
    assert check_answer(*ask, negated, None, facts, target="breast tumor") == [
        "answer negates ('not') what a position row states"
    ]
    question = "Is the polyp in the upper left?"
    assert check_answer("verification", question, "No, it is not.", None, facts) == [
        "answered 'no' for 'upper left'; mask in ['upper left']"
    ]
    assert check_answer("verification", question, "Yes, it is not there.", None, facts)
    midline = "The liver lies in the patient's midline, on neither side."
    assert not [
        p
        for p in check_answer("laterality", "Which side?", midline, None, facts, "liver", "midline")
        if "negates" in p
    ]


def test_structure_names_are_the_rows_own() -> None:
    facts = _facts()
    ask = ("position", "Where is the breast tumor?")
    other = "The upper left region of the image contains the liver."
    assert check_answer(*ask, other, None, facts, target="breast tumor") == [
        "names ['liver'], which is not the row's 'breast tumor'"
    ]
    own = "The tumor lies in the upper left of the image."  # a word of its own name
    assert check_answer(*ask, own, None, facts, target="breast tumor") == []
    kidneys = "Where are the kidneys?"  # plurals are read too
    assert check_answer("position", kidneys, own, None, facts, target="breast tumor")


def test_negative_rows_need_an_empty_mask_and_a_negation() -> None:
    empty = compute_facts(np.zeros((9, 9), dtype=bool))
    assert check_answer("negative", "Is there a polyp?", "No polyp is visible.", None, empty) == []
    assert check_answer("negative", "Is there a polyp?", "A polyp is visible.", None, empty)
    assert check_answer("negative", "Is there a polyp?", "No polyp.", None, _facts())
    assert check_answer("position", "Where?", "In the center.", None, empty)


def test_unrendered_placeholders_are_caught() -> None:
    assert check_answer("position", "Where?", "In the {{ zone }}.", None, _facts())


def test_target_names_state_no_facts() -> None:
    facts = _facts()
    answer = "There is one rib right 9 region."
    assert check_answer("count", "How many?", answer, None, facts)  # read as [1, 9] ...
    assert check_answer("count", "How many?", answer, None, facts, target="rib right 9") == []
    answer = "The Small Bowel is in the upper left of the image."
    assert check_answer("position", "Where?", answer, None, facts, target="small bowel") == []


def test_patient_sides_are_read_in_the_patient_frame_only() -> None:
    from pipeline.qa.factcheck import check_patient_side, sides_in

    assert sides_in("It lies on the patient's left, in the middle right of the image.") == ["left"]
    assert sides_in("the right side of the patient") == ["right"]
    assert sides_in("It is bilateral.") == ["bilateral"]
    assert sides_in("It lies on both sides of the patient.") == ["bilateral"]
    assert sides_in("It sits in the midline.") == ["midline"]
    assert sides_in("The upper left of the image.") == []
    assert check_patient_side("On the patient's right.", "right") == []
    assert check_patient_side("On the patient's right.", "left")
    assert check_patient_side("On the patient's right.", None)  # a side nobody knows
    assert check_patient_side("In the upper left of the image.", None) == []
