"""Benchmark of the data card: stats, plots and card for a large build (`make bench`).

A real build of phantom cases gives the shards; copies of them make a folder of the asked
number of rows (stats read only columns, so copies cost what real rows cost). Each size
runs in its own process, which reports its wall time and its peak RSS, so flat memory
shows as the same peak for 10,000 and 100,000 rows. Target: 100,000 rows in <= 60 s.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from pipeline.build.run import BuildConfig, SourceRequest, build  # noqa: E402
from pipeline.demo import write_kvasir  # noqa: E402
from pipeline.release.card import render_card  # noqa: E402
from pipeline.release.plots import write_plots  # noqa: E402
from pipeline.release.stats import collect_stats  # noqa: E402
from pipeline.sources import REGISTRY  # noqa: E402


def make_folder(root: Path, rows: int) -> Path:
    """A folder of about `rows` rows: one real build, its shards copied."""
    data = root / "data-src"
    write_kvasir(data, 300, size=(320, 256))
    base = root / "base"
    build(BuildConfig((SourceRequest(REGISTRY["kvasir_seg"], data / "Kvasir-SEG"),), base,
                      progress=False))  # fmt: skip
    manifest = json.loads((base / "manifest.json").read_text())
    per_copy = sum(manifest["rows_per_split"].values())
    copies = max(1, -(-rows // per_copy))
    big = root / "big"
    shutil.copytree(base, big)
    shards = sorted((base / "data").glob("*.parquet"))
    for copy in range(1, copies):
        for shard in shards:
            shutil.copyfile(shard, big / "data" / f"copy{copy:04d}-{shard.name}")
    (big / "rows.txt").write_text(str(copies * per_copy))
    return big


def measure(folder: Path) -> dict:
    """Stats, plots and card of a folder, timed in this process."""
    manifest = json.loads((folder / "manifest.json").read_text())
    config = BuildConfig((SourceRequest(REGISTRY["kvasir_seg"], folder),), folder)
    summary = json.loads((folder / "report.json").read_text())
    shards = manifest["shards"]
    start = time.perf_counter()
    stats = collect_stats(folder)
    shown = [folder / s["path"] for s in shards]
    figures = write_plots(stats, folder / "plots-bench", shown)
    card = render_card(
        summary, [r.source for r in config.sources], config.seed, config.ratios, shards, 60,
        manifest["code_version"], stats,
        {name: path.name for name, path in figures.items()},
    )  # fmt: skip
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"rows": stats.rows, "seconds": seconds, "peak_rss_mb": peak_mb, "card": len(card)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="10000,100000", help="row counts (10000,100000)")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # child mode
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.measure)))
        return 0
    results = []
    for rows in (int(r) for r in args.rows.split(",")):
        with tempfile.TemporaryDirectory(prefix="mmrs-bench-card-") as scratch:
            folder = make_folder(Path(scratch), rows)
            done = subprocess.run(
                [sys.executable, __file__, "--measure", str(folder)],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"{'rows':>8}{'seconds':>9}{'peak RSS MB':>13}")
    for result in results:
        print(f"{result['rows']:>8}{result['seconds']:>9.2f}{result['peak_rss_mb']:>13.0f}")
    largest = results[-1]
    verdict = "ok" if largest["seconds"] <= 60 else "MISSED"
    print(f"card, stats and plots for {largest['rows']} rows: {largest['seconds']:.2f} s "
          f"(target <= 60 s: {verdict}); peak RSS {results[0]['peak_rss_mb']:.0f} -> "
          f"{largest['peak_rss_mb']:.0f} MB")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
