"""`mmrs build`: sources -> cases -> rows -> shards, errors, report and manifest.

The output is built in a staging folder beside --out and moved into place only when
complete, manifest.json last. Every discovered case ends as converted, skipped or failed,
and every one that is not converted is written to errors.jsonl with its file and reason.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import shutil
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from . import __version__
from .card import render_card
from .convert import CaseError, Converted, SourceMeta, convert_case
from .facts import MIN_COMPONENT_FRACTION
from .imageio import PixelError
from .qa import QAPlanner, TemplateSet, load_templates
from .sources.base import Case, Problem, SourceInfo
from .splits import SPLITS, SplitRatios
from .writer import SplitWriter

CHUNK = 16  # cases per worker task


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
    workers: int = 1
    strict: bool = False
    ratios: SplitRatios = SplitRatios()
    templates_dir: Path | None = None
    overwrite: bool = False
    progress: bool = True


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
    rows_per_split: Counter = field(default_factory=Counter)
    rows_per_modality_split: Counter = field(default_factory=Counter)
    question_types: Counter = field(default_factory=Counter)
    zones: Counter = field(default_factory=Counter)
    images: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "sources": {name: vars(counts) for name, counts in self.sources.items()},
            "images": self.images,
            "rows": sum(self.rows_per_split.values()),
            "rows_per_split": {s: self.rows_per_split[s] for s in SPLITS if self.rows_per_split[s]},
            "rows_per_modality_split": {
                f"{m}/{s}": n for (m, s), n in sorted(self.rows_per_modality_split.items())
            },
            "question_types": dict(sorted(self.question_types.items())),
            "zones": dict(sorted(self.zones.items())),
        }


# -- worker side -------------------------------------------------------------------------

_PLANNER: QAPlanner | None = None


def _init_worker(templates: Path | TemplateSet | None, seed: int) -> None:
    """Give this process its QA planner (workers load the templates themselves)."""
    global _PLANNER
    loaded = templates if isinstance(templates, TemplateSet) else load_templates(templates)
    _PLANNER = QAPlanner(loaded, seed)


def _convert(task: tuple[Case, SourceMeta, SplitRatios]) -> tuple[str, Any]:
    case, meta, ratios = task
    assert _PLANNER is not None, "worker not initialised"
    try:
        return "converted", convert_case(case, meta, _PLANNER, ratios)
    except CaseError as exc:
        return "skipped", str(exc)
    except PixelError as exc:
        return "failed", str(exc)
    except Exception as exc:  # noqa: BLE001 - any other error fails this case, not the build
        return "failed", f"{type(exc).__name__}: {exc}"


# -- parent side -------------------------------------------------------------------------


def _discover(config: BuildConfig) -> list[tuple[SourceRequest, Case | Problem]]:
    found = []
    names = [r.source.name for r in config.sources]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise BuildError(f"source(s) given twice: {', '.join(duplicates)}")
    for request in config.sources:
        if not request.data_root.exists():
            raise BuildError(
                f"data root {request.data_root} for {request.source.name} does not exist"
            )
        try:
            found += [(request, item) for item in request.source.discover(request.data_root)]
        except ValueError as exc:  # LayoutError, SpecError
            raise BuildError(f"{request.source.name}: {exc}") from exc
    return found


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def _prepare_out(config: BuildConfig) -> Path:
    out = config.out
    if out.exists() and any(out.iterdir()):
        if not config.overwrite:
            raise BuildError(f"output folder {out} is not empty (pass --overwrite to replace it)")
        if not (out / "manifest.json").is_file():
            raise BuildError(
                f"refusing to overwrite {out}: it is not an MMRS build (no manifest.json)"
            )
    staging = out.parent / f".{out.name}.partial"
    if staging.exists():
        shutil.rmtree(staging)
    (staging / "data").mkdir(parents=True)
    return staging


def _code_version() -> str:
    digest = hashlib.sha256()
    package = Path(__file__).resolve().parent
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes())
    return f"{__version__}+{digest.hexdigest()[:12]}"


def _file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def _results(
    config: BuildConfig, tasks: list[tuple[Case, SourceMeta, SplitRatios]], templates: TemplateSet
) -> Iterator[tuple[str, Any]]:
    """Converted cases in task order, from this process or a pool of workers."""
    if config.workers <= 1:
        _init_worker(templates, config.seed)
        yield from map(_convert, tasks)
        return
    # Forked workers inherit the compiled templates; spawned ones load them again.
    forked = multiprocessing.get_start_method() == "fork"
    initargs = (templates if forked else config.templates_dir, config.seed)
    with multiprocessing.Pool(config.workers, _init_worker, initargs) as pool:
        yield from pool.imap(_convert, tasks, chunksize=CHUNK)


def build(config: BuildConfig) -> BuildSummary:
    """Run a whole build; raises BuildError on bad arguments or, with strict, a bad case."""
    if not config.sources:
        raise BuildError("no source given (use --source NAME_OR_SPEC=DATA_ROOT)")
    templates = load_templates(config.templates_dir)
    discovered = _discover(config)
    staging = _prepare_out(config)
    try:
        summary = _build_into(config, staging, templates, discovered)
        previous = config.out.parent / f".{config.out.name}.previous"
        if config.out.exists():
            config.out.replace(previous)
        staging.replace(config.out)
        if previous.exists():
            shutil.rmtree(previous)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    summary.out = config.out
    return summary


def _build_into(
    config: BuildConfig,
    staging: Path,
    templates: TemplateSet,
    discovered: list[tuple[SourceRequest, Case | Problem]],
) -> BuildSummary:
    summary = BuildSummary(config.out)
    for request in config.sources:
        summary.sources[request.source.name] = SourceCounts()
    writers = {split: SplitWriter(staging / "data", split) for split in SPLITS}
    image_owner: dict[str, tuple[str, str, str]] = {}  # image_id -> (source, case, split)
    errors = (staging / "errors.jsonl").open("w")

    def record(
        request: SourceRequest, status: str, case_id: str | None, file: Path, reason: str
    ) -> None:
        counts = summary.sources[request.source.name]
        setattr(counts, status, getattr(counts, status) + 1)
        entry = {
            "source": request.source.name,
            "case_id": case_id,
            "file": _relative(file, request.data_root),
            "status": status,
            "reason": reason,
        }
        errors.write(json.dumps(entry, ensure_ascii=False) + "\n")
        if config.strict:
            raise BuildError(f"{request.source.name}: {entry['file']}: {reason} (--strict)")

    tasks = [
        (item, SourceMeta.of(request.source), config.ratios)
        for request, item in discovered
        if isinstance(item, Case)
    ]
    with (
        errors,
        tqdm(total=len(tasks), desc="build", unit="image", disable=not config.progress) as bar,
    ):
        results = _results(config, tasks, templates)
        for request, item in discovered:  # in discovery order, so --strict stops at the first
            summary.sources[request.source.name].discovered += 1
            if isinstance(item, Problem):
                record(request, "skipped", item.case_id, item.file, item.reason)
                continue
            status, result = next(results)
            bar.update()
            if status != "converted":
                record(request, status, item.case_id, item.image, result)
                continue
            assert isinstance(result, Converted)
            owner = image_owner.get(result.image_id)
            if owner is not None:
                record(
                    request,
                    "skipped",
                    item.case_id,
                    item.image,
                    f"identical image already converted as {owner[0]}/{owner[1]} ({owner[2]})",
                )
                continue
            image_owner[result.image_id] = (request.source.name, item.case_id, result.split)
            _count(summary, request, result)
            writers[result.split].add_image_rows(result.rows)

    for writer in writers.values():
        writer.close()
    (staging / "README.md").write_text(render_card(summary.as_dict(), config))
    (staging / "report.json").write_text(json.dumps(summary.as_dict(), indent=2) + "\n")
    _write_manifest(staging, config, templates, summary)
    return summary


def _count(summary: BuildSummary, request: SourceRequest, result: Converted) -> None:
    counts = summary.sources[request.source.name]
    counts.converted += 1
    counts.rows += len(result.rows)
    summary.images += 1
    for row in result.rows:
        summary.rows_per_split[row["split"]] += 1
        summary.rows_per_modality_split[(row["modality"], row["split"])] += 1
        summary.question_types[row["question_type"]] += 1
        if row["zone"] is not None:
            summary.zones[row["zone"]] += 1


def _write_manifest(
    staging: Path, config: BuildConfig, templates: TemplateSet, summary: BuildSummary
) -> None:
    files = {
        path.relative_to(staging).as_posix(): _file_hash(path)
        for path in sorted(staging.rglob("*"))
        if path.is_file()
    }
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
                    "license": r.source.license,
                }
                for r in config.sources
            ],
            "seed": config.seed,
            "split_ratios": vars(config.ratios),
            "min_component_fraction": MIN_COMPONENT_FRACTION,
            "templates_digest": templates.digest,
            "templates": templates.count(),
        },
        "counts": summary_dict["sources"],
        "images": summary_dict["images"],
        "rows_per_split": summary_dict["rows_per_split"],
        "files": files,
    }
    path = staging / "manifest.json"
    tmp = staging / ".manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    tmp.replace(path)
