"""Shards planned per split by size: the fewest within the maximum, as even as can be."""

from __future__ import annotations

import math
import random

import pytest

from pipeline.shards.plan import MAX_SHARD_BYTES, plan_shards


def _shards(sizes: list[int], counts: list[int]) -> list[int]:
    """The bytes of each planned shard."""
    assert sum(counts) == len(sizes) and all(counts)
    starts = [sum(counts[:i]) for i in range(len(counts))]
    return [sum(sizes[s : s + c]) for s, c in zip(starts, counts, strict=True)]


def test_a_split_within_the_maximum_is_one_shard() -> None:
    assert plan_shards([300_000] * 50) == [50]
    assert plan_shards([MAX_SHARD_BYTES]) == [1]
    assert plan_shards([]) == []


@pytest.mark.parametrize("seed", range(20))
def test_shards_are_the_fewest_within_the_maximum_and_even(seed: int) -> None:
    rng = random.Random(seed)
    most = rng.choice([10_000, 50_000, 1_000_000])
    sizes = [rng.randint(1, most // 50) for _ in range(rng.randint(1, 2000))]
    shards = _shards(sizes, plan_shards(sizes, most))
    total = sum(sizes)
    assert len(shards) == max(1, math.ceil(total / most))
    assert max(shards) <= most
    # none smaller than an even share of its split, less the images at its edges
    assert min(shards) >= total / len(shards) - 2 * max(sizes)


def test_images_larger_than_the_maximum_stand_alone() -> None:
    sizes = [30, 300, 30, 30, 300]
    assert _shards(sizes, plan_shards(sizes, 100)) == [30, 300, 60, 300]
    assert plan_shards([300, 300, 300], 500) == [1, 1, 1]


def test_a_maximum_below_one_byte_is_refused() -> None:
    with pytest.raises(ValueError, match="must be positive"):
        plan_shards([1, 2], 0)
