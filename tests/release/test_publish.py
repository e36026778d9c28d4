"""Publishing: the licence rule, the exact commit (huggingface_hub intercepted), and the
published copy: laid out as the Hub holds it, it validates; rebuilt, it validates complete."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.build.run import BuildConfig, SourceRequest, build
from pipeline.checks.folder import validate
from pipeline.demo import write_kvasir, write_montgomery
from pipeline.release.publish import PublishError, publish, strip_pixels
from pipeline.sources import REGISTRY, load_spec
from pipeline.store import file_digest

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
    sent = json.loads(commit["sent"]["manifest.json"])
    assert set(sent["files"]) == set(commit["sent"]) - {"manifest.json"}
    for path, digest in sent["files"].items():
        assert hashlib.sha256(commit["sent"][path]).hexdigest() == digest
    withheld = {s["path"] for s in manifest["shards"] if s["source"] == "kvasir_seg"}
    assert sent["withheld"] == {
        "sources": ["kvasir_seg"],
        "shards": {path: manifest["files"][path] for path in withheld},
    }
    root = str(built.parent)  # no local path in any text file sent
    assert not [p for p, data in commit["sent"].items() if root.encode() in data]
    card = commit["sent"]["README.md"].decode()
    assert "## Pixels withheld" in card and "| kvasir_seg |" in card.split("## Sources")[0]
    assert "mmrs restore-pixels . --from mmrs-local" in card
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
        if path != "manifest.json":  # written for the upload: the same, without data roots
            assert data == (built / path).read_bytes()
    manifest = json.loads((built / "manifest.json").read_text())
    for source in manifest["config"]["sources"]:
        del source["data_root"]
    assert json.loads(commit["sent"]["manifest.json"]) == manifest
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


def _download(hub: list[tuple[str, dict]], folder: Path) -> Path:
    """The commit's files laid out as the Hub holds them (and a download gives them)."""
    for path, data in dict(hub)["create_commit"]["sent"].items():
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_bytes(data)
    (folder / ".gitattributes").write_text("*.parquet filter=lfs diff=lfs merge=lfs -text\n")
    return folder


def test_the_withheld_shards_still_load(built, hub, tmp_path) -> None:
    datasets = pytest.importorskip("datasets")
    publish(built, "someone/mmrs")
    folder = _download(hub, tmp_path / "repo")
    loaded = datasets.load_dataset(str(folder), "endoscopy")
    split = next(iter(loaded))
    assert loaded[split][0]["image"] is None and loaded[split][0]["question"]


def test_publish_cli_dry_run(built, prefect_api, capsys) -> None:
    from pipeline.cli import main

    assert main(["publish", str(built), "--repo-id", "someone/mmrs", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would upload to someone/mmrs" in out and "REBUILD.md" in out


def test_a_downloaded_copy_validates_with_its_pixels_withheld(built, hub, tmp_path) -> None:
    publish(built, "someone/mmrs")
    folder = _download(hub, tmp_path / "repo")
    result = validate(folder)
    assert result.ok, result.violations
    manifest = json.loads((built / "manifest.json").read_text())
    assert result.withheld == sorted(
        s["path"] for s in manifest["shards"] if s["source"] == "kvasir_seg"
    )
    assert result.rows == sum(manifest["rows_per_split"].values())
    # A withheld shard is still checked: an answer changed in it (hash updated) is named.
    shard = folder / result.withheld[0]
    table = pq.read_table(shard)
    rows = table.to_pylist()
    at = next(i for i, r in enumerate(rows) if r["question_type"] == "position")
    rows[at]["answer"] = f"The {rows[at]['target']} is not in the {rows[at]['zone']}."
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), shard)
    sent = json.loads((folder / "manifest.json").read_text())
    sent["files"][result.withheld[0]] = hashlib.sha256(shard.read_bytes()).hexdigest()
    (folder / "manifest.json").write_text(json.dumps(sent))
    assert any("answer negates" in v for v in validate(folder).violations)


def test_pixels_missing_where_the_manifest_does_not_withhold_them_are_named(
    built, tmp_path
) -> None:
    folder = tmp_path / "copy"
    shutil.copytree(built, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    shard = next(s["path"] for s in manifest["shards"] if s["source"] == "montgomery")
    strip_pixels(built / shard, folder / shard)
    manifest["files"][shard] = hashlib.sha256((folder / shard).read_bytes()).hexdigest()
    (folder / "manifest.json").write_text(json.dumps(manifest))
    violations = validate(folder).violations
    assert any(
        v.startswith(f"{Path(shard).name} row group 0:")
        and "(the manifest withholds no pixels of this shard)" in v
        for v in violations
    ), violations


def test_a_set_that_does_not_validate_is_not_sent(built, hub, tmp_path) -> None:
    folder = tmp_path / "copy"
    shutil.copytree(built, folder)
    (folder / "report.json").write_text("{}")
    with pytest.raises(PublishError, match="report.json: content differs from the manifest's hash"):
        publish(folder, "someone/mmrs")
    shutil.copy(built / "report.json", folder / "report.json")
    manifest = json.loads((folder / "manifest.json").read_text())
    shard = next(s["path"] for s in manifest["shards"] if s["source"] == "kvasir_seg")
    with (folder / shard).open("ab") as handle:  # a shard whose pixels would be stripped
        handle.write(b"\0")
    unreadable = f"{Path(shard).name}: not a readable Parquet file"
    with pytest.raises(PublishError, match=f"the folder does not validate .*{unreadable}"):
        publish(folder, "someone/mmrs")
    assert hub == []


def test_a_withheld_shard_is_validated_with_its_pixels_before_anything_is_sent(
    built, hub, tmp_path
) -> None:
    """Rows whose mask is another image's agree with their own fact columns: only their
    pixels, which the upload leaves out, show them false."""
    folder = tmp_path / "copy"
    shutil.copytree(built, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    name = next(s["path"] for s in manifest["shards"] if s["source"] == "kvasir_seg")
    table = pq.read_table(folder / name)
    rows = table.to_pylist()
    other = next(r["mask"] for r in rows if r["image_id"] != rows[0]["image_id"])
    for row in rows:
        if row["image_id"] == rows[0]["image_id"]:
            row["mask"] = other
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), folder / name)
    manifest["files"][name] = file_digest(folder / name)
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
    with pytest.raises(PublishError, match="the folder does not validate"):
        publish(folder, "someone/mmrs")
    assert hub == []


SPEC = """name: my_polyps
modality: endoscopy
images: "images/*.jpg"
masks: "masks/{name}"
target: polyp
license: research use only
redistributable: false
"""


def test_a_published_spec_source_rebuilds_and_restores_to_complete(
    hub, tmp_path, prefect_api, capsys, monkeypatch
) -> None:
    """The card and REBUILD.md give a command that works in the downloaded copy, with the
    spec uploaded beside it; after the rebuild and restore-pixels, the copy is complete."""
    from pipeline.cli import main

    data = tmp_path / "data"
    write_kvasir(data, 5, size=(96, 80))
    write_montgomery(data, 3, size=(96, 96))
    spec = tmp_path / "my_polyps.yaml"
    spec.write_text(SPEC)
    sources = (
        SourceRequest(load_spec(spec), data / "Kvasir-SEG"),
        SourceRequest(REGISTRY["montgomery"], data / "MontgomerySet"),
    )
    built = tmp_path / "built"
    build(BuildConfig(sources, built, progress=False, batch_size=3))
    publish(built, "someone/mmrs")
    folder = _download(hub, tmp_path / "repo")
    assert (folder / "specs" / "my_polyps.yaml").read_text() == SPEC
    assert validate(folder).withheld
    rebuild = (folder / "REBUILD.md").read_text()
    command = next(line for line in rebuild.splitlines() if line.startswith("mmrs build"))
    assert "--source specs/my_polyps.yaml=/path/to/my_polyps" in command
    assert command in (folder / "README.md").read_text()
    monkeypatch.chdir(folder)
    args = command.replace("/path/to/my_polyps", str(data / "Kvasir-SEG")).split()[1:]
    assert main([*args, "-q"]) == 0
    shutil.move(folder / "mmrs-local", tmp_path / "mmrs-local")  # not part of the copy
    capsys.readouterr()
    assert main(["restore-pixels", ".", "--from", str(tmp_path / "mmrs-local")]) == 0
    assert "restored the pixels of" in capsys.readouterr().out
    result = validate(folder)
    assert result.ok, result.violations
    assert result.withheld == []  # complete: every fact re-derived from its mask
    for shard in json.loads((folder / "manifest.json").read_text())["withheld"]["shards"]:
        assert (folder / shard).read_bytes() == (built / shard).read_bytes()
