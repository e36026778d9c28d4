"""`mmrs publish`: one commit of a built folder to a dataset repository on the Hugging Face Hub.

Licence rule: the pixels of a source not marked redistributable (False or unknown) are
never uploaded unless the user states they hold the rights. Such a source's shards go up
as the same rows with `image` and `mask` emptied, and REBUILD.md tells how to rebuild
them locally from the original data with the same source adapter. The token comes from
the environment (HF_TOKEN) or `huggingface-cli login`: never an argument, never logged.
"""

from __future__ import annotations

import json
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ..schema import IMAGE_COLUMNS

REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")


class PublishError(ValueError):
    """A folder or repository that cannot be published; the message says why."""


@dataclass(frozen=True)
class Upload:
    """One file of the commit: where it goes in the repository and where it comes from."""

    path_in_repo: str
    local: Path
    note: str


def strip_pixels(source: Path, target: Path) -> None:
    """Copy a shard with every image and mask emptied (null), a row group at a time."""
    parquet = pq.ParquetFile(source)
    schema = parquet.schema_arrow
    target.parent.mkdir(parents=True, exist_ok=True)
    with pq.ParquetWriter(target, schema, compression="zstd") as writer:
        for index in range(parquet.num_row_groups):
            table = parquet.read_row_group(index, columns=None)
            for column in IMAGE_COLUMNS:
                position = table.schema.get_field_index(column)
                field = table.schema.field(column)
                table = table.set_column(position, field, pa.nulls(table.num_rows, field.type))
            writer.write_table(table)


def _rebuild_note(manifest: dict, restricted: list[dict]) -> str:
    config = manifest["config"]
    ratios = config["split_ratios"]
    lines = [
        "# Rebuilding the pixels of restricted sources",
        "",
        "The licences of these sources do not allow republishing their images, so their rows",
        "are published without `image` and `mask`. Download each source from its homepage",
        "and rebuild with MMRS; the same settings give the same rows, with their pixels.",
        "",
    ]
    for source in restricted:
        lines += [
            f"## {source['name']} ({source['modality']})",
            "",
            f"- homepage: {source.get('homepage') or 'not given'}",
            f"- licence: {source['license']}",
            f"- layout the adapter reads: `{source.get('layout', '')}`",
            "",
        ]
    sources = " ".join(f"--source {s['name']}=/path/to/{s['name']}" for s in restricted)
    lines += [
        "```bash",
        f"mmrs build {sources} --out mmrs-local --seed {config['seed']} "
        f"--split-ratios {ratios['train']},{ratios['validation']},{ratios['test']}",
        "```",
        "",
        f"Built with MMRS {manifest['code_version']}, templates {config['templates_digest'][:12]}.",
        "A source built from a YAML spec needs that spec (`--source spec.yaml=DATA_ROOT`).",
        "",
    ]
    return "\n".join(lines)


def plan_upload(folder: Path, scratch: Path, rights: bool = False) -> list[Upload]:
    """Every file of the commit, with pixels removed where the licence rule says so."""
    manifest_path = folder / "manifest.json"
    if not manifest_path.is_file():
        raise PublishError(f"{folder}: no manifest.json (not a finished MMRS build)")
    manifest = json.loads(manifest_path.read_text())
    sources = {s["name"]: s for s in manifest["config"]["sources"]}
    restricted = (
        [] if rights else [s for s in sources.values() if s.get("redistributable") is not True]
    )
    blocked = {s["name"] for s in restricted}
    uploads: list[Upload] = []
    shard_paths = set()
    for shard in manifest.get("shards", []):
        shard_paths.add(shard["path"])
        local = folder / shard["path"]
        if shard["source"] in blocked:
            stripped = scratch / shard["path"]
            strip_pixels(local, stripped)
            note = f"rows without pixels: {shard['source']} is not marked redistributable"
            uploads.append(Upload(shard["path"], stripped, note))
        else:
            uploads.append(Upload(shard["path"], local, "as built"))
    for relative in sorted(manifest["files"]):
        if relative not in shard_paths:
            uploads.append(Upload(relative, folder / relative, "as built"))
    uploads.append(Upload("manifest.json", manifest_path, "as built"))
    if restricted:
        note = scratch / "REBUILD.md"
        note.write_text(_rebuild_note(manifest, restricted))
        uploads.append(Upload("REBUILD.md", note, "how to rebuild the withheld pixels"))
    missing = [u.path_in_repo for u in uploads if not u.local.is_file()]
    if missing:
        raise PublishError(f"{folder}: files named in manifest.json are missing: {missing}")
    return uploads


def publish(
    folder: Path,
    repo_id: str,
    private: bool = False,
    revision: str | None = None,
    dry_run: bool = False,
    rights: bool = False,
) -> list[Upload]:
    """Upload a built folder as one commit (see the module docstring); returns the files."""
    if not REPO_ID.fullmatch(repo_id):
        raise PublishError(f"repo id must look like owner/name, got {repo_id!r}")
    with tempfile.TemporaryDirectory(prefix="mmrs-publish-") as scratch:
        uploads = plan_upload(folder, Path(scratch), rights)
        if dry_run:
            return uploads
        from huggingface_hub import CommitOperationAdd, HfApi

        api = HfApi()  # the token: HF_TOKEN or the login cache, never an argument
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        if revision:
            api.create_branch(repo_id, repo_type="dataset", branch=revision, exist_ok=True)
        operations = [
            CommitOperationAdd(path_in_repo=u.path_in_repo, path_or_fileobj=str(u.local))
            for u in uploads
        ]
        manifest = json.loads((folder / "manifest.json").read_text())
        api.create_commit(
            repo_id,
            operations=operations,
            commit_message=f"MMRS build ({manifest['code_version']})",
            repo_type="dataset",
            revision=revision,
        )
    return uploads
