"""`mmrs validate`: the output contract, checked after every build.

Re-derives every fact of every row from the row's own mask, reads the facts back out of
each answer (shard.py, one shard at a time), and checks the schema, file names, every
file's content hash against the manifest (none missing, none added), row ids unique across
the folder, patient leakage and identical images across splits, and the manifest's counts,
configuration and licences and the records beside the shards (manifest.py).
Independent of how the rows were made: it reads only the output folder. A build hands in
the checks its render workers made of the parts it wrote, each used only for a shard whose
content hash it matches, and the parts' content hashes by file identity (device, inode,
size, modification time), so a shard whose file is still the one hashed is not read again.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter, defaultdict
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from ..schema import SCHEMA
from ..splits import SPLITS
from ..store import (
    FileIdentity,
    StageRunner,
    atomic_pickle,
    code_digest,
    file_digest,
    file_identity,
    stored_result,
)
from .manifest import (
    ManifestError,
    check_config,
    check_counts,
    check_records,
    check_shard_groups,
    read_manifest,
    withheld_sources,
)
from .shard import (
    CHECK_CODE,
    KEY,
    KEY_BYTES,
    ShardResult,
    check_shard,
    merged,
    patient_key,
    repeated,
    row_ids_of,
    unpacked,
)

SLICE_COLUMNS = ("slice_axis", "slice_index", "spacing_mm")  # a volume slice's, else null
SHARD_NAME = re.compile(r"(?P<split>[a-z]+)-(?P<index>\d{5})-of-(?P<total>\d{5})\.parquet")
MAX_REPORTED = 50  # violations listed in full; all are counted


@dataclass
class ValidationResult:
    rows: int = 0
    rows_per_split: dict[str, int] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    violation_count: int = 0
    withheld: list[str] = field(default_factory=list)  # shards valid without their pixels

    @property
    def ok(self) -> bool:
        return self.violation_count == 0

    def add(self, message: str) -> None:
        self.violation_count += 1
        if len(self.violations) < MAX_REPORTED:
            self.violations.append(message)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "rows": self.rows,
            "rows_per_split": self.rows_per_split,
            "violation_count": self.violation_count,
            "violations": self.violations,
            "withheld": self.withheld,
        }


@dataclass(frozen=True)
class ShardJob:
    """One shard to check, keyed by its content hash and the checking code."""

    shard: Path
    split: str
    store: Path | None = None  # where results are kept for the next run (None: nowhere)
    known_sha256: str | None = None  # the hash of this very file, made when it was written
    withheld: bool = False  # its source's pixels are withheld (rows without them are valid)

    @cached_property
    def sha256(self) -> str:
        """The shard's content hash, computed by whoever needs it first (a cache key or the
        worker that checks the shard) unless it is known."""
        return self.known_sha256 or file_digest(self.shard)

    @cached_property
    def key(self) -> str:
        code = code_digest(CHECK_CODE)
        key = f"{code}|{self.sha256}|{self.split}|{self.withheld}"
        return hashlib.sha256(key.encode()).hexdigest()

    def result(self, key: str) -> Path:
        return (self.store or Path(".")) / "validate" / f"{key}.pkl"


def check_job(job: ShardJob) -> ShardResult:
    """Check a shard, reusing a stored result for the same content and code."""
    if job.store is None:
        return check_shard(job.shard, job.split, job.sha256, job.withheld)
    key = job.key
    stored = stored_result(job.result(key))
    if isinstance(stored, ShardResult):
        return stored
    part = check_shard(job.shard, job.split, job.sha256, job.withheld)
    atomic_pickle(part, job.result(key))
    return part


def _in_several(runs: dict[str, list[bytes]]) -> list[tuple[bytes, list[str]]]:
    """The keys found in more than one split (each split's shards' runs of keys), sorted,
    each with its splits."""
    per_split = {
        split: np.frombuffer(merged(run), dtype=KEY) for split, run in sorted(runs.items())
    }
    every = [np.array([], dtype=KEY), *per_split.values()]
    found, count = np.unique(np.concatenate(every), return_counts=True)
    several = found[count > 1]
    where = {split: np.isin(several, keys) for split, keys in per_split.items()}
    return [
        (key, [split for split in per_split if where[split][index]])
        for index, key in enumerate(unpacked(several.tobytes()))
    ]


def _patients_named(
    jobs: list[ShardJob], leaked: dict[bytes, list[str]]
) -> list[tuple[str, list[str]]]:
    """The patients (source/patient_id) behind leaked keys, each with the splits of the
    shards that hold it, read back from the shards' own columns."""
    splits: dict[str, set[str]] = defaultdict(set)
    for job in jobs:
        try:
            table = pq.read_table(job.shard, columns=["source", "patient_id"])
        except (pa.ArrowException, OSError):  # already reported as unreadable
            continue
        for source, patient_id in set(zip(*table.to_pydict().values(), strict=True)):
            if patient_key(source, patient_id) in leaked:
                splits[f"{source}/{patient_id}"].add(job.split)
    return sorted((name, sorted(found)) for name, found in splits.items() if len(found) > 1)


def _files_on_disk(folder: Path) -> set[str]:
    """Every file under the folder but manifest.json, as a relative POSIX path; dot files and
    folders (a Hub download's .gitattributes and .cache/) are not the build's."""
    return {
        path.relative_to(folder).as_posix()
        for path in folder.rglob("*")
        if path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    } - {"manifest.json"}


def _check_files(folder: Path, manifest: dict[str, Any], result: ValidationResult) -> None:
    """Every file but the shards against its hash in the manifest; none missing, none added."""
    files = manifest["files"]
    on_disk = _files_on_disk(folder)
    for name in sorted(on_disk - set(files)):
        result.add(f"{name}: not in the manifest")
    for name, digest in sorted(files.items()):
        path = folder / name
        if name not in on_disk:
            result.add(f"{name}: in the manifest, missing from the folder")
        elif not SHARD_NAME.fullmatch(path.name) and file_digest(path) != digest:
            result.add(f"{name}: content differs from the manifest's hash")


def _slice_columns(parquet: pq.ParquetFile, volume: bool) -> list[str]:
    """Rows of a volume source have every slice column, rows of a 2D source none."""
    table = parquet.read(columns=["row_id", *SLICE_COLUMNS])
    nulls = [table.column(name).null_count for name in SLICE_COLUMNS]
    if nulls == ([0] * 3 if volume else [table.num_rows] * 3):
        return []  # every row as it should be: no row read one by one
    problems = []
    for row in table.to_pylist():
        given = [name for name in SLICE_COLUMNS if row[name] is not None]
        if volume and len(given) < len(SLICE_COLUMNS):
            problems.append(f"row {row['row_id']}: a volume slice's row without all of "
                            f"{list(SLICE_COLUMNS)}")  # fmt: skip
        elif not volume and given:
            problems.append(f"row {row['row_id']}: {given} on a row of a 2D source")
    return problems


def validate(
    folder: Path,
    progress: bool = False,
    store: Path | None = None,
    run: StageRunner | None = None,
    checked: Mapping[tuple[str, str], ShardResult] | None = None,
    hash_threads: int = 1,
    known_hashes: Mapping[FileIdentity, str] | None = None,
) -> ValidationResult:
    """Check an output folder; the result lists every violation found (see module doc).

    `run` runs the per-shard checks (default: one after another in this process).
    `checked`: checks already made, by (content hash, split); a shard with the same content
    and split is not checked again (shards are hashed for it on `hash_threads` threads).
    `known_hashes`: content hashes by file identity; a shard whose file has one is not
    hashed.
    """
    result = ValidationResult()
    try:
        manifest = read_manifest(folder)
    except ManifestError as exc:
        result.add(str(exc))
        return result
    for problem in check_config(manifest):
        result.add(problem)
    _check_files(folder, manifest, result)
    shards = sorted((folder / "data").glob("*.parquet"))
    if not shards:
        result.add(f"{folder}/data: no Parquet shards")
    listed = {s["path"] for s in manifest["shards"]}
    for name in sorted(listed - {f"data/{shard.name}" for shard in shards}):
        result.add(f"{name}: in the manifest's shards, missing from the folder")
    withheld = withheld_sources(manifest)
    source_of = {s["path"]: s["source"] for s in manifest["shards"]}
    volumes = {s["name"]: s.get("volume") is not None for s in manifest["config"]["sources"]}
    jobs: list[ShardJob] = []
    files = manifest["files"]
    complete = (manifest.get("withheld") or {}).get("shards", {})
    totals: dict[str, set[int]] = defaultdict(set)
    for shard in shards:
        name = SHARD_NAME.fullmatch(shard.name)
        if name is None or name["split"] not in SPLITS:
            result.add(f"{shard.name}: not named <split>-<i>-of-<n>.parquet")
            continue
        if f"data/{shard.name}" not in listed:
            result.add(f"data/{shard.name}: not in the manifest's shards")
        totals[name["split"]].add(int(name["total"]))
        try:
            parquet = pq.ParquetFile(shard)
        except (pa.ArrowException, OSError) as exc:
            result.add(f"{shard.name}: not a readable Parquet file ({exc})")
            continue
        if not parquet.schema_arrow.remove_metadata().equals(SCHEMA):
            result.add(f"{shard.name}: schema differs from the row contract")
            continue
        source = source_of.get(f"data/{shard.name}")
        if source in volumes:
            for problem in _slice_columns(parquet, volumes[source]):
                result.add(f"{shard.name} {problem}")
        sha256 = (known_hashes or {}).get(file_identity(shard))
        held = source in withheld
        jobs.append(ShardJob(shard, name["split"], store, sha256, held))
    for split, total in totals.items():
        count = sum(1 for s in shards if s.name.startswith(f"{split}-"))
        if total != {count}:
            result.add(f"{split}: shard names say {sorted(total)} shards, found {count}")

    known = {}
    if checked:  # hashing here is what lets a check made elsewhere stand for this shard
        with ThreadPoolExecutor(hash_threads) as pool:  # hashlib lets go of the GIL
            list(pool.map(lambda job: job.sha256, jobs))  # each job keeps its hash
        known = {i: checked[j.sha256, j.split] for i, j in enumerate(jobs)
                 if (j.sha256, j.split) in checked and not j.withheld}  # fmt: skip
    unknown = [job for i, job in enumerate(jobs) if i not in known]
    if not unknown:  # the render workers checked every shard: nothing to run, no empty bar
        done = iter(())
    elif run is None:
        done = map(check_job, tqdm(unknown, desc="validate", unit="shard", disable=not progress))
    else:
        done = run(check_job, unknown)
    done = iter(done)
    patients: dict[str, list[bytes]] = defaultdict(list)  # split -> its shards' key runs
    images: dict[str, list[bytes]] = defaultdict(list)
    row_ids: list[bytes] = []
    rows_per_source: Counter = Counter()
    for index, job in enumerate(jobs):
        part = known[index] if index in known else next(done)
        name = f"data/{job.shard.name}"
        result.rows += part.rows
        result.rows_per_split[part.split] = result.rows_per_split.get(part.split, 0) + part.rows
        if part.withheld:
            result.withheld.append(name)
        expected = complete.get(name) if name in complete and not part.withheld else files.get(name)
        if part.sha256 != expected:
            result.add(f"{job.shard.name}: content differs from the manifest's hash")
        for message in part.violations:
            result.add(f"{job.shard.name} {message}")
        for problem in check_shard_groups(manifest, name, part.groups):
            result.add(problem)
        for (source, _, _), rows in part.groups.items():
            rows_per_source[source] += rows
        patients[part.split].append(part.patients)
        images[part.split].append(part.images)
        row_ids.append(part.row_ids)
    if next(done, None) is not None:  # run to its end: that also completes the progress bar
        raise RuntimeError("the shard checks returned more results than there were shards")
    leaked = dict(_in_several(patients))
    for name, splits in _patients_named(jobs, leaked) if leaked else []:
        result.add(f"patient leakage: {name} is in {splits}")
    for key, splits in _in_several(images):
        result.add(f"identical image {key.hex()[:16]} is in {splits}")
    if len(merged(row_ids)) < sum(map(len, row_ids)):  # a row id in several shards
        held = (row_id for job in jobs for row_id in set(row_ids_of(job.shard)))
        for row_id in repeated(held):
            result.add(f"row {row_id}: row_id appears in several shards")
    expected = manifest["rows_per_split"]
    if expected != result.rows_per_split:
        result.add(f"manifest rows_per_split {expected} != rows found {result.rows_per_split}")
    distinct_images = len(merged(run for runs in images.values() for run in runs)) // KEY_BYTES
    for problem in check_counts(manifest, rows_per_source, distinct_images):
        result.add(problem)
    for problem in check_records(folder, manifest):
        result.add(problem)
    return result
