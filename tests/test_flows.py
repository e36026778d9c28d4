"""The Prefect flows: runners, caching, template-only re-renders, resume after a kill."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import pipeline.build.extract
import pipeline.shards.writer
from pipeline.demo import write_busi, write_kvasir

PROJECT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("flows-data")
    write_kvasir(root, 10, size=(120, 96))
    write_busi(root, 6, size=(120, 96))
    return root


def _sources(root: Path) -> list[str]:
    return [f"kvasir_seg={root / 'Kvasir-SEG'}", f"busi={root / 'Dataset_BUSI_with_GT'}"]


def _files(out: Path) -> dict[str, str]:
    return json.loads((out / "manifest.json").read_text())["files"]


@pytest.fixture()
def reads(monkeypatch) -> list[Path]:
    """Every source image the extract stage reads (threads run in this process)."""
    seen: list[Path] = []
    original = pipeline.build.extract.read_image

    def spy(path: Path, **kwargs):
        seen.append(path)
        return original(path, **kwargs)

    monkeypatch.setattr(pipeline.build.extract, "read_image", spy)
    return seen


@pytest.fixture()
def shard_writes(monkeypatch) -> list[Path]:
    """Every shard the write-shard stage writes (threads run in this process)."""
    written: list[Path] = []
    original = pipeline.shards.writer.write_shard

    def spy(path: Path, *args, **kwargs):
        written.append(path)
        return original(path, *args, **kwargs)

    monkeypatch.setattr(pipeline.shards.writer, "write_shard", spy)
    return written


def test_build_flow_then_unchanged_rerun_converts_nothing(
    prefect_api, data, tmp_path, reads, shard_writes
) -> None:
    from flows import build_mmrs

    cache = str(tmp_path / "cache")
    first = build_mmrs(_sources(data), str(tmp_path / "a"), batch_size=4, cache_dir=cache)
    assert first["validation"]["ok"], first["validation"]["violations"]
    assert len(reads) == 16
    assert len(shard_writes) == len([n for n in _files(tmp_path / "a") if n.startswith("data/")])
    reads.clear()
    shard_writes.clear()
    for name in ("b", "c"):  # the second run fills Prefect's cache records, the third uses them
        again = build_mmrs(_sources(data), str(tmp_path / name), batch_size=4, cache_dir=cache)
        assert again["summary"] == first["summary"]
    assert reads == [] and shard_writes == []
    assert _files(tmp_path / "a") == _files(tmp_path / "b") == _files(tmp_path / "c")


def test_a_corrupt_cached_part_is_rendered_again_under_prefects_cache(
    prefect_api, data, tmp_path
) -> None:
    """Prefect's cache records stand only while the store's entry passes its content check:
    one byte changed in a cached part (same inode, size and modification time) is caught."""
    from flows import build_mmrs
    from pipeline.store import CacheWarning

    cache = tmp_path / "cache"
    for name in ("a", "b"):  # the second run fills Prefect's cache records
        build_mmrs(_sources(data), str(tmp_path / name), batch_size=4, cache_dir=str(cache))
    part = sorted(cache.glob("parts/*/*.arrows"))[0]
    status = part.stat()
    with part.open("r+b") as handle:
        handle.seek(status.st_size // 2)
        byte = handle.read(1)
        handle.seek(status.st_size // 2)
        handle.write(bytes([byte[0] ^ 0xFF]))
    os.utime(part, ns=(status.st_atime_ns, status.st_mtime_ns))
    with pytest.warns(CacheWarning, match=part.name):
        again = build_mmrs(_sources(data), str(tmp_path / "c"), batch_size=4, cache_dir=str(cache))
    assert again["validation"]["ok"], again["validation"]["violations"]
    assert _files(tmp_path / "c") == _files(tmp_path / "a")


def test_template_change_rerenders_without_reading_images(
    prefect_api, data, tmp_path, reads
) -> None:
    from flows import build_mmrs

    templates = tmp_path / "templates"
    shutil.copytree(PROJECT / "templates", templates)
    cache = str(tmp_path / "cache")
    kwargs = {"batch_size": 8, "cache_dir": cache, "templates": str(templates)}
    build_mmrs(_sources(data), str(tmp_path / "before"), **kwargs)
    reads.clear()
    size = templates / "size.yaml"
    size.write_text(size.read_text().replace("{{ size }}", "{{ size }} (by area)"))
    after = build_mmrs(_sources(data), str(tmp_path / "after"), **kwargs)
    assert reads == []
    assert after["validation"]["ok"]
    assert _files(tmp_path / "before") != _files(tmp_path / "after")


@pytest.mark.parametrize("runner", ["threads", "processes", "dask"])
def test_every_runner_gives_the_same_bytes(prefect_api, data, tmp_path, runner) -> None:
    """Whatever the runner, workers and batch size (a unit of work, not of output)."""
    from flows import build_mmrs

    reference = build_mmrs(_sources(data), str(tmp_path / "one"), batch_size=4, cache=False)
    result = build_mmrs(
        _sources(data), str(tmp_path / runner), batch_size=3, workers=2, runner=runner, cache=False
    )
    assert result["summary"] == reference["summary"]
    assert _files(tmp_path / "one") == _files(tmp_path / runner)


def test_threads_runner_reads_on_worker_processes(prefect_api, data, tmp_path, reads) -> None:
    from flows import build_mmrs

    result = build_mmrs(_sources(data), str(tmp_path / "out"), batch_size=4, workers=2, cache=False)
    assert result["validation"]["ok"]
    assert result["summary"]["images"] > 0
    assert reads == []  # every image was read by a worker process, none by this one


def test_build_flow_validates_with_its_render_checks(
    prefect_api, data, tmp_path, monkeypatch
) -> None:
    import flows

    seen = []

    def recording(folder, **kwargs):
        seen.append(kwargs["checked"])
        return validate(folder, **kwargs)

    validate = flows.validate
    monkeypatch.setattr(flows, "validate", recording)
    out = tmp_path / "out"
    result = flows.build_mmrs(_sources(data), str(out), batch_size=4, workers=2, cache=False)
    assert result["validation"]["ok"]
    shards = {sha for name, sha in _files(out).items() if name.startswith("data/")}
    assert len(seen) == 1 and {sha for sha, _ in seen[0]} == shards  # from the worker processes


def test_validate_flow_reports_violations(prefect_api, data, tmp_path) -> None:
    from flows import build_mmrs, validate_mmrs

    out = tmp_path / "out"
    build_mmrs(_sources(data), str(out), batch_size=8, cache=False)
    assert validate_mmrs(str(out))["ok"]
    shard = sorted((out / "data").glob("train-*.parquet"))[0]
    shard.write_bytes(shard.read_bytes()[:-100] + b"\0" * 100)  # corrupt the footer
    result = validate_mmrs(str(out), cache=False)
    assert not result["ok"]
    assert any(shard.name in v for v in result["violations"])


def test_a_killed_build_resumes_to_identical_output(prefect_api, tmp_path) -> None:
    root = tmp_path / "data"
    write_kvasir(root, 60, size=(600, 500))
    env = {**os.environ, "PREFECT_API_URL": prefect_api}
    cache = tmp_path / "cache"

    def command(out: Path, cache_dir: Path) -> list[str]:
        return [
            sys.executable,
            "-m",
            "pipeline.cli",
            "build",
            "-q",
            "--batch-size",
            "3",
            "--source",
            f"kvasir_seg={root / 'Kvasir-SEG'}",
            "--out",
            str(out),
            "--cache-dir",
            str(cache_dir),
        ]

    process = subprocess.Popen(
        command(tmp_path / "resumed", cache), env=env, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 120
        while len(list((cache / "extract").glob("*.result.pkl"))) < 4:
            assert process.poll() is None, "the build ended before it could be killed"
            assert time.monotonic() < deadline, "no batch finished in time"
            time.sleep(0.02)
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not (tmp_path / "resumed").exists()
    done = len(list((cache / "extract").glob("*.result.pkl")))
    assert done < 20  # killed midway

    subprocess.run(command(tmp_path / "resumed", cache), env=env, check=True)
    subprocess.run(command(tmp_path / "straight", tmp_path / "cache2"), env=env, check=True)
    assert _files(tmp_path / "resumed") == _files(tmp_path / "straight")


def test_a_stage_keeps_only_its_window_of_jobs_submitted(monkeypatch) -> None:
    """A stage takes a job from its iterator only while fewer than `ahead` jobs beyond the
    one waited for are submitted; results come in job order."""
    import flows

    def stage(job: int) -> int:
        return job * 2

    monkeypatch.setitem(flows.STAGE_TASKS, stage, (stage, "test", "batch"))

    pulled: list[int] = []
    taken: list[int] = []

    class Done:  # a task run's future, its result noted when taken
        def __init__(self, value: int) -> None:
            self.value = value

        def result(self) -> int:
            taken.append(self.value)
            return self.value

    class Runner:
        def submit(self, task, parameters) -> Done:
            return Done(task(parameters["job"]))

    def jobs():
        for job in range(10):
            pulled.append(job)
            yield job

    in_flight = [len(pulled) - len(taken) for _ in flows._on(Runner(), False, 3)(stage, jobs())]
    assert taken == [job * 2 for job in range(10)]
    assert in_flight == [3] * 7 + [2, 1, 0]
