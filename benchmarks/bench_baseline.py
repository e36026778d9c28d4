"""Benchmark of the baseline's tiny preset: training and evaluation speed on this machine.

Builds a phantom data set of four sources in their native layouts (Kvasir-SEG, BUSI,
Montgomery, an MSD CT task; or --dataset an existing build), then for each batch size runs
`mmrs train --preset tiny` as its own process for --steps steps and reports, from the run's
log: training samples/s, the share of a step spent waiting for data, and the process's peak
RSS (the largest of its processes, DataLoader workers included, from getrusage). Then it
scores the test split with `evaluate` (the trained checkpoint and `prior`): rows/s of the
checkpoint (batched greedy generation with the KV cache) and the share spent in the metrics.

    python benchmarks/bench_baseline.py [--images 400] [--steps 60] [--batch-sizes 8 16]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def phantom_build(root: Path, images: int) -> Path:
    from pipeline.build.run import BuildConfig, parse_source_arg, run_build
    from pipeline.demo import write_busi, write_kvasir, write_montgomery, write_msd_ct

    share = max(1, images // 4)
    sources = [
        f"kvasir_seg={write_kvasir(root, share)}",
        f"busi={write_busi(root, share)}",
        f"montgomery={write_montgomery(root, share)}",
        f"msd={write_msd_ct(root, max(1, share // 3))}",  # three slices a volume
    ]
    out = root / "build"
    run_build(BuildConfig(tuple(parse_source_arg(s) for s in sources), out, progress=False))
    return out


# Runs `mmrs train` in a fresh process and prints the peak RSS of the largest process it
# had (itself or a DataLoader worker), from getrusage.
_MEASURED = """
import resource, sys
from pipeline.cli import main
code = main(sys.argv[1:])
peak = max(resource.getrusage(who).ru_maxrss
           for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
print("PEAK_RSS_KIB", peak)
sys.exit(code)
"""


def train_run(dataset: Path, out: Path, batch_size: int, steps: int, workers: int) -> dict:
    command = [
        sys.executable, "-c", _MEASURED, "train", str(dataset), "--preset", "tiny",
        "--out", str(out), "--max-steps", str(steps), "--batch-size", str(batch_size),
        "--num-workers", str(workers), "--val-every", str(steps), "--val-rows", "64", "-q",
    ]  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - started
    peak = int(done.stdout.rsplit("PEAK_RSS_KIB", 1)[1].split()[0])
    entries = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    last = [e for e in entries if "samples_per_s" in e][-1]
    return {
        "batch_size": batch_size,
        "steps": last["step"],
        "samples_per_s": round(last["samples_per_s"], 2),
        "data_wait_share": round(last["data_wait_share"], 3),
        "peak_rss_mib": round(peak / 1024, 1),
        "wall_s": round(wall, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, help="an existing build (default: phantoms)")
    parser.add_argument("--images", type=int, default=400, help="phantom images (400)")
    parser.add_argument("--steps", type=int, default=60, help="training steps a run (60)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers (2)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mmrs-bench-baseline-") as scratch:
        root = Path(scratch)
        dataset = args.dataset or phantom_build(root, args.images)
        runs = [
            train_run(dataset, root / f"run-{size}", size, args.steps, args.workers)
            for size in args.batch_sizes
        ]
        from baselines.evaluate import System, evaluate

        checkpoint = root / f"run-{args.batch_sizes[0]}" / "last"
        summary = evaluate(
            dataset,
            [System("tiny", checkpoint), System("prior", None)],
            root / "eval",
            workers=args.workers,
            overlays=0,
            progress=False,
        )
        timing = summary["timing"]["tiny"]
        result = {
            "train": runs,
            "evaluate": {
                "rows": timing["rows"],
                "rows_per_s": round(timing["rows"] / timing["seconds"], 2),
                "metrics_share": round(timing["scoring"] / timing["seconds"], 3),
            },
        }
    print(json.dumps(result, indent=2))
    print("\nbatch  samples/s  data wait  peak RSS MiB")
    for run in runs:
        print(
            f"{run['batch_size']:>5}  {run['samples_per_s']:>9}  {run['data_wait_share']:>9.1%}"
            f"  {run['peak_rss_mib']:>12}"
        )
    ev = result["evaluate"]
    print(f"evaluate (tiny): {ev['rows_per_s']} rows/s, {ev['metrics_share']:.1%} in the metrics")


if __name__ == "__main__":
    main()
