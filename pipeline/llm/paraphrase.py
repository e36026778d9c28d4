"""The LLM rewrite stage: varied wording that never changes a fact.

Modes: `none` (templates only), `paraphrase` (every row's question and answer rewritten by
the model, one request per distinct pair) and `expand-templates` (the model proposes new
template variants per family once; see expand.py).

`rewrite_batch` reads one render result's Parquet parts, asks the model for each row (the
answer cache first), lets the guard (guard.py) judge each rewrite, and writes new parts
where every row records `rewrite` = {model, status}:

- `accepted`: the rewrite replaced the template text;
- `rejected:<reason>`: the guard refused it (`malformed` when the reply is not the JSON
  asked for) and the template text stays;
- `failed:<error>`: the request failed after its retries ("http-500", "timeout"); template
  text stays;
- `skipped:budget`: the budget was reached, so nothing was asked; template text stays.

A batch with failed or skipped rows is not stored as final: a re-run asks those rows
again (and only those: every answer received is in the cache).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import jinja2
import pyarrow as pa

from ..geometry.facts import FACT_COLUMNS
from ..qa import factcheck
from ..qa.factcheck import prsmed_in, quadrants_in, sizes_in, zones_in
from ..qa.templates import default_templates_dir
from ..schema import REWRITE
from ..shards import writer
from ..shards.parts import Part, RenderResult
from ..store import (
    atomic_pickle,
    cache_key,
    code_digest,
    file_digest,
    place_folder,
    private_name,
    stored_result,
    verified,
)
from . import cache as llm_cache
from . import guard
from .cache import AnswerCache, answer_key
from .client import BudgetExhausted, LLMClient, LLMFailure, LLMSettings

MODES = ("none", "paraphrase", "expand-templates")
REWRITE_CODE = (guard, factcheck, llm_cache, writer)
_JSON_OBJECT = re.compile(r"\{.*\}", re.DOTALL)


def prompts_dir() -> Path:
    return default_templates_dir() / "prompts"


@dataclass(frozen=True)
class Prompt:
    """A Jinja2 prompt of templates/prompts/; its version is the digest of its text."""

    name: str
    version: str
    template: jinja2.Template = field(compare=False, repr=False)

    def render(self, **variables: Any) -> str:
        return self.template.render(**variables).strip()


def load_prompt(name: str, directory: Path | None = None) -> Prompt:
    path = (directory or prompts_dir()) / f"{name}.j2"
    if not path.is_file():
        raise FileNotFoundError(f"prompt template {path} not found")
    text = path.read_text()
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False)
    version = hashlib.sha256(text.encode()).hexdigest()[:16]
    return Prompt(name, version, env.from_string(text))


@dataclass(frozen=True)
class RewriteConfig:
    """What a build asks the LLM to do (no secret: the key is never part of it)."""

    mode: str
    llm: LLMSettings
    variants: int = 2  # expand-templates: new variants asked per existing template

    def __post_init__(self) -> None:
        if self.mode not in MODES[1:]:
            raise ValueError(f"unknown rewrite mode {self.mode!r} (expected one of {MODES})")
        if self.variants < 1:
            raise ValueError(f"variants must be >= 1, got {self.variants}")

    def describe(self) -> dict[str, Any]:
        """The settings that decide the output (recorded in the manifest)."""
        s = self.llm
        return {
            "mode": self.mode,
            "model": s.model,
            "temperature": s.temperature,
            "max_tokens": s.max_tokens,
            "prompt_version": load_prompt(_PROMPT[self.mode]).version,
            **({"variants": self.variants} if self.mode == "expand-templates" else {}),
        }


_PROMPT = {"paraphrase": "paraphrase", "expand-templates": "expand"}


# -- the build's LLM session: one client and cache per build, shared by its threads ------

_SESSIONS: dict[str, Session] = {}


@dataclass
class Session:
    id: str
    client: LLMClient
    caches: dict[Path, AnswerCache] = field(default_factory=dict)

    def cache(self, store: Path) -> AnswerCache:
        folder = store / "llm"
        return self.caches.setdefault(folder, AnswerCache(folder))


def session(session_id: str) -> Session:
    try:
        return _SESSIONS[session_id]
    except KeyError:
        raise RuntimeError(
            "no LLM session in this process: LLM stages run on threads of the build's process"
        ) from None


@contextmanager
def open_session(settings: LLMSettings, api_key: str | None = None) -> Iterator[Session]:
    """A client for one build (key from api_key or OPENAI_API_KEY), closed at the end."""
    opened = Session(uuid.uuid4().hex, LLMClient(settings, api_key))
    _SESSIONS[opened.id] = opened
    try:
        yield opened
    finally:
        del _SESSIONS[opened.id]
        opened.client.close()


def ask(sess: Session, store: Path, prompt: Prompt, text: str) -> tuple[str, bool]:
    """The model's reply to a rendered prompt, from the cache when it was asked before."""
    model = sess.client.settings.model
    key = answer_key(model, prompt.version, text)
    reply, hit = sess.cache(store).get_or_ask(
        key, model, prompt.version, lambda: sess.client.complete(text)
    )
    if hit:
        sess.client.count_cache_hit()
    return reply, hit


def parse_json_reply(text: str) -> dict[str, Any] | None:
    """The JSON object of a reply (code fences and chatter around it tolerated)."""
    found = _JSON_OBJECT.search(text)
    if found is None:
        return None
    try:
        value = json.loads(found.group(0))
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


# -- paraphrase ------------------------------------------------------------------------------


def protected_phrases(question: str, answer: str, target: str) -> list[str]:
    """The phrases a paraphrase must copy exactly: target, positions, sizes, counts, options."""
    found = [target] if target else []
    for text in (question, answer):
        lower = text.lower()
        found += zones_in(text) + [f"{q} quadrant" for q in quadrants_in(text)]
        found += prsmed_in(text) + sizes_in(text) + factcheck._NUMBER.findall(lower)
        found += [m.group(0) for m in guard._OPTION.finditer(text)]
    return list(dict.fromkeys(found))


def paraphrase_prompt(prompt: Prompt, row: dict[str, Any]) -> str:
    pair = {"question": row["question"], "answer": row["answer"]}
    name = row.get("target_name") or row["target"]  # the name the text uses
    return prompt.render(
        question_type=row["question_type"],
        target=name,
        keep=protected_phrases(row["question"], row["answer"], name),
        input=json.dumps(pair, ensure_ascii=False),
    )


def judge(row: dict[str, Any], reply: str) -> tuple[str, str, str]:
    """(question, answer, status) of a row given the model's reply."""
    parsed = parse_json_reply(reply)
    question = parsed.get("question") if parsed else None
    answer = parsed.get("answer") if parsed else None
    if not isinstance(question, str) or not isinstance(answer, str):
        return row["question"], row["answer"], "rejected:malformed"
    question, answer = question.strip(), answer.strip()
    reason = guard.row_problem(row, question, answer)
    if reason is not None:
        return row["question"], row["answer"], f"rejected:{reason}"
    return question, answer, "accepted"


@dataclass(frozen=True)
class RewriteJob:
    render: RenderResult
    config: RewriteConfig
    prompt_version: str
    store: Path
    session: str = field(compare=False)  # the build's LLM session; not part of the key

    @cached_property
    def key(self) -> str:
        """The render key + model and request settings + prompt version + guard code."""
        s = self.config.llm
        settings = (s.model, s.temperature, s.max_tokens, self.prompt_version)
        return cache_key("rewrite", code_digest(REWRITE_CODE), self.render.key, settings)

    def parts(self, key: str) -> Path:
        return self.store / "rewrite" / key

    def result(self, key: str) -> Path:
        """Written only when no row failed or was skipped: only then is the batch final."""
        return self.parts(key) / "result.pkl"


@dataclass(frozen=True)
class RewriteResult:
    key: str
    parts: tuple[Part, ...]
    statuses: Counter
    final: bool


_CONTEXT = (
    "question",
    "answer",
    "question_type",
    "options",
    "target",
    "target_name",
    "patient_side",
    "relation",
)


def _rewrite_rows(
    sess: Session, store: Path, prompt: Prompt, rows: list[dict[str, Any]]
) -> list[tuple[str, str, str]]:
    """(question, answer, status) per row; each distinct prompt is asked once."""
    texts = [paraphrase_prompt(prompt, row) for row in rows]
    replies: dict[str, str] = {}
    failures: dict[str, str] = {}
    cache = sess.cache(store)
    model = sess.client.settings.model
    missing = []
    for text in dict.fromkeys(texts):  # cached replies first, without a thread hop
        found = cache.get(answer_key(model, prompt.version, text))
        if found is None:
            missing.append(text)
        else:
            replies[text] = found
            sess.client.count_cache_hit()

    def one(text: str) -> None:
        try:
            replies[text] = ask(sess, store, prompt, text)[0]
        except BudgetExhausted:
            failures[text] = "skipped:budget"
        except LLMFailure as exc:
            failures[text] = f"failed:{exc.code}"

    if missing:
        with ThreadPoolExecutor(sess.client.settings.concurrency) as pool:
            list(pool.map(one, missing))
    out = []
    for row, text in zip(rows, texts, strict=True):
        if text in failures:
            out.append((row["question"], row["answer"], failures[text]))
        else:
            out.append(judge(row, replies[text]))
    return out


def _stored_rewrite(job: RewriteJob, key: str) -> RewriteResult | None:
    """The batch's final stored result, each part checked against its content hash."""
    stored = stored_result(job.result(key), job.store)
    if isinstance(stored, RewriteResult) and all(verified(p.path, p.sha256) for p in stored.parts):
        return stored
    return None


def rewrite_batch(job: RewriteJob) -> RewriteResult:
    """Paraphrase every row of one render result (see the module docstring)."""
    key = job.key
    stored = _stored_rewrite(job, key)
    if stored is not None:
        return stored
    sess = session(job.session)
    prompt = load_prompt("paraphrase")
    if prompt.version != job.prompt_version:
        raise RuntimeError(f"prompt {prompt.name} changed during the build")
    folder = job.parts(key)
    staging = private_name(folder)
    staging.mkdir(parents=True)
    statuses: Counter = Counter()
    parts = []
    model = job.config.llm.model
    try:
        # Every row of the batch first (text columns only), so one pool keeps every slot busy.
        sources = [list(writer.read_part(part.path)) for part in job.render.parts]
        context = list(_CONTEXT + FACT_COLUMNS)
        rows = [row for groups in sources for group in groups
                for row in group.select(context).to_pylist()]  # fmt: skip
        done = iter(_rewrite_rows(sess, job.store, prompt, rows))
        for part, groups in zip(job.render.parts, sources, strict=True):
            rewritten = []
            for table in groups:
                group = [next(done) for _ in range(len(table))]
                statuses.update(status for _, _, status in group)
                columns = {
                    "question": pa.array([q for q, _, _ in group], pa.string()),
                    "answer": pa.array([a for _, a, _ in group], pa.string()),
                    "rewrite": pa.array(
                        [{"model": model, "status": s} for _, _, s in group], REWRITE
                    ),
                }
                for name, values in columns.items():
                    at = table.schema.get_field_index(name)
                    table = table.set_column(at, table.schema.field(at), values)
                rewritten.append(table)
            target = staging / part.path.name
            writer.write_part(target, rewritten)  # the same groups: the images stay in place
            sha256 = file_digest(target)
            parts.append(replace(part, path=folder / target.name, sha256=sha256, checks=None))
        final = not any(s.startswith(("failed:", "skipped:")) for s in statuses)
        result = RewriteResult(key, tuple(parts), statuses, final)
        if final:
            atomic_pickle(result, staging / "result.pkl", job.store)
        # the whole batch appears at once; another build's, when it stored it first
        result = place_folder(staging, folder, lambda: _stored_rewrite(job, key)) or result
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return result


def rewrite_config(
    mode: str = "none",
    model: str | None = None,
    base_url: str | None = None,
    concurrency: int = 8,
    rate_limit: float | None = None,
    timeout: float = 60.0,
    retries: int = 5,
    price_in: float = 0.0,
    price_out: float = 0.0,
    budget: float | None = None,
    budget_tokens: int | None = None,
    variants: int = 2,
) -> RewriteConfig | None:
    """The build's RewriteConfig from CLI flags / flow parameters (None for mode "none")."""
    if mode not in MODES:
        raise ValueError(f"unknown rewrite mode {mode!r} (expected one of {', '.join(MODES)})")
    if mode == "none":
        return None
    if not model:
        raise ValueError(f"--rewrite {mode} needs --llm-model")
    settings = LLMSettings(
        model=model,
        base_url=base_url,
        concurrency=concurrency,
        requests_per_minute=rate_limit,
        timeout_s=timeout,
        max_retries=retries,
        price_in=price_in,
        price_out=price_out,
        budget_usd=budget,
        budget_tokens=budget_tokens,
    )
    return RewriteConfig(mode, settings, variants)
