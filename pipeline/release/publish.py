"""`mmrs publish`: one commit of a built folder to a dataset repository on the Hugging Face Hub.

Licence rule: the pixels of a source not marked redistributable (False or unknown) are
never uploaded unless the user states they hold the rights. Such a source's shards go up
as the same rows with `image` and `mask` emptied; the card gets a section saying whose
pixels are withheld and how to restore them, and REBUILD.md the exact rebuild (the spec
files it needs are in `specs/`, uploaded with the rest). The commit is staged as the Hub
will hold it, with a manifest written for exactly the files uploaded (their own hashes,
the withheld shards' hashes as built, no local path), and `mmrs validate` must pass on
that set before anything is sent. `restore_pixels` puts a rebuilt shard back into a
downloaded copy where it is, byte for byte, the shard as built. The token comes from the
environment (HF_TOKEN) or `huggingface-cli login`: never an argument, never logged.
"""

from __future__ import annotations

import copy
import json
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ..checks.folder import ValidationResult, validate
from ..checks.manifest import ManifestError, read_manifest
from ..schema import IMAGE_COLUMNS, schema_with_features
from ..store import StoreError, file_digest, place_file
from .card import with_withheld

REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
REPORTED = 10  # violations quoted in a refusal to publish


class PublishError(ValueError):
    """A folder or repository that cannot be published; the message says why."""


@dataclass(frozen=True)
class Upload:
    """One file of the commit: where it goes in the repository and where it comes from."""

    path_in_repo: str
    local: Path
    note: str


def strip_pixels(source: Path, target: Path) -> None:
    """Copy a shard with every image and mask emptied (null), a row group at a time, with
    the row contract's schema and features as every shard has them."""
    parquet = pq.ParquetFile(source)
    schema = parquet.schema_arrow.remove_metadata()
    target.parent.mkdir(parents=True, exist_ok=True)
    with pq.ParquetWriter(target, schema, compression="zstd", store_schema=False) as writer:
        writer.add_key_value_metadata(schema_with_features().metadata)
        for index in range(parquet.num_row_groups):
            table = parquet.read_row_group(index).cast(schema)
            for column in IMAGE_COLUMNS:
                position = table.schema.get_field_index(column)
                field = table.schema.field(column)
                table = table.set_column(position, field, pa.nulls(table.num_rows, field.type))
            writer.write_table(table)


def rebuild_command(manifest: dict[str, Any], restricted: list[dict[str, Any]]) -> str:
    """The `mmrs build` that gives the restricted sources' shards as built (run in the
    published folder: spec sources read `specs/`)."""
    config = manifest["config"]
    ratios = config["split_ratios"]
    sources = " ".join(
        f"--source {s.get('spec') or s['name']}=/path/to/{s['name']}" for s in restricted
    )
    settings = [
        f"--seed {config['seed']}",
        f"--split-ratios {ratios['train']},{ratios['validation']},{ratios['test']}",
    ]
    if "max_shard_bytes" in config:  # what cuts the shards (a build's batches do not)
        settings.append(f"--max-shard-size {config['max_shard_bytes']}")
    if "batch_size" in config:  # a build whose shards followed its batches
        settings.append(f"--batch-size {config['batch_size']}")
    if "png_level" in config:
        settings.append(f"--png-level {config['png_level']}")
    return f"mmrs build {sources} --out mmrs-local {' '.join(settings)}"


def _rebuild_note(manifest: dict[str, Any], restricted: list[dict[str, Any]]) -> str:
    config = manifest["config"]
    lines = [
        "# Rebuilding the pixels of restricted sources",
        "",
        "The licences of these sources do not allow republishing their images, so their rows",
        "are published without `image` and `mask`. Download each source from its homepage",
        "and rebuild with MMRS, in this folder; the same settings give the same shards, with",
        "their pixels, and `mmrs restore-pixels` puts each back where it is byte for byte the",
        "shard as built (its SHA-256 is in `manifest.json`, `withheld.shards`).",
        "",
    ]
    for source in restricted:
        lines += [
            f"## {source['name']} ({source['modality']})",
            "",
            f"- homepage: {source.get('homepage') or 'not given'}",
            f"- licence: {source['license']}",
            f"- layout the adapter reads: `{source.get('layout', '')}`",
        ]
        if source.get("spec"):
            lines.append(f"- read with the YAML spec `{source['spec']}` (uploaded here)")
        if source.get("volume"):
            lines.append(f"- volumes: {source['volume']} (pass --slice-axis/--slices if not")
            lines[-1] += " the source's own)"
        lines.append("")
    lines += [
        "```bash",
        rebuild_command(manifest, restricted),
        "mmrs restore-pixels . --from mmrs-local",
        "mmrs validate .",
        "```",
        "",
        f"Built with MMRS {manifest['code_version']}, templates {config['templates_digest'][:12]}",
        "(the default templates of that version; a build with other templates needs them).",
        "",
    ]
    return "\n".join(lines)


def _public_manifest(
    manifest: dict[str, Any], files: dict[str, str], withheld: dict[str, Any] | None
) -> dict[str, Any]:
    """The manifest of the files uploaded: their hashes, no local path (data roots go)."""
    public = copy.deepcopy(manifest)
    for source in public["config"]["sources"]:
        source.pop("data_root", None)
    public["files"] = dict(sorted(files.items()))
    public.pop("withheld", None)
    if withheld:
        public["withheld"] = withheld
    return public


def _link(local: Path, staged: Path) -> None:
    staged.parent.mkdir(parents=True, exist_ok=True)
    staged.symlink_to(local.resolve())


def plan_upload(folder: Path, scratch: Path, rights: bool = False) -> list[Upload]:
    """Stage every file of the commit under scratch/repo as the Hub will hold it (pixels
    removed where the licence rule says so; the folder validated in full first, as the
    staged set checks withheld rows without their pixels), validate that set, and return
    it."""
    try:
        manifest = read_manifest(folder)
    except ManifestError as exc:
        raise PublishError(f"{folder}: {exc}") from exc
    sources = {s["name"]: s for s in manifest["config"]["sources"]}
    restricted = (
        [] if rights else [s for s in sources.values() if s.get("redistributable") is not True]
    )
    blocked = {s["name"] for s in restricted}
    if restricted:  # the staged set holds their rows without pixels: check them with theirs
        _valid(folder, validate(folder), "the folder does not validate")
    repo = scratch / "repo"
    missing = [name for name in manifest["files"] if not (folder / name).is_file()]
    if missing:
        raise PublishError(f"{folder}: files named in manifest.json are missing: {missing}")
    uploads: list[Upload] = []
    withheld_shards: dict[str, str] = {}
    rows: dict[str, int] = {}
    shards = {s["path"]: s for s in manifest["shards"]}
    files = dict(manifest["files"])  # as built, checked by validate below; else made here
    for name in sorted(manifest["files"]):
        local, staged = folder / name, repo / name
        shard = shards.get(name)
        changed = (shard is not None and shard["source"] in blocked) or (
            name == "README.md" and restricted
        )
        if changed and file_digest(local) != manifest["files"][name]:
            raise PublishError(
                f"{local}: content differs from the manifest's hash; nothing was sent"
            )
        if shard is not None and shard["source"] in blocked:
            strip_pixels(local, staged)
            withheld_shards[name] = manifest["files"][name]
            rows[shard["source"]] = rows.get(shard["source"], 0) + pq.read_metadata(local).num_rows
            note = f"rows without pixels: {shard['source']} is not marked redistributable"
            uploads.append(Upload(name, staged, note))
        elif name == "README.md" and restricted:
            continue  # the card gets its section on the withheld pixels below
        else:
            _link(local, staged)
            uploads.append(Upload(name, local, "as built"))
    withheld = None
    if restricted:
        held = [shards[name]["source"] for name in withheld_shards]
        summary = [{**s, "shards": held.count(s["name"]), "rows": rows.get(s["name"], 0)}
                   for s in restricted]  # fmt: skip
        card = (folder / "README.md").read_text()
        card = with_withheld(card, summary, rebuild_command(manifest, restricted))
        (repo / "README.md").write_text(card)
        uploads.append(Upload("README.md", repo / "README.md", "data card, pixels withheld"))
        note = repo / "REBUILD.md"
        note.write_text(_rebuild_note(manifest, restricted))
        uploads.append(Upload("REBUILD.md", note, "how to rebuild the withheld pixels"))
        withheld = {"sources": sorted(blocked), "shards": withheld_shards}
    files.update({u.path_in_repo: file_digest(u.local) for u in uploads if u.note != "as built"})
    public = _public_manifest(manifest, files, withheld)
    (repo / "manifest.json").write_text(json.dumps(public, indent=2) + "\n")
    uploads.append(Upload("manifest.json", repo / "manifest.json", "for the files uploaded"))
    _valid(folder, validate(repo), "the files to upload do not validate")
    return sorted(uploads, key=lambda u: u.path_in_repo)


def _valid(folder: Path, result: ValidationResult, what: str) -> None:
    if not result.ok:
        quoted = "; ".join(result.violations[:REPORTED])
        raise PublishError(
            f"{folder}: {what} ({result.violation_count} violation(s): {quoted}); nothing was sent"
        )


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


def restore_pixels(folder: Path, rebuilt: Path) -> tuple[list[str], list[str]]:
    """Put back into a published copy each withheld shard that a rebuild (a built folder)
    holds byte for byte as it was built; returns the shards restored and those still
    withheld (their rebuild not found)."""
    try:
        manifest, built = read_manifest(folder), read_manifest(rebuilt)
    except ManifestError as exc:
        raise PublishError(str(exc)) from exc
    withheld = (manifest.get("withheld") or {}).get("shards", {})
    by_hash = {digest: name for name, digest in built["files"].items()}
    restored, missing = [], []
    for name, digest in sorted(withheld.items()):
        target = folder / name
        if target.is_file() and file_digest(target) == digest:
            continue  # restored already
        if digest not in by_hash:
            missing.append(name)
            continue
        staged = target.with_name(f".{target.name}.restore")
        try:
            place_file(rebuilt / by_hash[digest], staged, digest)
        except (StoreError, OSError) as exc:
            staged.unlink(missing_ok=True)
            raise PublishError(f"{rebuilt / by_hash[digest]}: {exc}") from exc
        staged.replace(target)
        restored.append(name)
    return restored, missing
