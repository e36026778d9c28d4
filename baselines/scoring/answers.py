"""Answers: scored against a row's facts, rendered from a system's facts, checked against a
system's own mask.

Answers are read with the project's fact parser (pipeline.qa.factcheck), the one that
`mmrs validate` trusts: zone, quadrant and PRS-Med words, sizes, counts, the patient's side,
yes/no, option letters and negations, as the templates phrase them. The target's name (and
a relation's other structure) is blanked first, so "small bowel" states no size. The parser
reads words, not sentences: "not in the upper left" states the zone "upper left".

A row is a Mapping with the row-contract columns (DESIGN.md); `mask` as `datasets` decodes
it (a mode L PIL image, 0/255), a boolean array, or the Parquet {"bytes": ...} struct.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from pipeline.geometry.facts import ZONES, analyse, quadrant_of
from pipeline.geometry.patient import PatientFrame, instances_side
from pipeline.io.images import BINARY_THRESHOLD, decode_mask
from pipeline.qa import factcheck
from pipeline.qa.templates import (
    IMAGE_NOUNS,
    LETTERS,
    NUMBER_WORDS,
    Template,
    TemplateSet,
    location_zones,
)

Row = Mapping[str, Any]


def as_mask(value: Any) -> np.ndarray:
    """A boolean mask from a row's `mask`: a PIL image (grey > 127), a boolean array, a
    grey array (> 127) or the Parquet struct {"bytes": PNG}."""
    if isinstance(value, Mapping):
        value = value.get("bytes")
        if value is not None:
            return decode_mask(value)
    if value is None:
        raise ValueError(
            "no mask pixels: the row was published without them (its licence forbids it); "
            "rebuild the source with `mmrs build` (see the dataset's REBUILD.md)"
        )
    if isinstance(value, Image.Image):
        value = np.asarray(value.convert("L"))
    array = np.asarray(value)
    if array.ndim != 2:
        raise ValueError(f"a mask must be 2D, got shape {array.shape}")
    return array if array.dtype == bool else array > BINARY_THRESHOLD


def _label(row: Row) -> str:
    return f"row {row.get('row_id')!r}"


def row_mask(row: Row) -> np.ndarray:
    """The row's own mask (as_mask of its `mask`); errors name the row."""
    try:
        return as_mask(row["mask"])
    except (ValueError, OSError) as exc:
        raise ValueError(f"{_label(row)}: {exc}") from exc


@dataclass(frozen=True)
class AnswerFacts:
    """The facts a system states about the target of one row.

    `zones` are the location zones (the zone of a single instance, each instance's zone
    for several; in ZONES order). `relation` is "inside" / "outside" the other structure
    a relation row asks about, or None where the system cannot tell: no relation answer is
    then rendered. Every other field is None (0, ()) when the target is absent.
    """

    zone: str | None = None
    quadrant: str | None = None
    size: str | None = None
    n_components: int = 0
    zones: tuple[str, ...] = ()
    prsmed_position: str | None = None
    patient_side: str | None = None
    present: bool = False
    relation: str | None = None

    def __post_init__(self) -> None:
        if self.present != (self.n_components > 0):
            raise ValueError(f"present={self.present} with n_components={self.n_components}")
        if self.present and (self.zone is None or not self.zones):
            raise ValueError("a present target needs its zone and zones")

    @classmethod
    def from_mask(
        cls,
        mask: np.ndarray,
        patient_side: str | None = None,
        patient_frame: list[float] | None = None,
        relation: str | None = None,
    ) -> AnswerFacts:
        """The facts of a (predicted) boolean mask, by pipeline.geometry.facts.

        The patient's side is `patient_side`, or else derived from the mask and the row's
        `patient_frame` column as the build derives it (None where neither is given).
        `relation` may come from pipeline.geometry.relations.relation(mask, other_mask).
        """
        facts, instances = analyse(as_mask(mask))
        if not facts.present:
            return cls()
        if patient_side is None and patient_frame is not None:
            patient_side = instances_side(instances, PatientFrame.from_row(patient_frame))
        return cls(
            zone=facts.zone,
            quadrant=facts.quadrant,
            size=facts.size,
            n_components=facts.n_components,
            zones=tuple(sorted(location_zones(facts), key=ZONES.index)),
            prsmed_position=facts.prsmed_position,
            patient_side=patient_side,
            present=True,
            relation=relation,
        )

    @classmethod
    def from_row(cls, row: Row) -> AnswerFacts:
        """The row's own (true) facts, from its columns."""
        n = row["n_components"] or 0
        if n == 0:
            return cls()
        zones = {row["zone"]} if n == 1 else {c["zone"] for c in row["components"]}
        return cls(
            zone=row["zone"],
            quadrant=row["quadrant"],
            size=row["size"],
            n_components=n,
            zones=tuple(sorted(zones, key=ZONES.index)),
            prsmed_position=row["prsmed_position"],
            patient_side=row["patient_side"],
            present=True,
            relation=(row.get("relation") or {}).get("kind"),
        )


# --- scoring -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Reading:
    """Every fact the parser reads in an answer (names blanked)."""

    zones: list[str]
    quadrants: list[str]
    sizes: list[str]
    numbers: list[int]
    sides: list[str]
    prsmed: list[str]
    yes_no: str | None
    letters: list[str]
    absent: bool

    @classmethod
    def of(cls, text: str) -> _Reading:
        return cls(
            zones=factcheck.zones_in(text),
            quadrants=factcheck.quadrants_in(text),
            sizes=factcheck.sizes_in(text),
            numbers=factcheck.numbers_in(text),
            sides=factcheck.sides_in(text),
            prsmed=factcheck.prsmed_in(text),
            yes_no=factcheck.yes_no_in(text),
            letters=factcheck.letters_in(text),
            absent=factcheck.says_absent(text),
        )


def _blank(text: str, names: list[str]) -> str:
    """The text with each name blanked, longest first (so "lung nodule" goes before "lung")."""
    for name in sorted(filter(None, names), key=len, reverse=True):
        text = factcheck.without_names(text, name)
    return text


def _names(text: str, name: str, target: str) -> bool:
    """Whether the text names `name` other than as part of the target's own name."""
    if target and target.lower() not in name.lower():
        text = factcheck.without_names(text, target)
    return name.lower() in text.lower()


def _true_extras(row: Row, truth: AnswerFacts, read: _Reading, skip_zones: set[str]) -> bool:
    """Whether every zone, quadrant, size and patient side the answer states holds for the
    row (zones in `skip_zones` are not checked: the asked zone, PRS-Med's "center")."""
    quadrants = {truth.quadrant} | {quadrant_of(*c["centroid"]) for c in row["components"] or []}
    return (
        all(z in truth.zones for z in read.zones if z not in skip_zones)
        and all(q in quadrants for q in read.quadrants)
        and all(s == truth.size for s in read.sizes)
        and all(side == truth.patient_side for side in read.sides)
    )


def _name(row: Row) -> str:
    """The target as the text names it (`target_name`; the source's `target` in builds
    made before readable names)."""
    return row.get("target_name") or row["target"] or ""


def _asked_zone(row: Row) -> str:
    """The one zone a verification (or referring) question names."""
    asked = factcheck.zones_in(
        factcheck.without_names(row["question"], row["target"], row.get("target_name"))
    )
    if len(asked) != 1:
        raise ValueError(f"{_label(row)}: the question names zones {asked}, not exactly one")
    return asked[0]


def _relation(row: Row) -> tuple[str, str]:
    relation = row.get("relation")
    if (
        not relation
        or not relation.get("target")
        or relation.get("kind")
        not in (
            "inside",
            "outside",
        )
    ):
        raise ValueError(f"{_label(row)}: a relation row without its relation {relation!r}")
    return relation.get("name") or relation["target"], relation["kind"]


def _options(row: Row) -> list[str]:
    options = row.get("options")
    if not options or len(options) != len(LETTERS):
        raise ValueError(f"{_label(row)}: a multiple-choice row needs {len(LETTERS)} options")
    return list(options)


def score_answer(row: Row, answer: str) -> bool:
    """Whether an answer is right for its row, read with pipeline.qa.factcheck.

    The fact the question asks must be stated and equal the row's; every other zone,
    quadrant, size and patient side the answer states must hold for the row too (an
    answer that contradicts itself states a false fact). An answer with no readable fact
    for its question is wrong. Per question type:

    - position: the set of zones stated equals the row's location zones (its zone for
      one instance, each instance's zone for several);
    - prsmed: the PRS-Med words stated equal the row's `prsmed_position`;
    - multiple_choice: the letters named are exactly the letter of the row's zone in its
      options;
    - verification: yes/no equals whether the zone asked (read from the question) is one
      of the row's location zones;
    - count / size / laterality: every count / size / side of the patient stated equals
      the row's (`n_components`, `size`, `patient_side`), and at least one is stated;
    - relation: for a yes/no question (it names the other structure), yes/no equals
      whether the target lies inside it; for "within which structure" questions, the
      answer names the container (the row's relation is "inside") and does not say no;
    - negative: the answer says the target is absent (a negation, no opening "yes") and
      states no zone, quadrant, PRS-Med position, size, side or count above zero.

    Referring rows are scored by the Dice of the instance mask (the row's mask), not by
    text: they raise ValueError here, as do unknown question types and malformed rows.
    """
    kind = row["question_type"]
    if kind == "referring":
        raise ValueError(f"{_label(row)}: referring rows are scored by the Dice of their mask")
    scorer = _SCORERS.get(kind)
    if scorer is None:
        raise ValueError(f"{_label(row)}: unknown question type {kind!r}")
    other = _relation(row)[0] if kind == "relation" else ""
    read = _Reading.of(_blank(answer, [row["target"] or "", _name(row), other]))
    truth = AnswerFacts.from_row(row)
    if not scorer(row, truth, read, answer):
        return False
    if kind == "negative":
        return True
    skip: set[str] = set()  # zones stated that need not be the target's
    if kind == "prsmed":
        skip = {"center"}  # a PRS-Med word too: its box holds the image centre
    elif kind == "verification":
        skip = {_asked_zone(row)}  # "no, not in the upper left" restates the zone asked
    return _true_extras(row, truth, read, skip)


def _position(row: Row, truth: AnswerFacts, read: _Reading, answer: str) -> bool:
    return bool(read.zones) and set(read.zones) == set(truth.zones)


def _prsmed(row: Row, truth: AnswerFacts, read: _Reading, answer: str) -> bool:
    return set(read.prsmed) == {truth.prsmed_position}


def _multiple_choice(row: Row, truth: AnswerFacts, read: _Reading, answer: str) -> bool:
    options = _options(row)
    if truth.zone not in options:
        raise ValueError(f"{_label(row)}: its zone {truth.zone!r} is not among {options}")
    return set(read.letters) == {LETTERS[options.index(truth.zone)]}


def _verification(row: Row, truth: AnswerFacts, read: _Reading, answer: str) -> bool:
    asked = _asked_zone(row)
    return read.yes_no is not None and (read.yes_no == "yes") == (asked in truth.zones)


def _count(row: Row, truth: AnswerFacts, read: _Reading, answer: str) -> bool:
    return bool(read.numbers) and all(n == truth.n_components for n in read.numbers)


def _size(row: Row, truth: AnswerFacts, read: _Reading, answer: str) -> bool:
    return bool(read.sizes)  # each one is checked against the row's with the other facts


def _laterality(row: Row, truth: AnswerFacts, read: _Reading, answer: str) -> bool:
    return bool(read.sides)


def _relation_answer(row: Row, truth: AnswerFacts, read: _Reading, answer: str) -> bool:
    other, kind = _relation(row)
    if _names(row["question"], other, _name(row)):  # "is it inside the <other>?"
        return read.yes_no is not None and (read.yes_no == "yes") == (kind == "inside")
    return kind == "inside" and read.yes_no != "no" and _names(answer, other, _name(row))


def _negative(row: Row, truth: AnswerFacts, read: _Reading, answer: str) -> bool:
    stated = read.zones or read.quadrants or read.prsmed or read.sizes or read.sides
    return read.absent and read.yes_no != "yes" and not stated and not any(read.numbers)


_SCORERS = {
    "position": _position,
    "prsmed": _prsmed,
    "multiple_choice": _multiple_choice,
    "verification": _verification,
    "count": _count,
    "size": _size,
    "laterality": _laterality,
    "relation": _relation_answer,
    "negative": _negative,
}


# --- rendering -----------------------------------------------------------------------


def _zones_text(zones: tuple[str, ...]) -> str | None:
    """ "the center", "the center and the lower left", "the a, the b and the c"."""
    named = [f"the {zone}" for zone in zones]
    if not named:
        return None
    return named[0] if len(named) == 1 else ", ".join(named[:-1]) + " and " + named[-1]


def _context(row: Row, facts: AnswerFacts) -> dict[str, Any]:
    """The template variables: the system's facts, and the row's question-specific inputs
    (the zone asked, the options, the zone referred to, the other structure)."""
    n = facts.n_components
    context: dict[str, Any] = {
        "target": _name(row),
        "modality": row["modality"],
        "image_noun": IMAGE_NOUNS[row["modality"]],
        "zone": facts.zone,
        "quadrant": facts.quadrant,
        "size": facts.size,
        "n_components": n,
        "count_word": NUMBER_WORDS[n] if n < len(NUMBER_WORDS) else str(n),
        "zones_text": _zones_text(facts.zones),
        "prsmed_position": facts.prsmed_position,
        "patient_side": facts.patient_side if facts.present else None,
    }
    kind = row["question_type"]
    if kind == "verification":
        asked = _asked_zone(row)
        context |= {"asked_zone": asked, "truth": asked in facts.zones}
    elif kind == "referring":
        context["ref_zone"] = _asked_zone(row)
    elif kind == "multiple_choice":
        options = _options(row)
        text = " ".join(f"({letter}) {o}" for letter, o in zip(LETTERS, options, strict=True))
        letter = LETTERS[options.index(facts.zone)] if facts.zone in options else None
        context |= {"options_text": text, "answer_letter": letter}
    elif kind == "relation":
        context |= {"other": _relation(row)[0], "relation": facts.relation}
    return context


def _candidates(templates: TemplateSet, family: str, own_id: str | None) -> list[Template]:
    """The family's templates: the row's own first, then the others by id."""
    family_templates = templates.by_family.get(family, ())
    own = [t for t in family_templates if t.id == own_id]
    return own + sorted((t for t in family_templates if t.id != own_id), key=lambda t: t.id)


def render_answer(row: Row, facts: AnswerFacts, templates: TemplateSet) -> str:
    """The answer the row's own template (`template_id`) gives with these facts.

    The facts fill the template's fact variables; the row gives its question-specific
    inputs (the zone asked, read from the question; the options, with the letter of the
    facts' zone among them; the zone referred to; the relation's other structure; the kind
    of relation is the facts', not the row's). Where the row's template does not apply to
    these facts, the first applicable template of the same family by id; where the facts
    say absent, the row's own template if it is a negative one, else the first applicable
    negative template; where they say present on a negative row, the first applicable
    position template. "" where no template applies (a relation kind the facts do not
    know, a multiple choice whose options lack the facts' zone): such an answer states
    nothing and scores as wrong.
    """
    context = _context(row, facts)
    family = row["question_type"]
    if not facts.present:
        family = "negative"
    elif family == "negative":
        family = "position"  # the system sees the target: it says where
    for template in _candidates(templates, family, row.get("template_id")):
        if template.applies(context):
            return template.answer.render(context)
    return ""


def consistent(answer: str, pred_mask: np.ndarray, *names: str | None) -> bool:
    """Whether the zones an answer states equal the location zones of a predicted mask.

    An empty prediction is consistent only with an answer that states no zone. The
    target's `names` are blanked from the answer first (a name may hold zone words).
    """
    stated = set(factcheck.zones_in(factcheck.without_names(answer, *names)))
    facts = analyse(as_mask(pred_mask))[0]
    return stated == (location_zones(facts) if facts.present else set())
