"""Benchmark of the Prefect build (`python benchmarks/bench_flow.py`).

On N synthetic ISIC 2018 cases (600x500 JPEG + PNG mask, the same data as bench_build.py),
all in ONE process whose Prefect embedded API is started before any timing:

- library: the plain library call (pipeline.build.run.build + pipeline.checks.folder.validate), no
  Prefect at all: the reference for the orchestration overhead;
- cold: the build-mmrs flow (threads, 1 worker) on an empty task cache;
- warm: the same flow again, unchanged (second run: the store is hit, Prefect's cache
  records are written) and once more (third run: Prefect's cache records are used);
- templates: the flow after a change to one template file only (no image is read);
- dask 1 / dask 2: cold flows on a Dask LocalCluster of 1 and 2 worker processes.

Reported: seconds, images/s, overhead = cold / library - 1 (target <= 10 %), warm / cold
(target <= 10 %), template-only / cold, and the Dask 2-worker speed-up over 1 worker.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))
sys.path.insert(0, str(PROJECT / "benchmarks"))
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

from bench_build import write_cases  # noqa: E402

from flows import build_mmrs  # noqa: E402  (sets the project's Prefect defaults first)
from pipeline.build.run import BuildConfig, SourceRequest, build  # noqa: E402
from pipeline.checks.folder import validate  # noqa: E402
from pipeline.sources import REGISTRY  # noqa: E402


def timed(action) -> tuple[float, object]:
    start = time.perf_counter()
    value = action()
    return time.perf_counter() - start, value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=2000, help="synthetic cases (default 2000)")
    parser.add_argument("--batch-size", type=int, default=256, help="cases per task")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="mmrs-bench-flow-") as scratch:
        root = Path(scratch)
        data = root / "data"
        write_cases(data, args.cases, 0)
        source = f"isic2018={data}"
        templates = root / "templates"
        shutil.copytree(PROJECT / "templates", templates)

        def flow(out: str, cache: Path | None, **kwargs) -> dict:
            return build_mmrs(
                [source],
                str(root / f"out-{out}"),
                batch_size=args.batch_size,
                overwrite=True,
                templates=str(templates),
                cache=cache is not None,
                cache_dir=str(cache) if cache else None,
                **kwargs,
            )

        # Start Prefect's embedded API (and warm imports) outside every timing.
        warmup = root / "warmup"
        write_cases(warmup, 4, 1)
        build_mmrs([f"isic2018={warmup}"], str(root / "warmup-out"), cache=False)

        def library() -> None:
            config = BuildConfig(
                (SourceRequest(REGISTRY["isic2018"], data),),
                root / "library",
                batch_size=args.batch_size,
                templates_dir=templates,
                progress=False,
                overwrite=True,
            )
            build(config)
            assert validate(root / "library").ok

        figures: dict[str, float] = {}
        figures["library"], _ = timed(library)
        cache = root / "cache"
        figures["cold"], cold = timed(lambda: flow("cold", cache))
        figures["warm (2nd run)"], _ = timed(lambda: flow("warm2", cache))
        figures["warm (3rd run)"], _ = timed(lambda: flow("warm3", cache))
        size = templates / "size.yaml"
        size.write_text(size.read_text().replace("{{ size }}", "{{ size }} (by area)"))
        figures["template-only"], changed = timed(lambda: flow("templates", cache))
        figures["dask 1 worker"], _ = timed(lambda: flow("dask1", None, runner="dask", workers=1))
        figures["dask 2 workers"], _ = timed(lambda: flow("dask2", None, runner="dask", workers=2))
        assert cold["validation"]["ok"] and changed["validation"]["ok"]

    images = cold["summary"]["images"]
    print(
        f"\nMMRS flow benchmark: {args.cases} cases, {images} images, "
        f"{cold['summary']['rows']} rows, batch size {args.batch_size}, {os.cpu_count()} CPUs"
    )
    print(f"{'run':<18}{'seconds':>9}{'images/s':>10}")
    for name, seconds in figures.items():
        print(f"{name:<18}{seconds:>9.2f}{images / seconds:>10.1f}")
    ratios = {
        "orchestration overhead (cold / library - 1)": figures["cold"] / figures["library"] - 1,
        "warm re-run / cold (2nd run)": figures["warm (2nd run)"] / figures["cold"],
        "warm re-run / cold (3rd run)": figures["warm (3rd run)"] / figures["cold"],
        "template-only re-run / cold": figures["template-only"] / figures["cold"],
        "dask 2 workers speed-up over 1": figures["dask 1 worker"] / figures["dask 2 workers"],
    }
    for name, value in ratios.items():
        print(f"{name:<46}{value:>8.3f}")
    if args.json:
        args.json.write_text(json.dumps({"seconds": figures, "ratios": ratios}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
