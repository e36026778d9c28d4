"""The guard: an LLM may change the words of a question/answer pair, never its facts.

The fact parser of qa/factcheck.py reads both the template text and the rewrite. A rewrite is
rejected, with a short reason, when it leaves a template placeholder, states a patient side
the row does not know (or another side), drops or changes a position, size, count, yes/no,
option letter, image modality or the target's name, uses a direction word the template did
not, or fails the same check_answer that `mmrs validate` runs on every row. A rewrite this
module accepts therefore passes validation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ..geometry.facts import Facts, facts_of_row
from ..qa.factcheck import (
    _LETTER,
    _YES_NO,
    check_answer,
    numbers_in,
    prsmed_in,
    quadrants_in,
    relation_of_row,
    sides_in,
    sizes_in,
    without_names,
    zones_in,
)

_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{%|%\}|\{#|\{[a-z_]+\}")
_DIRECTIONS = re.compile(
    r"\b(left|right|upper|lower|top|bottom|middle|center|centre|central|midline|"
    r"bilateral(?:ly)?|both|superior|inferior|anterior|posterior|medial|lateral)\b"
)
_MODALITY = re.compile(
    r"\b(ct|mri|mr|x-?ray|radiograph\w*|ultrasound|sonograph\w*|endoscop\w*|dermoscop\w*|"
    r"dermatoscop\w*|colonoscop\w*)\b"
)
_OPTION = re.compile(
    r"\(([A-D])\)\s*((?:upper|middle|lower) (?:left|center|right)|center)", re.IGNORECASE
)


def _modality(word: str) -> str:
    """Spellings of one modality as one word ("x-ray", "radiograph" -> "xray")."""
    for name, prefixes in {
        "xray": ("x", "radiograph"),
        "ultrasound": ("ultrasound", "sonograph"),
        "endoscopy": ("endoscop", "colonoscop"),
        "dermoscopy": ("dermoscop", "dermatoscop"),
        "mri": ("mr",),
    }.items():
        if word.startswith(prefixes):
            return name
    return word


@dataclass(frozen=True)
class Stated:
    """The facts one text states, as the fact parser reads them."""

    position: frozenset[str]
    directions: frozenset[str]
    size: frozenset[str]
    count: frozenset[int]
    side: frozenset[str]
    answer: frozenset[str]  # yes / no at the start
    option: frozenset[str]  # option letters named
    options: frozenset[tuple[str, str]]  # "(A) upper left" pairs offered
    modality: frozenset[str]
    target: bool


def stated(text: str, target: str, *names: str | None) -> Stated:
    """Read every fact a question or answer states (see the module docstring).

    `target` is the target's name in the text; it and `names` (the source's name, the other
    structure of a relation) may hold direction words ("left lung"): they are blanked first.
    """
    named = bool(target) and target.lower() in text.lower()
    text = without_names(text, target, *names)
    lower = text.lower()
    yes_no = _YES_NO.match(lower)
    return Stated(
        position=frozenset(
            [f"zone:{z}" for z in zones_in(text)]
            + [f"quadrant:{q}" for q in quadrants_in(text)]
            + [f"prsmed:{p}" for p in prsmed_in(text)]
        ),
        directions=frozenset(_DIRECTIONS.findall(lower)),
        size=frozenset(sizes_in(text)),
        count=frozenset(numbers_in(text)),
        side=frozenset(sides_in(text)),
        answer=frozenset([yes_no.group(1)] if yes_no else []),
        option=frozenset(_LETTER.findall(text)),
        options=frozenset((a.upper(), b.lower()) for a, b in _OPTION.findall(text)),
        modality=frozenset(_modality(w) for w in _MODALITY.findall(lower)),
        target=named,
    )


_COMPARED = ("options", "position", "size", "count", "answer", "option", "modality")


def _compare(
    before: Stated, after: Stated, patient_side: str | None, question_type: str
) -> str | None:
    if after.side != before.side:
        return "unknown-side" if patient_side is None and after.side else "changed-side"
    for kind in _COMPARED:
        if kind == "option" and question_type != "multiple_choice":
            continue  # elsewhere a leading "A" is an article, not an option letter
        old, new = getattr(before, kind), getattr(after, kind)
        if new != old:
            return f"dropped-{kind}" if new < old else f"changed-{kind}"
    if after.directions != before.directions:
        return "changed-position"  # a direction word the template did not use, or lost one
    if before.target and not after.target:
        return "dropped-target"
    return None


def rewrite_problem(
    original: tuple[str, str],
    rewritten: tuple[str, str],
    *,
    question_type: str,
    options: list[str] | None,
    facts: Facts,
    target: str,
    patient_side: str | None,
    relation: tuple[str, str] | None = None,
    name: str | None = None,
) -> str | None:
    """Why a rewritten (question, answer) may not replace the original; None to accept it.

    `relation` is a relation row's (other structure's name in the text, "inside" |
    "outside"); `name` the target's name in the text (`target`, the source's, when None).
    """
    names = (target, relation[0] if relation else None)
    question, answer = rewritten
    if not question.strip() or not answer.strip():
        return "empty"
    if _PLACEHOLDER.search(question) or _PLACEHOLDER.search(answer):
        return "placeholder"
    for before, after in zip(original, rewritten, strict=True):
        reason = _compare(
            stated(before, name or target, *names),
            stated(after, name or target, *names),
            patient_side,
            question_type,
        )
        if reason is not None:
            return reason
    if relation is not None:  # the other structure stays named wherever it was
        other = relation[0].lower()
        for before, after in zip(original, rewritten, strict=True):
            if other in before.lower() and other not in after.lower():
                return "dropped-relation"
    problems = check_answer(
        question_type,
        question,
        answer,
        options,
        facts,
        target=target,
        patient_side=patient_side,
        relation=relation,
        name=name,
    )
    return "fact-check" if problems else None


def row_problem(row: dict[str, Any], question: str, answer: str) -> str | None:
    """rewrite_problem for a row of the row contract."""
    return rewrite_problem(
        (row["question"], row["answer"]),
        (question, answer),
        question_type=row["question_type"],
        options=row["options"],
        facts=facts_of_row(row),
        target=row["target"],
        patient_side=row["patient_side"],
        relation=relation_of_row(row),
        name=row.get("target_name"),
    )
