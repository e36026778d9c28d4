"""The build's stages, as plain functions over picklable jobs.

- extract_batch: cases -> pixels and facts (the only stage that reads source files),
  written case by case into one payload file in the store, under a key made of the
  content hashes of every input file, the source's settings and the extract code; the
  payload's own content hash is recorded, and checked before it is used again.
- convert_batch: both at once, for a store of this build only (nothing in it is found
  again): each case is extracted and its rows rendered straight away, so no payload is
  written and no batch waits for another to be rendered. Where the build finds images
  identical to ones converted before, it sets the batch's parts aside and extracts and
  renders it again stage by stage, leaving them out.
- render_batch: a payload -> QA rows -> one part per split (shards/writer.py), noting
  where each image's rows are, written by the worker that holds the data, under a key
  made of the extract key, templates, seed, split ratios, the duplicates to leave out and
  the render code. Unless told not to, the same worker then checks the rows it wrote as
  `mmrs validate` checks a shard's (checks/shard.py), image by image, so the build's final
  validation needs to check only what changed after render. Parts taken again from the
  store are checked against their content hashes first.
- write_shard_job: images of parts -> one Parquet shard, planned per split by size once its
  source's batches are rendered (shards/plan.py), under a key made of its images and the
  writer code.

`cached(key)` of each job is its stored result, verified (store.py), or None: what the
stage function and an orchestrator's cache policy (flows.py) take from the store.

Batches are units of work, shards units of output: a shard's bytes depend on its rows
only, never on the batches they were rendered in. Each stage returns a small summary;
keys make them cacheable by any orchestrator (flows.py).
"""

from __future__ import annotations

import pickle
import shutil
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path

from .. import schema, splits
from ..checks.shard import CHECK_CODE, ShardResult, check_table
from ..geometry import facts, patient, relations
from ..geometry import slicing as volume
from ..io import dicomseg, dicomseries, display, nifti
from ..io import images as imageio
from ..io import volumes as volumeio
from ..io.images import PixelError
from ..qa import names
from ..qa import templates as qa
from ..qa.templates import QAPlanner, TemplateSet, load_templates
from ..release import stats
from ..release.stats import COLUMNS as STATS_COLUMNS
from ..release.stats import Stats
from ..shards import parts, plan, writer
from ..shards.parts import Part, RenderResult
from ..shards.writer import PartWriter, Placed, read_part
from ..sources.base import Case
from ..splits import SplitRatios
from ..store import (
    FileIdentity,
    HashedFile,
    atomic_pickle,
    cache_key,
    code_digest,
    file_digest,
    file_identity,
    place_folder,
    private_name,
    stored_result,
    verified,
)
from . import cases, extract, extract_volume, render
from .cases import CaseError, ExtractedCase, SourceMeta
from .extract import extract_case
from .render import render_case

STAGES = sys.modules[__name__]  # this module: the stage functions and their results
EXTRACT_CODE = (
    STAGES,
    cases,
    extract,
    extract_volume,
    facts,
    imageio,
    display,
    patient,
    volume,
    volumeio,
    dicomseg,
    dicomseries,
    nifti,
    relations,
    names,
)
RENDER_CODE = (STAGES, render, qa, names, splits, schema, stats, writer, parts)
SHARD_CODE = (STAGES, writer, parts, plan, schema)


@dataclass(frozen=True, slots=True)
class CaseOutcome:
    """How one case left the extract stage."""

    case_id: str
    status: str  # "converted" | "skipped" | "failed"
    reason: str | None = None
    file: Path | None = None  # the file at fault, where it is not the case's image
    # Each image of a converted case (slice axis, slice index, content id): what an image
    # identical to one converted before is found by, a slice at a time.
    images: tuple[tuple[str | None, int | None, str], ...] = ()
    left_out: tuple[tuple[int, str], ...] = ()  # slices of a converted case not written


@dataclass(frozen=True)
class ExtractJob:
    index: int
    source: SourceMeta
    cases: tuple[Case, ...]
    store: Path
    reusable: bool = True  # False: a store of this build only, so nothing to find again

    @cached_property
    def key(self) -> str:
        """Content hashes of every input file + the source's settings + the extract code.

        In a store of this build only, the batch's place in it is enough: no file is hashed.
        """
        if not self.reusable:
            return cache_key("extract", self.index, self.source.name)
        files = []
        for case in self.cases:
            paths = [case.image, *(m.path for m in case.masks)]
            files.append((case, [file_digest(p) if p.is_file() else None for p in paths]))
        settings = (self.source, facts.MIN_COMPONENT_FRACTION)
        return cache_key("extract", code_digest(EXTRACT_CODE), settings, files)

    def payload(self, key: str) -> Path:
        return self.store / "extract" / f"{key}.pkl"

    def same_batch(self, other: ExtractJob) -> bool:
        """Whether other extracts the same cases the same way (into any store)."""
        return replace(other, store=self.store) == self

    def result(self, key: str) -> Path:
        return self.store / "extract" / f"{key}.result.pkl"

    def cached(self, key: str) -> ExtractResult | None:
        """The stored result, its payload checked against its content hash, or None (always
        in a store of this build only: its results are not hashed)."""
        if not self.reusable:
            return None
        stored = stored_result(self.result(key), self.store)
        if not isinstance(stored, ExtractResult):
            return None
        if verified(stored.payload, stored.payload_sha256):
            return stored
        self.result(key).unlink(missing_ok=True)
        return None


@dataclass(frozen=True)
class ExtractResult:
    key: str
    payload: Path
    outcomes: tuple[CaseOutcome, ...]
    reusable: bool = True  # False: read once, by its render job, which then deletes it
    payload_sha256: str = ""  # the payload's content hash, made as it was written (reusable)


class PayloadWriter:
    """A batch's payload, written one case at a time: one pickle per case (None for a case
    not converted), so neither stage holds a whole batch's pixels. Readers see all of the
    file or none of it: it is written under a temporary name, renamed when the block ends
    without error and removed when it ends with one. With `hashed`, its content hash is
    made as it is written (`sha256`); else that is empty."""

    def __init__(self, path: Path, hashed: bool = True) -> None:
        self.path = path
        self.tmp = private_name(path)
        self.hashed = hashed

    def __enter__(self) -> PayloadWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = HashedFile(self.tmp) if self.hashed else self.tmp.open("wb")
        return self

    @property
    def sha256(self) -> str:
        return self.handle.hexdigest() if isinstance(self.handle, HashedFile) else ""

    def add(self, images: list[ExtractedCase] | None) -> None:
        # into the file: an image's bytes are written as they are, not copied into a pickle
        pickle.dump(images, self.handle, protocol=pickle.HIGHEST_PROTOCOL)

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        self.handle.close()
        if kind is None:
            self.tmp.replace(self.path)
        else:
            self.tmp.unlink(missing_ok=True)


def read_payload(path: Path) -> Iterator[list[ExtractedCase] | None]:
    """The cases of a payload (PayloadWriter), one at a time, in batch order."""
    with path.open("rb") as handle:
        while handle.peek(1):
            yield pickle.load(handle)


def _extracted(case: Case, source: SourceMeta) -> tuple[CaseOutcome, list[ExtractedCase] | None]:
    """How one case left extraction, and its images when it was converted; bad cases
    become outcomes, never exceptions."""
    try:
        images = extract_case(case, source)
    except CaseError as exc:
        return CaseOutcome(case.case_id, "skipped", str(exc)), None
    except PixelError as exc:
        return CaseOutcome(case.case_id, "failed", exc.problem, file=exc.path), None
    except Exception as exc:  # noqa: BLE001 - any other error fails this case only
        return CaseOutcome(case.case_id, "failed", f"{type(exc).__name__}: {exc}"), None
    each = tuple((i.slice_axis, i.slice_index, i.image_id) for i in images)
    outcome = CaseOutcome(case.case_id, "converted", images=each, left_out=images[0].left_out)
    return outcome, images


def extract_batch(job: ExtractJob) -> ExtractResult:
    """Extract every case of a batch (see _extracted).

    A batch whose key is already in the store is not extracted again.
    """
    key = job.key
    stored = job.cached(key)
    if stored is not None:
        return stored
    outcomes = []
    # A store of this build only is never searched again: nothing there needs a hash.
    with PayloadWriter(job.payload(key), hashed=job.reusable) as payload:
        for case in job.cases:
            outcome, images = _extracted(case, job.source)
            outcomes.append(outcome)
            payload.add(images)
    result = ExtractResult(key, payload.path, tuple(outcomes), job.reusable, payload.sha256)
    atomic_pickle(result, job.result(key), job.store)  # written last: marks the batch complete
    return result


@dataclass(frozen=True)
class RenderSettings:
    """What a batch's rows depend on besides its cases."""

    seed: int
    ratios: SplitRatios
    templates_dir: Path | None
    templates_digest: str
    check: bool = True  # check each part written (checks/shard.py)

    def key(self, extract_key: str, skip: frozenset[tuple[str, str]]) -> str:
        """A batch's render key: its extract key + templates, seed, ratios, left-out images
        + the render code (and the checking code, when parts are checked)."""
        settings = (self.seed, self.ratios, self.templates_digest, sorted(skip))
        code = code_digest(RENDER_CODE + (CHECK_CODE if self.check else ()))
        return cache_key("render", code, self.check, extract_key, settings)


@dataclass(frozen=True)
class RenderJob:
    extract: ExtractResult
    # (case id, image id) of the images left out: identical to ones converted elsewhere
    skip: frozenset[tuple[str, str]]
    settings: RenderSettings
    store: Path

    @cached_property
    def key(self) -> str:
        return self.settings.key(self.extract.key, self.skip)

    def parts(self, key: str) -> Path:
        return self.store / "parts" / key

    def result(self, key: str) -> Path:
        return self.parts(key) / "result.pkl"

    def cached(self, key: str) -> RenderResult | None:
        """The stored result, each part checked against its content hash, or None (always
        in a store of this build only: its parts are not hashed)."""
        if not self.extract.reusable:
            return None
        stored = stored_result(self.result(key), self.store)
        if not isinstance(stored, RenderResult):
            return None
        if all(verified(part.path, part.sha256) for part in stored.parts):
            return stored
        shutil.rmtree(self.parts(key), ignore_errors=True)  # the batch's parts go together
        return None


def _templates(directory: Path | None, digest: str) -> TemplateSet:
    """The build's templates, checked against its digest (compiled once per process)."""
    loaded = load_templates(directory)
    if loaded.digest != digest:
        raise RuntimeError(f"templates in {directory} changed during the build")
    return loaded


def _write_rows(
    settings: RenderSettings,
    cases: Iterable[list[ExtractedCase] | None],
    skip: frozenset[tuple[str, str]],
    staging: Path,
    hashed: bool,
) -> tuple[RenderResult, list[tuple[str, Path, list[Placed], str]]]:
    """Render the rows of a batch's cases (each its images, or None), leaving out the
    images in skip, into one part per split it has rows in, in staging; returns the
    counts and each part with its split, where each image's rows are and its content hash
    (made as written where `hashed`, else empty). The result's key is left empty."""
    templates = _templates(settings.templates_dir, settings.templates_digest)
    planner = QAPlanner(templates, settings.seed)
    writers: dict[str, PartWriter] = {}
    counted: dict[str, list] = {name: [] for name in STATS_COLUMNS}
    rendered_images = 0
    for images in cases:
        if images is not None and skip:
            images = [i for i in images if (i.case.case_id, i.image_id) not in skip]
        if not images:
            continue
        rendered_images += len(images)
        for item in images:
            rows = render_case(item, planner, settings.ratios)
            if not rows:
                continue
            split = rows[0]["split"]  # a case's rows are all in its patient's split
            if split not in writers:
                writers[split] = PartWriter(staging / f"{split}.arrows", hashed=hashed)
            writers[split].add_image_rows(rows)
            for name, values in counted.items():
                values += [row[name] for row in rows]
    stats = Stats()
    stats.add(counted)
    written = [(split, writers[split].path, writers[split].close(), writers[split].sha256 or "")
               for split in splits.SPLITS if split in writers]  # fmt: skip
    return RenderResult("", (), rendered_images, stats), written


def _checks(path: Path, split: str) -> tuple[ShardResult, ...]:
    """Each group's checks of a part as written, as `mmrs validate` checks a row group."""
    return tuple(check_table(group, split) for group in read_part(path))


def _render_into(
    folder: Path,
    key: str,
    settings: RenderSettings,
    cases: Iterable[list[ExtractedCase] | None],
    skip: frozenset[tuple[str, str]],
    store: Path,
    stored: Callable[[], RenderResult | None],
    hashed: bool,
) -> RenderResult:
    """Render a batch's rows into its parts folder (see _write_rows), checked unless told
    not to: the whole batch appears at once, or another build's, when it stored the
    same key first (`stored` finds it)."""
    staging = private_name(folder)
    staging.mkdir(parents=True)
    try:
        result, written = _write_rows(settings, cases, skip, staging, hashed)
        parts = []
        for split, path, images, sha256 in written:
            checks = _checks(path, split) if settings.check else None
            parts.append(Part(split, folder / path.name, sha256, tuple(images), checks))
        rendered = replace(result, key=key, parts=tuple(parts))
        atomic_pickle(rendered, staging / "result.pkl", store)
        rendered = place_folder(staging, folder, stored) or rendered
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return rendered


def render_batch(job: RenderJob) -> RenderResult:
    """Render and write one batch's rows: one part per split it has rows in."""
    key = job.key
    stored = job.cached(key)
    if stored is not None:
        return stored
    reusable = job.extract.reusable  # hashed as written where the store is searched again
    cases = read_payload(job.extract.payload)
    rendered = _render_into(job.parts(key), key, job.settings, cases, job.skip, job.store,
                            lambda: job.cached(key), reusable)  # fmt: skip
    if not reusable:  # freed now by this worker, not at the build's end
        job.extract.payload.unlink(missing_ok=True)
    return rendered


@dataclass(frozen=True)
class ConvertJob:
    """A batch to extract and render at once, in a store of this build only."""

    extract: ExtractJob
    settings: RenderSettings

    def __post_init__(self) -> None:
        if self.extract.reusable:
            raise ValueError("a batch is converted at once only in a store of this build only")

    @property
    def store(self) -> Path:
        return self.extract.store

    @cached_property
    def key(self) -> str:
        return self.settings.key(self.extract.key, frozenset())

    def parts(self, key: str) -> Path:
        return self.store / "parts" / key

    def cached(self, key: str) -> None:
        """Nothing: a store of this build only is never searched again."""
        return None

    def same_batch(self, other: ConvertJob) -> bool:
        """Whether other converts the same cases the same way (into any store)."""
        return self.extract.same_batch(other.extract) and other.settings == self.settings


@dataclass(frozen=True)
class Converted:
    """A converted batch: how each case left extraction, and the rows of every image."""

    outcomes: tuple[CaseOutcome, ...]
    rendered: RenderResult


def set_aside(rendered: RenderResult) -> None:
    """Remove the parts of a converted batch that is rendered again (in a store of this
    build only, which nothing else reads)."""
    for part in rendered.parts:
        shutil.rmtree(part.path.parent, ignore_errors=True)


def convert_batch(job: ConvertJob) -> Converted:
    """Extract a batch's cases and render their rows as each is extracted: no payload, and
    no batch's pixels held at once (see _extracted for bad cases)."""
    outcomes: list[CaseOutcome] = []

    def cases() -> Iterator[list[ExtractedCase] | None]:
        for case in job.extract.cases:
            outcome, images = _extracted(case, job.extract.source)
            outcomes.append(outcome)
            yield images

    key = job.key
    rendered = _render_into(job.parts(key), key, job.settings, cases(), frozenset(), job.store,
                            lambda: None, hashed=False)  # fmt: skip
    return Converted(tuple(outcomes), rendered)


@dataclass(frozen=True)
class ShardWriteJob:
    pieces: tuple[tuple[Path, tuple[Placed, ...]], ...]  # parts and the images taken
    store: Path
    row_group_bytes: int = writer.ROW_GROUP_BYTES

    @cached_property
    def key(self) -> str:
        """The shard's images (a part's folder names its content: its render key) + the
        writer code. Not its name: that is known once every shard is planned."""
        pieces = [(part.parent.name, part.name, images) for part, images in self.pieces]
        return cache_key("shard", code_digest(SHARD_CODE), self.row_group_bytes, pieces)

    def path(self, key: str) -> Path:
        return self.store / "shards" / key / "shard.parquet"

    def result(self, key: str) -> Path:
        return self.store / "shards" / key / "result.pkl"

    def cached(self, key: str) -> ShardWritten | None:
        """The stored result, its shard checked against its content hash, or None."""
        stored = stored_result(self.result(key), self.store)
        if not isinstance(stored, ShardWritten):
            return None
        if verified(stored.path, stored.sha256):
            return stored
        shutil.rmtree(self.path(key).parent, ignore_errors=True)
        return None


@dataclass(frozen=True)
class ShardWritten:
    path: Path
    sha256: str
    rows: int
    identity: FileIdentity  # of the file when it was hashed


def write_shard_job(job: ShardWriteJob) -> ShardWritten:
    """Write one shard from its parts' images (shards/writer.py), hashed as it is written."""
    key = job.key
    stored = job.cached(key)
    if stored is not None:
        return stored
    folder = job.path(key).parent
    staging = private_name(folder)
    staging.mkdir(parents=True)
    try:
        path = staging / job.path(key).name
        sha256 = writer.write_shard(path, job.pieces, job.row_group_bytes)
        rows = writer.row_count(path)  # from the footer: what a reader will find
        written = ShardWritten(job.path(key), sha256, rows, file_identity(path))
        atomic_pickle(written, staging / "result.pkl", job.store)
        # a rename keeps the file's identity; another build's, when it stored it first
        written = place_folder(staging, folder, lambda: job.cached(key)) or written
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return written
