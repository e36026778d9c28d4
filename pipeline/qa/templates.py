"""Question/answer rows from Jinja2 templates (templates/<family>.yaml).

Each family plans the questions it asks about one target (which zone to ask about, which
options to offer, which component to refer to) with a random generator seeded by
(seed, image, target, family), so the same inputs and seed give identical rows. A template
is eligible only when every variable it uses has a value: no template can state a fact that
is null for the row.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import jinja2
import jinja2.meta
import numpy as np
import yaml

from ..geometry.facts import ZONES, Facts, Instance, compute_facts
from ..geometry.patient import PatientFrame, instances_side
from .names import side_for, text_name

FAMILIES = (
    "position",
    "multiple_choice",
    "verification",
    "count",
    "size",
    "referring",
    "prsmed",
    "laterality",
    "relation",
    "negative",
)
# Families a custom templates folder may leave out (made before they existed): their
# questions are then not asked.
OPTIONAL = ("laterality", "relation")
LETTERS = ("A", "B", "C", "D")
IMAGE_NOUNS = {
    "ct": "CT image",
    "mri": "MRI image",
    "xray": "X-ray image",
    "ultrasound": "ultrasound image",
    "endoscopy": "endoscopic image",
    "dermoscopy": "dermoscopic image",
}
NUMBER_WORDS = (
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
    "twenty",
)


def default_templates_dir() -> Path:
    """The project's templates/: beside the package in a checkout, inside it when installed."""
    package = Path(__file__).resolve().parents[1]
    checkout = package.parent / "templates"
    return checkout if checkout.is_dir() else package / "templates"


@dataclass(frozen=True)
class Template:
    id: str
    family: str
    question: jinja2.Template
    answer: jinja2.Template
    when: Any  # compiled Jinja2 expression or None
    when_variables: tuple[str, ...]
    variables: frozenset[str]
    _verdicts: dict = field(default_factory=dict, compare=False, repr=False)

    def applies(self, context: dict[str, Any]) -> bool:
        """True when every variable has a value and `when` holds (memoised on its inputs)."""
        if any(context.get(name) is None for name in self.variables):
            return False
        if self.when is None:
            return True
        key = tuple(context[name] for name in self.when_variables)
        try:
            return self._verdicts[key]
        except TypeError:  # unhashable inputs: evaluate every time
            return bool(self.when(**context))
        except KeyError:
            verdict = self._verdicts[key] = bool(self.when(**context))
            return verdict


@dataclass(frozen=True)
class TemplateSet:
    by_family: dict[str, tuple[Template, ...]]
    digest: str  # content hash of every template file, recorded in the manifest

    def count(self) -> int:
        return sum(len(t) for t in self.by_family.values())


_COMPILED: dict[str, TemplateSet] = {}  # by content digest: each set is compiled once


# libyaml's safe loader where PyYAML was built with it (its wheels are): the templates
# parse in a tenth of the time.
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_templates(directory: Path | None = None) -> TemplateSet:
    """Load and compile every templates/<family>.yaml; errors name the file and template.

    Compiled sets are kept by the digest of the files' content, so loading the same
    templates again in one process only reads them.
    """
    directory = directory or default_templates_dir()
    texts, digest = _read_templates(directory)
    if digest not in _COMPILED:
        _COMPILED[digest] = _compile(directory, texts, digest)
    return _COMPILED[digest]


def templates_digest(directory: Path | None = None) -> str:
    """The digest of the templates load_templates(directory) gives, without compiling them."""
    return _read_templates(directory or default_templates_dir())[1]


def _read_templates(directory: Path) -> tuple[list[tuple[Path, str]], str]:
    """Each templates file with its text, and the digest of their names and texts."""
    files = sorted(directory.glob("*.yaml"))
    if not files:
        raise FileNotFoundError(f"no QA templates (*.yaml) in {directory}")
    texts = [(path, path.read_text()) for path in files]
    digest = hashlib.sha256()
    for path, text in texts:
        digest.update(path.name.encode() + b"\0" + text.encode())
    return texts, digest.hexdigest()


def _compile(directory: Path, texts: list[tuple[Path, str]], digest: str) -> TemplateSet:
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False)
    by_family: dict[str, list[Template]] = {family: [] for family in FAMILIES}
    seen: set[str] = set()
    for path, text in texts:
        data = yaml.load(text, Loader=SAFE_LOADER)
        family = data.get("family")
        if family not in by_family:
            raise ValueError(f"{path}: unknown family {family!r} (expected one of {FAMILIES})")
        for entry in data.get("templates", []):
            template_id = entry.get("id")
            if not template_id or template_id in seen:
                raise ValueError(f"{path}: missing or duplicate template id {template_id!r}")
            seen.add(template_id)
            try:
                # Parsed once: for the variables it names and to compile.
                question, answer = env.parse(entry["question"]), env.parse(entry["answer"])
                when = entry.get("when")
                when_variables: set[str] = set()
                if when:
                    when_variables = jinja2.meta.find_undeclared_variables(
                        env.parse(f"{{{{ {when} }}}}")
                    )
                variables = set(when_variables)
                for parsed in (question, answer):
                    variables |= jinja2.meta.find_undeclared_variables(parsed)
                by_family[family].append(
                    Template(
                        id=template_id,
                        family=family,
                        question=env.from_string(question),
                        answer=env.from_string(answer),
                        when=env.compile_expression(when) if when else None,
                        when_variables=tuple(sorted(when_variables)),
                        variables=frozenset(variables),
                    )
                )
            except (KeyError, jinja2.TemplateError) as exc:
                raise ValueError(f"{path}: template {template_id}: {exc}") from exc
    empty = [f for f, templates in by_family.items() if not templates and f not in OPTIONAL]
    if empty:
        raise ValueError(f"{directory}: no templates for famil(ies) {', '.join(empty)}")
    return TemplateSet({k: tuple(v) for k, v in by_family.items()}, digest)


@dataclass(frozen=True)
class QA:
    """One rendered question about one target.

    mask and facts are None when the row is about the whole target; a referring row about
    one instance carries that instance's mask and facts.
    """

    question_type: str
    template_id: str
    question: str
    answer: str
    options: list[str] | None = None
    mask: np.ndarray | None = field(default=None, compare=False)
    facts: Facts | None = field(default=None, compare=False)
    patient_side: str | None = None  # of the row's mask (the instance's, for one instance)
    relation: tuple[str, str] | None = None  # (other target, "inside" | "outside")


def location_zones(facts: Facts) -> set[str]:
    """Zones where a target lies: its zone, or each instance's zone when it has several."""
    if facts.n_components == 1:
        return {facts.zone}
    return {component.zone for component in facts.components}


def _rng(seed: int, image_id: str, target: str, family: str) -> random.Random:
    key = f"{seed}|{image_id}|{target}|{family}".encode()
    return random.Random(int.from_bytes(hashlib.sha256(key).digest()[:8], "big"))


def _join(words: list[str]) -> str:
    words = [f"the {w}" for w in words]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def base_context(
    facts: Facts, target: str, modality: str, patient_side: str | None = None
) -> dict[str, Any]:
    """Variables every template may use; None where the fact is null for this row."""
    zones = sorted(location_zones(facts), key=ZONES.index) if facts.present else []
    n = facts.n_components
    return {
        "target": target,
        "modality": modality,
        "image_noun": IMAGE_NOUNS[modality],
        "zone": facts.zone,
        "quadrant": facts.quadrant,
        "size": facts.size,
        "n_components": n,
        "count_word": NUMBER_WORDS[n] if n < len(NUMBER_WORDS) else str(n),
        "zones_text": _join(zones) if zones else None,
        "prsmed_position": facts.prsmed_position,
        "patient_side": patient_side,  # None where the patient frame is unknown
    }


def _render(template: Template, context: dict[str, Any]) -> tuple[str, str]:
    return template.question.render(context), template.answer.render(context)


class QAPlanner:
    """Plans and renders the QA rows of one target in one image."""

    def __init__(self, templates: TemplateSet, seed: int) -> None:
        self.templates = templates
        self.seed = seed

    def _pick(self, rng: random.Random, family: str, context: dict[str, Any]) -> Template | None:
        eligible = [t for t in self.templates.by_family[family] if t.applies(context)]
        return rng.choice(eligible) if eligible else None

    def _one(
        self, rng: random.Random, family: str, context: dict[str, Any], **kwargs: Any
    ) -> Iterator[QA]:
        template = self._pick(rng, family, context)
        if template is not None:
            question, answer = _render(template, context)
            yield QA(family, template.id, question, answer, **kwargs)

    def plan(
        self,
        facts: Facts,
        target: str,
        modality: str,
        image_id: str,
        instances: list[Instance],
        patient_side: str | None = None,
        frame: PatientFrame | None = None,
        relations: tuple[tuple[str, str], ...] = (),
        display_names: Mapping[str, str] | None = None,
    ) -> list[QA]:
        """Every QA row for one target (negative rows when the target is absent).

        `patient_side` is the target's side of the patient; `frame` gives an instance's;
        `relations` are (other target, "inside" | "outside") pairs to ask about. The text
        names structures by qa/names.text_name (`display_names` first); QA.relation keeps
        the source's name.
        """
        name = text_name(target, display_names)
        context = base_context(facts, name, modality, patient_side if facts.present else None)

        def rng(family: str) -> random.Random:
            return _rng(self.seed, image_id, target, family)

        if not facts.present:
            return self._negative(rng("negative"), context)
        rows: list[QA] = []
        for family in ("position", "count", "size", "prsmed", "laterality"):
            rows += self._one(rng(family), family, context)
        rows += self._multiple_choice(rng("multiple_choice"), facts, context)
        rows += self._verification(rng("verification"), facts, context)
        rows += self._referring(rng("referring"), facts, context, instances, frame)
        for other, kind in relations:
            asked = {**context, "other": text_name(other, display_names), "relation": kind}
            rows += self._one(rng("relation"), "relation", asked, relation=(other, kind))
        side = context["patient_side"]
        return [qa if qa.mask is not None else replace(qa, patient_side=side) for qa in rows]

    def _negative(self, rng: random.Random, context: dict[str, Any]) -> list[QA]:
        eligible = [t for t in self.templates.by_family["negative"] if t.applies(context)]
        chosen = rng.sample(eligible, k=min(2, len(eligible)))
        return [QA("negative", t.id, *_render(t, context)) for t in chosen]

    def _multiple_choice(
        self, rng: random.Random, facts: Facts, context: dict[str, Any]
    ) -> list[QA]:
        if facts.n_components != 1:
            return []  # one correct zone only exists for a single instance
        distractors = rng.sample([z for z in ZONES if z != facts.zone], k=3)
        options = [facts.zone, *distractors]
        rng.shuffle(options)
        letter = LETTERS[options.index(facts.zone)]
        options_text = " ".join(f"({L}) {o}" for L, o in zip(LETTERS, options, strict=True))
        mc = {**context, "options_text": options_text, "answer_letter": letter}
        return list(self._one(rng, "multiple_choice", mc, options=options))

    def _verification(self, rng: random.Random, facts: Facts, context: dict[str, Any]) -> list[QA]:
        """One true and one false yes/no question per target: balanced by construction."""
        present = sorted(location_zones(facts), key=ZONES.index)
        absent = [z for z in ZONES if z not in present]
        asks = [(rng.choice(present), True)]
        if absent:
            asks.append((rng.choice(absent), False))
        rows: list[QA] = []
        for asked, truth in asks:
            rows += self._one(rng, "verification", {**context, "asked_zone": asked, "truth": truth})
        return rows

    def _referring(
        self,
        rng: random.Random,
        facts: Facts,
        context: dict[str, Any],
        instances: list[Instance],
        frame: PatientFrame | None,
    ) -> list[QA]:
        """Refer to one instance by where it is; the row's mask is that instance only."""
        zones = [c.zone for c in facts.components]
        unique = [i for i, zone in enumerate(zones) if zones.count(zone) == 1]
        if not unique:
            return []  # no instance can be named by its zone alone
        if facts.n_components == 1:
            return list(self._one(rng, "referring", {**context, "ref_zone": facts.zone}))
        index = rng.choice(unique)
        mask = instances[index].full()
        instance = compute_facts(mask)
        side = side_for(context["target"], instances_side([instances[index]], frame))
        ref = {
            **base_context(instance, context["target"], context["modality"], side),
            "ref_zone": instance.zone,
        }
        return list(self._one(rng, "referring", ref, mask=mask, facts=instance, patient_side=side))
