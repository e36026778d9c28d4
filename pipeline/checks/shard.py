"""The checks of one Parquet shard: every row's facts re-derived from its own mask.

Reads only the shard: re-derives every fact of every row from the row's mask (and its
patient frame), reads the facts back out of each answer, and checks image hashes and
sizes. What crosses shards (patients, images and row ids; rows per source, modality and
licence) is returned for folder.py to check across the folder and against the manifest.
A shard whose pixels were withheld on publishing (rows with `image` and `mask` empty) is
valid only where the manifest says its source's pixels are withheld: its rows' facts are
then checked against each other and against the answers, as far as they go without a mask.
The build runs these checks on each part as soon as its worker has written it; `mmrs
validate` runs them on each shard of a folder.
"""

from __future__ import annotations

import hashlib
import io
import math
import re
import sys
from collections import Counter
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
from ..geometry.facts import (
    FACT_COLUMNS,
    Facts,
    Instance,
    analyse,
    facts_of_row,
    quadrant_of,
    size_word,
    zone_of,
)
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


def row_key(row_id: str) -> bytes:
    """A row id's key."""
    return hashlib.blake2b(row_id.encode(), digest_size=KEY_BYTES).digest()


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
    row_ids: bytes = b""  # the keys (row_key) of its row ids, each once
    # Rows per (source, modality, licence), for the manifest's counts and configuration.
    groups: dict[tuple[str, str, str], int] = field(default_factory=dict)
    withheld: bool = False  # every row without pixels (allowed only where withheld)
    sha256: str | None = None  # the content hash of the shard checked

    def count(self, rows: list[dict[str, Any]]) -> None:
        """Count rows into `groups`."""
        for row in rows:
            group = (row["source"], row["modality"], row["license"])
            self.groups[group] = self.groups.get(group, 0) + 1


def _distinct(table, column: str) -> tuple[list[int], pa.BinaryArray]:
    """Per-row indices into the distinct values of a dictionary-read image column."""
    array = table.column(column).combine_chunks().field("bytes")
    return array.indices.to_pylist(), array.dictionary


def _size(data: pa.Buffer) -> tuple[int, int]:
    return Image.open(io.BytesIO(data)).size  # header only, no decoding


def _with_pixels(table: pa.Table, rows: list[dict[str, Any]]) -> tuple[list, list[bytes]]:
    """Per row: the facts its mask gives (or why none) and the problems of its pixels; and
    the row group's distinct image keys."""
    image_index, images = _distinct(table, "image")
    mask_index, masks = _distinct(table, "mask")
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

    verdicts = []
    for row, i, m in zip(rows, image_index, mask_index, strict=True):
        problems = []
        if image_ids[i].hex() != row["image_id"]:
            problems.append("image_id is not the SHA-256 of the image bytes")
        facts = mask_facts[m]
        problems += [p for p in (image_sizes[i], facts) if isinstance(p, str)]
        if isinstance(facts, str) or isinstance(image_sizes[i], str):
            verdicts.append((None, problems))
            continue
        if mask_sizes[m] != image_sizes[i]:
            problems.append(f"mask {mask_sizes[m]} and image {image_sizes[i]} differ")
        if (row["width"], row["height"]) != image_sizes[i]:
            problems.append(
                f"width x height is {row['width']} x {row['height']}; the image is "
                f"{image_sizes[i][0]} x {image_sizes[i][1]}"
            )
        derived = mask_rows[m]
        for column in FACT_COLUMNS:
            if derived[column] != row[column] and not _same(derived[column], row[column]):
                problems.append(f"{column} is {row[column]!r}, the mask gives {derived[column]!r}")
        frame = PatientFrame.from_row(row["patient_frame"])
        name = row.get("target_name") or row["target"]
        side = side_for(name, instances_side(mask_instances[m], frame))
        if side != row["patient_side"]:
            problems.append(
                f"patient_side is {row['patient_side']!r}, the mask and its patient "
                f"frame give {side!r}"
            )
        if row["relation"] is not None:
            other, kind = row["relation"]["target"], row["relation"]["kind"]
            found = whole.get((row["image_id"], other))
            related_kind = None if found is None else relation(decoded[m], decoded[found])
            if related_kind != kind:
                problems.append(
                    f"relation says the {row['target']} is {kind} the {other}; "
                    f"the masks give {related_kind!r}"
                )
        verdicts.append((facts, problems))
    return verdicts, [image_ids[i][:KEY_BYTES] for i in set(image_index)]


def _facts_agree(row: dict[str, Any], facts: Facts) -> list[str]:
    """Where a row's fact columns contradict each other (what a row without a mask allows)."""
    problems = []
    if facts.centroid is not None:
        implied = {"quadrant": quadrant_of(*facts.centroid), "zone": zone_of(*facts.centroid)}
        problems += [
            f"{name} is {row[name]!r}, its centroid gives {value!r}"
            for name, value in implied.items()
            if row[name] != value
        ]
    if facts.present and row["size"] != size_word(facts.area_fraction):
        problems.append(f"size is {row['size']!r}, its area_fraction gives another")
    problems += [
        f"component at {c.centroid} is in zone {c.zone!r}, its centroid gives another"
        for c in facts.components
        if c.zone != zone_of(*c.centroid)
    ]
    if facts.n_components != len(facts.components):
        problems.append(
            f"n_components is {facts.n_components}, components lists {len(facts.components)}"
        )
    return problems


def _without_pixels(rows: list[dict[str, Any]]) -> tuple[list, list[bytes]]:
    """Per row: the facts of its own columns (or why none) and the problems among them; and
    the row group's distinct image keys, from the rows' image ids."""
    verdicts = []
    for row in rows:
        try:
            facts = facts_of_row(row)
        except (TypeError, ValueError, KeyError) as exc:
            verdicts.append((None, [f"fact columns unreadable ({type(exc).__name__})"]))
            continue
        verdicts.append((facts, _facts_agree(row, facts)))
    keys = set()
    for row in rows:
        try:
            keys.add(bytes.fromhex(row["image_id"] or "")[:KEY_BYTES])
        except ValueError:
            pass  # reported with the row below
    return verdicts, sorted(keys)


def check_row_group(
    parquet: pq.ParquetFile, index: int, split: str, withheld: bool = False
) -> ShardResult:
    """Every per-row check of one row group (see the module docstring), of a shard opened
    with its image columns read as dictionaries. `withheld`: rows without pixels are valid
    (the manifest withholds their source's pixels)."""
    return check_table(parquet.read_row_group(index), split, withheld, f"row group {index}")


def check_table(
    table: pa.Table, split: str, withheld: bool = False, where: str = "rows"
) -> ShardResult:
    """Every per-row check of a table of whole images' rows, its image columns as
    dictionaries: a shard's row group (check_row_group), or the rows of one image that a
    build's render worker wrote (a shard's check is then combined from its images')."""
    part = ShardResult(split)
    rows = table.drop_columns(list(schema.IMAGE_COLUMNS)).to_pylist()
    part.rows = len(rows)
    missing = {c: table.column(c).null_count for c in schema.IMAGE_COLUMNS}
    if not any(missing.values()):
        verdicts, image_keys = _with_pixels(table, rows)
    elif withheld and all(n == len(rows) for n in missing.values()):
        part.withheld = True
        verdicts, image_keys = _without_pixels(rows)
    else:
        empty = ", ".join(f"{n} without {c}" for c, n in missing.items() if n)
        why = "" if withheld else " (the manifest withholds no pixels of this shard)"
        part.violations.append(f"{where}: {len(rows)} rows, {empty}{why}")
        return part

    patients, row_ids = set(), set()
    for row, (found, problems) in zip(rows, verdicts, strict=True):
        label = f"row {row.get('row_id')}"
        if row["split"] != split:
            part.violations.append(f"{label}: split {row['split']!r} in a {split} shard")
        if not row["row_id"]:
            part.violations.append(f"{label}: no row_id")
        elif row["row_id"] in row_ids:
            part.violations.append(f"{label}: row_id appears twice")
        row_ids.add(row["row_id"])
        problems += [f"no {key}" for key in ("case_id", "patient_id") if not row[key]]
        if part.withheld and not re.fullmatch(r"[0-9a-f]{64}", row["image_id"] or ""):
            problems.append("image_id is not a SHA-256")
        patients.add((row["source"], row["patient_id"]))
        part.violations += [f"{label}: {problem}" for problem in problems]
        if found is None:
            continue
        for problem in check_answer(
            row["question_type"],
            row["question"],
            row["answer"],
            row["options"],
            found,
            target=row["target"],
            patient_side=row["patient_side"],
            relation=relation_of_row(row),
            name=row.get("target_name") or row["target"],
        ):
            part.violations.append(f"{label} ({row['template_id']}): {problem}")
    part.count(rows)
    part.patients = packed(patient_key(source, patient_id) for source, patient_id in patients)
    part.images = packed(image_keys)
    part.row_ids = packed(row_key(row_id) for row_id in row_ids if row_id)
    return part


def row_ids_of(shard: Path) -> list[str]:
    """A shard's row ids, in order (none where it cannot be read: reported elsewhere)."""
    try:
        return pq.read_table(shard, columns=["row_id"]).column(0).to_pylist()
    except (pa.ArrowException, OSError):
        return []


def repeated(row_ids: Iterable[str]) -> list[str]:
    """The row ids that come more than once, sorted."""
    return sorted(row_id for row_id, count in Counter(row_ids).items() if count > 1 and row_id)


def check_shard(shard: Path, split: str, sha256: str, withheld: bool = False) -> ShardResult:
    """Every row group of a shard whose content hash is sha256; a row group that cannot be
    read is a violation. `withheld`: the manifest withholds the pixels of its source, so it
    may be all without pixels (ShardResult.withheld) or all with them."""
    try:
        parquet = pq.ParquetFile(shard, read_dictionary=["image.bytes", "mask.bytes"])
    except (pa.ArrowException, OSError) as exc:
        unreadable = f"not a readable Parquet file ({exc})"
        return ShardResult(split, violations=[unreadable], sha256=sha256)
    parts = []
    with parquet:
        for index in range(parquet.num_row_groups):
            try:
                parts.append(check_row_group(parquet, index, split, withheld))
            except (pa.ArrowException, OSError, TypeError, KeyError) as exc:
                parts.append(ShardResult(split, violations=[f"row group {index}: {exc}"]))
    return combined(shard, split, sha256, parts)


def combined(shard: Path, split: str, sha256: str, parts: list[ShardResult]) -> ShardResult:
    """The result of a shard from the results of its rows, in order (its row groups', or the
    images' a build's render workers checked): a row id in several of them is read from
    the shard to be named."""
    whole = ShardResult(split, sha256=sha256)
    patients, images, row_ids, withheld_groups = [], [], [], set()
    for part in parts:
        whole.rows += part.rows
        whole.violations += part.violations
        patients.append(part.patients)
        images.append(part.images)
        row_ids.append(part.row_ids)
        withheld_groups.add(part.withheld)
        for group, rows in part.groups.items():
            whole.groups[group] = whole.groups.get(group, 0) + rows
    whole.patients, whole.images = merged(patients), merged(images)
    whole.row_ids = merged(row_ids)
    if len(whole.row_ids) < sum(map(len, row_ids)):  # a row id in several row groups
        whole.violations += [
            f"row {row_id}: row_id appears twice" for row_id in repeated(row_ids_of(shard))
        ]
    whole.withheld = withheld_groups == {True}
    if withheld_groups == {True, False}:
        whole.violations.append("some row groups have pixels, others not")
    return whole
