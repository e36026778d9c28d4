"""Render workers check the parts they write; validation reuses a check only for the same bytes."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.build.run import BuildConfig, SourceRequest, build, run_build
from pipeline.checks import folder as validate_module
from pipeline.checks.folder import ShardJob, check_job, validate
from pipeline.demo import write_busi, write_kvasir
from pipeline.sources import REGISTRY


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("render-checks")
    write_kvasir(root, 7, size=(90, 72))
    write_busi(root, 5, size=(90, 72))
    return root


def _config(root: Path, out: Path, **kwargs) -> BuildConfig:
    sources = (
        SourceRequest(REGISTRY["kvasir_seg"], root / "Kvasir-SEG"),
        SourceRequest(REGISTRY["busi"], root / "Dataset_BUSI_with_GT"),
    )
    return BuildConfig(sources, out, progress=False, batch_size=4, **kwargs)


class Recorder:
    """A validate runner that records the shards it is asked to check, then checks them."""

    def __init__(self) -> None:
        self.shards: list[str] = []

    def __call__(self, stage, jobs: list[ShardJob]) -> list:
        self.shards += [job.shard.name for job in jobs]
        return [stage(job) for job in jobs]


def _manifest_hashes(out: Path) -> dict[str, str]:
    files = json.loads((out / "manifest.json").read_text())["files"]
    return {name: sha for name, sha in files.items() if name.startswith("data/")}


def test_every_shard_is_checked_once_by_its_render_worker(root: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    summary = build(_config(root, out))
    shards = _manifest_hashes(out)
    assert len(shards) > 3
    assert {sha for sha, _ in summary.checks} == set(shards.values())
    recorder = Recorder()
    result = validate(out, run=recorder, checked=summary.checks)
    assert result.ok, result.violations
    assert recorder.shards == []  # nothing left to check again
    # The same verdicts as checking every shard from scratch.
    fresh = Recorder()
    assert validate(out, run=fresh).as_dict() == result.as_dict()
    assert len(fresh.shards) == len(shards)
    for (sha, split), check in summary.checks.items():
        shard = next(out / name for name, digest in shards.items() if digest == sha)
        assert check == check_job(ShardJob(shard, split))


def test_the_progress_bar_shows_only_shards_left_to_check(
    root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    summary = build(_config(root, out))
    capsys.readouterr()
    assert validate(out, progress=True, checked=summary.checks).ok
    assert "validate" not in capsys.readouterr().err  # no empty "0shard" bar
    shards = len(_manifest_hashes(out))
    assert validate(out, progress=True).ok
    assert f"{shards}/{shards}" in capsys.readouterr().err


def test_a_shard_changed_after_render_is_checked_again(root: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    summary = build(_config(root, out))
    shard = sorted((out / "data").glob("train-*.parquet"))[0]
    table = pq.read_table(shard)
    rows = table.to_pylist()
    index = next(i for i, r in enumerate(rows) if r["question_type"] == "position")
    zone = rows[index]["zone"]
    rows[index]["answer"] = rows[index]["answer"].replace(
        zone, "lower right" if zone != "lower right" else "upper left"
    )
    pq.write_table(type(table).from_pylist(rows, schema=table.schema), shard)
    recorder = Recorder()
    result = validate(out, run=recorder, checked=summary.checks)
    assert recorder.shards == [shard.name]
    assert f"{shard.name}: content differs from the manifest's hash" in result.violations
    assert any(v.startswith(f"{shard.name} row ") and "states zone" in v for v in result.violations)


def test_a_reused_check_reports_under_the_shard_name(root: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    summary = build(_config(root, out))
    name, sha = next(iter(sorted(_manifest_hashes(out).items())))
    key = next(k for k in summary.checks if k[0] == sha)
    checks = {**summary.checks, key: replace(summary.checks[key], violations=["row 7: planted"])}
    result = validate(out, run=Recorder(), checked=checks)
    assert result.violations == [f"{Path(name).name} row 7: planted"]


def test_no_check_writes_the_same_shards_without_checks(root: Path, tmp_path: Path) -> None:
    checked, unchecked = tmp_path / "checked", tmp_path / "unchecked"
    assert build(_config(root, checked)).checks
    assert build(_config(root, unchecked, check=False)).checks == {}
    assert _manifest_hashes(checked) == _manifest_hashes(unchecked)


def _with_a_copy(root: Path, tmp_path: Path) -> tuple[Path, str]:
    """Kvasir-SEG with a copy of its first image (and mask) that sorts last; the first
    image's stem."""
    copy = tmp_path / "Kvasir-SEG"
    shutil.copytree(root / "Kvasir-SEG", copy)
    first = sorted((copy / "images").iterdir())[0]
    shutil.copy(first, copy / "images" / "zz_copy.jpg")  # sorts last: in the last batch
    shutil.copy(copy / "masks" / first.name, copy / "masks" / "zz_copy.jpg")
    return copy, first.stem


def _copy_left_out(summary, out: Path, first: str) -> None:
    counts = summary.sources["kvasir_seg"]
    assert (counts.discovered, counts.converted, counts.skipped) == (8, 7, 1)
    errors = [json.loads(line) for line in (out / "errors.jsonl").open()]
    assert [e["case_id"] for e in errors] == ["zz_copy"]
    assert errors[0]["reason"] == f"identical image already converted as kvasir_seg/{first}"


def test_each_batch_is_rendered_once_it_and_all_before_it_are_extracted(
    root: Path, tmp_path: Path
) -> None:
    """No barrier between the stages; a later batch's copy of an earlier image is left out."""
    copy, first = _with_a_copy(root, tmp_path)
    events: list[tuple[str, int]] = []

    def extract(stage, jobs):
        for job in list(jobs):
            events.append(("extracted", job.index))
            yield stage(job)

    def render(stage, jobs):
        submitted = []
        for job in jobs:
            events.append(("render", len(submitted)))
            submitted.append(job)
        return map(stage, submitted)

    config = BuildConfig(
        (SourceRequest(REGISTRY["kvasir_seg"], copy),), tmp_path / "out", progress=False,
        batch_size=3, cache_dir=tmp_path / "cache",
    )  # fmt: skip
    summary = run_build(config, extract, render)
    batches = len(events) // 2
    assert batches == 3
    assert events == [(kind, i) for i in range(batches) for kind in ("extracted", "render")]
    _copy_left_out(summary, tmp_path / "out", first)


def test_without_a_cache_a_batch_with_a_copy_is_converted_again_without_it(
    root: Path, tmp_path: Path
) -> None:
    """Without a cache each batch is converted at once; the batch holding a copy of an
    earlier image is extracted and rendered again, stage by stage, without it: the same
    output as a build with a cache."""
    copy, first = _with_a_copy(root, tmp_path)
    events: list[str] = []

    def run(stage, jobs):
        for job in jobs:
            events.append(stage.__name__)
            yield stage(job)

    config = BuildConfig(
        (SourceRequest(REGISTRY["kvasir_seg"], copy),), tmp_path / "out", progress=False,
        batch_size=3,
    )  # fmt: skip
    summary = run_build(config, run, run)
    assert events == ["convert_batch"] * 3 + ["extract_batch", "render_batch"]
    _copy_left_out(summary, tmp_path / "out", first)
    cached = replace(config, out=tmp_path / "cached", cache_dir=tmp_path / "cache")
    build(cached)
    assert _manifest_hashes(tmp_path / "out") == _manifest_hashes(tmp_path / "cached")


def test_validation_hashes_only_shards_whose_file_changed(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A build's parts keep their content hash by file identity; a rewritten file loses it."""
    out = tmp_path / "out"
    summary = build(_config(root, out))
    hashed: list[str] = []
    digest = validate_module.file_digest
    monkeypatch.setattr(  # the shards' hashes (the records beside them are always hashed)
        validate_module,
        "file_digest",
        lambda path: (path.suffix == ".parquet" and hashed.append(path.name)) or digest(path),
    )
    kwargs = {"checked": summary.checks, "known_hashes": summary.hashes}
    assert validate(out, run=Recorder(), **kwargs).ok
    assert hashed == []
    shard = sorted((out / "data").glob("train-*.parquet"))[0]
    data = shard.read_bytes()
    shard.unlink()
    shard.write_bytes(data)  # the same bytes in a new file
    recorder = Recorder()
    assert validate(out, run=recorder, **kwargs).ok
    assert hashed == [shard.name]
    assert recorder.shards == []  # the same content: its check still stands


def _render_and_see_payloads(seen: list[bool]):
    """A render runner that records whether each batch's payload is still there after it."""

    def run(stage, jobs):
        for job in jobs:
            assert job.extract.payload.is_file()
            result = stage(job)
            seen.append(job.extract.payload.exists())
            yield result

    return run


def test_a_payload_of_this_build_only_is_deleted_once_rendered(root: Path, tmp_path: Path) -> None:
    """Without a cache, only a batch holding a copy of an earlier image has a payload (it
    is extracted again, then rendered); it goes once rendered. A cache keeps every one."""
    copy, _ = _with_a_copy(root, tmp_path)
    config = BuildConfig(
        (SourceRequest(REGISTRY["kvasir_seg"], copy),), tmp_path / "out", progress=False,
        batch_size=3,
    )  # fmt: skip
    scratch: list[bool] = []
    run_build(config, run_render=_render_and_see_payloads(scratch))
    assert scratch == [False]
    cached: list[bool] = []  # a cache keeps them for the next build
    config = replace(config, out=tmp_path / "cached", cache_dir=tmp_path / "cache")
    run_build(config, run_render=_render_and_see_payloads(cached))
    assert len(cached) == 3 and all(cached)
