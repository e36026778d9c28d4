"""Statistics of a built folder, streamed from the Parquet columns (no image is decoded).

Memory stays flat whatever the size of the build: only counters and a fixed histogram are
kept, and only the small columns are read, a record batch at a time.
"""

from __future__ import annotations

from collections import Counter
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


def collect_stats(folder: Path, batch_size: int = 65_536) -> Stats:
    """Stream every shard of a built folder into Stats."""
    stats = Stats()
    for shard in sorted((folder / "data").glob("*.parquet")):
        for batch in pq.ParquetFile(shard).iter_batches(batch_size=batch_size, columns=COLUMNS):
            columns = {name: batch.column(name).to_pylist() for name in COLUMNS[:5]}
            stats.rows += batch.num_rows
            stats.by_modality_split_type.update(
                zip(columns["modality"], columns["split"], columns["question_type"], strict=True)
            )
            stats.zones.update(
                (m, z) for m, z in zip(columns["modality"], columns["zone"], strict=True) if z
            )
            stats.patient_sides.update(side or "null" for side in columns["patient_side"])
            # One size row per present target: its area, counted once per target.
            areas = np.array(
                [
                    area
                    for area, kind in zip(
                        batch.column("area_fraction").to_pylist(),
                        columns["question_type"],
                        strict=True,
                    )
                    if kind == "size"
                ],
                dtype=float,
            )
            stats.size_histogram += np.histogram(areas, bins=SIZE_BINS)[0]
    pa.default_memory_pool().release_unused()  # what Arrow's allocator kept from the stream
    return stats
