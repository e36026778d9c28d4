"""Benchmark of the LLM rewrite stage against a local OpenAI-compatible server.

Every answer of the server takes --latency seconds (default 0.2). Renders --cases phantom
Kvasir-SEG cases once, then times the paraphrase stage alone:

- cold: every distinct question/answer pair asked at --concurrency (default 8);
- cached: the stage again with its stored results removed, so every row goes through the
  answer cache, the guard and the Parquet rewrite, and no request is sent.

Targets: >= 30 rewritten rows/s cold at concurrency 8 with 200 ms answers, >= 1,000 rows/s
cached.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fake_openai import FakeOpenAI, input_pair  # noqa: E402

from pipeline.build.run import BuildConfig, build, inline_runner, parse_source_arg  # noqa: E402
from pipeline.demo import write_kvasir  # noqa: E402
from pipeline.llm.paraphrase import rewrite_config  # noqa: E402
from pipeline.llm.stage import open_rewriting  # noqa: E402
from pipeline.shards.parts import RenderResult  # noqa: E402

TARGET_COLD, TARGET_CACHED = 30.0, 1000.0


def distinct(prompt: str) -> str:
    """A fact-preserving paraphrase (the benchmark measures the pipeline, not a model)."""
    pair = input_pair(prompt)
    return json.dumps(
        {"question": f"In this picture: {pair['question']}", "answer": pair["answer"]}
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=80)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    os.environ.setdefault("OPENAI_API_KEY", "sk-benchmark-local")
    scratch = Path(tempfile.mkdtemp(prefix="mmrs-bench-rewrite-"))
    try:
        write_kvasir(scratch / "data", args.cases, size=(600, 500))
        source = parse_source_arg(f"kvasir_seg={scratch / 'data' / 'Kvasir-SEG'}")
        cache = scratch / "cache"
        config = BuildConfig(
            sources=(source,), out=scratch / "out", progress=False, batch_size=16,
            cache_dir=cache, overwrite=True,
        )  # fmt: skip
        build(config)  # extract and render once; the stage reads the render results
        rendered = _render_results(cache)
        rows = sum(part.rows for result in rendered for part in result.parts)
        timings = {}
        with FakeOpenAI(distinct, latency=args.latency) as fake:
            rewrite = rewrite_config(
                "paraphrase", "bench-model", fake.base_url, concurrency=args.concurrency
            )
            for name in ("cold", "cached"):
                shutil.rmtree(cache / "rewrite", ignore_errors=True)  # stored stage results
                with open_rewriting(rewrite) as llm:
                    start = time.perf_counter()
                    results = llm.paraphrase(rendered, cache, inline_runner(False, name))
                    seconds = time.perf_counter() - start
                    timings[name] = (seconds, llm.usage()["requests"], llm.report()["statuses"])
                assert len(results) == len(rendered)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"rewrite benchmark: {args.cases} cases, {rows} rows, server latency "
          f"{args.latency * 1000:.0f} ms, concurrency {args.concurrency}")  # fmt: skip
    print(f"{'run':<8}{'requests':>10}{'seconds':>10}{'rows/s':>10}{'target':>10}{'ratio':>8}")
    for name, target in (("cold", TARGET_COLD), ("cached", TARGET_CACHED)):
        seconds, requests, statuses = timings[name]
        rate = rows / seconds
        print(
            f"{name:<8}{requests:>10}{seconds:>10.2f}{rate:>10.0f}{target:>10.0f}"
            f"{rate / target:>8.2f}   {statuses}"
        )
    seconds, requests, _ = timings["cold"]
    print(f"cold: {requests / seconds:.1f} requests/s ({requests} distinct pairs for {rows} rows;"
          f" the ceiling is {args.concurrency / args.latency:.0f}/s)")  # fmt: skip
    print(f"peak RSS {peak:.0f} MiB")


def _render_results(cache: Path) -> list[RenderResult]:
    results = []
    for path in sorted((cache / "parts").glob("*/result.pkl")):
        with path.open("rb") as handle:
            results.append(pickle.load(handle))
    return results


if __name__ == "__main__":
    main()
