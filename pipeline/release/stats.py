"""Statistics of a build's rows, for its data card: counters and a fixed histogram only.

Each render worker counts the rows it writes (build/stages.py), and the build adds up its
batches' counts; `collect_stats` counts a built folder from its Parquet columns, a record
batch at a time (no image is decoded). Either way memory stays flat whatever the size of
the build.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

COLUMNS = ("modality", "split", "question_type", "zone", "patient_side", "area_fraction")
SIZE_BINS = np.concatenate(([0.0], np.logspace(-4, 0, 25)))  # area fraction, log-spaced


@dataclass
class Stats:
    rows: int = 0
    by_modality_split_type: Counter = field(default_factory=Counter)
    zones: Counter = field(default_factory=Counter)  # (modality, zone)
    patient_sides: Counter = field(default_factory=Counter)  # side or "null"
    size_histogram: np.ndarray = field(default_factory=lambda: np.zeros(len(SIZE_BINS) - 1))

    @property
    def modalities(self) -> list[str]:
        return sorted({modality for modality, _, _ in self.by_modality_split_type})

    @property
    def question_types(self) -> Counter:
        counts: Counter = Counter()
        for (_, _, kind), rows in self.by_modality_split_type.items():
            counts[kind] += rows
        return counts

    @property
    def rows_per_modality_split(self) -> Counter:
        counts: Counter = Counter()
        for (modality, split, _), rows in self.by_modality_split_type.items():
            counts[(modality, split)] += rows
        return counts

    def add(self, columns: dict[str, Sequence]) -> None:
        """Count rows given as columns (one list per name in COLUMNS)."""
        modality, split, kind, zone, side, area = (columns[name] for name in COLUMNS)
        self.rows += len(kind)
        self.by_modality_split_type.update(zip(modality, split, kind, strict=True))
        self.zones.update((m, z) for m, z in zip(modality, zone, strict=True) if z)
        self.patient_sides.update(s or "null" for s in side)
        # One size row per present target: its area, counted once per target.
        sizes = [a for a, k in zip(area, kind, strict=True) if k == "size"]
        self.size_histogram += np.histogram(np.array(sizes, dtype=float), bins=SIZE_BINS)[0]

    @classmethod
    def total(cls, parts: Iterable[Stats]) -> Stats:
        """The counts of several parts of a build, added up."""
        total = cls()
        for part in parts:
            total.rows += part.rows
            total.by_modality_split_type.update(part.by_modality_split_type)
            total.zones.update(part.zones)
            total.patient_sides.update(part.patient_sides)
            total.size_histogram += part.size_histogram
        return total


def collect_stats(folder: Path, batch_size: int = 65_536) -> Stats:
    """Stream every shard of a built folder into Stats."""
    stats = Stats()
    for shard in sorted((folder / "data").glob("*.parquet")):
        for batch in pq.ParquetFile(shard).iter_batches(batch_size=batch_size, columns=COLUMNS):
            stats.add({name: batch.column(name).to_pylist() for name in COLUMNS})
    pa.default_memory_pool().release_unused()  # what Arrow's allocator kept from the stream
    return stats
