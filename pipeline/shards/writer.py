"""Parquet shards in the Hugging Face layout: data/<split>-<i>-of-<n>.parquet.

One image carries several QA rows. Rows of one image always share a row group, and the
image and mask columns are dictionary-encoded with a dictionary page large enough for a
whole row group, so each distinct image and mask is stored once per row group: the folder
stays close to the bytes of the unique images and masks it holds. The bytes columns are
handed to Parquet as Arrow dictionary arrays (distinct values + indices), so no image is
copied or hashed once per row.

Render jobs write parts (PartWriter: Arrow IPC, the build's own intermediate), noting
where each image's rows are; a shard is written from the images of the parts it gathers
(write_shard), into row groups of its own, so its bytes depend on its rows only, never on
how the build divided its work.

The Arrow schema is not stored in the file (it would record those columns as dictionaries);
readers get the row contract's plain types from the Parquet types, and the `huggingface`
key that restores the Image features is written as file metadata.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..schema import IMAGE_COLUMNS, SCHEMA, schema_with_features
from ..store import HashedFile

ROW_GROUP_BYTES = 4 * 2**20  # unique image + mask bytes buffered per row group (writing or
# checking one holds a few copies of it at once: kept small, so a worker's peak stays low)

BYTES_LEAVES = [f"{column}.bytes" for column in IMAGE_COLUMNS]
_STATISTICS = [
    f.name for f in SCHEMA if f.name not in IMAGE_COLUMNS and not pa.types.is_nested(f.type)
]


def _leaves(name: str, data_type: pa.DataType) -> list[str]:
    """Parquet column paths of an Arrow field ("options" -> "options.list.element")."""
    if pa.types.is_struct(data_type):
        return [leaf for child in data_type for leaf in _leaves(f"{name}.{child.name}", child.type)]
    if pa.types.is_list(data_type):
        return _leaves(f"{name}.list.element", data_type.value_type)
    return [name]


def _compression() -> dict[str, str]:
    """zstd everywhere but the image bytes, which are PNG or JPEG already."""
    leaves = [leaf for field in SCHEMA for leaf in _leaves(field.name, field.type)]
    return {leaf: "none" if leaf in BYTES_LEAVES else "zstd" for leaf in leaves}


Value = TypeVar("Value", bytes, pa.Buffer)


def _distinct(values: list[Value]) -> tuple[list[Value], list[int]]:
    """The distinct values (bytes, or Arrow buffers read in place) by content, in order of
    first use, and each value's index among them. An image's rows share its bytes objects,
    so a value is looked up by identity first, then compared only with values of its
    length: no value is hashed."""
    distinct: list[Value] = []
    by_object: dict[int, int] = {}
    by_length: dict[int, list[int]] = {}
    indices = []
    for value in values:
        index = by_object.get(id(value))  # the values are alive: an id stays theirs
        if index is None:
            same = by_length.setdefault(len(value), [])
            index = next((i for i in same if distinct[i] == value), None)
            if index is None:
                index = len(distinct)
                distinct.append(value)
                same.append(index)
            by_object[id(value)] = index
        indices.append(index)
    return distinct, indices


def _binary(values: list[bytes]) -> pa.BinaryArray:
    """Values as one binary array, their bytes joined once: pa.array would grow a buffer
    (each growth a copy, into fresh pages) to the row group's size."""
    offsets = np.zeros(len(values) + 1, dtype=np.int64)
    np.cumsum([len(value) for value in values], out=offsets[1:])
    if offsets[-1] > np.iinfo(np.int32).max:  # beyond what binary's offsets reach
        return pa.array(values, pa.binary())
    buffers = [None, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(b"".join(values))]
    return pa.Array.from_buffers(pa.binary(), len(values), buffers)


def _dictionary(values: list[bytes]) -> pa.DictionaryArray:
    """Values that repeat (an image's rows share its bytes) as distinct values + indices.

    Distinct by content: Parquet's dictionary writer needs unique values (equal masks of
    different rows included).
    """
    distinct, indices = _distinct(values)
    return pa.DictionaryArray.from_arrays(pa.array(indices, pa.int32()), _binary(distinct))


def _written(field: pa.Field) -> pa.Field:
    """The field as written: an image column's bytes as a dictionary array."""
    if field.name not in IMAGE_COLUMNS:
        return field
    return pa.field(
        field.name,
        pa.struct([("bytes", pa.dictionary(pa.int32(), pa.binary())), ("path", pa.string())]),
    )


WRITTEN_SCHEMA = pa.schema([_written(field) for field in SCHEMA])


def _table(rows: list[dict[str, Any]]) -> pa.Table:
    """Rows to an Arrow table of WRITTEN_SCHEMA, column by column."""
    arrays = []
    for field in WRITTEN_SCHEMA:
        if field.name in IMAGE_COLUMNS:
            data = _dictionary([row[field.name]["bytes"] for row in rows])
            paths = pa.array([row[field.name]["path"] for row in rows], pa.string())
            arrays.append(pa.StructArray.from_arrays([data, paths], fields=list(field.type)))
        else:
            arrays.append(pa.array([row[field.name] for row in rows], field.type))
    return pa.Table.from_arrays(arrays, schema=WRITTEN_SCHEMA)


def open_shard(path: Path | HashedFile, row_group_bytes: int = ROW_GROUP_BYTES) -> pq.ParquetWriter:
    """A Parquet writer with the layout and options of every MMRS shard, whose row groups
    hold about row_group_bytes of distinct image and mask bytes."""
    writer = pq.ParquetWriter(
        path,
        WRITTEN_SCHEMA,
        compression=_compression(),
        use_dictionary=True,
        dictionary_pagesize_limit=max(2 * row_group_bytes, 2**20),
        write_statistics=_STATISTICS,
        store_schema=False,
    )
    writer.add_key_value_metadata(schema_with_features().metadata)
    return writer


@dataclass(frozen=True)
class Placed:
    """Where one image's rows are in a part: its row group, first row there, rows, and its
    distinct image and mask bytes."""

    row_group: int
    offset: int
    rows: int
    bytes: int


class PartWriter:
    """The rows of one split written by one render job, an image's rows at a time, in
    groups of about ROW_GROUP_BYTES; where each image went is recorded, so that a shard can
    take any run of images from it (write_shard).

    A part is read once or twice by the build's own processes, so it is written as an
    Arrow IPC stream (each group a record batch with its own dictionaries): no encoding,
    and read back in place, from a memory map. With `hashed`, its SHA-256 is made as it is
    written (`sha256` once closed)."""

    def __init__(
        self, path: Path, row_group_bytes: int = ROW_GROUP_BYTES, hashed: bool = False
    ) -> None:
        self.path = path
        self.row_group_bytes = row_group_bytes
        self.hashed = hashed
        self.sha256: str | None = None
        self._hashing: HashedFile | None = None
        self.placed: list[Placed] = []
        self._groups = 0
        self._buffer: list[dict[str, Any]] = []
        self._buffered_bytes = 0
        self._file: pa.NativeFile | None = None
        self._writer: pa.ipc.RecordBatchStreamWriter | None = None

    def add_image_rows(self, rows: list[dict[str, Any]]) -> None:
        """Add every row of one image (they stay in one group)."""
        values = [row[column]["bytes"] for row in rows for column in IMAGE_COLUMNS]
        size = sum(map(len, _distinct(values)[0]))  # distinct by content, as a shard stores them
        self.placed.append(Placed(self._groups, len(self._buffer), len(rows), size))
        self._buffer.extend(rows)
        self._buffered_bytes += size
        if self._buffered_bytes >= self.row_group_bytes:
            self._flush()

    def _flush(self) -> None:
        if not self._buffer:
            return
        if self._writer is None:
            if self.hashed:
                self._hashing = HashedFile(self.path)
                self._file = pa.PythonFile(self._hashing, mode="w")
            else:
                self._file = pa.OSFile(str(self.path), "wb")
            self._writer = pa.ipc.new_stream(self._file, WRITTEN_SCHEMA)
        self._writer.write_table(_table(self._buffer))
        self._buffer, self._buffered_bytes = [], 0
        self._groups += 1

    def close(self) -> list[Placed]:
        """Flush and close; returns where each image's rows are, in order."""
        self._flush()
        if self._writer is not None:
            self._writer.close()
            self._file.close()
            self._writer = self._file = None
        if self._hashing is not None:
            self.sha256 = self._hashing.hexdigest()
        return self.placed


def read_part(path: Path) -> Iterator[pa.Table]:
    """Each group of a part (PartWriter), in order, read in place (the map lasts as long as
    a table of it does)."""
    for batch in pa.ipc.open_stream(pa.memory_map(str(path))):
        yield pa.Table.from_batches([batch])


def write_part(path: Path, groups: Iterable[pa.Table]) -> None:
    """A part of the given groups (tables of WRITTEN_SCHEMA), each kept a group."""
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, WRITTEN_SCHEMA) as out:
        for group in groups:
            out.write_table(group.combine_chunks())


def _used(dictionary: pa.Array, used: pa.Array) -> pa.Array:
    """The values of a dictionary at the indices used, in their order: the dictionary itself
    or a slice of it (no copy) when they are all of it or a run of it, as a run of images
    of a part uses."""
    first = used[0].as_py() if len(used) else 0
    if used.equals(pa.array(range(first, first + len(used)), used.type)):
        return dictionary.slice(first, len(used))
    return dictionary.take(used)


def _image_column(chunks: list[pa.StructArray], field: pa.Field) -> pa.StructArray:
    """An image column of rows taken from several row groups, as one dictionary array of its
    distinct values in order of first use.

    Each row group's dictionary holds distinct values (PartWriter), and values of rows not
    taken. Only the values used are kept; one that another chunk uses too is found as
    _distinct finds it (no value is hashed), and the distinct values are copied once (not
    at all when the rows are one row group's or a run of one)."""
    values, local, paths = [], [], []
    for struct in chunks:
        data = struct.field("bytes")
        used = pc.unique(data.indices)  # in order of first use
        values.append(_used(data.dictionary, used))
        local.append(pc.index_in(data.indices, value_set=used))
        paths.append(struct.field("path"))
    places = [(chunk, place) for chunk, array in enumerate(values) for place in range(len(array))]
    distinct, final = _distinct([values[chunk][place].as_buffer() for chunk, place in places])
    first: dict[int, tuple[int, int]] = {}  # each distinct value: where it is first used
    for where, index in zip(places, final, strict=True):
        first.setdefault(index, where)
    indices, start = [], 0
    for array, within in zip(values, local, strict=True):
        indices.append(pa.array(final[start : start + len(array)], pa.int32()).take(within))
        start += len(array)
    if len(values) == 1 and len(distinct) == len(values[0]):
        kept = values[0]
    elif len(distinct) == len(places):  # no value used by two chunks
        kept = pa.concat_arrays(values)
    else:
        kept = pa.concat_arrays([values[chunk].slice(place, 1) for chunk, place in first.values()])
    data = pa.DictionaryArray.from_arrays(pa.concat_arrays(indices), kept)
    return pa.StructArray.from_arrays([data, pa.concat_arrays(paths)], fields=list(field.type))


def gathered(tables: list[pa.Table]) -> pa.Table:
    """Images' rows from several row groups as one table of WRITTEN_SCHEMA, one chunk each."""
    plain = pa.concat_tables([t.drop_columns(list(IMAGE_COLUMNS)) for t in tables])
    plain = plain.combine_chunks()
    arrays = []
    for field in WRITTEN_SCHEMA:
        if field.name in IMAGE_COLUMNS:
            chunks = [chunk for t in tables for chunk in t.column(field.name).chunks]
            arrays.append(_image_column(chunks, field))
        else:
            arrays.append(plain.column(field.name).combine_chunks())
    return pa.Table.from_arrays(arrays, schema=WRITTEN_SCHEMA)


def write_shard(
    path: Path,
    pieces: Iterable[tuple[Path, Sequence[Placed]]],
    row_group_bytes: int = ROW_GROUP_BYTES,
) -> str:
    """Write a shard from images of parts (PartWriter), in order: each piece is a part and
    the images to take from it. An image's rows stay in one row group, which closes once it
    holds row_group_bytes of distinct image and mask bytes; so the shard's bytes depend
    only on its rows, never on which parts they came from. Returns the shard's SHA-256,
    made as it was written."""
    buffered: list[pa.Table] = []
    size = 0
    with HashedFile(path) as sink, open_shard(sink, row_group_bytes) as writer:
        for part, images in pieces:
            groups, index = read_part(part), -1
            for image in images:
                while index < image.row_group:
                    group, index = next(groups), index + 1
                buffered.append(group.slice(image.offset, image.rows))
                size += image.bytes
                if size >= row_group_bytes:
                    table = gathered(buffered)
                    writer.write_table(table, row_group_size=len(table))
                    buffered, size = [], 0
        if buffered:
            table = gathered(buffered)
            writer.write_table(table, row_group_size=len(table))
    return sink.hexdigest()


def row_count(path: Path) -> int:
    """Rows in a Parquet file (from its footer)."""
    return pq.ParquetFile(path).metadata.num_rows
