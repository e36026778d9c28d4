"""The `mmrs` command: build, validate, sources."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import __version__
from .build import BuildConfig, BuildError, SourceRequest, build
from .sources import REGISTRY, resolve_source
from .splits import SplitRatios
from .validate import validate


def _source_requests(args: argparse.Namespace) -> tuple[SourceRequest, ...]:
    requests = []
    for value in args.source:
        name, sep, root = value.partition("=")
        if not sep:
            if args.data_root is None or len(args.source) > 1:
                raise BuildError(
                    f"--source {value}: give its data root as --source {value}=DATA_ROOT "
                    f"(or --data-root DIR with a single --source)"
                )
            root = args.data_root
        try:
            source = resolve_source(name)
        except ValueError as exc:
            raise BuildError(str(exc)) from exc
        requests.append(SourceRequest(source, Path(root).expanduser()))
    return tuple(requests)


def _print_summary(summary: dict, out: Path) -> None:
    print(f"\nMMRS build: {out}")
    print(
        f"{'source':<16}{'discovered':>11}{'converted':>11}{'skipped':>9}{'failed':>8}{'rows':>9}"
    )
    for name, counts in summary["sources"].items():
        print(
            f"{name:<16}{counts['discovered']:>11}{counts['converted']:>11}"
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
    if any(c["skipped"] or c["failed"] for c in summary["sources"].values()):
        print(f"skipped and failed cases, with reasons: {out / 'errors.jsonl'}")


def _print_validation(result, folder: Path) -> None:
    if result.ok:
        print(f"valid: {folder} ({result.rows} rows, every fact re-derived from its mask)")
        return
    print(f"INVALID: {folder}: {result.violation_count} violation(s)", file=sys.stderr)
    for message in result.violations:
        print(f"  {message}", file=sys.stderr)


def cmd_build(args: argparse.Namespace) -> int:
    config = BuildConfig(
        sources=_source_requests(args),
        out=Path(args.out).expanduser(),
        seed=args.seed,
        workers=args.workers,
        strict=args.strict,
        ratios=SplitRatios.parse(args.split_ratios),
        templates_dir=Path(args.templates) if args.templates else None,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    summary = build(config)
    _print_summary(summary.as_dict(), config.out)
    result = validate(config.out, progress=not args.quiet, workers=config.workers)
    _print_validation(result, config.out)
    return 0 if result.ok else 1


def cmd_validate(args: argparse.Namespace) -> int:
    folder = Path(args.folder).expanduser()
    result = validate(folder, progress=not args.quiet, workers=args.workers)
    if args.json:
        print(json.dumps(result.as_dict(), indent=2))
    else:
        _print_validation(result, folder)
    return 0 if result.ok else 1


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
    print("\nAny other folder of 2D pairs: --source path/to/spec.yaml=DATA_ROOT (see README).")
    return 0


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
    b.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    b.add_argument("--strict", action="store_true", help="stop at the first bad case")
    b.add_argument(
        "--split-ratios",
        default="0.8,0.1,0.1",
        metavar="TRAIN,VAL,TEST",
        help="split ratios where a source has no official split (default 0.8,0.1,0.1)",
    )
    b.add_argument("--templates", help="folder of QA templates (default: the project's templates/)")
    b.add_argument(
        "--overwrite", action="store_true", help="replace an existing MMRS build in --out"
    )
    b.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    b.set_defaults(func=cmd_build)

    v = commands.add_parser("validate", help="check a built folder against the row contract")
    v.add_argument("folder")
    v.add_argument("--json", action="store_true", help="print the result as JSON")
    v.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    v.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    v.set_defaults(func=cmd_validate)

    s = commands.add_parser("sources", help="list the built-in sources")
    s.add_argument("--json", action="store_true", help="print the registry as JSON")
    s.set_defaults(func=cmd_sources)
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except (BuildError, ValueError, FileNotFoundError) as exc:
        print(f"mmrs: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
