"""Read the facts back out of question/answer text and compare them with a mask's facts.

A deterministic parser for the controlled vocabulary of DESIGN.md: zone words, quadrant
words ("<vertical> <horizontal> quadrant"), PRS-Med words ("top left", ..., "center"), size
words, counts, yes/no, option letters and the patient's side ("the patient's left", "on both
sides of the patient", "in the midline"; always phrased in the patient's frame, so image-frame
words such as "middle left" are never read as a side, and neither is a structure's name: "the
left kidney" states no side), negations, the options a multiple choice question offers, and the
names of anatomical structures and lesions (STRUCTURES: a row may name only its own target and,
in a relation row, the other structure). `mmrs validate` uses it to check that every answer
states only facts its mask supports.
"""

from __future__ import annotations

import re

from ..geometry.facts import ZONES, Facts
from .names import named_side, readable_name
from .templates import FAMILIES, LETTERS, NUMBER_WORDS, location_zones

_QUADRANT = re.compile(r"\b(upper|lower) (left|right) quadrant\b")
_ZONE = re.compile(r"\b(?:(upper|middle|lower) (left|center|right)|center)\b")
_PRSMED = re.compile(r"\b(?:(top|bottom) (left|right)|center)\b")
_SIZE = re.compile(r"\b(tiny|small|medium|large)\b")
_NUMBER = re.compile(r"\b(\d+|" + "|".join(NUMBER_WORDS) + r")\b")
_YES_NO = re.compile(r"^\s*(yes|no)\b")
_LETTER = re.compile(r"(?:^\s*\(?|\(|\b[Oo]ption\s+)([A-D])\b\)?")
_NEGATION = re.compile(r"\b(no|not|none|absent)\b")
# Any negation: none may stand in an answer that asserts (a position, a size, a "yes", ...).
# "neither" is not one: "in the midline, on neither side" asserts a side.
_NEGATED = re.compile(r"\b(no|not|none|nothing|absent|never|cannot|without)\b|n't\b")
_OFFERED = re.compile(r"\(([A-D])\)\s*((?:upper|middle|lower) (?:left|center|right)|center)\b")
# Structures and lesions a medical image may show, as words (plural "s" optional). A question
# or answer names only its own target and a relation row's other structure: any other name
# is a false statement about what the mask shows.
STRUCTURES = (
    "abdomen", "adrenal gland", "aorta", "appendix", "artery", "bladder", "bone", "bowel",
    "brain", "breast", "bronchus", "calcification", "carcinoma", "cartilage", "cerebellum",
    "cervix", "clavicle", "cochlea", "colon", "cyst", "disc", "duodenum", "edema", "effusion",
    "esophagus", "eye", "femur", "fracture", "gallbladder", "gland", "heart", "hemorrhage",
    "hippocampus", "infection", "intestine", "kidney", "lesion", "liver", "lung", "lymph node",
    "mass", "melanoma", "metastasis", "muscle", "myocardium", "necrosis", "nevus", "nodule",
    "oedema", "oesophagus", "optic disc", "ovary", "pancreas", "pelvis", "pneumothorax",
    "polyp", "prostate", "rectum", "retina", "rib", "skin", "skull", "spine", "spleen",
    "stomach", "thyroid", "trachea", "tumor", "tumour", "ulcer", "uterus", "vein", "ventricle",
    "vertebra", "vessel",
)  # fmt: skip
_STRUCTURE = re.compile(
    r"\b(" + "|".join(sorted(STRUCTURES, key=len, reverse=True)) + r")(?:e?s)?\b"
)
_PATIENT_SIDE = re.compile(
    r"\bpatient(?:'s|s'|’s)? (left|right)\b"
    r"|\b(?:on )?the (left|right) side of the patient\b"
    r"|\b(bilateral(?:ly)?|both sides)\b"
    r"|\b(midline)\b"
)


def quadrants_in(text: str) -> list[str]:
    return [" ".join(m) for m in _QUADRANT.findall(text.lower())]


def zones_in(text: str) -> list[str]:
    """Zone phrases, ignoring those that are part of a quadrant phrase."""
    text = _QUADRANT.sub(" ", text.lower())
    return [m.group(0) for m in _ZONE.finditer(text)]


def prsmed_in(text: str) -> list[str]:
    return [m.group(0) for m in _PRSMED.finditer(text.lower())]


def sizes_in(text: str) -> list[str]:
    return _SIZE.findall(text.lower())


def numbers_in(text: str) -> list[int]:
    return [int(n) if n.isdigit() else NUMBER_WORDS.index(n) for n in _NUMBER.findall(text.lower())]


def sides_in(text: str) -> list[str]:
    """Patient sides stated in the text: "left", "right", "bilateral" or "midline"."""
    found = []
    for left_right, side_of, both, _midline in _PATIENT_SIDE.findall(text.lower()):
        found.append(left_right or side_of or ("bilateral" if both else "midline"))
    return found


def structures_in(text: str) -> list[str]:
    """The structure names (STRUCTURES) a text states, singular."""
    return _STRUCTURE.findall(text.lower())


def offered_options(question: str) -> list[tuple[str, str]]:
    """The "(A) upper left" options a multiple choice question offers, in order."""
    return [(letter, zone.lower()) for letter, zone in _OFFERED.findall(question)]


def check_names(text: str, names: list[str]) -> list[str]:
    """Structures a text names that are none of `names` (the row's target and the other
    structure of its relation), nor a word of one ("the tumour" of a "breast tumour")."""
    for name in names:
        text = re.sub(re.escape(name), " ", text, flags=re.IGNORECASE)
    own = {word for name in names for word in structures_in(name)}
    foreign = [word for word in structures_in(text) if word not in own]
    return [f"names {sorted(set(foreign))}, which is not the row's {names[0]!r}"] if foreign else []


def check_options(question: str, options: list[str] | None, facts: Facts) -> list[str]:
    """A multiple choice row: four distinct zones, the target's one of them, and the question
    offering exactly these, with their letters."""
    if not options or len(options) != 4:
        return ["multiple choice row needs 4 options"]
    problems = []
    if len(set(options)) != 4 or any(option not in ZONES for option in options):
        problems.append(f"options {options} are not 4 distinct zones")
    if options.count(facts.zone) != 1:
        problems.append(f"options {options} do not hold the target's zone {facts.zone!r} once")
    offered = offered_options(question)
    if offered != list(zip(LETTERS, options, strict=True)):
        problems.append(f"question offers {offered}; the row's options are {options}")
    return problems


def check_patient_side(text: str, patient_side: str | None) -> list[str]:
    """Problems with the patient sides a text states (none may be stated when unknown)."""
    stated = sides_in(text)
    if stated and patient_side is None:
        return [f"states the patient's side {stated} but it is unknown for this row"]
    wrong = [side for side in stated if side != patient_side]
    return [f"states the patient's side {wrong}; facts: {patient_side!r}"] if wrong else []


def without_names(text: str, *names: str | None) -> str:
    """The text with structure names blanked (longest first): "left 9th rib" or "small
    bowel" state no fact."""
    for name in sorted({n for n in names if n}, key=len, reverse=True):
        text = re.sub(re.escape(name), " <target> ", text, flags=re.IGNORECASE)
    return text


def check_answer(
    question_type: str,
    question: str,
    answer: str,
    options: list[str] | None,
    facts: Facts,
    target: str = "",
    patient_side: str | None = None,
    relation: tuple[str, str] | None = None,
    name: str | None = None,
) -> list[str]:
    """Every way the question/answer pair disagrees with the facts (empty when true).

    `patient_side` is the row's side of the patient (None where it cannot be known);
    `relation` the (other structure's name in the text, "inside" | "outside") a relation
    row asks about; `name` the target's name in the text (`target`, the source's, when
    None). The side a name carries must agree with `patient_side` where both are known.
    """
    if question_type not in FAMILIES:  # no family's checks would read its answer
        return [f"unknown question_type {question_type!r}"]
    named = named_side(name or target)
    problems: list[str] = []
    if options is not None and question_type != "multiple_choice":
        problems.append(f"options on a {question_type} row (only multiple choice has them)")
    if named is not None and patient_side is not None and patient_side != named:
        problems.append(f"the {name or target} is named {named} but patient_side is {patient_side}")
    blanked = (target, name or readable_name(target), relation[0] if relation else None)
    allowed = [n for n in blanked if n]
    if target:
        problems += [p for text in (question, answer) for p in check_names(text, allowed)]
    contains = answer  # a relation answer may name the structure that holds the target
    question, answer = without_names(question, *blanked), without_names(answer, *blanked)
    problems += check_patient_side(answer, patient_side)
    if "{{" in answer or "{%" in answer or "{{" in question:
        problems.append("unrendered placeholder")
    if question_type == "negative":
        if facts.present:
            problems.append("negative row but the mask is not empty")
        if not _NEGATION.search(answer.lower()):
            problems.append("negative answer does not say the target is absent")
        if zones_in(answer) or quadrants_in(answer):
            problems.append("negative answer states a position")
        sizes, counts = sizes_in(answer), numbers_in(answer)
        if sizes:
            problems.append(f"negative answer states a size {sizes}")
        if any(counts):
            problems.append(f"negative answer states a count {counts}")
        if yes_no_in(answer) == "yes":
            problems.append("negative answer says yes")
        return problems
    if not facts.present:
        return [*problems, f"{question_type} row but the mask is empty"]
    negated = _NEGATED.search(answer.lower())
    said = _YES_NO.match(answer.lower())
    may_negate = question_type in ("verification", "relation") and (
        said is None or said.group(1) == "no"
    )
    if negated and not may_negate:
        problems.append(f"answer negates ({negated.group(0)!r}) what a {question_type} row states")

    where = location_zones(facts)
    quadrants = {facts.quadrant} | {c.quadrant for c in facts.components}
    wrong = [z for z in zones_in(answer) if z not in where]
    if question_type == "prsmed":
        wrong = []
        stated = prsmed_in(answer)
        if stated != [facts.prsmed_position]:
            problems.append(f"PRS-Med position {stated} != {facts.prsmed_position!r}")
    if wrong:
        problems.append(f"answer states zone(s) {wrong}; the mask is in {sorted(where)}")
    bad_quadrants = [q for q in quadrants_in(answer) if q not in quadrants]
    if bad_quadrants:
        problems.append(f"answer states quadrant(s) {bad_quadrants}; facts: {sorted(quadrants)}")
    bad_sizes = [s for s in sizes_in(answer) if s != facts.size]
    if bad_sizes:
        problems.append(f"answer states size {bad_sizes}; facts: {facts.size!r}")

    if question_type in ("position", "referring") and not zones_in(answer):
        problems.append("answer states no position")
    elif question_type == "laterality" and not sides_in(answer):
        problems.append("answer states no side of the patient")
    elif question_type == "relation":
        said = _YES_NO.match(answer.lower())
        if relation is None:
            problems.append("relation row without its relation")
        elif said is not None and (said.group(1) == "yes") != (relation[1] == "inside"):
            problems.append(f"answered {said.group(1)!r}; the {relation[0]} is {relation[1]}")
        elif said is None and not (
            relation[1] == "inside" and relation[0].lower() in contains.lower()
        ):  # "which structure holds it?": only for inside, and naming the container
            problems.append(f"answer does not name the {relation[0]} it lies in")
    elif question_type == "size" and not sizes_in(answer):
        problems.append("answer states no size")
    elif question_type == "count":
        stated = numbers_in(answer)
        if not stated or any(n != facts.n_components for n in stated):
            problems.append(f"answer states count {stated}; facts: {facts.n_components}")
    elif question_type == "verification":
        asked = zones_in(question)
        said = _YES_NO.match(answer.lower())
        if len(asked) != 1 or said is None:
            problems.append("verification row must ask one zone and answer yes or no")
        elif (said.group(1) == "yes") != (asked[0] in where):
            problems.append(f"answered {said.group(1)!r} for {asked[0]!r}; mask in {sorted(where)}")
    elif question_type == "multiple_choice":
        letter = _LETTER.search(answer)
        problems += check_options(question, options, facts)
        if letter is None:
            problems.append("multiple choice answer names no option letter")
        elif (
            options and len(options) == 4 and options[LETTERS.index(letter.group(1))] != facts.zone
        ):
            problems.append(
                f"option {letter.group(1)} is {options[LETTERS.index(letter.group(1))]!r}; "
                f"facts: {facts.zone!r}"
            )
    return problems


# Public readers of what the checks above read privately (baselines/scoring scores answers).
def yes_no_in(text: str) -> str | None:
    """ "yes" or "no" where the text opens with one, else None."""
    said = _YES_NO.match(text.lower())
    return said.group(1) if said else None


def letters_in(text: str) -> list[str]:
    """Option letters the text names ("(B)", "Option B", a leading "B")."""
    return [m.group(1) for m in _LETTER.finditer(text)]


def says_absent(text: str) -> bool:
    """Whether the text holds a negation ("no", "not", "none", "absent")."""
    return _NEGATION.search(text.lower()) is not None


def relation_of_row(row: dict) -> tuple[str, str] | None:
    """A row's relation as check_answer takes it: (the other's name in the text, kind)."""
    found = row.get("relation")
    if not found:
        return None
    return (found.get("name") or found["target"], found["kind"])
