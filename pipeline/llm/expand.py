"""`--rewrite expand-templates`: the LLM proposes new template variants per family, once.

For each family the model sees its templates and proposes variants of each. A variant is
kept only if it uses exactly the placeholders of the template it varies, compiles, renders
on sample facts (single and multi-instance targets in every zone, every size, an absent
target), and the guard (guard.py) reads each rendering back as stating the same facts as
the original template's rendering in the same context, and finds it true. Kept variants
are written to <templates>/generated/<family>.yaml for review; a build in this mode uses
that file as it is (edited or not) and asks the model only for families without one.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import jinja2
import jinja2.meta
import numpy as np
import yaml

from ..geometry import facts as facts_module
from ..geometry.patient import PatientFrame, instances_side
from ..qa import templates as qa
from ..qa.templates import FAMILIES, QAPlanner, Template, TemplateSet
from ..store import (
    atomic_file,
    atomic_pickle,
    cache_key,
    code_digest,
    place_folder,
    private_name,
    stored_result,
)
from . import guard
from .paraphrase import RewriteConfig, ask, load_prompt, parse_json_reply, session

EXPAND_CODE = (guard, qa, facts_module)
GENERATED = "generated"
_ENV = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False)
_SAMPLE_TARGET = "lesion"
_SAMPLE_MODALITY = "endoscopy"


def read_families(directory: Path) -> dict[str, list[dict[str, Any]]]:
    """The template entries of each family in a templates folder (as written in YAML)."""
    entries: dict[str, list[dict[str, Any]]] = {family: [] for family in FAMILIES}
    for path in sorted(directory.glob("*.yaml")):
        data = yaml.safe_load(path.read_text()) or {}
        if data.get("family") in entries:
            entries[data["family"]] += [
                {k: e[k] for k in ("id", "question", "answer", "when") if e.get(k) is not None}
                for e in data.get("templates", [])
            ]
    return entries


def _variables(source: str) -> frozenset[str]:
    return frozenset(jinja2.meta.find_undeclared_variables(_ENV.parse(source)))


def _template(family: str, entry: dict[str, Any]) -> Template:
    """One entry compiled the way qa.load_templates compiles it."""
    when = entry.get("when")
    when_variables = _variables(f"{{{{ {when} }}}}") if when else frozenset()
    return Template(
        id=entry["id"],
        family=family,
        question=_ENV.from_string(entry["question"]),
        answer=_ENV.from_string(entry["answer"]),
        when=_ENV.compile_expression(when) if when else None,
        when_variables=tuple(sorted(when_variables)),
        variables=when_variables | _variables(entry["question"]) | _variables(entry["answer"]),
    )


def _blob(mask: np.ndarray, x: float, y: float, radius: float) -> None:
    height, width = mask.shape
    rows, cols = np.ogrid[:height, :width]
    mask |= (rows + 0.5 - y * height) ** 2 + (cols + 0.5 - x * width) ** 2 <= radius**2


def sample_masks(size: int = 60) -> list[np.ndarray]:
    """Targets with known geometry: one blob per zone and size, several instances, none."""
    masks = []
    centres = (1 / 6, 1 / 2, 5 / 6)
    for index, (y, x) in enumerate((y, x) for y in centres for x in centres):
        mask = np.zeros((size, size), dtype=bool)
        _blob(mask, x, y, (2, 4, 7, 9)[index % 4])
        masks.append(mask)
    for blobs in (((0.15, 0.15), (0.85, 0.85)), ((0.2, 0.8), (0.5, 0.5), (0.8, 0.2))):
        mask = np.zeros((size, size), dtype=bool)
        for x, y in blobs:
            _blob(mask, x, y, 5)
        masks.append(mask)
    large = np.zeros((size, size), dtype=bool)
    _blob(large, 0.5, 0.5, 25)
    return [*masks, large, np.zeros((size, size), dtype=bool)]


# The patient's midline at column 30 of the 60-pixel samples (left on the image's right).
_SAMPLE_FRAME = PatientFrame(1.0, 0.0, -30.0, 2.0)
_SAMPLE_OTHER = "sample organ"


def sample_cases() -> list[tuple[np.ndarray, PatientFrame | None, tuple[tuple[str, str], ...]]]:
    """Every sample mask without a patient frame, then with one and with a relation
    (inside and outside in turn), so laterality and relation templates render too."""
    masks = sample_masks()
    plain = [(mask, None, ()) for mask in masks]
    framed = [
        (mask, _SAMPLE_FRAME, ((_SAMPLE_OTHER, ("inside", "outside")[i % 2]),))
        for i, mask in enumerate(masks)
    ]
    return plain + framed


def _only(family: str, template: Template) -> TemplateSet:
    return TemplateSet({f: (template,) if f == family else () for f in FAMILIES}, "")


def variant_problem(family: str, base: dict[str, Any], variant: dict[str, Any]) -> str | None:
    """Why a proposed variant of `base` cannot be kept; None to keep it."""
    question, answer = variant.get("question"), variant.get("answer")
    if not isinstance(question, str) or not isinstance(answer, str):
        return "malformed"
    try:
        if _variables(question) != _variables(base["question"]) or _variables(answer) != _variables(
            base["answer"]
        ):
            return "placeholders"
        candidate = _template(family, {**base, "question": question, "answer": answer})
    except jinja2.TemplateError:
        return "syntax"
    original = _template(family, base)
    rendered = 0
    for index, (mask, frame, relation) in enumerate(sample_cases()):
        found, instances = facts_module.analyse(mask)
        side = instances_side(instances, frame)
        plans = []
        for template in (original, candidate):
            planner = QAPlanner(_only(family, template), seed=0)
            try:
                plans.append(
                    planner.plan(
                        found,
                        _SAMPLE_TARGET,
                        _SAMPLE_MODALITY,
                        f"s{index}",
                        instances,
                        side,
                        frame,
                        relation,
                    )  # fmt: skip
                )
            except jinja2.TemplateError:
                return "renders"
        for before, after in zip(*plans, strict=True):
            reason = guard.rewrite_problem(
                (before.question, before.answer),
                (after.question, after.answer),
                question_type=family,
                options=after.options,
                facts=after.facts or found,
                target=_SAMPLE_TARGET,
                patient_side=after.patient_side,
                relation=after.relation,
            )
            if reason is not None:
                return reason
            rendered += 1
    return None if rendered else "never-applies"


@dataclass(frozen=True)
class ExpandJob:
    family: str
    templates: tuple[tuple[tuple[str, Any], ...], ...]  # the family's entries, as item tuples
    config: RewriteConfig
    prompt_version: str
    store: Path
    session: str = field(compare=False)

    @cached_property
    def key(self) -> str:
        s = self.config.llm
        settings = (s.model, s.temperature, s.max_tokens, self.prompt_version, self.config.variants)
        return cache_key("expand", code_digest(EXPAND_CODE), self.family, self.templates, settings)

    def result(self, key: str) -> Path:
        return self.store / "expand" / f"{key}.pkl"


@dataclass(frozen=True)
class ExpandResult:
    key: str
    family: str
    kept: tuple[dict[str, Any], ...]
    proposed: int
    rejected: Counter
    error: str | None = None  # a request that failed: nothing kept, ask again next time


def expand_family(job: ExpandJob) -> ExpandResult:
    """Ask the model for variants of one family's templates and keep the ones that hold."""
    from .client import LLMFailure

    key = job.key
    stored = stored_result(job.result(key))
    if isinstance(stored, ExpandResult):
        return stored
    entries = [dict(items) for items in job.templates]
    prompt = load_prompt("expand")
    if prompt.version != job.prompt_version:
        raise RuntimeError(f"prompt {prompt.name} changed during the build")
    text = prompt.render(
        family=job.family,
        variants=job.config.variants,
        templates=json.dumps(entries, indent=1, ensure_ascii=False),
    )
    try:
        reply, _ = ask(session(job.session), job.store, prompt, text)
    except LLMFailure as exc:
        return ExpandResult(key, job.family, (), 0, Counter(), exc.code)
    parsed = parse_json_reply(reply)
    proposals = parsed.get("templates") if parsed else None
    if not isinstance(proposals, list):
        result = ExpandResult(key, job.family, (), 0, Counter({"malformed": 1}))
        atomic_pickle(result, job.result(key))
        return result
    by_id = {entry["id"]: entry for entry in entries}
    kept: list[dict[str, Any]] = []
    rejected: Counter = Counter()
    seen: set[tuple[str, str]] = set()
    for proposal in proposals:
        base = by_id.get(proposal.get("based_on")) if isinstance(proposal, dict) else None
        if base is None:
            rejected["unknown-template"] += 1
            continue
        reason = variant_problem(job.family, base, proposal)
        pair = (proposal.get("question"), proposal.get("answer"))
        if reason is None and (pair in seen or pair == (base["question"], base["answer"])):
            reason = "duplicate"
        if reason is not None:
            rejected[reason] += 1
            continue
        seen.add(pair)
        kept.append(
            {
                "id": f"{job.family}_llm_{len(kept) + 1:02d}",
                "based_on": base["id"],
                **({"when": base["when"]} if "when" in base else {}),
                "question": pair[0],
                "answer": pair[1],
            }
        )
    result = ExpandResult(key, job.family, tuple(kept), len(proposals), rejected)
    atomic_pickle(result, job.result(key))
    return result


def _header(config: RewriteConfig, prompt_version: str) -> str:
    return (
        f"# Template variants proposed by {config.llm.model} (prompt expand {prompt_version})\n"
        "# and kept by the guard: same placeholders as the template they vary, rendered on\n"
        "# sample facts and read back by the fact parser as stating the same, true facts.\n"
        "# Review them: edit or delete entries freely; delete this file to ask the model\n"
        "# again. Builds with --rewrite expand-templates use this file as it is.\n"
    )


def write_generated(path: Path, result: ExpandResult, config: RewriteConfig, version: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    body = yaml.safe_dump(
        {"family": result.family, "templates": list(result.kept)},
        sort_keys=False,
        allow_unicode=True,
        width=1000,
    )
    with atomic_file(path, "w") as handle:
        handle.write(_header(config, version) + body)


def check_generated(path: Path, base: dict[str, list[dict[str, Any]]]) -> int:
    """Re-check a (possibly edited) generated file; returns its template count."""
    data = yaml.safe_load(path.read_text()) or {}
    family = data.get("family")
    if family not in base:
        raise ValueError(f"{path}: unknown family {family!r}")
    by_id = {entry["id"]: entry for entry in base[family]}
    templates = data.get("templates") or []
    for entry in templates:
        origin = by_id.get(entry.get("based_on"))
        if origin is None:
            raise ValueError(f"{path}: template {entry.get('id')}: based_on names no template")
        if entry.get("when") != origin.get("when"):
            raise ValueError(f"{path}: template {entry.get('id')}: `when` differs from its base")
        reason = variant_problem(family, origin, entry)
        if reason is not None:
            raise ValueError(f"{path}: template {entry.get('id')}: rejected by the guard: {reason}")
    return len(templates)


def merged_templates(directory: Path, store: Path) -> Path:
    """A folder holding the templates and their generated variants, for load_templates.

    Content-addressed in the store, so concurrent builds never see a half-written one.
    """
    files = sorted(directory.glob("*.yaml")) + sorted((directory / GENERATED).glob("*.yaml"))
    names = [p.name if p.parent == directory else f"{GENERATED}-{p.name}" for p in files]
    digest = hashlib.sha256()
    for name, path in zip(names, files, strict=True):
        digest.update(name.encode() + b"\0" + path.read_bytes())
    folder = store / "templates" / digest.hexdigest()
    if folder.is_dir():
        return folder
    staging = private_name(folder)
    staging.mkdir(parents=True)
    try:
        for name, path in zip(names, files, strict=True):
            shutil.copyfile(path, staging / name)
        # another build may have put the same folder in place first: renamed whole, it is
        place_folder(staging, folder, lambda: folder if folder.is_dir() else None)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder
