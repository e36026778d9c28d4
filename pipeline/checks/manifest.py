"""The manifest and the records beside the shards: what `mmrs validate` checks besides rows.

manifest.json is read defensively (a file that is not the manifest a build writes is a list
of problems, never a traceback); its own counts, configuration and licences are checked
against what the shards hold (folder.py hands in each shard's counts), and the records a
build writes beside the shards against the manifest: `errors.jsonl` (one entry per case
skipped or failed), `report.json` (the build's counts) and the data card's `configs:`.
A published copy's manifest may name sources whose pixels are withheld (`withheld`): the
shards that still lack them and the content hash of each as built, with its pixels.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from ..splits import SPLITS

FORMAT = "mmrs/1"
COUNTS = ("discovered", "converted", "skipped", "failed", "rows")
SHA256 = re.compile(r"[0-9a-f]{64}")


class ManifestError(ValueError):
    """A manifest.json that is not one an MMRS build or publish writes; says where."""


def _need(value: Any, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise ManifestError(f"manifest.json: {where} must be {names}, not {type(value).__name__}")
    return value


def safe_path(path: str, where: str) -> str:
    """A relative POSIX path inside the folder (no "..", no absolute path, no backslash)."""
    pure = PurePosixPath(path)
    if not path or "\\" in path or pure.is_absolute() or ".." in pure.parts or "." in pure.parts:
        raise ManifestError(f"manifest.json: {where} {path!r} is not a path inside the folder")
    return path


def _sha256(value: Any, where: str) -> str:
    if not isinstance(value, str) or not SHA256.fullmatch(value):
        raise ManifestError(f"manifest.json: {where} is not a SHA-256 ({value!r})")
    return value


def read_manifest(folder: Path) -> dict[str, Any]:
    """The folder's manifest, its shape checked (ManifestError says what is wrong)."""
    path = folder / "manifest.json"
    if not path.is_file():
        raise ManifestError(f"{folder}: no manifest.json (not an MMRS build, or an unfinished one)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"manifest.json: not JSON ({exc})") from exc
    _need(manifest, dict, "the document")
    if manifest.get("format") != FORMAT:
        raise ManifestError(f"manifest.json: format is {manifest.get('format')!r}, not {FORMAT!r}")
    config = _need(manifest.get("config"), dict, "config")
    sources = _need(config.get("sources"), list, "config.sources")
    for index, source in enumerate(sources):
        _need(source, dict, f"config.sources[{index}]")
        for key in ("name", "modality", "license"):
            _need(source.get(key), str, f"config.sources[{index}].{key}")
        if source.get("redistributable") not in (True, False, None):
            raise ManifestError(f"manifest.json: config.sources[{index}].redistributable")
        if source.get("spec") is not None:
            safe_path(_need(source["spec"], str, "spec"), f"config.sources[{index}].spec")
    counts = _need(manifest.get("counts"), dict, "counts")
    for name, numbers in counts.items():
        _need(numbers, dict, f"counts.{name}")
        for key in COUNTS:
            _need(numbers.get(key), int, f"counts.{name}.{key}")
    _need(manifest.get("images"), int, "images")
    for split, rows in _need(manifest.get("rows_per_split"), dict, "rows_per_split").items():
        _need(rows, int, f"rows_per_split.{split}")
    for index, shard in enumerate(_need(manifest.get("shards"), list, "shards")):
        _need(shard, dict, f"shards[{index}]")
        for key in ("path", "split", "modality", "source"):
            _need(shard.get(key), str, f"shards[{index}].{key}")
        safe_path(shard["path"], f"shards[{index}].path")
    for name, digest in _need(manifest.get("files"), dict, "files").items():
        _sha256(digest, f"files[{safe_path(name, 'files')!r}]")
    withheld = manifest.get("withheld")
    if withheld is not None:
        _need(withheld, dict, "withheld")
        for name in _need(withheld.get("sources"), list, "withheld.sources"):
            _need(name, str, "withheld.sources[]")
        for name, digest in _need(withheld.get("shards"), dict, "withheld.shards").items():
            _sha256(digest, f"withheld.shards[{safe_path(name, 'withheld.shards')!r}]")
    return manifest


def withheld_sources(manifest: dict[str, Any]) -> set[str]:
    """The sources whose pixels the manifest says are withheld (none in a local build)."""
    return set((manifest.get("withheld") or {}).get("sources", []))


def check_config(manifest: dict[str, Any]) -> list[str]:
    """The manifest against itself: sources, counts, shards, withheld pixels."""
    problems = []
    sources = {s["name"]: s for s in manifest["config"]["sources"]}
    if set(sources) != set(manifest["counts"]):
        problems.append(
            f"manifest counts are for {sorted(manifest['counts'])}, "
            f"its sources are {sorted(sources)}"
        )
    for name, counts in manifest["counts"].items():
        if counts["discovered"] != counts["converted"] + counts["skipped"] + counts["failed"]:
            problems.append(
                f"manifest counts of {name}: discovered {counts['discovered']} != converted "
                f"{counts['converted']} + skipped {counts['skipped']} + failed {counts['failed']}"
            )
    for shard in manifest["shards"]:
        source = sources.get(shard["source"])
        if source is None:
            problems.append(f"{shard['path']}: the manifest names source {shard['source']!r}, "
                            "which is not in its config")  # fmt: skip
        elif source["modality"] != shard["modality"]:
            problems.append(f"{shard['path']}: the manifest's modality {shard['modality']!r} "
                            f"is not {shard['source']}'s {source['modality']!r}")  # fmt: skip
        if shard["path"] not in manifest["files"]:
            problems.append(f"{shard['path']}: in the manifest's shards, not in its files")
    rows = sum(c["rows"] for c in manifest["counts"].values())
    if rows != sum(manifest["rows_per_split"].values()):
        problems.append(f"manifest counts give {rows} rows, rows_per_split "
                        f"{sum(manifest['rows_per_split'].values())}")  # fmt: skip
    withheld = manifest.get("withheld")
    if withheld:
        for name in withheld["sources"]:
            if name not in sources:
                problems.append(
                    f"manifest withholds the pixels of {name!r}, not one of its sources"
                )
        held = {s["path"] for s in manifest["shards"] if s["source"] in withheld["sources"]}
        if set(withheld["shards"]) != held:
            problems.append(f"manifest withheld.shards {sorted(withheld['shards'])} are not the "
                            f"shards of its withheld sources {sorted(held)}")  # fmt: skip
    return problems


def check_shard_groups(
    manifest: dict[str, Any], shard: str, groups: dict[tuple[str, str, str], int]
) -> list[str]:
    """One shard's rows per (source, modality, licence) against the manifest's entry for it
    and its configuration."""
    entry = next((s for s in manifest["shards"] if s["path"] == shard), None)
    sources = {s["name"]: s for s in manifest["config"]["sources"]}
    problems = []
    for source, modality, licence in sorted(groups):
        rows = groups[source, modality, licence]
        if entry is not None and (source, modality) != (entry["source"], entry["modality"]):
            problems.append(f"{shard}: {rows} rows of {source}/{modality}; the manifest says "
                            f"{entry['source']}/{entry['modality']}")  # fmt: skip
        config = sources.get(source)
        if config is None:
            problems.append(f"{shard}: {rows} rows of source {source!r}, not in the manifest")
        elif licence != config["license"]:
            problems.append(f"{shard}: {rows} rows of {source} under licence {licence!r}; the "
                            f"manifest says {config['license']!r}")  # fmt: skip
    return problems


def check_counts(manifest: dict[str, Any], rows: Counter, images: int) -> list[str]:
    """The manifest's rows per source and its image count against what the shards hold."""
    problems = []
    for name, counts in sorted(manifest["counts"].items()):
        if counts["rows"] != rows.get(name, 0):
            problems.append(
                f"manifest counts {counts['rows']} rows of {name}, the shards hold "
                f"{rows.get(name, 0)}"
            )
    if manifest["images"] != images:
        problems.append(f"manifest counts {manifest['images']} images, the shards hold {images}")
    return problems


def _json_lines(path: Path) -> Iterable[tuple[int, Any]]:
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError:
                yield number, None


def check_records(folder: Path, manifest: dict[str, Any]) -> list[str]:
    """errors.jsonl, report.json and the card's configs against the manifest (each file's
    bytes are checked against its hash elsewhere; this checks that what they say agrees)."""
    problems = []
    errors = folder / "errors.jsonl"
    if errors.is_file():
        found: Counter = Counter()
        for number, entry in _json_lines(errors):
            if not isinstance(entry, dict) or entry.get("status") not in ("skipped", "failed"):
                problems.append(
                    f"errors.jsonl line {number}: not an entry of a skipped or failed case"
                )
                continue
            if "slice_index" in entry:  # an image left out of a converted case
                continue
            found[entry.get("source"), entry["status"]] += 1
        for name, counts in manifest["counts"].items():
            for status in ("skipped", "failed"):
                listed = found.pop((name, status), 0)
                if listed != counts[status]:
                    problems.append(f"errors.jsonl lists {listed} {status} cases of {name}; "
                                    f"the manifest counts {counts[status]}")  # fmt: skip
        problems += [f"errors.jsonl: {n} {status} entries of unknown source {source!r}"
                     for (source, status), n in sorted(found.items())]  # fmt: skip
    report = folder / "report.json"
    if report.is_file():
        try:
            said = json.loads(report.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            said = None
            problems.append(f"report.json: not JSON ({exc})")
        if said is not None:
            counts = {name: {k: c[k] for k in COUNTS} for name, c in manifest["counts"].items()}
            expected = {
                "sources": counts,
                "images": manifest["images"],
                "rows": sum(manifest["rows_per_split"].values()),
                "rows_per_split": manifest["rows_per_split"],
            }
            for key, value in expected.items():
                if not isinstance(said, dict) or said.get(key) != value:
                    problems.append(f"report.json: {key} differs from the manifest's")
    card = folder / "README.md"
    if card.is_file():
        problems += _check_card(card.read_text(encoding="utf-8", errors="replace"), manifest)
    return problems


def _check_card(card: str, manifest: dict[str, Any]) -> list[str]:
    """The card's `default` config lists exactly the manifest's shards, split by split."""
    parts = card.split("---\n", 2)
    try:
        front = yaml.safe_load(parts[1]) if card.startswith("---\n") and len(parts) == 3 else None
    except yaml.YAMLError:
        front = None
    if not isinstance(front, dict):
        return ["README.md: no YAML front matter"]
    configs = front.get("configs")
    default = next((c for c in configs or [] if isinstance(c, dict) and c.get("default")), None)
    if default is None:
        return ["README.md: no default config in its front matter"]
    listed = {}
    for entry in default.get("data_files") or []:
        if isinstance(entry, dict):
            paths = entry.get("path")
            listed[entry.get("split")] = sorted(paths if isinstance(paths, list) else [paths])
    shards = {
        split: sorted(s["path"] for s in manifest["shards"] if s["split"] == split)
        for split in SPLITS
        if any(s["split"] == split for s in manifest["shards"])
    }
    if listed != shards:
        return [f"README.md: the default config lists {listed}, the manifest's shards are {shards}"]
    return []
