"""`mmrs validate`: the output contract, checked after every build.

Re-derives every fact of every row from the row's own mask, reads the facts back out of
each answer, and checks the schema, file names, image hashes, patient leakage and
identical images across splits. Independent of how the rows were made: it reads only the
output folder.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from tqdm import tqdm

from . import factcheck, facts, imageio, patient, relations, schema
from .factcheck import check_answer
from .facts import FACT_COLUMNS, Facts, Instance, analyse
from .imageio import PixelError, decode_mask
from .patient import PatientFrame, instances_side
from .relations import relation
from .schema import SCHEMA
from .splits import SPLITS
from .stages import atomic_pickle, code_digest, file_digest, stored_result

SHARD_NAME = re.compile(r"(?P<split>[a-z]+)-(?P<index>\d{5})-of-(?P<total>\d{5})\.parquet")
VALIDATE_CODE = (facts, factcheck, imageio, patient, relations, schema)
MAX_REPORTED = 50  # violations listed in full; all are counted


@dataclass
class ValidationResult:
    rows: int = 0
    rows_per_split: dict[str, int] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    violation_count: int = 0

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
        }


def _same(expected: Any, found: Any) -> bool:
    """Equal, with floats compared to 1e-9 (lists and dicts element-wise)."""
    if isinstance(expected, float) or isinstance(found, float):
        return (
            expected is not None
            and found is not None
            and math.isclose(expected, found, abs_tol=1e-9)
        )
    if isinstance(expected, (list, tuple)) and isinstance(found, (list, tuple)):
        return len(expected) == len(found) and all(
            _same(a, b) for a, b in zip(expected, found, strict=True)
        )
    if isinstance(expected, dict) and isinstance(found, dict):
        return expected.keys() == found.keys() and all(
            _same(expected[k], found[k]) for k in expected
        )
    return expected == found


@dataclass
class ShardResult:
    """What one row group tells: its violations and the keys that cross row groups."""

    split: str
    rows: int = 0
    violations: list[str] = field(default_factory=list)
    patients: set[tuple[str, str, str]] = field(default_factory=set)  # source, patient, split
    images: set[tuple[str, str]] = field(default_factory=set)  # image_id, split


def _distinct(table, column: str) -> tuple[list[int], list[bytes]]:
    """Per-row indices into the distinct values of a dictionary-read image column."""
    array = table.column(column).combine_chunks().field("bytes")
    return array.indices.to_pylist(), array.dictionary.to_pylist()


def _size(data: bytes) -> tuple[int, int]:
    return Image.open(io.BytesIO(data)).size  # header only, no decoding


def check_row_group(shard: Path, index: int, split: str) -> ShardResult:
    """Every per-row check of one row group (see the module docstring)."""
    part = ShardResult(split)
    parquet = pq.ParquetFile(shard, read_dictionary=["image.bytes", "mask.bytes"])
    table = parquet.read_row_group(index)
    image_index, images = _distinct(table, "image")
    mask_index, masks = _distinct(table, "mask")
    rows = table.drop_columns(["image", "mask"]).to_pylist()
    part.rows = len(rows)

    image_ids, image_sizes = [], []
    for data in images:
        image_ids.append(hashlib.sha256(data).hexdigest())
        try:
            image_sizes.append(_size(data))
        except OSError as exc:
            image_sizes.append(f"image unreadable ({exc})")
    mask_facts: list[Facts | str] = []
    mask_rows: list[dict[str, Any]] = []
    mask_instances: list[list[Instance]] = []
    mask_sizes = []
    decoded: list[np.ndarray | None] = []
    for data in masks:
        try:
            mask = decode_mask(data)
            decoded.append(mask)
            facts, instances = analyse(mask)
            mask_facts.append(facts)
            mask_instances.append(instances)
            mask_rows.append(facts.as_row())
            mask_sizes.append((mask.shape[1], mask.shape[0]))
        except (PixelError, OSError) as exc:
            mask_facts.append(f"mask unreadable ({exc})")
            mask_rows.append({})
            mask_instances.append([])
            decoded.append(None)
            mask_sizes.append(None)
    whole = {  # the mask of each target in each image, from its whole-target rows
        (row["image_id"], row["target"]): m
        for row, m in zip(rows, mask_index, strict=True)
        if row["question_type"] not in ("referring", "negative")
    }

    for row, i, m in zip(rows, image_index, mask_index, strict=True):
        label = f"{shard.name} row {row.get('row_id')}"
        if row["split"] != split:
            part.violations.append(f"{label}: split {row['split']!r} in a {split} shard")
        part.patients.add((row["source"], row["patient_id"], row["split"]))
        part.images.add((row["image_id"], row["split"]))
        if image_ids[i] != row["image_id"]:
            part.violations.append(f"{label}: image_id is not the SHA-256 of the image bytes")
        facts = mask_facts[m]
        for problem in (image_sizes[i], facts):
            if isinstance(problem, str):
                part.violations.append(f"{label}: {problem}")
        if isinstance(facts, str) or isinstance(image_sizes[i], str):
            continue
        if mask_sizes[m] != image_sizes[i]:
            part.violations.append(
                f"{label}: mask {mask_sizes[m]} and image {image_sizes[i]} differ"
            )
        derived = mask_rows[m]
        for column in FACT_COLUMNS:
            if derived[column] != row[column] and not _same(derived[column], row[column]):
                part.violations.append(
                    f"{label}: {column} is {row[column]!r}, the mask gives {derived[column]!r}"
                )
        frame = PatientFrame.from_row(row["patient_frame"])
        side = instances_side(mask_instances[m], frame)
        if side != row["patient_side"]:
            part.violations.append(
                f"{label}: patient_side is {row['patient_side']!r}, the mask and its patient "
                f"frame give {side!r}"
            )
        if row["relation"] is not None:
            other, kind = row["relation"]["target"], row["relation"]["kind"]
            found = whole.get((row["image_id"], other))
            derived = None if found is None else relation(decoded[m], decoded[found])
            if derived != kind:
                part.violations.append(
                    f"{label}: relation says the {row['target']} is {kind} the {other}; "
                    f"the masks give {derived!r}"
                )
        for problem in check_answer(
            row["question_type"],
            row["question"],
            row["answer"],
            row["options"],
            facts,
            target=row["target"],
            patient_side=row["patient_side"],
            relation=(row["relation"]["target"], row["relation"]["kind"])
            if row["relation"]
            else None,
        ):
            part.violations.append(f"{label} ({row['template_id']}): {problem}")
    return part


@dataclass(frozen=True)
class ShardJob:
    """One shard to check, keyed by its content hash and the checking code."""

    shard: Path
    split: str
    manifest_sha256: str | None  # the shard's hash as the manifest gives it
    row_groups: int
    store: Path | None = None  # where results are kept for the next run (None: nowhere)

    @cached_property
    def sha256(self) -> str:
        """The shard's content hash, computed by whoever needs it first (a cache key or the
        worker that checks the shard)."""
        return file_digest(self.shard)

    @cached_property
    def key(self) -> str:
        code = code_digest(VALIDATE_CODE)
        return hashlib.sha256(f"{code}|{self.sha256}|{self.split}".encode()).hexdigest()

    def result(self, key: str) -> Path:
        return (self.store or Path(".")) / "validate" / f"{key}.pkl"


def _checked(job: ShardJob) -> ShardResult:
    """Every row group of a shard; a row group that cannot be read is a violation."""
    whole = ShardResult(job.split)
    for index in range(job.row_groups):
        try:
            part = check_row_group(job.shard, index, job.split)
        except (pa.ArrowException, OSError) as exc:
            part = ShardResult(job.split, violations=[f"{job.shard.name} row group {index}: {exc}"])
        whole.rows += part.rows
        whole.violations += part.violations
        whole.patients |= part.patients
        whole.images |= part.images
    return whole


def _against_manifest(job: ShardJob, part: ShardResult) -> ShardResult:
    if job.sha256 == job.manifest_sha256:
        return part
    return replace(
        part,
        violations=[
            f"{job.shard.name}: content differs from the manifest's hash",
            *part.violations,
        ],
    )


def check_job(job: ShardJob) -> ShardResult:
    """Check a shard, reusing a stored result for the same content and code."""
    if job.store is None:
        return _against_manifest(job, _checked(job))
    key = job.key
    stored = stored_result(job.result(key))
    if isinstance(stored, ShardResult):
        return _against_manifest(job, stored)
    part = _checked(job)
    atomic_pickle(part, job.result(key))
    return _against_manifest(job, part)


def validate(
    folder: Path,
    progress: bool = False,
    store: Path | None = None,
    run: Callable[[Callable[[Any], Any], Sequence[Any]], list[Any]] | None = None,
) -> ValidationResult:
    """Check an output folder; the result lists every violation found (see module doc).

    `run` runs the per-shard checks (default: one after another in this process).
    """
    result = ValidationResult()
    manifest_path = folder / "manifest.json"
    if not manifest_path.is_file():
        result.add(f"{folder}: no manifest.json (not an MMRS build, or an unfinished one)")
        return result
    manifest = json.loads(manifest_path.read_text())
    shards = sorted((folder / "data").glob("*.parquet"))
    if not shards:
        result.add(f"{folder}/data: no Parquet shards")
    tasks: list[ShardJob] = []
    files = manifest.get("files", {})
    totals: dict[str, set[int]] = defaultdict(set)
    for shard in shards:
        name = SHARD_NAME.fullmatch(shard.name)
        if name is None or name["split"] not in SPLITS:
            result.add(f"{shard.name}: not named <split>-<i>-of-<n>.parquet")
            continue
        totals[name["split"]].add(int(name["total"]))
        try:
            parquet = pq.ParquetFile(shard)
        except (pa.ArrowException, OSError) as exc:
            result.add(f"{shard.name}: not a readable Parquet file ({exc})")
            continue
        if not parquet.schema_arrow.remove_metadata().equals(SCHEMA):
            result.add(f"{shard.name}: schema differs from the row contract")
            continue
        expected = files.get(f"data/{shard.name}")
        tasks.append(ShardJob(shard, name["split"], expected, parquet.num_row_groups, store))
    for split, total in totals.items():
        count = sum(1 for s in shards if s.name.startswith(f"{split}-"))
        if total != {count}:
            result.add(f"{split}: shard names say {sorted(total)} shards, found {count}")

    patient_splits: dict[tuple[str, str], set[str]] = defaultdict(set)
    image_splits: dict[str, set[str]] = defaultdict(set)
    if run is None:
        parts = map(check_job, tqdm(tasks, desc="validate", unit="shard", disable=not progress))
    else:
        parts = run(check_job, tasks)
    for part in parts:
        result.rows += part.rows
        result.rows_per_split[part.split] = result.rows_per_split.get(part.split, 0) + part.rows
        for message in part.violations:
            result.add(message)
        for source, patient_id, split in part.patients:
            patient_splits[(source, patient_id)].add(split)
        for image_id, split in part.images:
            image_splits[image_id].add(split)
    for (source, patient_id), splits in sorted(patient_splits.items()):
        if len(splits) > 1:
            result.add(f"patient leakage: {source}/{patient_id} is in {sorted(splits)}")
    for image_id, splits in sorted(image_splits.items()):
        if len(splits) > 1:
            result.add(f"identical image {image_id[:16]} is in {sorted(splits)}")
    expected = manifest.get("rows_per_split", {})
    if expected != result.rows_per_split:
        result.add(f"manifest rows_per_split {expected} != rows found {result.rows_per_split}")
    return result
