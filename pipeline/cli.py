"""The `mmrs` command: build, validate, publish, restore-pixels, sources, and commands packages
add."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import sys
import tempfile
from collections.abc import Callable
from functools import partial
from itertools import islice
from pathlib import Path

from . import __version__
from .build.collector import long_lived, skip_collection_at_exit
from .build.output import check_folder_argument, check_out, hold, scratch_folder
from .build.run import (
    BATCH_SIZE,
    BuildConfig,
    BuildError,
    check_config,
    discover,
    parse_source_arg,
    plan_extract,
    render_settings,
)
from .build.stages import ConvertJob, ExtractJob, convert_batch, extract_batch
from .build.workers import (
    add_worker_options,
    at_least_one,
    cache_store,
    default_cache_dir,
    start_ahead,
    start_workers,
    starts_workers,
    without_heartbeats,
)
from .geometry.slicing import SLICE_AXES, parse_slice_policy
from .io.images import PNG_LEVEL
from .llm.client import API_KEY_ENV
from .llm.paraphrase import MODES, rewrite_config
from .qa.templates import load_templates, templates_digest
from .shards.plan import MAX_SHARD_BYTES
from .sources import REGISTRY
from .splits import SplitRatios

AHEAD_BATCHES = 2  # per worker: extracted while Prefect starts


def _source_args(args: argparse.Namespace) -> list[str]:
    """--source values as NAME_OR_SPEC=DATA_ROOT (a lone --source may use --data-root)."""
    values = []
    for value in args.source:
        if "=" not in value:
            if args.data_root is None or len(args.source) > 1:
                raise BuildError(
                    f"--source {value}: give its data root as --source {value}=DATA_ROOT "
                    f"(or --data-root DIR with a single --source)"
                )
            value = f"{value}={args.data_root}"
        values.append(value)
    return values


def _checked_config(args: argparse.Namespace, sources: list[str]) -> BuildConfig:
    """The build's configuration as far as it can be checked before Prefect starts: every
    source, numeric and folder argument (the flow makes its own from the same arguments)."""
    config = BuildConfig(
        tuple(parse_source_arg(v, slice_axis=args.slice_axis, slices=args.slices)
              for v in sources),
        Path(args.out).expanduser(),
        seed=args.seed,
        ratios=SplitRatios.parse(args.split_ratios),
        templates_dir=Path(args.templates).expanduser() if args.templates else None,
        overwrite=args.overwrite,
        batch_size=args.batch_size,
        max_shard_bytes=args.max_shard_size,
        png_level=args.png_level,
        cache_dir=cache_store(not args.no_cache, args.cache_dir),
    )  # fmt: skip
    if args.slices:  # for volume sources only, but never ignored when wrong
        parse_slice_policy(args.slices)
    check_config(config)
    return config


_UNITS = {None: 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}


def _shard_size(text: str) -> int:
    """'500MB', '2GB' or a number of bytes (decimal units, as `datasets` counts them)."""
    match = re.fullmatch(r"\s*(\d+)\s*([KMGT]?B)?\s*", text.upper())
    if not match or int(match[1]) < 1:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a size (a positive number of bytes, or of KB, MB, GB or TB)"
        )
    return int(match[1]) * _UNITS[match[2]]


def _prefect_console(verbose: bool) -> None:
    """Prefect's per-task log lines only with --verbose (the UI keeps them either way), and
    its embedded server's only when they are critical (builds that share it can make it
    report, with tracebacks, events it could not record while shutting down)."""
    if not verbose:
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
        os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "CRITICAL")


class _EngineNoise(logging.Filter):
    """Prefect's own report of an exception that ends a task or flow run (with its
    traceback, 20 to 200 lines): the exception reaches the user as one line anyway. And
    its background services' note, at exit, that they are still sending items ("Still
    processing items: N items remaining..."): they send them before the process ends."""

    def filter(self, record: logging.LogRecord) -> bool:
        engine = record.name.startswith(("prefect.flow_runs", "prefect.task_runs"))
        if engine and record.levelno >= logging.ERROR:
            return False
        return not str(record.msg).startswith("Still processing items")


ENGINE_NOISE = _EngineNoise()


def _engine_errors_on_console(verbose: bool) -> None:
    """Once Prefect is imported: its engine's error reports and shutdown notes on the
    console only with --verbose (the UI and the API keep the reports either way)."""
    from prefect.logging.handlers import PrefectConsoleHandler

    for handler in logging.getLogger().handlers:
        if isinstance(handler, PrefectConsoleHandler):
            if verbose:
                handler.removeFilter(ENGINE_NOISE)
            else:
                handler.addFilter(ENGINE_NOISE)


def _start_embedded_server() -> None:
    """Where no Prefect API is set, start Prefect's embedded server now, with SIGINT blocked:
    the server keeps that mask, so a terminal's Ctrl-C stops the command alone, whose flow
    run then records its end on a server still up; Prefect stops the server at exit.

    Started by the flow itself, the server shared the command's process group: Ctrl-C
    stopped it too, and the flow's client retried it for over a minute before a traceback.
    """
    from prefect import get_client
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        return  # a server of the user's, or none: the flow says so itself
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        with get_client(sync_client=True):  # starts the server the flow's clients then share
            pass  # (and closes this client's connections)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def _flow_runner(args: argparse.Namespace) -> dict:
    """The arguments build-mmrs and validate-mmrs share: who runs their tasks, with which
    cache, and whether they show progress."""
    return {
        "workers": args.workers,
        "runner": args.runner,
        "dask_address": args.dask_address,
        "cache": not args.no_cache,
        "cache_dir": args.cache_dir,
        "progress": not args.quiet,
    }


def _start_workers(args: argparse.Namespace, warm_up: Callable[[], object] | None = None) -> bool:
    """Start the worker processes before Prefect is imported: their start (and warm_up)
    overlaps that import. Whether they were (starts_workers: a build starts its one worker
    too, to convert its first batches while Prefect starts: _extract_ahead)."""
    if starts_workers(args.command, args):
        start_workers(args.workers, warm_up)
        return True
    return False


def _extract_ahead(
    args: argparse.Namespace, config: BuildConfig
) -> tempfile.TemporaryDirectory | None:
    """Give the workers started ahead the build's first batches (AHEAD_BATCHES each) to
    extract (without a cache: to convert) while Prefect starts; the flow's tasks of those
    batches take their results. Returns the scratch store to clean up after the build when
    it has no cache."""
    scratch = None if config.cache_dir is not None else scratch_folder(config.out, "ahead")
    store = config.cache_dir or Path(scratch.name)
    try:  # discovery stops once the first batches are planned: the flow discovers them all
        jobs = plan_extract(
            discover(config), config.batch_size, store, scratch is None, config.png_level
        )
        ahead = list(islice(jobs, AHEAD_BATCHES * args.workers))
        if scratch is not None:  # converted at once, with the settings the flow makes
            settings = render_settings(config, templates_digest(config.templates_dir))
            converts = [ConvertJob(job, settings) for job in ahead]
    except BaseException:  # a data root of the wrong layout, templates that cannot be read
        if scratch is not None:
            scratch.cleanup()
        raise
    if scratch is None:
        start_ahead(args.workers, extract_batch, ahead, ExtractJob.same_batch)
    elif args.rewrite != "expand-templates":  # that one renders with templates yet to come
        start_ahead(args.workers, convert_batch, converts, ConvertJob.same_batch)
    return scratch


def _print_summary(summary: dict, out: Path) -> None:
    print(f"\nMMRS build: {out}")
    width = max([16, *(len(name) + 2 for name in summary["sources"])])
    print(
        f"{'source':<{width}}{'discovered':>11}{'converted':>11}{'skipped':>9}{'failed':>8}"
        f"{'rows':>9}"
    )
    for name, counts in summary["sources"].items():
        print(
            f"{name:<{width}}{counts['discovered']:>11}{counts['converted']:>11}"
            f"{counts['skipped']:>9}{counts['failed']:>8}{counts['rows']:>9}"
        )
    print(
        f"images {summary['images']}, rows {summary['rows']}: "
        + ", ".join(f"{k} {v}" for k, v in summary["rows_per_split"].items())
    )
    print(
        "rows per modality/split: "
        + ", ".join(f"{k} {v}" for k, v in summary["rows_per_modality_split"].items())
    )
    print("question types: " + ", ".join(f"{k} {v}" for k, v in summary["question_types"].items()))
    if summary.get("rewrite"):
        _print_rewrite(summary["rewrite"], summary["llm_usage"])
    errors = out / "errors.jsonl"
    if errors.is_file() and errors.stat().st_size:  # cases, or slices of converted cases
        print(f"skipped and failed cases and slices, with reasons: {errors}")


def _print_rewrite(rewrite: dict, usage: dict) -> None:
    print(f"rewrite {rewrite['mode']} with {rewrite['model']} (prompt {rewrite['prompt_version']})")
    if "statuses" in rewrite:
        print("  rows: " + ", ".join(f"{k} {v}" for k, v in rewrite["statuses"].items()))
    if rewrite.get("rejected"):
        print("  rejected: " + ", ".join(f"{k} {v}" for k, v in rewrite["rejected"].items()))
    if "generated_templates" in rewrite:
        generated = rewrite["generated_templates"]
        print("  generated templates: " + ", ".join(f"{k} {v}" for k, v in generated.items()))
    for family, outcome in usage.get("expansion", {}).items():
        print(f"  asked for {family} variants: {outcome}")
    print(
        f"  requests {usage['requests']} (retries {usage['retries']}, 429s "
        f"{usage['rate_limited']}, failed {usage['failures']}), cache hits "
        f"{usage['cache_hits']}, tokens {usage['input_tokens']} in / "
        f"{usage['output_tokens']} out, cost ${usage['cost_usd']:.4f}"
        + (f", skipped for the budget {usage['budget_skips']}" if usage["budget_skips"] else "")
    )


def _print_validation(result: dict, folder: Path) -> None:
    withheld = result.get("withheld")
    if result["ok"] and withheld:
        print(
            f"valid: {folder} ({result['rows']} rows; pixels withheld by the manifest in "
            f"{len(withheld)} shard(s), whose rows are checked without them: see REBUILD.md)"
        )
        return
    if result["ok"]:
        print(f"valid: {folder} ({result['rows']} rows, every fact re-derived from its mask)")
        return
    print(f"INVALID: {folder}: {result['violation_count']} violation(s)", file=sys.stderr)
    for message in result["violations"]:
        print(f"  {message}", file=sys.stderr)


def cmd_build(args: argparse.Namespace) -> int:
    sources = _source_args(args)
    config = _checked_config(args, sources)  # fail before Prefect starts
    llm = {
        "llm_model": args.llm_model,
        "llm_base_url": args.llm_base_url,
        "llm_concurrency": args.llm_concurrency,
        "llm_rate_limit": args.llm_rate_limit,
        "llm_timeout": args.llm_timeout,
        "llm_retries": args.llm_retries,
        "llm_price_in": args.llm_price_in,
        "llm_price_out": args.llm_price_out,
        "llm_budget": args.llm_budget,
        "llm_budget_tokens": args.llm_budget_tokens,
        "llm_variants": args.llm_variants,
    }
    settings = {name.removeprefix("llm_"): value for name, value in llm.items()}
    if rewrite_config(args.rewrite, **settings) and not os.environ.get(API_KEY_ENV):
        raise BuildError(
            f"--rewrite {args.rewrite}: set {API_KEY_ENV} (any value for a local server "
            "that needs none)"
        )
    _prefect_console(args.verbose)
    with hold(config.out):  # before anything is written beside it; the flow's build nests
        check_out(config.out, config.overwrite)
        result = _run_build_flow(args, config, sources, llm)
    folder = Path(result["folder"])
    _print_summary(result["summary"], folder)
    _print_validation(result["validation"], folder)
    if folder != config.out:
        print(
            f"{config.out} keeps the build it held: the new one failed its checks (it stays "
            f"in {folder} until the next build into {config.out})",
            file=sys.stderr,
        )
    return 0 if result["validation"]["ok"] else 1


def _run_build_flow(
    args: argparse.Namespace, config: BuildConfig, sources: list[str], llm: dict
) -> dict:
    """The build-mmrs flow for the command's arguments (with workers started ahead)."""
    scratch = None
    warm_up = partial(load_templates, config.templates_dir)  # compiled early
    started = _start_workers(args, warm_up)
    if started:
        scratch = _extract_ahead(args, config)
    try:
        with long_lived():
            from flows import build_mmrs

            # matplotlib, for the card: while the workers start, where they do; else it is
            # imported beside the last shards' writing (build/run.py).
            if started:
                from .release import plots  # noqa: F401

        _engine_errors_on_console(args.verbose)
        _start_embedded_server()
        with without_heartbeats():
            return build_mmrs(
                sources=sources,
                out=args.out,
                seed=args.seed,
                strict=args.strict,
                split_ratios=args.split_ratios,
                templates=args.templates,
                overwrite=args.overwrite,
                batch_size=args.batch_size,
                max_shard_bytes=args.max_shard_size,
                png_level=args.png_level,
                slice_axis=args.slice_axis,
                slices=args.slices,
                rewrite=args.rewrite,
                **_flow_runner(args),
                **llm,
            )
    finally:
        if scratch is not None:
            scratch.cleanup()


def cmd_validate(args: argparse.Namespace) -> int:
    store = cache_store(not args.no_cache, args.cache_dir)
    if store is not None:
        check_folder_argument(store, "--cache-dir")
    _prefect_console(args.verbose)
    _start_workers(args)
    with long_lived():
        from flows import validate_mmrs

    _engine_errors_on_console(args.verbose)
    _start_embedded_server()
    with without_heartbeats():
        result = validate_mmrs(folder=args.folder, **_flow_runner(args))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _print_validation(result, Path(args.folder))
    return 0 if result["ok"] else 1


def cmd_publish(args: argparse.Namespace) -> int:
    _prefect_console(args.verbose)
    with long_lived():
        from flows import publish_mmrs

    _engine_errors_on_console(args.verbose)
    _start_embedded_server()
    files = publish_mmrs(
        folder=args.folder,
        repo_id=args.repo_id,
        private=args.private,
        revision=args.revision,
        dry_run=args.dry_run,
        i_hold_redistribution_rights=args.i_hold_redistribution_rights,
    )
    where = f"{args.repo_id}" + (f"@{args.revision}" if args.revision else "")
    print(f"{'would upload' if args.dry_run else 'uploaded'} to {where} (dataset):")
    for entry in files:
        print(f"  {entry['path']}  [{entry['note']}]")
    return 0


def cmd_restore_pixels(args: argparse.Namespace) -> int:
    from .release.publish import restore_pixels

    folder = Path(args.folder).expanduser()
    restored, missing = restore_pixels(folder, Path(args.rebuilt).expanduser())
    print(f"restored the pixels of {len(restored)} shard(s) in {folder}")
    for name in missing:
        print(f"  {name}: no shard of the rebuild is this one as built", file=sys.stderr)
    return 1 if missing else 0


def cmd_sources(args: argparse.Namespace) -> int:
    if args.json:
        print(
            json.dumps(
                {
                    name: {
                        "modality": s.modality,
                        "target": s.target,
                        "license": s.license,
                        "citation": s.citation,
                        "homepage": s.homepage,
                        "layout": s.layout,
                        "redistributable": s.redistributable,
                        "display": s.display.describe(),
                        "volume": s.volume.describe() if s.volume else None,
                        "described_by_dataset_json": s.bind is not None,
                    }
                    for name, s in REGISTRY.items()
                },
                indent=2,
            )
        )
        return 0
    for name, s in REGISTRY.items():
        print(f"{name}  [{s.modality}]  target: {s.target}")
        print(f"    layout:   {s.layout}")
        print(f"    licence:  {s.license}")
        print(f"    cite:     {s.citation}")
        print(f"    homepage: {s.homepage}")
    print(
        "\nAny other folder of 2D pairs or volumes: --source path/to/spec.yaml=DATA_ROOT "
        "(see README)."
    )
    return 0


def _png_level(value: str) -> int:
    """A zlib level, 0 (none) to 9 (smallest), for argparse."""
    try:
        level = int(value)
    except ValueError:
        level = -1
    if not 0 <= level <= 9:
        raise argparse.ArgumentTypeError(f"must be a zlib level from 0 to 9, got {value!r}")
    return level


def _runner_options(command: argparse.ArgumentParser) -> None:
    add_worker_options(command)
    command.add_argument("--cache-dir", help=f"task cache (default {default_cache_dir()})")
    command.add_argument(
        "--no-cache", action="store_true", help="neither reuse nor keep task results"
    )


def _rewrite_options(command: argparse.ArgumentParser) -> None:
    llm = command.add_argument_group(
        "LLM rewriting", f"any OpenAI-compatible endpoint; the key comes from ${API_KEY_ENV}"
    )
    llm.add_argument(
        "--rewrite", choices=MODES, default="none", help="rewrite mode (default none: templates)"
    )
    llm.add_argument("--llm-model", help="model name, e.g. gpt-4.1-mini")
    llm.add_argument("--llm-base-url", help="endpoint, e.g. http://127.0.0.1:8000/v1 (vLLM)")
    llm.add_argument(
        "--llm-concurrency", type=int, default=8, help="requests in flight (default 8)"
    )
    llm.add_argument("--llm-rate-limit", type=float, metavar="RPM", help="requests per minute")
    llm.add_argument(
        "--llm-timeout", type=float, default=60.0, help="seconds per request (default 60)"
    )
    llm.add_argument(
        "--llm-retries", type=int, default=5, help="retries on 429/5xx/timeouts (default 5)"
    )
    llm.add_argument(
        "--llm-price-in", type=float, default=0.0, metavar="USD", help="per 1M input tokens"
    )
    llm.add_argument(
        "--llm-price-out", type=float, default=0.0, metavar="USD", help="per 1M output tokens"
    )
    llm.add_argument("--llm-budget", type=float, metavar="USD", help="stop asking before this cost")
    llm.add_argument(
        "--llm-budget-tokens", type=int, metavar="N", help="stop asking before this many tokens"
    )
    llm.add_argument(
        "--llm-variants",
        type=int,
        default=2,
        help="expand-templates: variants asked per template (default 2)",
    )


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="mmrs", description=__doc__)
    root.add_argument("--version", action="version", version=f"mmrs {__version__}")
    commands = root.add_subparsers(dest="command", required=True)

    b = commands.add_parser("build", help="build MMRS from one or more sources")
    b.add_argument(
        "--source",
        action="append",
        required=True,
        metavar="NAME_OR_SPEC[=DATA_ROOT]",
        help="a registered source or a YAML spec, with its data root; repeatable",
    )
    b.add_argument("--data-root", help="data root of a single --source given without =DATA_ROOT")
    b.add_argument("--out", required=True, help="output folder")
    b.add_argument("--seed", type=int, default=0, help="seed of every QA choice (default 0)")
    _runner_options(b)
    b.add_argument("--strict", action="store_true", help="stop at the first bad case")
    b.add_argument(
        "--split-ratios",
        default="0.8,0.1,0.1",
        metavar="TRAIN,VAL,TEST",
        help="split ratios where a source has no official split (default 0.8,0.1,0.1)",
    )
    b.add_argument("--templates", help="folder of QA templates (default: the project's templates/)")
    b.add_argument(
        "--slice-axis",
        choices=SLICE_AXES,
        help="for volumes: the axis slices are cut along (default: each source's; axial)",
    )
    b.add_argument(
        "--slices",
        metavar="POLICY",
        help="for volumes: all, largest[:K] or stride[:N] (default: each source's; largest:3)",
    )
    b.add_argument(
        "--overwrite", action="store_true", help="replace an existing MMRS build in --out"
    )
    b.add_argument(
        "--batch-size",
        type=at_least_one,
        default=BATCH_SIZE,
        help=f"most cases per task, fewer near the build's end (default {BATCH_SIZE}); "
        "the output is the same for any",
    )
    b.add_argument(
        "--max-shard-size",
        type=_shard_size,
        default=MAX_SHARD_BYTES,
        metavar="SIZE",
        help="most bytes of one Parquet shard, e.g. 500MB or 2GB (default 500MB); each "
        "split of each source is cut into the fewest shards of at most this size",
    )
    b.add_argument(
        "--png-level",
        type=_png_level,
        default=PNG_LEVEL,
        metavar="0-9",
        help=f"zlib level of the images whose pixels are re-encoded (default {PNG_LEVEL})",
    )
    _rewrite_options(b)
    b.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    b.add_argument("-v", "--verbose", action="store_true", help="show Prefect's log lines")
    b.set_defaults(func=cmd_build)

    v = commands.add_parser("validate", help="check a built folder against the row contract")
    v.add_argument("folder")
    v.add_argument("--json", action="store_true", help="print the result as JSON")
    _runner_options(v)
    v.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    v.add_argument("-v", "--verbose", action="store_true", help="show Prefect's log lines")
    v.set_defaults(func=cmd_validate)

    p = commands.add_parser("publish", help="upload a built folder to the Hugging Face Hub")
    p.add_argument("folder")
    p.add_argument("--repo-id", required=True, help="dataset repository, owner/name")
    p.add_argument("--private", action="store_true", help="create the repository private")
    p.add_argument("--revision", help="branch to commit to (created if missing)")
    p.add_argument("--dry-run", action="store_true", help="list what would be uploaded, and where")
    p.add_argument(
        "--i-hold-redistribution-rights",
        action="store_true",
        help="upload the pixels of sources not marked redistributable too",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="show Prefect's log lines")
    p.set_defaults(func=cmd_publish)

    r = commands.add_parser(
        "restore-pixels",
        help="put rebuilt shards back into a published copy whose pixels are withheld",
    )
    r.add_argument("folder", help="the published copy (its manifest withholds pixels)")
    r.add_argument("--from", dest="rebuilt", required=True, help="the local rebuild (REBUILD.md)")
    r.set_defaults(func=cmd_restore_pixels)

    s = commands.add_parser("sources", help="list the built-in sources")
    s.add_argument("--json", action="store_true", help="print the registry as JSON")
    s.set_defaults(func=cmd_sources)
    _add_installed_commands(commands)
    return root


def _add_installed_commands(commands: argparse._SubParsersAction) -> None:
    """Commands that installed packages register under the `mmrs.commands` entry points
    (the baseline's train, predict and evaluate): the pipeline never imports them."""
    from importlib.metadata import entry_points

    for entry in sorted(entry_points(group="mmrs.commands"), key=lambda e: e.name):
        entry.load()(commands)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    skip_collection_at_exit()
    try:
        return args.func(args)
    except (BuildError, ValueError, OSError) as exc:  # the traceback: -v (Prefect's log)
        print(f"mmrs: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: what the command wrote beside its output is gone
        print("mmrs: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
