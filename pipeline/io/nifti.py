"""What ITK's NIfTI reader does not check: that the file holds every voxel its header declares.

ITK (5.x) fills the voxels of a NIfTI cut short with zeros, and reads a valid gzip of half
a NIfTI without a word; it also turns NaN and infinite voxels into 0 (nifticlib's
nifti_read_buffer), so an undefined voxel reads as a real 0 (0 HU on a CT). `check_nifti`
reads the file once, as a stream: the gzip stream must be complete (its end marker and CRC
are checked), the data must be as long as the header says (vox_offset + voxels x the bytes
of its datatype),
and the positions of non-finite voxels of float data are returned so that the reader can
put them back.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

CHUNK = 1 << 22  # bytes read at a time: the file is never held whole
HEADER_BYTES = 544  # read before the header is parsed: NIfTI-2's 540 and its extension flag
GZIP = 16 + zlib.MAX_WBITS  # zlib's gzip mode: header, deflate data, CRC-32 and length
# NIfTI datatype codes of floats -> numpy kind (the values ITK would zero when non-finite)
FLOATS = {16: "f4", 64: "f8"}
# Bytes per voxel of each datatype: what the reader goes by (nifticlib ignores bitpix)
VOXEL_BYTES = {2: 1, 4: 2, 8: 4, 16: 4, 32: 8, 64: 8, 128: 3, 256: 1, 512: 2, 768: 4,
               1024: 8, 1280: 8, 1536: 16, 1792: 16, 2048: 32, 2304: 4}  # fmt: skip


class NiftiError(ValueError):
    """A NIfTI file that does not hold what its header declares."""


@dataclass(frozen=True)
class NiftiHeader:
    byteorder: str  # "<" or ">"
    dims: tuple[int, ...]  # dim[1..dim[0]], x fastest
    datatype: int
    voxel_bytes: int
    vox_offset: int

    @property
    def data_bytes(self) -> int:
        return int(np.prod(self.dims, dtype=np.int64)) * self.voxel_bytes


def _parse(head: bytes) -> NiftiHeader:
    """The fields that size the data, from the first 540 bytes (NIfTI-1 or NIfTI-2)."""
    for order in "<>":
        if len(head) >= 348 and struct.unpack(f"{order}i", head[:4])[0] == 348:
            if head[344:347] not in (b"n+1", b"ni1"):
                raise NiftiError("not a NIfTI-1 file (bad magic)")
            ndim, *dims = struct.unpack(f"{order}8h", head[40:56])
            datatype, bitpix = struct.unpack(f"{order}2h", head[70:74])
            offset = struct.unpack(f"{order}f", head[108:112])[0]
            return _header(order, ndim, dims, datatype, bitpix, offset, 352)
        if len(head) >= 540 and struct.unpack(f"{order}i", head[:4])[0] == 540:
            if head[4:7] != b"n+2":
                raise NiftiError("not a NIfTI-2 file (bad magic)")
            datatype, bitpix = struct.unpack(f"{order}2h", head[12:16])
            ndim, *dims = struct.unpack(f"{order}8q", head[16:80])
            offset = struct.unpack(f"{order}q", head[168:176])[0]
            return _header(order, ndim, dims, datatype, bitpix, offset, 544)
    raise NiftiError(f"not a NIfTI file (header of {len(head)} bytes, no NIfTI size mark)")


def _header(order, ndim, dims, datatype, bitpix, offset, smallest) -> NiftiHeader:
    if not 1 <= ndim <= 7 or any(d < 1 for d in dims[:ndim]):
        raise NiftiError(f"header declares impossible dimensions {dims[:ndim]}")
    voxel_bytes = VOXEL_BYTES.get(datatype, bitpix // 8 if bitpix > 0 and bitpix % 8 == 0 else 0)
    if not voxel_bytes:
        raise NiftiError(f"header declares datatype {datatype} of {bitpix} bits per voxel")
    if offset < smallest or offset != int(offset):
        raise NiftiError(f"header declares its data at byte {offset}")
    return NiftiHeader(order, tuple(dims[:ndim]), datatype, voxel_bytes, int(offset))


def _chunks(path: Path) -> Iterator[bytes]:
    """The file's (decompressed) bytes, a chunk at a time; a gzip stream must be whole."""
    with path.open("rb") as stream:
        if not path.name.lower().endswith(".gz"):
            while chunk := stream.read(CHUNK):
                yield chunk
            return
        try:
            yield from _inflated(stream)
        except zlib.error as exc:  # a bad block, CRC or length
            raise NiftiError(f"corrupt gzip stream ({exc})") from exc


def _headed(chunks: Iterator[bytes], first: int) -> Iterator[bytes]:
    """The same bytes, the first chunk at least `first` long (or all there is): a gzip
    stream of several members may end its first one within the header."""
    head = b""
    for chunk in chunks:
        head += chunk
        if len(head) >= first:
            yield head
            yield from chunks
            return
    if head:
        yield head


def _inflated(stream: BinaryIO) -> Iterator[bytes]:
    """The members of a gzip stream, inflated, each checked whole (zlib checks its CRC and
    length). Bytes after the last member that do not start another are ignored, as zlib's
    gzread (ITK's reader) ignores them."""
    inflate = zlib.decompressobj(GZIP)
    data = b""
    while True:
        data = data or stream.read(CHUNK)
        out = inflate.decompress(data, CHUNK)  # at most CHUNK out: no bomb is held whole
        if out:
            yield out
        data = inflate.unconsumed_tail
        if inflate.eof:
            rest = inflate.unused_data
            while 0 < len(rest) < 2 and (more := stream.read(CHUNK)):
                rest += more
            if rest[:2] != b"\x1f\x8b":
                return  # the end, or bytes that are not another member
            inflate, data = zlib.decompressobj(GZIP), rest
        elif not data and not out:  # all input used, nothing more to give: the file ended
            if not (data := stream.read(CHUNK)):
                raise NiftiError("gzip stream cut short (the file is truncated)")


def check_nifti(path: Path) -> np.ndarray | None:
    """Read a .nii / .nii.gz through and prove it whole (NiftiError says what is wrong).

    Returns where the float data holds non-finite voxels, as booleans in the file's voxel
    order (shape dim[n]..dim[1]: [z, y, x] for a volume), or None when there are none.
    """
    header: NiftiHeader | None = None
    size, pending, voxel = 0, b"", 0
    dtype, flags = None, None
    for chunk in _headed(_chunks(path), HEADER_BYTES):
        start, size = size, size + len(chunk)
        if header is None:
            header = _parse(chunk[:HEADER_BYTES])
            kind = FLOATS.get(header.datatype)
            dtype = np.dtype(header.byteorder + kind) if kind else None
        if dtype is None or size <= header.vox_offset:
            continue
        pending += chunk[max(0, header.vox_offset - start) :]
        usable = len(pending) - len(pending) % dtype.itemsize
        values = np.frombuffer(pending, dtype, count=usable // dtype.itemsize)
        bad = ~np.isfinite(values)
        if bad.any():
            if flags is None:
                flags = np.zeros(header.data_bytes // dtype.itemsize, dtype=bool)
            within = flags[voxel : voxel + values.size]  # beyond the data: a size error below
            within[:] = bad[: within.size]
        voxel += values.size
        pending = pending[usable:]
    if header is None:
        raise NiftiError("empty file")
    expected = header.vox_offset + header.data_bytes
    if size != expected:
        what = "decompressed size" if path.name.lower().endswith(".gz") else "size"
        raise NiftiError(
            f"{what} is {size} bytes, its header declares {expected} "
            f"({' x '.join(map(str, header.dims))} voxels of {header.voxel_bytes} bytes from "
            f"byte {header.vox_offset})"
        )
    if flags is None:
        return None
    return flags.reshape(header.dims[::-1])
