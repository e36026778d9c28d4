"""Publishing: the licence rule and the exact commit, with huggingface_hub intercepted."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.build.run import BuildConfig, SourceRequest, build
from pipeline.demo import write_kvasir, write_montgomery
from pipeline.release.publish import PublishError, publish
from pipeline.sources import REGISTRY

huggingface_hub = pytest.importorskip("huggingface_hub")


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """kvasir_seg (not redistributable) and montgomery (redistributable)."""
    root = tmp_path_factory.mktemp("publish-data")
    write_kvasir(root, 5, size=(96, 80))
    write_montgomery(root, 4, size=(96, 96))
    out = root / "out"
    sources = (
        SourceRequest(REGISTRY["kvasir_seg"], root / "Kvasir-SEG"),
        SourceRequest(REGISTRY["montgomery"], root / "MontgomerySet"),
    )
    build(BuildConfig(sources, out, progress=False))
    return out


@pytest.fixture()
def hub(monkeypatch) -> list[tuple[str, dict]]:
    """Every HfApi call, recorded at the boundary instead of reaching the Hub."""
    calls: list[tuple[str, dict]] = []

    def record(name: str):
        def method(self, *args, **kwargs):
            if name == "create_commit":  # read what would be sent, while the files exist
                kwargs["sent"] = {
                    op.path_in_repo: Path(op.path_or_fileobj).read_bytes()
                    for op in kwargs["operations"]
                }
            calls.append((name, {"args": args, **kwargs}))

        return method

    for name in ("create_repo", "create_branch", "create_commit"):
        monkeypatch.setattr(huggingface_hub.HfApi, name, record(name))
    return calls


def _pixels(data: bytes, tmp_path: Path) -> tuple[int, int]:
    path = tmp_path / "shard.parquet"
    path.write_bytes(data)
    table = pq.read_table(path, columns=["image", "mask"])
    images = [v for v in table.column("image").to_pylist() if v is not None]
    masks = [v for v in table.column("mask").to_pylist() if v is not None]
    return len(images), len(masks)


def test_commit_withholds_pixels_of_restricted_sources(built, hub, tmp_path) -> None:
    publish(built, "someone/mmrs", private=True, revision="v1")
    names = [name for name, _ in hub]
    assert names == ["create_repo", "create_branch", "create_commit"]
    assert hub[0][1]["repo_type"] == "dataset" and hub[0][1]["private"] is True
    commit = hub[2][1]
    assert commit["revision"] == "v1" and commit["repo_type"] == "dataset"
    manifest = json.loads((built / "manifest.json").read_text())
    expected = {s["path"] for s in manifest["shards"]} | set(manifest["files"])
    assert set(commit["sent"]) == expected | {"manifest.json", "REBUILD.md"}
    for shard in manifest["shards"]:
        images, masks = _pixels(commit["sent"][shard["path"]], tmp_path)
        rows = pq.ParquetFile(built / shard["path"]).metadata.num_rows
        if shard["source"] == "kvasir_seg":
            assert (images, masks) == (0, 0)  # rows kept, pixels withheld
        else:
            assert (images, masks) == (rows, rows)
            assert commit["sent"][shard["path"]] == (built / shard["path"]).read_bytes()
    rebuild = commit["sent"]["REBUILD.md"].decode()
    assert "kvasir_seg" in rebuild and "montgomery" not in rebuild
    assert "mmrs build --source kvasir_seg=" in rebuild


def test_rights_flag_uploads_every_file_as_built(built, hub) -> None:
    publish(built, "someone/mmrs", rights=True)
    commit = dict(hub)["create_commit"]
    assert "REBUILD.md" not in commit["sent"]
    for path, data in commit["sent"].items():
        assert data == (built / path).read_bytes()
    assert "create_branch" not in dict(hub)


def test_dry_run_touches_nothing(built, hub) -> None:
    uploads = publish(built, "someone/mmrs", dry_run=True)
    assert hub == []
    notes = {u.path_in_repo: u.note for u in uploads}
    assert any("not marked redistributable" in n for n in notes.values())


def test_bad_repo_ids_and_folders_are_clear_errors(built, tmp_path) -> None:
    with pytest.raises(PublishError, match="owner/name"):
        publish(built, "no-owner", dry_run=True)
    with pytest.raises(PublishError, match="no manifest.json"):
        publish(tmp_path, "someone/mmrs", dry_run=True)


def test_the_withheld_shards_still_load(built, hub, tmp_path) -> None:
    datasets = pytest.importorskip("datasets")
    publish(built, "someone/mmrs")
    folder = tmp_path / "repo"
    for path, data in dict(hub)["create_commit"]["sent"].items():
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_bytes(data)
    loaded = datasets.load_dataset(str(folder), "endoscopy")
    split = next(iter(loaded))
    assert loaded[split][0]["image"] is None and loaded[split][0]["question"]


def test_publish_cli_dry_run(built, prefect_api, capsys) -> None:
    from pipeline.cli import main

    assert main(["publish", str(built), "--repo-id", "someone/mmrs", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would upload to someone/mmrs" in out and "REBUILD.md" in out
