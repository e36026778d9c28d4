"""`mmrs build`: sources -> cases -> batches -> extract -> render -> shards and records.

A batch is rendered as soon as it and every batch before it are extracted: outcomes are
recorded in discovery order, and an image identical to one converted earlier is left out.
The orchestration is written once, here; what runs each batch stage is passed in: a plain
loop (`build`, for library use and tests) or Prefect tasks with caching on a task runner
(flows.py, what `mmrs build` uses). The output is assembled in a staging folder beside
--out and moved into place only when complete, manifest.json last. Every discovered case
ends as converted, skipped or failed; every one not converted is in errors.jsonl with its
file and reason.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tqdm import tqdm

from . import __version__
from .card import render_card
from .extract import SourceMeta
from .facts import MIN_COMPONENT_FRACTION
from .qa import TemplateSet, load_templates
from .rewrite import RewriteConfig
from .rewriting import Rewriting, open_rewriting
from .shardcheck import ShardResult
from .sources.base import Case, Problem, SourceInfo
from .splits import SPLITS, SplitRatios
from .stages import (
    EXTRACT_CODE,
    RENDER_CODE,
    ExtractJob,
    ExtractResult,
    FileIdentity,
    RenderJob,
    RenderResult,
    StageRunner,
    code_digest,
    extract_batch,
    file_digest,
    render_batch,
)
from .stats import Stats

BATCH_SIZE = 256  # cases per extract/render task


class BuildError(RuntimeError):
    """A build that cannot go on (bad arguments, or the first bad case under --strict)."""


@dataclass(frozen=True)
class SourceRequest:
    source: SourceInfo
    data_root: Path


@dataclass(frozen=True)
class BuildConfig:
    sources: tuple[SourceRequest, ...]
    out: Path
    seed: int = 0
    strict: bool = False
    ratios: SplitRatios = SplitRatios()
    templates_dir: Path | None = None
    overwrite: bool = False
    progress: bool = True
    batch_size: int = BATCH_SIZE
    cache_dir: Path | None = None  # None: a temporary store, removed after the build
    rewrite: RewriteConfig | None = None  # LLM rewriting (pipeline/rewrite.py); None: none
    check: bool = True  # render workers check the parts they write (for the final validation)


@dataclass
class SourceCounts:
    discovered: int = 0
    converted: int = 0
    skipped: int = 0
    failed: int = 0
    rows: int = 0


@dataclass
class BuildSummary:
    out: Path
    sources: dict[str, SourceCounts] = field(default_factory=dict)
    stats: Stats = field(default_factory=Stats)  # of every row written
    images: int = 0
    rewrite: dict[str, Any] | None = None  # settings and row statuses (same for same cache)
    llm_usage: dict[str, Any] | None = None  # what this run asked and spent
    # The render workers' checks of the parts written, by (content hash, split): what
    # validate(checked=...) needs to check only shards that changed after render.
    checks: dict[tuple[str, str], ShardResult] = field(default_factory=dict)
    # The parts' content hashes by file identity: what validate(known_hashes=...) needs to
    # hash only shards whose file changed after render.
    hashes: dict[FileIdentity, str] = field(default_factory=dict)

    def as_dict(self, usage: bool = True) -> dict[str, Any]:
        """The summary; usage=False leaves out what differs between a run and its re-run."""
        extra = {"rewrite": self.rewrite} if self.rewrite else {}
        if usage and self.llm_usage is not None:
            extra["llm_usage"] = self.llm_usage
        per_modality_split = self.stats.rows_per_modality_split
        per_split: Counter = Counter()
        for (_, split), rows in per_modality_split.items():
            per_split[split] += rows
        zones: Counter = Counter()
        for (_, zone), rows in self.stats.zones.items():
            zones[zone] += rows
        return {
            "sources": {name: vars(counts) for name, counts in self.sources.items()},
            "images": self.images,
            "rows": self.stats.rows,
            "rows_per_split": {s: per_split[s] for s in SPLITS if per_split[s]},
            "rows_per_modality_split": {
                f"{m}/{s}": n for (m, s), n in sorted(per_modality_split.items())
            },
            "question_types": dict(sorted(self.stats.question_types.items())),
            "zones": dict(sorted(zones.items())),
            **extra,
        }


def inline_runner(progress: bool, desc: str) -> StageRunner:
    """Run a stage's jobs one after another in this process, each when its result is asked
    for, with a progress bar."""

    def run(stage: Callable[[Any], Any], jobs: Iterable[Any]) -> Iterator[Any]:
        return map(stage, tqdm(jobs, desc=desc, unit="batch", disable=not progress))

    return run


def discover(config: BuildConfig) -> Iterator[tuple[SourceRequest, Case | Problem]]:
    """Every case and problem of every source, in a deterministic order, as the sources find
    them (the sources and their data roots are checked at once)."""
    if not config.sources:
        raise BuildError("no source given (use --source NAME_OR_SPEC=DATA_ROOT)")
    names = [r.source.name for r in config.sources]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise BuildError(f"source(s) given twice: {', '.join(duplicates)}")
    for request in config.sources:
        if not request.data_root.exists():
            raise BuildError(
                f"data root {request.data_root} for {request.source.name} does not exist"
            )
    return _found(config.sources)


def _found(requests: Iterable[SourceRequest]) -> Iterator[tuple[SourceRequest, Case | Problem]]:
    for request in requests:
        try:
            for item in request.source.discover(request.data_root):
                yield request, item
        except ValueError as exc:  # LayoutError, SpecError
            raise BuildError(f"{request.source.name}: {exc}") from exc


def parse_source_arg(
    value: str,
    data_root: str | None = None,
    slice_axis: str | None = None,
    slices: str | None = None,
) -> SourceRequest:
    """ "NAME_OR_SPEC=DATA_ROOT" (or NAME_OR_SPEC with data_root) -> a SourceRequest.

    `slice_axis` and `slices` (all, largest[:K], stride[:N]) override a volume source's own.
    """
    from .sources import resolve_source
    from .volume import VolumeError, parse_slice_policy

    name, sep, root = value.partition("=")
    if not sep:
        if data_root is None:
            raise BuildError(
                f"--source {value}: give its data root as --source {value}=DATA_ROOT "
                f"(or --data-root DIR with a single --source)"
            )
        root = data_root
    data_root = Path(root).expanduser()
    try:
        source = resolve_source(name).at(data_root)
    except ValueError as exc:  # an unknown name, a bad spec or dataset.json
        raise BuildError(str(exc)) from exc
    if source.volume is not None and (slice_axis or slices):
        try:
            volume = replace(
                source.volume,
                slice_axis=slice_axis or source.volume.slice_axis,
                slices=parse_slice_policy(slices) if slices else source.volume.slices,
            )
        except VolumeError as exc:
            raise BuildError(str(exc)) from exc
        source = replace(source, volume=volume)
    return SourceRequest(source, data_root)


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def _check_out(config: BuildConfig) -> None:
    out = config.out
    if out.exists() and any(out.iterdir()):
        if not config.overwrite:
            raise BuildError(f"output folder {out} is not empty (pass --overwrite to replace it)")
        if not (out / "manifest.json").is_file():
            raise BuildError(
                f"refusing to overwrite {out}: it is not an MMRS build (no manifest.json)"
            )


def plan_extract(
    discovered: Iterable[tuple[SourceRequest, Case | Problem]],
    batch_size: int,
    store: Path,
    reusable: bool = True,
) -> Iterator[ExtractJob]:
    """Cases in batches of one source each, in discovery order (see ExtractJob.reusable),
    each batch as soon as it is complete."""
    index = 0
    batch: list[Case] = []
    current: SourceRequest | None = None
    for request, item in discovered:
        if not isinstance(item, Case):
            continue
        if batch and (request is not current or len(batch) >= batch_size):
            yield ExtractJob(index, SourceMeta.of(current.source), tuple(batch), store, reusable)
            index += 1
            batch = []
        current = request
        batch.append(item)
    if batch:
        yield ExtractJob(index, SourceMeta.of(current.source), tuple(batch), store, reusable)


class _Records:
    """errors.jsonl and the per-source counts, in discovery order."""

    def __init__(self, config: BuildConfig, path: Path, summary: BuildSummary) -> None:
        self.config, self.summary = config, summary
        self.handle = path.open("w")

    def add(
        self,
        request: SourceRequest,
        status: str,
        case_id: str | None,
        file: Path,
        reason: str | None,
    ) -> None:
        counts = self.summary.sources[request.source.name]
        setattr(counts, status, getattr(counts, status) + 1)
        if status == "converted":
            return
        entry = {
            "source": request.source.name,
            "case_id": case_id,
            "file": _relative(file, request.data_root),
            "status": status,
            "reason": reason,
        }
        self.handle.write(json.dumps(entry, ensure_ascii=False) + "\n")
        if self.config.strict:
            self.handle.close()
            raise BuildError(f"{request.source.name}: {entry['file']}: {reason} (--strict)")


def run_build(
    config: BuildConfig,
    run_extract: StageRunner | None = None,
    run_render: StageRunner | None = None,
    run_rewrite: StageRunner | None = None,
    api_key: str | None = None,
) -> BuildSummary:
    """Discover, extract, render, rewrite (if asked) and assemble a build.

    `api_key` is the LLM key when config.rewrite is set (default: $OPENAI_API_KEY).
    """
    run_extract = run_extract or inline_runner(config.progress, "extract")
    run_render = run_render or inline_runner(config.progress, "render")
    run_rewrite = run_rewrite or inline_runner(config.progress, "rewrite")
    templates = load_templates(config.templates_dir)
    discovered = deque(discover(config))  # consumed by _assemble as it counts them
    _check_out(config)
    config.out.parent.mkdir(parents=True, exist_ok=True)
    # Without a cache, the store sits beside --out so its parts can be hard-linked.
    with (
        tempfile.TemporaryDirectory(
            prefix=f".{config.out.name}.store-", dir=config.out.parent
        ) as scratch,
        open_rewriting(config.rewrite, api_key) as llm,
    ):
        store = config.cache_dir or Path(scratch)
        if llm is not None:  # expand-templates renders with the generated variants too
            config = replace(
                config, templates_dir=llm.templates(config.templates_dir, store, run_rewrite)
            )
            templates = load_templates(config.templates_dir)
        jobs = list(
            plan_extract(discovered, config.batch_size, store, config.cache_dir is not None)
        )
        extracted = run_extract(extract_batch, jobs)
        staging = config.out.parent / f".{config.out.name}.partial"
        if staging.exists():
            shutil.rmtree(staging)
        (staging / "data").mkdir(parents=True)
        try:
            rewrite = None if llm is None else _rewriter(llm, store, run_rewrite)
            summary = _assemble(
                config, staging, templates, discovered, jobs, extracted, run_render, rewrite
            )
            previous = config.out.parent / f".{config.out.name}.previous"
            if config.out.exists():
                config.out.replace(previous)
            staging.replace(config.out)
            if previous.exists():
                shutil.rmtree(previous)
        finally:
            if staging.exists():
                shutil.rmtree(staging)
    return summary


def _rewriter(
    llm: Rewriting, store: Path, run: StageRunner
) -> Callable[[list[RenderResult], BuildSummary], list[RenderResult]]:
    """The rewrite stage between render and assembly; it records its outcome in the summary."""

    def rewrite(rendered: list[RenderResult], summary: BuildSummary) -> list[RenderResult]:
        rendered = llm.paraphrase(rendered, store, run)
        summary.rewrite, summary.llm_usage = llm.report(), llm.usage()
        return rendered

    return rewrite


def build(config: BuildConfig) -> BuildSummary:
    """A whole build in this process, stage by stage (no orchestrator, no cache reuse)."""
    return run_build(config)


def _assemble(
    config: BuildConfig,
    staging: Path,
    templates: TemplateSet,
    discovered: deque[tuple[SourceRequest, Case | Problem]],
    jobs: list[ExtractJob],
    extracted: Iterable[ExtractResult],
    run_render: StageRunner,
    rewrite: Callable[[list[RenderResult], BuildSummary], list[RenderResult]] | None = None,
) -> BuildSummary:
    summary = BuildSummary(config.out)
    for request in config.sources:
        summary.sources[request.source.name] = SourceCounts()
    records = _Records(config, staging / "errors.jsonl", summary)
    owner: dict[str, str] = {}  # image_id -> source/case that converted it first

    def reach(case: Case | None) -> SourceRequest | None:
        """Count discovered items up to `case` (to the end for None), recording the
        problems met on the way; returns the case's request. Each item is let go once
        counted (a build of many cases holds only those not yet counted)."""
        while discovered:
            request, item = discovered.popleft()
            summary.sources[request.source.name].discovered += 1
            if item is case:
                return request
            records.add(request, "skipped", item.case_id, item.file, item.reason)
        return None

    def record(job: ExtractJob, result: ExtractResult) -> frozenset[str]:
        """Record a batch's outcomes in discovery order (so --strict stops at the first bad
        case); returns its cases to leave out: images identical to one converted before."""
        skip: set[str] = set()
        for case, outcome in zip(job.cases, result.outcomes, strict=True):
            request = reach(case)  # batches hold the discovered cases, in order
            if outcome.status != "converted":
                records.add(request, outcome.status, case.case_id, case.image, outcome.reason)
                continue
            me = f"{request.source.name}/{case.case_id}"
            first = owner.setdefault(outcome.image_id, me)
            if first != me:
                skip.add(case.case_id)
                records.add(
                    request,
                    "skipped",
                    case.case_id,
                    case.image,
                    f"identical image already converted as {first}",
                )
                continue
            records.add(request, "converted", case.case_id, case.image, None)
        return frozenset(skip)

    def render_jobs() -> Iterator[RenderJob]:
        """Each batch's render job, as soon as its extraction and every earlier one's is
        recorded. What is left to do then needs neither the batch's cases (only its index,
        source and store) nor their outcomes (render needs the key and payload): both are
        let go."""
        for index, result in zip(range(len(jobs)), extracted, strict=True):
            skip = record(jobs[index], result)
            jobs[index] = replace(jobs[index], cases=())
            yield RenderJob(
                replace(result, outcomes=()),
                skip,
                config.seed,
                config.ratios,
                config.templates_dir,
                templates.digest,
                jobs[index].store,
                config.check,
            )
        reach(None)
        records.handle.close()
        owner.clear()

    rendered = list(run_render(render_batch, render_jobs()))
    if rewrite is not None:
        rendered = rewrite(rendered, summary)
    for job, result in zip(jobs, rendered, strict=True):  # a batch holds one source
        summary.sources[job.source.name].rows += result.stats.rows
        summary.images += result.images
        summary.checks.update(((p.sha256, p.split), p.check) for p in result.parts if p.check)
        summary.hashes.update((p.identity, p.sha256) for p in result.parts)
    summary.stats = Stats.total(result.stats for result in rendered)

    files, shards = _link_shards(staging / "data", jobs, rendered)
    public = {r.source.name for r in config.sources if r.source.redistributable}
    shown = [staging / s["path"] for s in shards if s["source"] in public]
    from .plots import write_plots  # matplotlib: only a build that gets this far needs it

    figures = write_plots(summary.stats, staging / "plots", shown)
    card = render_card(
        summary.as_dict(usage=False), config, shards, templates.count(), _code_version(),
        summary.stats,
        {name: path.relative_to(staging).as_posix() for name, path in figures.items()},
    )  # fmt: skip
    (staging / "README.md").write_text(card)
    report = summary.as_dict(usage=False)
    (staging / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    others = ["errors.jsonl", "README.md", "report.json", *(p.relative_to(staging).as_posix()
              for p in figures.values())]  # fmt: skip
    for name in others:
        files[name] = file_digest(staging / name)
    _write_manifest(staging, config, templates, summary, files, shards)
    return summary


def _link_shards(
    folder: Path, jobs: list[ExtractJob], rendered: list[RenderResult]
) -> tuple[dict[str, str], list[dict[str, str]]]:
    """Each part becomes data/<split>-<i>-of-<n>.parquet (a hard link where possible).

    Returns the shards' content hashes and, per shard, its split, modality and source (a
    batch holds one source, so each shard holds one source and one modality).
    """
    files: dict[str, str] = {}
    shards: list[dict[str, str]] = []
    for split in SPLITS:
        parts = [
            (job.source, part)
            for job, result in zip(jobs, rendered, strict=True)
            for part in result.parts
            if part.split == split
        ]
        for index, (source, part) in enumerate(parts):
            target = folder / f"{split}-{index:05d}-of-{len(parts):05d}.parquet"
            try:
                os.link(part.path, target)
            except OSError:
                shutil.copyfile(part.path, target)
            files[f"data/{target.name}"] = part.sha256
            shards.append(
                {
                    "path": f"data/{target.name}",
                    "split": split,
                    "modality": source.modality,
                    "source": source.name,
                }
            )
    return dict(sorted(files.items())), shards


def _code_version() -> str:
    return f"{__version__}+{code_digest(EXTRACT_CODE + RENDER_CODE)[:12]}"


def _write_manifest(
    staging: Path,
    config: BuildConfig,
    templates: TemplateSet,
    summary: BuildSummary,
    files: dict[str, str],
    shards: list[dict[str, str]],
) -> None:
    summary_dict = summary.as_dict()
    manifest = {
        "format": "mmrs/1",
        "code_version": _code_version(),
        "config": {
            "sources": [
                {
                    "name": r.source.name,
                    "modality": r.source.modality,
                    "data_root": r.data_root.as_posix(),
                    "display": r.source.display.describe(),
                    "volume": r.source.volume.describe() if r.source.volume else None,
                    "license": r.source.license,
                    "redistributable": r.source.redistributable,
                    "citation": r.source.citation,
                    "homepage": r.source.homepage,
                    "layout": r.source.layout,
                }
                for r in config.sources
            ],
            "seed": config.seed,
            "split_ratios": vars(config.ratios),
            "min_component_fraction": MIN_COMPONENT_FRACTION,
            "templates_digest": templates.digest,
            "templates": templates.count(),
            "batch_size": config.batch_size,
        },
        "counts": summary_dict["sources"],
        "images": summary_dict["images"],
        "rows_per_split": summary_dict["rows_per_split"],
        **{k: summary_dict[k] for k in ("rewrite", "llm_usage") if k in summary_dict},
        "shards": shards,
        "files": dict(sorted(files.items())),
    }
    path = staging / "manifest.json"
    tmp = staging / ".manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    tmp.replace(path)
