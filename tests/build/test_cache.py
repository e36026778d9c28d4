"""The task cache: outputs independent of it, corrupt entries dropped and redone, relocatable."""

from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from pipeline.build import stages
from pipeline.build.run import BuildConfig, SourceRequest, build
from pipeline.checks.folder import validate
from pipeline.demo import write_kvasir
from pipeline.sources import REGISTRY
from pipeline.store import CacheWarning


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cache")
    write_kvasir(root, 6, size=(90, 72))
    return root


@pytest.fixture()
def extractions(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The case ids extracted (read from their source files) from here on."""
    seen: list[str] = []
    extract = stages.extract_case

    def counted(case, source):
        seen.append(case.case_id)
        return extract(case, source)

    monkeypatch.setattr(stages, "extract_case", counted)
    return seen


def _build(root: Path, out: Path, cache: Path) -> None:
    sources = (SourceRequest(REGISTRY["kvasir_seg"], root / "Kvasir-SEG"),)
    build(BuildConfig(sources, out, progress=False, batch_size=4, cache_dir=cache))


def _shards(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "data").glob("*.parquet"))}


def _flip_byte(path: Path, at: int) -> None:
    """Change one byte in place, keeping the file's inode, size and modification time."""
    before = path.stat()
    with path.open("r+b") as handle:
        handle.seek(at)
        byte = handle.read(1)
        handle.seek(at)
        handle.write(bytes([byte[0] ^ 0xFF]))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def test_an_output_edited_in_place_leaves_the_cache_as_it_was(root: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    _build(root, tmp_path / "a", cache)
    parts = {p.stat().st_ino for p in cache.rglob("*.parquet")}
    shard = sorted((tmp_path / "a" / "data").glob("*.parquet"))[0]
    assert shard.stat().st_ino not in parts and shard.stat().st_nlink == 1
    _flip_byte(shard, 100)
    with _no_cache_warning():
        _build(root, tmp_path / "b", cache)
    assert validate(tmp_path / "b").ok
    assert (
        f"{shard.name}: content differs from the manifest's hash"
        in validate(tmp_path / "a").violations
    )


def test_a_changed_byte_in_a_cached_part_is_dropped_and_rendered_again(
    root: Path, tmp_path: Path, extractions: list[str]
) -> None:
    cache = tmp_path / "cache"
    _build(root, tmp_path / "a", cache)
    part = sorted(cache.glob("parts/*/*.arrows"))[0]
    _flip_byte(part, part.stat().st_size // 2)  # same inode, size and mtime
    extractions.clear()
    with pytest.warns(CacheWarning, match=f"{part.name}: content differs from the hash"):
        _build(root, tmp_path / "b", cache)
    assert extractions == []  # only the render of that batch ran again
    assert _shards(tmp_path / "b") == _shards(tmp_path / "a")
    assert validate(tmp_path / "b").ok


def test_a_changed_byte_in_a_cached_shard_is_dropped_and_written_again(
    root: Path, tmp_path: Path, extractions: list[str]
) -> None:
    cache = tmp_path / "cache"
    _build(root, tmp_path / "a", cache)
    shard = sorted(cache.glob("shards/*/shard.parquet"))[0]
    _flip_byte(shard, shard.stat().st_size // 2)
    extractions.clear()
    with pytest.warns(CacheWarning, match=f"{shard.name}: content differs from the hash"):
        _build(root, tmp_path / "b", cache)
    assert extractions == []  # only that shard was written again
    assert _shards(tmp_path / "b") == _shards(tmp_path / "a")
    assert validate(tmp_path / "b").ok


def test_a_truncated_payload_is_dropped_and_extracted_again(
    root: Path, tmp_path: Path, extractions: list[str]
) -> None:
    cache = tmp_path / "cache"
    _build(root, tmp_path / "a", cache)
    payload = sorted(p for p in cache.glob("extract/*.pkl") if not p.name.endswith(".result.pkl"))
    with payload[0].open("r+b") as handle:
        handle.truncate(payload[0].stat().st_size // 2)
    extractions.clear()
    with pytest.warns(CacheWarning, match=f"{payload[0].name}: content differs"):
        _build(root, tmp_path / "b", cache)
    assert extractions and len(extractions) < 6  # that batch only (of 4 + 2 cases)
    assert _shards(tmp_path / "b") == _shards(tmp_path / "a")


def test_an_edited_stored_result_is_dropped(root: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    _build(root, tmp_path / "a", cache)
    result = sorted(cache.glob("parts/*/result.pkl"))[0]
    _flip_byte(result, result.stat().st_size - 3)
    with pytest.warns(CacheWarning, match="stored result does not match its hash"):
        _build(root, tmp_path / "b", cache)
    assert _shards(tmp_path / "b") == _shards(tmp_path / "a")


def test_a_copied_cache_serves_its_results_without_the_original(
    root: Path, tmp_path: Path, extractions: list[str]
) -> None:
    cache = tmp_path / "cache"
    _build(root, tmp_path / "a", cache)
    assert not [
        p for p in cache.rglob("*.pkl") if str(cache).encode() in p.read_bytes()
    ]  # no absolute path of the store in what it stores
    moved = tmp_path / "elsewhere" / "cache"
    shutil.copytree(cache, moved, symlinks=True)  # cp -a
    shutil.rmtree(cache)
    extractions.clear()
    with _no_cache_warning():
        _build(root, tmp_path / "b", moved)
    assert extractions == []
    assert _shards(tmp_path / "b") == _shards(tmp_path / "a")
    assert not cache.exists()


@contextmanager
def _no_cache_warning() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)
        yield
