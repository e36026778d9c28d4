"""What a stage writes: Parquet parts, where each image's rows are in them, and checks."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..checks.shard import ShardResult
from ..release.stats import Stats
from .writer import Placed


@dataclass(frozen=True)
class Part:
    """One split's rows of one render job: a file of groups of images, the place of each
    image's rows in it (the unit a shard is cut at) and, when checked, each group's check."""

    split: str
    path: Path
    sha256: str  # of the file as written, checked before the part is taken from a store
    # (empty in a store of this build only, never searched again)
    images: tuple[Placed, ...]
    checks: tuple[ShardResult, ...] | None = None  # of each group; None: not checked

    @property
    def rows(self) -> int:
        return sum(image.rows for image in self.images)


@dataclass(frozen=True)
class RenderResult:
    key: str
    parts: tuple[Part, ...]
    images: int = 0  # of the cases rendered (a volume case: its slices)
    stats: Stats = field(default_factory=Stats)  # of every row written, for the card
