"""Shards planned per split by size, whatever the sizes of the jobs that rendered the rows.

A split's images (in order, with their bytes) are cut into the fewest shards that keep
every shard within the maximum, as even as the images allow: a split smaller than the
maximum is one file, and no shard is smaller than its split's size requires.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

# Most bytes of one shard by default: the `datasets` library's max_shard_size for the Hub.
MAX_SHARD_BYTES = 500 * 10**6


def plan_shards(sizes: Sequence[int], max_bytes: int = MAX_SHARD_BYTES) -> list[int]:
    """How many of the images (their bytes, in order) go into each shard.

    Each shard closes once it reaches its even share of what is left (what is left,
    divided by the fewest shards that hold it), or before an image that would take it
    past max_bytes; an image larger than max_bytes is a shard of its own.
    """
    if max_bytes < 1:
        raise ValueError(f"the most bytes of a shard must be positive, got {max_bytes}")
    counts: list[int] = []
    left = sum(sizes)
    count = size = 0

    def share() -> float:
        return left / max(1, math.ceil(left / max_bytes))

    target = share()
    for image in sizes:
        if count and size + image > max_bytes:
            counts.append(count)
            left -= size
            count = size = 0
            target = share()
        count += 1
        size += image
        if size >= target:
            counts.append(count)
            left -= size
            count = size = 0
            target = share()
    if count:
        counts.append(count)
    return counts
