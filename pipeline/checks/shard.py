"""The checks of one Parquet shard: every row's facts re-derived from its own mask.

Reads only the shard: re-derives every fact of every row from the row's mask (and its
patient frame), reads the facts back out of each answer, and checks image hashes and
sizes. What crosses shards (patients and images per split) is returned for folder.py
to check across the folder. The build runs these checks on each part as soon as its
worker has written it; `mmrs validate` runs them on each shard of a folder.
"""

from __future__ import annotations

import hashlib
import io
import math
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from .. import schema
from ..geometry import facts, patient, relations
from ..geometry.facts import FACT_COLUMNS, Facts, Instance, analyse
from ..geometry.patient import PatientFrame, instances_side
from ..geometry.relations import relation
from ..io import images as imageio
from ..io.images import PixelError, decode_mask
from ..qa import factcheck, names
from ..qa.factcheck import check_answer, relation_of_row
from ..qa.names import side_for

# The code whose change makes a stored check stale.
CHECK_CODE = (sys.modules[__name__], facts, factcheck, imageio, names, patient, relations, schema)
# What crosses shards is kept as fixed-size keys: 128 bits, which no two of any build's
# patients or images share by chance.
KEY_BYTES = 16
KEY = np.dtype(f"S{KEY_BYTES}")


def patient_key(source: str, patient_id: str) -> bytes:
    """A patient's key: a hash of its source (a name without "/") and its id."""
    return hashlib.blake2b(f"{source}/{patient_id}".encode(), digest_size=KEY_BYTES).digest()


def packed(keys: Iterable[bytes]) -> bytes:
    """Distinct keys, sorted, in one run of KEY_BYTES each."""
    return np.unique(np.array(list(keys), dtype=KEY)).tobytes()


def merged(runs: Iterable[bytes]) -> bytes:
    """The distinct keys of several runs, in one run."""
    return np.unique(np.frombuffer(b"".join(runs), dtype=KEY)).tobytes()


def unpacked(run: bytes) -> list[bytes]:
    """The keys of a run, in its order."""
    return [run[i : i + KEY_BYTES] for i in range(0, len(run), KEY_BYTES)]


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
    """What a shard (or one row group) tells: its violations and the keys that cross shards.

    Violations name rows and row groups, not the file: the caller adds the shard's name.
    """

    split: str
    rows: int = 0
    violations: list[str] = field(default_factory=list)
    # Of the shard's rows, all in `split` (a row of another split is a violation), packed
    # (a build holds every shard's): their patients' keys (patient_key) and their images'
    # (the first KEY_BYTES of the SHA-256 of the image bytes).
    patients: bytes = b""
    images: bytes = b""
    sha256: str | None = None  # the content hash of the shard checked


def _distinct(table, column: str) -> tuple[list[int], pa.BinaryArray]:
    """Per-row indices into the distinct values of a dictionary-read image column."""
    array = table.column(column).combine_chunks().field("bytes")
    return array.indices.to_pylist(), array.dictionary


def _size(data: pa.Buffer) -> tuple[int, int]:
    return Image.open(io.BytesIO(data)).size  # header only, no decoding


def check_row_group(parquet: pq.ParquetFile, index: int, split: str) -> ShardResult:
    """Every per-row check of one row group (see the module docstring), of a shard opened
    with its image columns read as dictionaries."""
    part = ShardResult(split)
    table = parquet.read_row_group(index)
    image_index, images = _distinct(table, "image")
    mask_index, masks = _distinct(table, "mask")
    rows = table.drop_columns(["image", "mask"]).to_pylist()
    part.rows = len(rows)

    image_ids, image_sizes = [], []
    for value in images:  # read in place: no copy of the row group's images at once
        data = value.as_buffer()
        image_ids.append(hashlib.sha256(data).digest())
        try:
            image_sizes.append(_size(data))
        except OSError as exc:
            image_sizes.append(f"image unreadable ({exc})")
    whole = {  # the mask of each target in each image, from its whole-target rows
        (row["image_id"], row["target"]): m
        for row, m in zip(rows, mask_index, strict=True)
        if row["question_type"] not in ("referring", "negative")
    }
    related = set()  # the masks that relations compare: only their pixels are kept
    for row, m in zip(rows, mask_index, strict=True):
        if row["relation"] is not None:
            related |= {m, whole.get((row["image_id"], row["relation"]["target"]))}
    mask_facts: list[Facts | str] = []
    mask_rows: list[dict[str, Any]] = []
    mask_instances: list[list[Instance]] = []
    mask_sizes = []
    decoded: list[np.ndarray | None] = []
    for m, data in enumerate(masks.to_pylist()):
        try:
            mask = decode_mask(data)
            decoded.append(mask if m in related else None)
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

    patients = set()
    for row, i, m in zip(rows, image_index, mask_index, strict=True):
        label = f"row {row.get('row_id')}"
        if row["split"] != split:
            part.violations.append(f"{label}: split {row['split']!r} in a {split} shard")
        patients.add((row["source"], row["patient_id"]))
        if image_ids[i].hex() != row["image_id"]:
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
        name = row.get("target_name") or row["target"]
        side = side_for(name, instances_side(mask_instances[m], frame))
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
            relation=relation_of_row(row),
            name=name,
        ):
            part.violations.append(f"{label} ({row['template_id']}): {problem}")
    part.patients = packed(patient_key(source, patient_id) for source, patient_id in patients)
    part.images = packed(image_ids[i][:KEY_BYTES] for i in set(image_index))
    return part


def check_shard(shard: Path, split: str, sha256: str) -> ShardResult:
    """Every row group of a shard whose content hash is sha256; a row group that cannot be
    read is a violation."""
    whole = ShardResult(split, sha256=sha256)
    try:
        parquet = pq.ParquetFile(shard, read_dictionary=["image.bytes", "mask.bytes"])
    except (pa.ArrowException, OSError) as exc:
        whole.violations.append(f"not a readable Parquet file ({exc})")
        return whole
    patients, images = [], []
    with parquet:
        for index in range(parquet.num_row_groups):
            try:
                part = check_row_group(parquet, index, split)
            except (pa.ArrowException, OSError) as exc:
                part = ShardResult(split, violations=[f"row group {index}: {exc}"])
            whole.rows += part.rows
            whole.violations += part.violations
            patients.append(part.patients)
            images.append(part.images)
    whole.patients, whole.images = merged(patients), merged(images)
    return whole
