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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from PIL import Image
from tqdm import tqdm

from .factcheck import check_answer
from .facts import Facts, compute_facts
from .imageio import PixelError, decode_mask
from .schema import SCHEMA
from .splits import SPLITS

SHARD_NAME = re.compile(r"(?P<split>[a-z]+)-(?P<index>\d{5})-of-(?P<total>\d{5})\.parquet")
FACT_COLUMNS = (
    "centroid",
    "bbox",
    "area_fraction",
    "n_components",
    "components",
    "quadrant",
    "zone",
    "size",
    "prsmed_position",
    "prsmed_near_center",
)
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


class _Checker:
    def __init__(self, result: ValidationResult) -> None:
        self.result = result
        self.patient_splits: dict[tuple[str, str], set[str]] = defaultdict(set)
        self.image_splits: dict[str, set[str]] = defaultdict(set)
        self.image_sizes: dict[str, tuple[int, int]] = {}

    def row_group(self, where: str, split: str, rows: list[dict[str, Any]]) -> None:
        facts_by_mask: dict[bytes, Facts | str] = {}
        verified: dict[str, bytes] = {}
        for row in rows:
            self.result.rows += 1
            label = f"{where} row {row.get('row_id')}"
            if row["split"] != split:
                self.result.add(f"{label}: split {row['split']!r} in a {split} shard")
            self.patient_splits[(row["source"], row["patient_id"])].add(row["split"])
            self.image_splits[row["image_id"]].add(row["split"])
            self._image(label, row, verified)
            mask_bytes = row["mask"]["bytes"]
            if mask_bytes not in facts_by_mask:
                try:
                    facts_by_mask[mask_bytes] = compute_facts(decode_mask(mask_bytes))
                except (PixelError, OSError) as exc:
                    facts_by_mask[mask_bytes] = f"mask unreadable ({exc})"
            facts = facts_by_mask[mask_bytes]
            if isinstance(facts, str):
                self.result.add(f"{label}: {facts}")
                continue
            self._facts(label, row, facts)

    def _image(self, label: str, row: dict[str, Any], verified: dict[str, bytes]) -> None:
        data, image_id = row["image"]["bytes"], row["image_id"]
        if verified.get(image_id) != data:
            if hashlib.sha256(data).hexdigest() != image_id:
                self.result.add(f"{label}: image_id is not the SHA-256 of the image bytes")
                return
            verified[image_id] = data
        if image_id not in self.image_sizes:
            try:
                self.image_sizes[image_id] = Image.open(io.BytesIO(data)).size
            except OSError as exc:
                self.result.add(f"{label}: image unreadable ({exc})")
                return
        mask_size = Image.open(io.BytesIO(row["mask"]["bytes"])).size
        if mask_size != self.image_sizes[image_id]:
            self.result.add(
                f"{label}: mask {mask_size} and image {self.image_sizes[image_id]} differ in size"
            )

    def _facts(self, label: str, row: dict[str, Any], facts: Facts) -> None:
        derived = facts.as_row()
        for column in FACT_COLUMNS:
            if not _same(derived[column], row[column]):
                self.result.add(
                    f"{label}: {column} is {row[column]!r}, the mask gives {derived[column]!r}"
                )
        for problem in check_answer(
            row["question_type"],
            row["question"],
            row["answer"],
            row["options"],
            facts,
            target=row["target"],
        ):
            self.result.add(f"{label} ({row['template_id']}): {problem}")

    def finish(self) -> None:
        for (source, patient), splits in sorted(self.patient_splits.items()):
            if len(splits) > 1:
                self.result.add(f"patient leakage: {source}/{patient} is in {sorted(splits)}")
        for image_id, splits in sorted(self.image_splits.items()):
            if len(splits) > 1:
                self.result.add(f"identical image {image_id[:16]} is in {sorted(splits)}")


def validate(folder: Path, progress: bool = False) -> ValidationResult:
    """Check an output folder; the result lists every violation found (see module doc)."""
    result = ValidationResult()
    manifest_path = folder / "manifest.json"
    if not manifest_path.is_file():
        result.add(f"{folder}: no manifest.json (not an MMRS build, or an unfinished one)")
        return result
    manifest = json.loads(manifest_path.read_text())
    shards = sorted((folder / "data").glob("*.parquet"))
    if not shards:
        result.add(f"{folder}/data: no Parquet shards")
    checker = _Checker(result)
    totals: dict[str, set[int]] = defaultdict(set)
    for shard in tqdm(shards, desc="validate", unit="shard", disable=not progress):
        name = SHARD_NAME.fullmatch(shard.name)
        if name is None or name["split"] not in SPLITS:
            result.add(f"{shard.name}: not named <split>-<i>-of-<n>.parquet")
            continue
        totals[name["split"]].add(int(name["total"]))
        parquet = pq.ParquetFile(shard)
        schema = parquet.schema_arrow.remove_metadata()
        if not schema.equals(SCHEMA):
            result.add(f"{shard.name}: schema differs from the row contract")
            continue
        for index in range(parquet.num_row_groups):
            rows = parquet.read_row_group(index).to_pylist()
            checker.row_group(shard.name, name["split"], rows)
            result.rows_per_split[name["split"]] = result.rows_per_split.get(
                name["split"], 0
            ) + len(rows)
    for split, total in totals.items():
        count = sum(1 for s in shards if s.name.startswith(f"{split}-"))
        if total != {count}:
            result.add(f"{split}: shard names say {sorted(total)} shards, found {count}")
    checker.finish()
    expected = manifest.get("rows_per_split", {})
    if expected != result.rows_per_split:
        result.add(f"manifest rows_per_split {expected} != rows found {result.rows_per_split}")
    return result
