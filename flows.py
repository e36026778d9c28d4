"""Prefect flows: `build-mmrs`, `validate-mmrs`, `publish-mmrs`, and the baseline's
`train-baseline` and `evaluate-baseline`.

The stages are plain library functions (pipeline/); this module only wires them. Each batch
of cases is one task (extract, render; or convert, both at once, in a build without a
cache), each Parquet shard one task that writes it and one validation task. A task's cache
key is its job's content key (input file hashes,
configuration, the code that produces it), used while its result is in the store, so an
unchanged re-run converts nothing, a template change re-renders without reading images, and
a killed build resumes.
Tasks run on the chosen task runner: threads (of this process, whose CPU-bound
work goes to --workers worker processes when there are several), processes, or Dask (a
LocalCluster or --dask-address). With --rewrite, the LLM stages (`rewrite-batch`,
`expand-templates`) run on threads of the flow's process whatever the runner: they wait on
the network, and one client holds the build's concurrency limit, rate limit and budget.
Nothing secret is a parameter: the LLM key comes from OPENAI_API_KEY or a Secret block
named by a parameter.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sized
from pathlib import Path
from typing import Any

from pipeline.build.workers import (
    apply_prefect_defaults,
    cache_store,
    in_flight,
    make_task_runner,
    on_worker,
    worker_pool,
)

apply_prefect_defaults()

from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.artifacts import create_markdown_artifact, create_table_artifact  # noqa: E402
from prefect.cache_policies import CachePolicy  # noqa: E402
from prefect.task_runners import ThreadPoolTaskRunner  # noqa: E402
from prefect.utilities.annotations import quote  # noqa: E402
from tqdm import tqdm  # noqa: E402

from pipeline.build.run import (  # noqa: E402
    BATCH_SIZE,
    BuildConfig,
    BuildError,
    BuildSummary,
    parse_source_arg,
    run_build,
)
from pipeline.build.stages import (  # noqa: E402
    Converted,
    ConvertJob,
    ExtractJob,
    ExtractResult,
    RenderJob,
    ShardWriteJob,
    ShardWritten,
    convert_batch,
    extract_batch,
    render_batch,
    write_shard_job,
)
from pipeline.checks.folder import ShardJob, ValidationResult, check_job, validate  # noqa: E402
from pipeline.checks.shard import ShardResult  # noqa: E402
from pipeline.io.images import PNG_LEVEL  # noqa: E402
from pipeline.llm.expand import expand_family  # noqa: E402
from pipeline.llm.paraphrase import rewrite_batch, rewrite_config  # noqa: E402
from pipeline.release.publish import publish  # noqa: E402
from pipeline.shards.parts import RenderResult  # noqa: E402
from pipeline.shards.plan import MAX_SHARD_BYTES  # noqa: E402
from pipeline.splits import SplitRatios  # noqa: E402
from pipeline.store import StageRunner  # noqa: E402


class StoredJob(CachePolicy):
    """Cache key = the job's content key in its store, as long as its result is there (and,
    for jobs that can check theirs, passes its content checks: see build/stages.py).

    The store is part of the key: a cached result names files in the store it came from.
    """

    def compute_key(self, task_ctx, inputs, flow_parameters, **kwargs) -> str | None:
        job = inputs["job"]
        if isinstance(job, quote):
            job = job.unquote()
        if getattr(job, "store", None) is None:
            return None
        key = job.key
        stored = job.cached(key) if hasattr(job, "cached") else job.result(key).is_file()
        if not stored:
            return None
        return hashlib.sha256(f"{key}|{Path(job.store).resolve()}".encode()).hexdigest()


# The CPU-bound stages, on the build's worker processes where it has them (module-level
# functions, so that process and Dask runners import them by name).
def extract_on_worker(job: ExtractJob) -> ExtractResult:
    return on_worker(extract_batch, job)


def convert_on_worker(job: ConvertJob) -> Converted:
    return on_worker(convert_batch, job)


def render_on_worker(job: RenderJob) -> RenderResult:
    return on_worker(render_batch, job)


def shard_on_worker(job: ShardWriteJob) -> ShardWritten:
    return on_worker(write_shard_job, job)


def check_on_worker(job: ShardJob) -> ShardResult:
    return on_worker(check_job, job)


extract_task = task(extract_on_worker, name="extract-batch", cache_policy=StoredJob())
convert_task = task(convert_on_worker, name="convert-batch", cache_policy=StoredJob())
render_task = task(render_on_worker, name="render-batch", cache_policy=StoredJob())
shard_task = task(shard_on_worker, name="write-shard", cache_policy=StoredJob())
check_task = task(check_on_worker, name="check-shard", cache_policy=StoredJob())
# Rows or families whose requests fail are recorded, not raised: retries are for I/O.
rewrite_task = task(
    rewrite_batch, name="rewrite-batch", cache_policy=StoredJob(), retries=2, retry_delay_seconds=5
)
expand_task = task(
    expand_family, name="expand-templates", cache_policy=StoredJob(), retries=2,
    retry_delay_seconds=5,
)  # fmt: skip
# Each stage's task, with the name and unit of its progress bar.
STAGE_TASKS = {
    extract_batch: (extract_task, "extract", "batch"),
    convert_batch: (convert_task, "convert", "batch"),
    render_batch: (render_task, "render", "batch"),
    write_shard_job: (shard_task, "shards", "shard"),
    check_job: (check_task, "validate", "shard"),
    rewrite_batch: (rewrite_task, "rewrite_batch", "batch"),
    expand_family: (expand_task, "expand_family", "family"),
}


def _on(task_runner, progress: bool, ahead: int) -> StageRunner:
    """A stage runner that runs each stage's jobs as its task (STAGE_TASKS) and keeps
    `ahead` jobs submitted to the task runner beyond the one whose result its caller waits
    for: the workers always have their next jobs, and the jobs are taken from their
    iterator (for extract: discovery) only that far ahead. Results in job order."""

    # A job holds every case of its batch: quoted, Prefect does not walk it for futures.
    # Threads only: Dask delivers the quote as a plain tuple.
    wrap = quote if isinstance(task_runner, ThreadPoolTaskRunner) else (lambda job: job)

    def run(stage: Callable[[Any], Any], jobs: Iterable[Any]) -> Iterator[Any]:
        prefect_task, desc, unit = STAGE_TASKS[stage]
        submitted = (
            task_runner.submit(prefect_task, parameters={"job": wrap(job)}) for job in jobs
        )
        total = len(jobs) if isinstance(jobs, Sized) else None  # else known at the end
        bar = tqdm(total=total, desc=desc, unit=unit, disable=not progress)
        return _results(submitted, ahead, bar)

    return run


def _results(submitted: Iterator[Any], ahead: int, bar: tqdm) -> Iterator[Any]:
    """Each future's result in order, submitting at most `ahead` futures beyond the one
    waited for; a future is let go once its result is taken, so the build holds only the
    results its caller keeps. The bar learns its total once every job is submitted."""
    futures: deque = deque()
    with bar:
        for future in submitted:
            futures.append(future)
            if len(futures) > ahead:
                yield _taken(futures, bar)
        bar.total = bar.n + len(futures)
        bar.refresh()
        while futures:
            yield _taken(futures, bar)


def _taken(futures: deque, bar: tqdm) -> Any:
    result = futures.popleft().result()
    bar.update()
    return result


def _report_validation(result: ValidationResult, folder: str) -> None:
    lines = [f"# Validation of `{folder}`", "", f"- rows: {result.rows}"]
    lines += [f"- {split}: {rows} rows" for split, rows in sorted(result.rows_per_split.items())]
    lines.append(f"- violations: {result.violation_count}")
    lines += [f"  - {message}" for message in result.violations]
    create_markdown_artifact("\n".join(lines), key="mmrs-validation", description="mmrs validate")


@flow(name="validate-mmrs", log_prints=True)
def validate_mmrs(
    folder: str,
    workers: int = 1,
    runner: str = "threads",
    dask_address: str | None = None,
    cache: bool = True,
    cache_dir: str | None = None,
    progress: bool = False,
) -> dict:
    """Check a built folder against the row contract (see pipeline/checks/folder.py)."""
    store = cache_store(cache, cache_dir)
    with (
        worker_pool(runner, workers, dask_address),
        make_task_runner(runner, workers, dask_address) as task_runner,
    ):
        ahead = in_flight(task_runner, workers)
        result = validate(
            Path(folder),
            store=store,
            run=_on(task_runner, progress, ahead),
        )
    _report_validation(result, folder)
    return result.as_dict()


@flow(name="build-mmrs", log_prints=True)
def build_mmrs(
    sources: list[str],
    out: str,
    seed: int = 0,
    workers: int = 1,
    runner: str = "threads",
    dask_address: str | None = None,
    strict: bool = False,
    split_ratios: str = "0.8,0.1,0.1",
    templates: str | None = None,
    overwrite: bool = False,
    batch_size: int = BATCH_SIZE,
    max_shard_bytes: int = MAX_SHARD_BYTES,
    png_level: int = PNG_LEVEL,
    cache: bool = True,
    cache_dir: str | None = None,
    check: bool = True,
    progress: bool = False,
    slice_axis: str | None = None,
    slices: str | None = None,
    rewrite: str = "none",
    llm_model: str | None = None,
    llm_base_url: str | None = None,
    llm_concurrency: int = 8,
    llm_rate_limit: float | None = None,
    llm_timeout: float = 60.0,
    llm_retries: int = 5,
    llm_price_in: float = 0.0,
    llm_price_out: float = 0.0,
    llm_budget: float | None = None,
    llm_budget_tokens: int | None = None,
    llm_variants: int = 2,
    llm_api_key_secret: str | None = None,
) -> dict:
    """Build MMRS from sources given as "NAME_OR_SPEC=DATA_ROOT"; validate it (check) before
    it replaces an earlier build in `out` (one that fails keeps the earlier build: the
    result's `folder` says where the new one is).

    slice_axis and slices (all, largest[:K], stride[:N]) override volume sources' own.
    rewrite: none | paraphrase | expand-templates (see pipeline/llm/paraphrase.py). The LLM key
    comes from OPENAI_API_KEY, or from the Prefect Secret block named llm_api_key_secret.
    """
    store = cache_store(cache, cache_dir)
    rewriting = rewrite_config(
        rewrite, llm_model, llm_base_url, llm_concurrency, llm_rate_limit, llm_timeout,
        llm_retries, llm_price_in, llm_price_out, llm_budget, llm_budget_tokens, llm_variants,
    )  # fmt: skip
    api_key = None
    if rewriting is not None and llm_api_key_secret:
        from prefect.blocks.system import Secret

        api_key = Secret.load(llm_api_key_secret).get()
    config = BuildConfig(
        sources=tuple(parse_source_arg(v, slice_axis=slice_axis, slices=slices) for v in sources),
        out=Path(out).expanduser(),
        seed=seed,
        strict=strict,
        ratios=SplitRatios.parse(split_ratios),
        templates_dir=Path(templates).expanduser() if templates else None,
        overwrite=overwrite,
        progress=progress,
        batch_size=batch_size,
        max_shard_bytes=max_shard_bytes,
        png_level=png_level,
        cache_dir=store,
        rewrite=rewriting,
        check=check,
    )
    logger = get_run_logger()
    with (
        worker_pool(runner, workers, dask_address),
        make_task_runner(runner, workers, dask_address) as task_runner,
        make_task_runner("threads", workers) as llm_threads,
    ):
        ahead = in_flight(task_runner, workers)
        run = _on(task_runner, progress, ahead)  # the stages that convert and check

        def checked(folder: Path, built: BuildSummary) -> ValidationResult:
            """The build, validated in its staging folder: it replaces an earlier one only
            when valid."""
            return validate(
                folder,
                store=store,
                run=run,
                checked=built.checks,
                hash_threads=workers,
                known_hashes=built.hashes,
            )

        built = run_build(
            config,
            run,
            run,
            _on(llm_threads, progress, in_flight(llm_threads, workers)),
            api_key,
            checked if check else None,
            run_shards=run,
        )
    summary = built.as_dict()
    _report_build(summary, out)
    logger.info("built %s: %s rows", out, summary["rows"])
    validation = None
    if built.validation is not None:
        _report_validation(built.validation, out)
        validation = built.validation.as_dict()
    return {"summary": summary, "validation": validation, "folder": str(built.folder)}


def _report_build(summary: dict, out: str) -> None:
    table = [{"source": name, **counts} for name, counts in summary["sources"].items()]
    create_table_artifact(table, key="mmrs-build-sources", description=f"mmrs build {out}")
    rows = [
        {"modality/split": key, "rows": value}
        for key, value in summary["rows_per_modality_split"].items()
    ]
    create_table_artifact(rows, key="mmrs-build-rows", description="rows per modality x split")
    lines = [
        f"# MMRS build `{out}`",
        "",
        f"- images: {summary['images']}",
        f"- rows: {summary['rows']}",
        "",
        "## Zones",
        "",
    ]
    lines += [f"- {zone}: {count}" for zone, count in summary["zones"].items()]
    lines += ["", "## Question types", ""]
    lines += [f"- {kind}: {count}" for kind, count in summary["question_types"].items()]
    if summary.get("rewrite"):
        lines += ["", "## LLM rewrite", ""]
        lines += [f"- {key}: {value}" for key, value in summary["rewrite"].items()]
        lines += [f"- usage {key}: {value}" for key, value in summary["llm_usage"].items()]
    lines += ["", "## Errors", ""]
    lines += [
        f"- {name}: {c['skipped']} skipped, {c['failed']} failed (see errors.jsonl)"
        for name, c in summary["sources"].items()
    ]
    create_markdown_artifact("\n".join(lines), key="mmrs-build", description="build summary")


publish_task = task(publish, name="publish", retries=2, retry_delay_seconds=30)


@flow(name="publish-mmrs", log_prints=True)
def publish_mmrs(
    folder: str,
    repo_id: str,
    private: bool = False,
    revision: str | None = None,
    dry_run: bool = False,
    i_hold_redistribution_rights: bool = False,
) -> list[dict]:
    """Upload a built folder to the Hub as one commit (see pipeline/release/publish.py).

    The Hub token comes from HF_TOKEN or the login cache on the machine that runs this
    flow; it is never a parameter.
    """
    uploads = publish_task(
        Path(folder).expanduser(), repo_id, private, revision, dry_run,
        i_hold_redistribution_rights,
    )  # fmt: skip
    files = [{"path": u.path_in_repo, "note": u.note} for u in uploads]
    verb = "would upload" if dry_run else "uploaded"
    create_table_artifact(files, key="mmrs-publish", description=f"{verb} to {repo_id}")
    return files


@task(name="train")
def _train(config) -> dict:
    from baselines.prs_med.train import train

    return train(config)


@flow(name="train-baseline", log_prints=True)
def train_baseline(
    dataset: str,
    out: str,
    preset: str = "tiny",
    max_steps: int | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    device: str = "auto",
    seed: int = 0,
    resume: bool = False,
    val_every: int | None = None,
    balance: bool = False,
    overrides: dict | None = None,
) -> dict:
    """Train a baseline preset on a build folder (baselines/prs_med/train.py); the run's
    summary becomes an artifact. Multi-GPU runs go through `accelerate launch` instead."""
    from baselines.prs_med.presets import resolve
    from baselines.prs_med.train import TrainConfig

    settings = dict(overrides or {})
    for name, value in (("epochs", epochs), ("batch_size", batch_size), ("lr", lr)):
        if value is not None:
            settings[name] = value
    config = TrainConfig(
        dataset=Path(dataset).expanduser(),
        out=Path(out).expanduser(),
        preset=resolve(preset, settings),
        seed=seed,
        max_steps=max_steps,
        device=device,
        resume=resume,
        val_every=val_every,
        balance=balance,
        progress=False,
    )
    summary = _train(config)
    rows = [{"figure": key, "value": value} for key, value in summary.items()]
    create_table_artifact(rows, key="mmrs-train", description=f"train {preset} on {dataset}")
    return summary


@task(name="evaluate")
def _evaluate(dataset: str, systems: list[str], out: str, split: str, seed: int, device: str):
    from baselines.evaluate import evaluate, parse_system

    parsed = [parse_system(text) for text in systems]
    return evaluate(dataset, parsed, out, split=split, seed=seed, device=device, progress=False)


@flow(name="evaluate-baseline", log_prints=True)
def evaluate_baseline(
    dataset: str,
    systems: list[str],
    out: str,
    split: str = "test",
    seed: int = 0,
    device: str = "auto",
) -> dict:
    """Score systems (`prior`, NAME=CHECKPOINT) side by side (baselines/evaluate.py); the
    metrics table becomes an artifact."""
    summary = _evaluate(dataset, systems, out, split, seed, device)
    table = (Path(out) / "metrics.md").read_text()
    create_markdown_artifact(table, key="mmrs-evaluate", description=f"{split} of {dataset}")
    return summary


__all__ = [
    "BuildError",
    "build_mmrs",
    "evaluate_baseline",
    "publish_mmrs",
    "train_baseline",
    "validate_mmrs",
]
