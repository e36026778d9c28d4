"""A shard's bytes depend on its rows only, never on the parts they were rendered into."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.schema import SCHEMA
from pipeline.shards.writer import (
    BYTES_LEAVES,
    PartWriter,
    Placed,
    _binary,
    read_part,
    write_shard,
)


def _image_rows(index: int, rng: random.Random) -> list[dict[str, Any]]:
    """The rows of one image: 1 to 4 questions, sharing its bytes and one of two masks."""
    image = rng.randbytes(rng.randint(1_000, 30_000))
    masks = [rng.randbytes(rng.randint(100, 2_000)) for _ in range(2)]
    rows = []
    for question in range(rng.randint(1, 4)):
        row: dict[str, Any] = {field.name: None for field in SCHEMA}
        row |= {
            "image": {"bytes": image, "path": None},
            "mask": {"bytes": masks[question % 2], "path": None},
            "question": f"question {question} of image {index}",
            "row_id": f"{index}-{question}",
        }
        rows.append(row)
    return rows


def _parts(
    folder: Path, images: list[list[dict]], cuts: list[int], row_group_bytes: int
) -> list[tuple[Path, list[Placed]]]:
    """The images written into parts cut before the given image indices."""
    pieces = []
    bounds = [0, *cuts, len(images)]
    for number, (start, end) in enumerate(zip(bounds, bounds[1:], strict=False)):
        writer = PartWriter(folder / f"part-{number}.arrows", row_group_bytes)
        for rows in images[start:end]:
            writer.add_image_rows(rows)
        pieces.append((writer.path, writer.close()))
    return pieces


def test_a_shard_is_the_same_whatever_the_parts(tmp_path: Path) -> None:
    rng = random.Random(0)
    images = [_image_rows(i, rng) for i in range(60)]
    written = []
    layouts = [([], 100_000), ([1, 2, 3, 30], 40_000), (list(range(1, 60)), 10**9), ([59], 1)]
    for number, (cuts, part_groups) in enumerate(layouts):
        folder = tmp_path / str(number)
        folder.mkdir()
        shard = folder / "shard.parquet"
        sha256 = write_shard(shard, _parts(folder, images, cuts, part_groups), 100_000)
        written.append(shard.read_bytes())
        assert sha256 == hashlib.sha256(written[-1]).hexdigest()  # made as it was written
    # A shard may also take a run of images from the middle of a part.
    folder = tmp_path / "middle"
    folder.mkdir()
    (first, placed), (second, rest) = _parts(folder, images, [30], 50_000)
    write_shard(folder / "a.parquet", [(first, placed[:10])], row_group_bytes=100_000)
    write_shard(folder / "b.parquet", [(first, placed[10:]), (second, rest)], 100_000)
    middle = pq.read_table(folder / "b.parquet").column("row_id").to_pylist()
    assert middle == [r["row_id"] for rows in images[10:] for r in rows]
    assert all(data == written[0] for data in written)

    parquet = pq.ParquetFile(shard, read_dictionary=BYTES_LEAVES)
    assert parquet.metadata.num_rows == sum(len(rows) for rows in images)
    assert 1 < parquet.num_row_groups < len(images)  # several images per row group
    read = pq.read_table(shard).to_pylist()
    assert [r["row_id"] for r in read] == [r["row_id"] for rows in images for r in rows]
    assert [r["image"]["bytes"] for r in read] == [r["image"]["bytes"] for rs in images for r in rs]
    for index in range(parquet.num_row_groups):  # each image and mask stored once
        group = parquet.read_row_group(index).column("image").combine_chunks().field("bytes")
        assert len(set(group.dictionary.to_pylist())) == len(group.dictionary)


def test_values_joined_into_one_binary_array_are_those_given() -> None:
    for values in ([], [b""], [b"ab", b"", b"cde", b"ab"], [bytes(range(256)) * 40] * 3):
        array = _binary(values)
        assert array.type == pa.binary() and array.null_count == 0
        assert array.to_pylist() == values


def test_a_part_notes_where_each_image_is_and_its_bytes(tmp_path: Path) -> None:
    rng = random.Random(1)
    images = [_image_rows(i, rng) for i in range(12)]
    writer = PartWriter(tmp_path / "part.arrows", row_group_bytes=40_000, hashed=True)
    for rows in images:
        writer.add_image_rows(rows)
    placed = writer.close()
    assert writer.sha256 == hashlib.sha256(writer.path.read_bytes()).hexdigest()
    groups = [group.to_pylist() for group in read_part(writer.path)]
    assert 1 < len(groups) < len(images)
    for rows, image in zip(images, placed, strict=True):
        found = groups[image.row_group][image.offset : image.offset + image.rows]
        assert [r["row_id"] for r in found] == [r["row_id"] for r in rows]
        assert [r["image"] for r in found] == [r["image"] for r in rows]
        distinct = {r["image"]["bytes"] for r in rows} | {r["mask"]["bytes"] for r in rows}
        assert image.bytes == sum(len(b) for b in distinct)


def test_equal_values_of_different_parts_are_stored_once_per_row_group(tmp_path: Path) -> None:
    rng = random.Random(2)
    shared = rng.randbytes(700)  # a mask many images have, as equal copies of one another
    images = [_image_rows(i, rng) for i in range(40)]
    for index, rows in enumerate(images):
        if index % 3 == 0:
            for row in rows:
                row["mask"] = {"bytes": bytes(bytearray(shared)), "path": None}
    written = []
    for number, cuts in enumerate([[], [1, 2, 3, 4, 5, 20], list(range(1, 40))]):
        folder = tmp_path / str(number)
        folder.mkdir()
        write_shard(folder / "shard.parquet", _parts(folder, images, cuts, 20_000), 10**9)
        written.append((folder / "shard.parquet").read_bytes())
    assert all(data == written[0] for data in written)
    parquet = pq.ParquetFile(tmp_path / "0" / "shard.parquet", read_dictionary=BYTES_LEAVES)
    assert parquet.num_row_groups == 1
    masks = parquet.read_row_group(0).column("mask").combine_chunks().field("bytes")
    assert masks.dictionary.to_pylist().count(shared) == 1
    read = pq.read_table(tmp_path / "2" / "shard.parquet").column("mask").to_pylist()
    assert [m["bytes"] for m in read] == [r["mask"]["bytes"] for rows in images for r in rows]
