"""`mmrs build`: sources -> cases -> batches -> extract -> render -> shards and records.

The build streams: sources are discovered, planned into batches and extracted as the stage
runner asks for more work, so it holds the cases of the batches in flight, not all of them.
A batch is rendered as soon as it and every batch before it are extracted: outcomes are
recorded in discovery order, and an image identical to one converted earlier is left out.
Without a cache, whose store nothing searches again, each batch is extracted and rendered
at once (stages.convert_batch), and rendered again without the images found identical to
earlier ones when it has any.
Batches are units of work; shards, units of output, are planned per split and source by
size once the source's batches are rendered, and written from the rendered rows, so the
output does not depend on the batches. The orchestration is written once, here; what runs
each stage is passed in: a plain
loop (`build`, for library use and tests) or Prefect tasks with caching on a task runner
(flows.py, what `mmrs build` uses). The output is assembled in a staging folder beside
--out, checked (when a check is given) and only then moved into place, manifest.json last
(output.py: the lock on --out, what a killed build left, replacing an earlier build). Every
discovered case ends as converted, skipped or failed; every one not converted is in
errors.jsonl with its file and reason.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from itertools import groupby, islice, takewhile
from pathlib import Path
from stat import S_ISDIR
from typing import Any, TypeVar

from tqdm import tqdm

from .. import __version__
from ..checks.folder import ValidationResult
from ..checks.shard import ShardResult, combined
from ..geometry.facts import MIN_COMPONENT_FRACTION
from ..io.images import PNG_LEVEL
from ..llm.paraphrase import RewriteConfig
from ..llm.stage import Rewriting, open_rewriting
from ..qa.templates import TemplateSet, load_templates
from ..release.card import render_card
from ..release.stats import Stats
from ..shards.parts import RenderResult
from ..shards.plan import MAX_SHARD_BYTES, plan_shards
from ..sources.base import Case, Problem, SourceInfo
from ..splits import SPLITS, SplitRatios
from ..store import FileIdentity, StageRunner, code_digest, file_digest, place_file
from .cases import SourceMeta
from .output import (
    BuildError,
    check_folder_argument,
    check_out,
    hold,
    move_in,
    scratch_folder,
    staging_folder,
)
from .stages import (
    EXTRACT_CODE,
    RENDER_CODE,
    CaseOutcome,
    ConvertJob,
    ExtractJob,
    RenderJob,
    RenderSettings,
    ShardWriteJob,
    ShardWritten,
    convert_batch,
    extract_batch,
    render_batch,
    set_aside,
    write_shard_job,
)

BATCH_SIZE = 256  # most cases per extract/render task
BATCH_SHARE = 4  # near the build's end, a batch takes this share of the cases left
MIN_BATCH = 32  # cases of the last batches (and fewer for the last of a source)
Item = TypeVar("Item")


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
    batch_size: int = BATCH_SIZE  # most cases per task: the unit of work, not of output
    max_shard_bytes: int = MAX_SHARD_BYTES  # of one shard (the unit of output)
    png_level: int = PNG_LEVEL  # zlib level of re-encoded images
    cache_dir: Path | None = None  # None: a temporary store, removed after the build
    rewrite: RewriteConfig | None = None  # LLM rewriting (pipeline/llm/paraphrase.py); None: none
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
    validation: ValidationResult | None = None  # of the build, before it moved in
    # Where the build is: out, or its staging folder when it failed its checks and out
    # kept the earlier build.
    folder: Path | None = None

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


def inline_runner(progress: bool, desc: str, unit: str = "batch") -> StageRunner:
    """Run a stage's jobs one after another in this process, each when its result is asked
    for, with a progress bar."""

    def run(stage: Callable[[Any], Any], jobs: Iterable[Any]) -> Iterator[Any]:
        return map(stage, tqdm(jobs, desc=desc, unit=unit, disable=not progress))

    return run


def check_config(config: BuildConfig) -> None:
    """Refuse, before any work, what no build can run with: no source or one given twice,
    a data root that is not a folder, a batch size below 1, a zlib level outside 0-9, an
    output, cache or templates folder that is a file."""
    _check_sources(config)
    if config.batch_size < 1:
        raise BuildError(f"--batch-size must be at least 1, got {config.batch_size}")
    if not 0 <= config.png_level <= 9:
        raise BuildError(f"--png-level must be a zlib level from 0 to 9, got {config.png_level}")
    check_folder_argument(config.out, "--out")
    if config.cache_dir is not None:
        check_folder_argument(config.cache_dir, "--cache-dir")
    if config.templates_dir is not None and not config.templates_dir.is_dir():
        raise BuildError(f"--templates {config.templates_dir} is not a folder")


def _check_sources(config: BuildConfig) -> None:
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
        if not request.data_root.is_dir():
            raise BuildError(
                f"data root {request.data_root} for {request.source.name} is not a folder"
            )


def discover(config: BuildConfig) -> Iterator[tuple[SourceRequest, Case | Problem]]:
    """Every case and problem of every source, in a deterministic order, as the sources find
    them. The sources and their data roots are checked at once: each source starts now, up
    to its first item, so a data root of the wrong layout fails before any work."""
    _check_sources(config)
    started = [(request, _started(request)) for request in config.sources]
    return ((request, item) for request, items in started for item in items)


def _started(request: SourceRequest) -> Iterator[Case | Problem]:
    """The source's items, its discovery run now up to the first one."""
    items = _found(request)
    first = deque(islice(items, 1))  # emptied as it is taken: nothing keeps the item

    def taken() -> Iterator[Case | Problem]:
        while first:
            yield first.popleft()
        yield from items

    return taken()


def _found(request: SourceRequest) -> Iterator[Case | Problem]:
    try:
        yield from request.source.discover(request.data_root)
    except ValueError as exc:  # LayoutError, SpecError
        raise BuildError(f"{request.source.name}: {exc}") from exc


def _noted(items: Iterable[Item], into: deque[Item]) -> Iterator[Item]:
    """Each item, appended to `into` as it passes (for a later step that needs it again).
    Nothing else keeps it: a job's cases go once the job is recorded."""

    def note(item: Item) -> Item:
        into.append(item)
        return item

    return map(note, items)


def parse_source_arg(
    value: str,
    data_root: str | None = None,
    slice_axis: str | None = None,
    slices: str | None = None,
) -> SourceRequest:
    """ "NAME_OR_SPEC=DATA_ROOT" (or NAME_OR_SPEC with data_root) -> a SourceRequest.

    `slice_axis` and `slices` (all, largest[:K], stride[:N]) override a volume source's own.
    """
    from ..geometry.slicing import VolumeError, parse_slice_policy
    from ..sources import resolve_source

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


# What a reason may not carry: an object's address (differs between runs).
_ADDRESS = re.compile(r"\s*\(0x[0-9a-fA-F]+\)|\s+at 0x[0-9a-fA-F]+")


def _cleaned(reason: str | None, root: Path) -> str | None:
    """A reason as errors.jsonl keeps it: the same for the same input on any machine, so
    paths under the data root relative to it and no object addresses."""
    if reason is None:
        return None
    for folder in dict.fromkeys((root.as_posix(), root.resolve().as_posix())):
        # the root where a path starts: not inside a longer word or path
        reason = re.sub(rf"(?<![\w./-]){re.escape(folder.rstrip('/'))}/", "", reason)
    return _ADDRESS.sub("", reason)


def case_bytes(case: Case) -> int:
    """About what converting a case costs: the bytes of its image and mask files (decoding
    and encoding grow with them; a BMP costs more than a PNG of the same pixels, and its
    file is larger too). A folder (a DICOM series) counts the files it holds; a file that
    cannot be read counts nothing (the extract stage reports it)."""
    total = 0
    for path in (case.image, *(mask.path for mask in case.masks)):
        try:
            info = path.stat()
            if S_ISDIR(info.st_mode):
                total += sum(entry.stat().st_size for entry in os.scandir(path) if entry.is_file())
            else:
                total += info.st_size
        except OSError:
            pass
    return total


def plan_extract(
    discovered: Iterable[tuple[SourceRequest, Case | Problem]],
    batch_size: int,
    store: Path,
    reusable: bool = True,
    png_level: int = PNG_LEVEL,
) -> Iterator[ExtractJob]:
    """Cases in batches of one source each, in discovery order (see ExtractJob.reusable),
    each batch as soon as its size is known.

    A batch is a unit of work only (the output is the same whatever the batches): at most
    batch_size cases, and from the last batch_size * BATCH_SHARE cases of the build on, a
    BATCH_SHARE-th of the work left (at least MIN_BATCH cases), the work of a case taken as
    the bytes of its files (case_bytes): so the last batches are short and every worker
    has work to the end, whatever the sources' sizes and however much a case of each
    costs (a BMP source's cases several times a PNG source's). The batches depend only on
    the cases, in order, their files' sizes and batch_size (a resumed build finds its own).
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    cases = ((request, item) for request, item in discovered if isinstance(item, Case))
    horizon = batch_size * BATCH_SHARE
    ahead: deque[tuple[SourceRequest, Case]] = deque()  # discovered, not yet in a batch
    # The work of each case ahead (at least 1: a case whose files cannot be sized counts).
    works: deque[int] = deque()
    index = 0
    while True:
        while len(ahead) < horizon:  # how far the build's end is, if it is that close
            found = next(cases, None)
            if found is None:
                break
            ahead.append(found)
            works.append(max(case_bytes(found[1]), 1))
        if not ahead:
            return
        request = ahead[0][0]
        size = min(batch_size, sum(1 for _ in takewhile(lambda a, r=request: a[0] is r, ahead)))
        if len(ahead) < horizon:  # the end is near: a share of the work left
            share, taken, work = sum(works) / BATCH_SHARE, 0, 0
            while taken < size and (taken < MIN_BATCH or work < share):
                work += works[taken]
                taken += 1
            size = taken
        for _ in range(size):
            works.popleft()
        meta = SourceMeta.of(request.source, png_level)
        # No local keeps the job while this waits: its cases go once it is recorded.
        yield ExtractJob(index, meta, tuple(ahead.popleft()[1] for _ in range(size)), store,
                         reusable)  # fmt: skip
        index += 1


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
        where: tuple[str | None, int | None] | None = None,
    ) -> None:
        """One case's outcome, counted; or, with `where` (its slice axis and index), one
        image left out of a converted case, reported only (the case counts as converted)."""
        if where is None:
            counts = self.summary.sources[request.source.name]
            setattr(counts, status, getattr(counts, status) + 1)
        if status == "converted":
            return
        entry = {
            "source": request.source.name,
            "case_id": case_id,
            "file": _relative(file, request.data_root),
            "status": status,
            "reason": _cleaned(reason, request.data_root),
        }
        if where is not None:
            entry["slice_axis"], entry["slice_index"] = where
        self.handle.write(json.dumps(entry, ensure_ascii=False) + "\n")
        if self.config.strict:
            self.handle.close()
            place = f"{request.source.name}: {entry['file']}"
            raise BuildError(f"{place}: {entry['reason']} (--strict)")


def run_build(
    config: BuildConfig,
    run_extract: StageRunner | None = None,
    run_render: StageRunner | None = None,
    run_rewrite: StageRunner | None = None,
    api_key: str | None = None,
    check: Callable[[Path, BuildSummary], ValidationResult] | None = None,
    run_shards: StageRunner | None = None,
) -> BuildSummary:
    """Discover, extract, render, rewrite (if asked), write the shards and assemble a build.

    `api_key` is the LLM key when config.rewrite is set (default: $OPENAI_API_KEY).
    `check` validates the assembled build in its staging folder; one that fails it does
    not replace an earlier build in config.out (it stays in the staging folder).
    """
    check_config(config)
    # Without a cache, batches are extracted and rendered at once (stages.convert_batch).
    first = "extract" if config.cache_dir is not None else "convert"
    run_extract = run_extract or inline_runner(config.progress, first)
    run_render = run_render or inline_runner(config.progress, "render")
    run_rewrite = run_rewrite or inline_runner(config.progress, "rewrite")
    run_shards = run_shards or inline_runner(config.progress, "shards", "shard")
    templates = load_templates(config.templates_dir)
    with hold(config.out):
        replaced = check_out(config.out, config.overwrite)
        discovered = discover(config)
        return _build(
            config, templates, discovered, replaced, run_extract, run_render, run_rewrite,
            run_shards, api_key, check,
        )  # fmt: skip


def _build(
    config: BuildConfig,
    templates: TemplateSet,
    discovered: Iterator[tuple[SourceRequest, Case | Problem]],
    replaced: list[str] | None,
    run_extract: StageRunner,
    run_render: StageRunner,
    run_rewrite: StageRunner,
    run_shards: StageRunner,
    api_key: str | None,
    check: Callable[[Path, BuildSummary], ValidationResult] | None,
) -> BuildSummary:
    """run_build's work, under the output folder's lock: `replaced` lists the files of the
    earlier build in config.out (None: there is none)."""
    # Without a cache, the store sits beside --out so its parts can be moved there.
    with (
        scratch_folder(config.out, "store") as scratch,
        open_rewriting(config.rewrite, api_key) as llm,
    ):
        store = config.cache_dir or Path(scratch)
        if llm is not None:  # expand-templates renders with the generated variants too
            config = replace(
                config, templates_dir=llm.templates(config.templates_dir, store, run_rewrite)
            )
            templates = load_templates(config.templates_dir)
        # What is discovered and not yet counted, and what is planned and not yet recorded:
        # as much as the stage runner keeps in flight.
        uncounted: deque[tuple[SourceRequest, Case | Problem]] = deque()
        planned: deque[ExtractJob] = deque()
        jobs = _noted(
            plan_extract(
                _noted(discovered, uncounted), config.batch_size, store,
                config.cache_dir is not None, config.png_level,
            ),
            planned,
        )  # fmt: skip
        staging = staging_folder(config.out)
        (staging / "data").mkdir(parents=True)
        kept = False  # staging, as the build that failed its checks
        try:
            rewrite = None if llm is None else _rewriter(llm, store, run_rewrite)
            summary = _assemble(
                config, staging, templates, uncounted, planned, jobs, run_extract, run_render,
                run_shards, store, rewrite,
            )  # fmt: skip
            summary.validation = None if check is None else check(staging, summary)
            if summary.validation is None or summary.validation.ok or replaced is None:
                move_in(config.out, replaced)
                summary.folder = config.out
            else:
                summary.folder, kept = staging, True
        finally:
            if not kept:
                shutil.rmtree(staging, ignore_errors=True)
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


def render_settings(config: BuildConfig, templates_digest: str) -> RenderSettings:
    """What the build's rows depend on besides their cases."""
    return RenderSettings(
        config.seed, config.ratios, config.templates_dir, templates_digest, config.check
    )


def build(config: BuildConfig) -> BuildSummary:
    """A whole build in this process, stage by stage (no orchestrator, no cache reuse)."""
    return run_build(config)


def _assemble(
    config: BuildConfig,
    staging: Path,
    templates: TemplateSet,
    uncounted: deque[tuple[SourceRequest, Case | Problem]],
    planned: deque[ExtractJob],
    jobs: Iterator[ExtractJob],
    run_extract: StageRunner,
    run_render: StageRunner,
    run_shards: StageRunner,
    store: Path,
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
        counted."""
        while uncounted:
            request, item = uncounted.popleft()
            summary.sources[request.source.name].discovered += 1
            if item is case:
                return request
            records.add(request, "skipped", item.case_id, item.file, item.reason)
        return None

    def record(job: ExtractJob, outcomes: tuple[CaseOutcome, ...]) -> frozenset[tuple[str, str]]:
        """Record a batch's outcomes in discovery order (so --strict stops at the first bad
        case); returns its images to leave out, (case id, image id): identical to one
        converted before, the whole case when every one of its images is."""
        skip: set[tuple[str, str]] = set()
        for case, outcome in zip(job.cases, outcomes, strict=True):
            request = reach(case)  # batches hold the discovered cases, in order
            if outcome.status != "converted":
                file = outcome.file or case.image
                records.add(request, outcome.status, case.case_id, file, outcome.reason)
                continue
            me = f"{request.source.name}/{case.case_id}"
            earlier = {i: owner[i] for *_, i in outcome.images if owner.get(i, me) != me}
            skip.update((case.case_id, image_id) for image_id in earlier)
            if len(earlier) == len({i for *_, i in outcome.images}):
                first = earlier[outcome.images[0][2]]
                reason = f"identical image already converted as {first}"
                records.add(request, "skipped", case.case_id, case.image, reason)
                continue
            axis = outcome.images[0][0]
            for index, reason in outcome.left_out:
                records.add(request, "skipped", case.case_id, case.image, reason, (axis, index))
            for axis, index, image_id in outcome.images:
                if image_id in earlier:
                    reason = f"identical image already converted as {earlier[image_id]}"
                    records.add(request, "skipped", case.case_id, case.image, reason, (axis, index))
                else:
                    owner.setdefault(image_id, me)
            records.add(request, "converted", case.case_id, case.image, None)
        return frozenset(skip)

    sources: deque[SourceMeta] = deque()  # of each batch rendered, until its shards are planned
    settings = render_settings(config, templates.digest)

    def recorded() -> None:
        """Every batch is recorded: the rest of discovery is counted."""
        if planned or next(jobs, None) is not None:
            raise RuntimeError("the extract stage's runner did not return every batch's result")
        reach(None)
        records.handle.close()
        owner.clear()

    def render_jobs() -> Iterator[RenderJob]:
        """Each batch's render job, as soon as its extraction and every earlier one's is
        recorded. What is left to do then needs neither the batch's cases (only its source
        and store) nor their outcomes (render needs the key and payload): both are let go."""
        for result in run_extract(extract_batch, jobs):
            job = planned.popleft()  # results come in job order
            skip = record(job, result.outcomes)
            sources.append(job.source)
            store = job.store
            del job
            yield RenderJob(replace(result, outcomes=()), skip, settings, store)
        recorded()

    def converted() -> Iterator[RenderResult]:
        """In a store of this build only: each batch's rows, converted at once, as soon as
        it and every earlier batch are recorded. A batch with images identical to ones
        converted before is extracted and rendered again without them (stage by stage)."""
        for result in run_extract(convert_batch, (ConvertJob(job, settings) for job in jobs)):
            job = planned.popleft()  # results come in job order
            skip = record(job, result.outcomes)
            sources.append(job.source)
            if skip:
                set_aside(result.rendered)
                again = next(run_extract(extract_batch, [job]))
                yield next(run_render(render_batch, [RenderJob(again, skip, settings, job.store)]))
                continue
            del job
            yield result.rendered
        recorded()

    rendered: list[RenderResult] = []
    batches: list[SourceMeta] = []  # the source of each rendered batch
    counted: list[Future[dict[str, Path]]] = []  # the figures of the rows' counts

    def with_sources(results: Iterable[RenderResult]) -> Iterator[tuple[SourceMeta, RenderResult]]:
        for result in results:
            batches.append(sources.popleft())  # a result comes after its job
            rendered.append(result)
            yield batches[-1], result
        # Every batch is rendered: the figures of the rows' counts are drawn while the last
        # source's shards are written (the gallery needs the shards).
        summary.stats = Stats.total(result.stats for result in rendered)
        counted.append(drawing.submit(_count_plots, summary.stats, staging / "plots"))

    reusable = config.cache_dir is not None
    results = run_render(render_batch, render_jobs()) if reusable else converted()
    if rewrite is not None:  # rewrites need every batch first
        results = rewrite(list(results), summary)
    with ThreadPoolExecutor(1, thread_name_prefix="mmrs-figures") as drawing:
        # Each source's shards are written once its last batch is rendered (streaming).
        files, shards = _write_shards(
            staging / "data", with_sources(results), store, config, run_shards, summary
        )
        figures = counted[0].result()
    for source, result in zip(batches, rendered, strict=True):  # a batch holds one source
        summary.sources[source.name].rows += result.stats.rows
        summary.images += result.images
    public = {r.source.name for r in config.sources if r.source.redistributable}
    from ..release.plots import write_gallery

    shown = [staging / s["path"] for s in shards if s["source"] in public]
    figures["gallery"] = write_gallery(shown, staging / "plots")
    card = render_card(
        summary.as_dict(usage=False), [r.source for r in config.sources], config.seed,
        config.ratios, shards, templates.count(), _code_version(),
        summary.stats,
        {name: path.relative_to(staging).as_posix() for name, path in figures.items()},
    )  # fmt: skip
    (staging / "README.md").write_text(card)
    report = summary.as_dict(usage=False)
    (staging / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    specs = _write_specs(staging, config)
    others = ["errors.jsonl", "README.md", "report.json", *specs.values(),
              *(p.relative_to(staging).as_posix() for p in figures.values())]  # fmt: skip
    for name in others:
        files[name] = file_digest(staging / name)
    _write_manifest(staging, config, templates, summary, files, shards, specs)
    return summary


def _count_plots(stats: Stats, folder: Path) -> dict[str, Path]:
    """The figures of the rows' counts; matplotlib is imported here, by the thread that
    draws them, where a build has not imported it before (only a build this far needs it)."""
    from ..release.plots import write_count_plots

    return write_count_plots(stats, folder)


def _write_specs(staging: Path, config: BuildConfig) -> dict[str, str]:
    """specs/<name>.yaml: the text of each source read from a YAML spec, for a rebuild."""
    specs = {}
    for request in config.sources:
        if request.source.spec is not None:
            path = staging / "specs" / f"{request.source.name}.yaml"
            path.parent.mkdir(exist_ok=True)
            path.write_text(request.source.spec)
            specs[request.source.name] = path.relative_to(staging).as_posix()
    return specs


@dataclass(frozen=True)
class _Shard:
    """A shard to write: its source and split, its job, its images' checks (None when not
    all were checked), and the parts whose last images it takes (no later shard reads
    them)."""

    source: SourceMeta
    split: str
    job: ShardWriteJob
    checks: list[ShardResult] | None
    finished: tuple[Path, ...] = ()


def _shard_jobs(
    batches: Iterable[tuple[SourceMeta, RenderResult]], store: Path, max_bytes: int
) -> Iterator[_Shard]:
    """Each source's shards, as soon as its batches are rendered: per split, its images in
    discovery order cut by size (shards/plan.py). A shard holds one source, so one modality
    and one licence. Its check is its groups' (render checks a part group by group) when it
    holds whole groups only; else None, and validation checks it."""
    for _, same in groupby(batches, lambda batch: batch[0].name):
        sources, results = zip(*same, strict=True)
        for split in SPLITS:
            parts = [part for result in results for part in result.parts if part.split == split]
            images = [(part, image) for part in parts for image in part.images]
            start = 0
            for count in plan_shards([image.bytes for _, image in images], max_bytes):
                taken = images[start : start + count]
                start += count
                pieces = tuple((part.path, tuple(image for _, image in group))
                               for part, group in groupby(taken, lambda i: i[0]))  # fmt: skip
                checks: list[ShardResult] | None = []
                for part, group in groupby(taken, lambda i: (i[0], i[1].row_group)):
                    whole = sum(1 for _ in group) == sum(
                        1 for image in part[0].images if image.row_group == part[1]
                    )
                    if checks is None or not part[0].checks or not whole:
                        checks = None
                        continue
                    checks.append(part[0].checks[part[1]])
                finished = tuple(part.path for part, image in taken if image is part.images[-1])
                yield _Shard(sources[0], split, ShardWriteJob(pieces, store), checks, finished)


def _write_shards(
    folder: Path,
    batches: Iterable[tuple[SourceMeta, RenderResult]],
    store: Path,
    config: BuildConfig,
    run: StageRunner,
    summary: BuildSummary,
) -> tuple[dict[str, str], list[dict[str, str]]]:
    """Write every shard (in the store) and place it in folder as
    data/<split>-<i>-of-<n>.parquet: moved from a store of this build only, else a file of
    its own (store.place_file: a reflink or a copy), so that no edit of an output reaches
    the cache. Record their hashes, and the checks made from their images', in the summary.
    In a store of this build only, a part is removed once the shard that takes its last
    images is written: the store holds the parts of the shards still to write, not every
    part until the build ends.

    Returns the shards' content hashes and, per shard, its split, modality and source.
    """
    planned: list[_Shard] = []
    jobs = (shard.job for shard in _noted(_shard_jobs(batches, store, config.max_shard_bytes),
                                           planned))  # fmt: skip
    written: list[ShardWritten] = []
    for output in run(write_shard_job, jobs):  # in job order: every earlier shard is written
        if config.cache_dir is None:
            for part in planned[len(written)].finished:
                part.unlink(missing_ok=True)
        written.append(output)
    files: dict[str, str] = {}
    entries: list[dict[str, str]] = []
    for split in SPLITS:
        mine = [(s, w) for s, w in zip(planned, written, strict=True) if s.split == split]
        for index, (shard, output) in enumerate(mine):
            name = f"{split}-{index:05d}-of-{len(mine):05d}.parquet"
            rows = sum(image.rows for _, images in shard.job.pieces for image in images)
            if output.rows != rows:
                raise RuntimeError(f"shard {name}: {output.rows} rows written, {rows} rendered")
            target = folder / name
            if config.cache_dir is None:  # a store of this build only
                output.path.replace(target)  # the same file: its identity is the shard's
                identity = output.identity
            else:
                identity = place_file(output.path, target, output.sha256)
            files[f"data/{name}"] = output.sha256
            summary.hashes[identity] = output.sha256
            if shard.checks is not None:  # the shard holds the rows checked, in their order
                check = combined(target, split, output.sha256, shard.checks)
                summary.checks[output.sha256, split] = check
            source = shard.source
            entries.append({"path": f"data/{name}", "split": split,
                            "modality": source.modality, "source": source.name})  # fmt: skip
    return dict(sorted(files.items())), entries


def _code_version() -> str:
    return f"{__version__}+{code_digest(EXTRACT_CODE + RENDER_CODE)[:12]}"


def _write_manifest(
    staging: Path,
    config: BuildConfig,
    templates: TemplateSet,
    summary: BuildSummary,
    files: dict[str, str],
    shards: list[dict[str, str]],
    specs: dict[str, str],
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
                    "spec": specs.get(r.source.name),
                }
                for r in config.sources
            ],
            "seed": config.seed,
            "split_ratios": vars(config.ratios),
            "min_component_fraction": MIN_COMPONENT_FRACTION,
            "templates_digest": templates.digest,
            "templates": templates.count(),
            "png_level": config.png_level,
            "max_shard_bytes": config.max_shard_bytes,
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
