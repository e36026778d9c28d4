"""What a stage writes: Parquet parts with their content hashes and checks, per batch."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..checks.shard import ShardResult
from ..release.stats import Stats
from ..store import FileIdentity


@dataclass(frozen=True)
class Part:
    """One split's rows of one batch: a Parquet file, its content hash and its check."""

    split: str
    path: Path
    sha256: str
    rows: int
    identity: FileIdentity  # of the file when it was hashed
    check: ShardResult | None = None  # None: not checked


@dataclass(frozen=True)
class RenderResult:
    key: str
    parts: tuple[Part, ...]
    images: int = 0  # of the cases rendered (a volume case: its slices)
    stats: Stats = field(default_factory=Stats)  # of every row written, for the card
