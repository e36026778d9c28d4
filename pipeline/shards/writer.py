"""Parquet shards in the Hugging Face layout: data/<split>-<i>-of-<n>.parquet.

One image carries several QA rows. Rows of one image always share a row group, and the
image and mask columns are dictionary-encoded with a dictionary page large enough for a
whole row group, so each distinct image and mask is stored once per row group: the folder
stays close to the bytes of the unique images and masks it holds. The bytes columns are
handed to Parquet as Arrow dictionary arrays (distinct values + indices), so no image is
copied or hashed once per row. Shards are written under a staging folder and named
`-of-<n>` only when the split is complete.

The Arrow schema is not stored in the file (it would record those columns as dictionaries);
readers get the row contract's plain types from the Parquet types, and the `huggingface`
key that restores the Image features is written as file metadata.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ..schema import IMAGE_COLUMNS, SCHEMA, schema_with_features

ROW_GROUP_BYTES = 4 * 2**20  # unique image + mask bytes buffered per row group (writing or
# checking one holds a few copies of it at once: kept small, so a worker's peak stays low)
SHARD_BYTES = 256 * 2**20  # start a new shard past this size

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


def _dictionary(values: list[bytes]) -> pa.DictionaryArray:
    """Values that repeat (an image's rows share its bytes) as distinct values + indices.

    Distinct by content: Parquet's dictionary writer needs unique values (equal masks of
    different rows included), and a bytes object computes its hash once.
    """
    slots: dict[bytes, int] = {}
    indices = [slots.setdefault(value, len(slots)) for value in values]
    return pa.DictionaryArray.from_arrays(
        pa.array(indices, pa.int32()), pa.array(list(slots), pa.binary())
    )


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


def open_shard(path: Path, row_group_bytes: int = ROW_GROUP_BYTES) -> pq.ParquetWriter:
    """A Parquet writer with the layout and options of every MMRS shard."""
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


class SplitWriter:
    """Streams the rows of one split into shards, an image's rows at a time."""

    def __init__(
        self,
        folder: Path,
        split: str,
        row_group_bytes: int = ROW_GROUP_BYTES,
        shard_bytes: int = SHARD_BYTES,
    ) -> None:
        self.folder = folder
        self.split = split
        self.row_group_bytes = row_group_bytes
        self.shard_bytes = shard_bytes
        self.shards: list[Path] = []
        self._buffer: list[dict[str, Any]] = []
        self._buffered_bytes = 0
        self._writer: pq.ParquetWriter | None = None

    def add_image_rows(self, rows: list[dict[str, Any]]) -> None:
        """Add every row of one image (they stay in one row group)."""
        unique: dict[int, int] = {}
        for row in rows:
            for column in IMAGE_COLUMNS:
                data = row[column]["bytes"]
                unique[id(data)] = len(data)
        self._buffer.extend(rows)
        self._buffered_bytes += sum(unique.values())
        if self._buffered_bytes >= self.row_group_bytes:
            self._flush()

    def _open_shard(self) -> pq.ParquetWriter:
        path = self.folder / f".{self.split}-{len(self.shards):05d}.parquet.tmp"
        self.shards.append(path)
        return open_shard(path, self.row_group_bytes)

    def _flush(self) -> None:
        if not self._buffer:
            return
        if self._writer is None:
            self._writer = self._open_shard()
        table = _table(self._buffer)
        self._writer.write_table(table, row_group_size=len(self._buffer))
        self._buffer, self._buffered_bytes = [], 0
        if self.shards[-1].stat().st_size >= self.shard_bytes:
            self._writer.close()
            self._writer = None

    def close(self) -> list[Path]:
        """Flush, close and give each shard its final name; returns the final paths."""
        self._flush()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        total = len(self.shards)
        final = []
        for index, path in enumerate(self.shards):
            target = self.folder / f"{self.split}-{index:05d}-of-{total:05d}.parquet"
            path.replace(target)
            final.append(target)
        self.shards = final
        return final


def row_count(path: Path) -> int:
    """Rows in a Parquet file (from its footer)."""
    return pq.ParquetFile(path).metadata.num_rows
