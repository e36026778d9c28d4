"""The one place that reads and writes 2D pixels (Pillow).

Axis order: every array here is (row, col) = (y, x), row 0 at the top, as Pillow and NumPy
give it. Masks come out as boolean arrays; label maps as integer arrays.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image, UnidentifiedImageError

# Formats whose bytes are kept as they are when no pixel changes; anything else (BMP, TIFF,
# ...) is re-encoded losslessly to PNG so every viewer and `datasets` can show it.
KEPT_FORMATS = {"JPEG": "jpg", "PNG": "png"}

# Lossy masks (JPEG) carry grey levels around edges and noise near 0 and 255.
BINARY_THRESHOLD = 127


class PixelError(ValueError):
    """A file that cannot be read as the image or mask it should be.

    `path` is the file at fault (a mask's when the mask is the bad one) and `problem` what
    is wrong with it; the message is both.
    """

    def __init__(self, problem: str, path: Path | None = None) -> None:
        super().__init__(problem if path is None else f"{path}: {problem}")
        self.problem, self.path = problem, path

    def __reduce__(self):  # pickled with its own arguments, not the joined message
        return type(self), (self.problem, self.path)


@dataclass(frozen=True)
class DecodedImage:
    """An image file's own bytes plus what is needed to use them."""

    data: bytes
    format: str  # Pillow format name, e.g. "JPEG"
    width: int
    height: int
    image: Image.Image  # decoded pixels (JPEG read with pixels=False: at 1/8 scale)


def _frame_sizes(image: Image.Image) -> list[tuple[int, int]]:
    """The size of each frame of an opened file (most files have one), back on the first."""
    if getattr(image, "n_frames", 1) == 1:
        return [image.size]
    sizes = []
    for frame in range(image.n_frames):
        image.seek(frame)
        sizes.append(image.size)
    image.seek(0)
    return sizes


def _open(path: Path, data: bytes, pixels: bool) -> tuple[Image.Image, tuple[int, int]]:
    try:
        image = Image.open(io.BytesIO(data))
        size = image.size
        # A camera's MPO: its first frame is the picture (the others, previews or views).
        sizes = [size] if image.format == "MPO" else _frame_sizes(image)
        if not pixels and image.format in KEPT_FORMATS:  # its pixels are not encoded again
            image.draft(image.mode, (1, 1))  # JPEG: decode at the smallest DCT scale
        image.load()  # decode now: truncated and corrupt files fail here, not later
    except UnidentifiedImageError as exc:  # its message holds the buffer's repr
        raise PixelError("cannot decode image (not a known image format)", path) from exc
    except Image.DecompressionBombError as exc:
        raise PixelError(f"cannot decode image ({exc})", path) from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise PixelError(f"cannot decode image ({exc})", path) from exc
    if sizes.count(size) > 1:  # a thumbnail or a reduced level is not another picture
        frames = f"{sizes.count(size)} frames of {size[0]}x{size[1]}"
        raise PixelError(f"{frames} (animated or multi-page): which is meant is unknown", path)
    return image, size


def read_image(path: Path, pixels: bool = True) -> DecodedImage:
    """Read and decode an image file's first frame; PixelError names the file when it is
    unreadable, or holds several frames of that size (an animated GIF, a stack in a TIFF:
    which one the case means is not known). Smaller frames (a TIFF's thumbnail or reduced
    levels) and a camera's MPO previews or views leave the first frame the picture.

    pixels=False when only the file's soundness matters (its bytes are kept as they are):
    a JPEG is then decoded at 1/8 scale (libjpeg's DCT scaling), which still decodes all
    of its entropy-coded data, so a truncated file fails as it does in full, in about 70 %
    of the time. Other formats are decoded in full either way, a camera's MPO (a JPEG with
    a preview after it) included: its bytes are not kept, its pixels are encoded again.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PixelError(f"cannot read file ({exc.strerror})", path) from exc
    image, (width, height) = _open(path, data, pixels)
    return DecodedImage(data, image.format or "", width, height, image)


def _pixels(image: Image.Image) -> np.ndarray:
    """The pixels of an 8-bit single-band image ('L' or 'P') as a read-only array.

    Pillow's Arrow export shares the image's memory when it holds the image in one block
    (up to its 16 MiB block size), so the array costs no copy; larger images, and Pillow
    versions without the export, are copied as np.asarray does.
    """
    try:
        flat = pa.array(image).to_numpy(zero_copy_only=True)
    except (ValueError, TypeError, pa.ArrowException):
        return np.asarray(image)
    return flat.reshape(image.height, image.width)


DEEP_MODES = ("I;16", "I;16B", "I;16L", "I", "F")  # single-channel, more than 8 bits


def to_grey(pixels: np.ndarray, low: float, high: float) -> np.ndarray:
    """Window pixels to uint8; NaN and infinite values become black; a flat window black."""
    values = pixels.astype(np.float32)
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (values - low) * (255.0 / (high - low))
    scaled = np.nan_to_num(scaled, nan=0.0, posinf=0.0, neginf=0.0)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def as_rgb(image: Image.Image) -> Image.Image:
    """An image as 8-bit RGB, to show or to feed a model: a 16-bit or float grey image
    windowed over its own (finite) range first (Pillow's conversion clips it at 255)."""
    if image.mode not in DEEP_MODES:
        return image.convert("RGB")
    values = np.asarray(image)
    finite = values[np.isfinite(values)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    return Image.fromarray(to_grey(values, low, high)).convert("RGB")


def grey_levels(image: Image.Image) -> np.ndarray:
    """An image's grey levels for finding the body in it: a 16-bit or float image's own
    values (8-bit grey would clip them at 255: a 12-bit film turns white), any other
    through Pillow's convert("L")."""
    return np.asarray(image if image.mode in DEEP_MODES else image.convert("L"))


def _raw_values(path: Path, image: Image.Image) -> np.ndarray:
    """Single-channel values of a mask: palette indices, 0/1 for 1-bit, grey otherwise."""
    if image.mode in ("P", "L"):
        return _pixels(image)
    if image.mode == "1":
        return np.asarray(image, dtype=np.uint8)
    if image.mode in DEEP_MODES:
        return np.asarray(image)
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        return _over_black(image)
    if image.mode in ("RGB", "CMYK", "YCbCr"):
        return np.asarray(image.convert("L"))
    raise PixelError(f"unsupported mask mode {image.mode!r}", path)


def _over_black(image: Image.Image) -> np.ndarray:
    """The grey of a mask with an alpha channel as it shows over black: a mask drawn as
    opaque strokes on a transparent ground (white, say, everywhere, the lesion in the
    alpha alone) is its strokes, not the whole image."""
    grey, alpha = np.moveaxis(np.asarray(image.convert("LA")), -1, 0)
    if alpha.min() == 255:  # opaque: the grey as it is
        return grey
    return ((grey.astype(np.uint16) * alpha + 127) // 255).astype(np.uint8)


@dataclass(frozen=True)
class BinaryMask:
    """A mask file read as booleans, with its own bytes where they can be kept."""

    pixels: np.ndarray
    png: bytes | None  # the file itself when it already is a mask PNG (single-channel 0/255)


def _palette_foreground(image: Image.Image, indices: np.ndarray) -> np.ndarray:
    """A palette mask's foreground: its non-zero indices (0 the background, as in a label
    image) where its palette starts with black or uses a colour that is not a grey. A
    palette of greys that starts with another (white first, as some writers order it) is
    read as grey, so that a white lesion on black is the lesion in either order."""
    palette = image.getpalette("RGB") or []
    if palette[:3] in ([], [0, 0, 0]):  # the usual order: black (a background) first
        return indices > 0
    greys = {}
    for _, index in sorted(image.getcolors(256), key=lambda used: used[1]):
        colour = palette[3 * index : 3 * index + 3]
        if len(colour) < 3 or len(set(colour)) > 1:
            return indices > 0  # colours: a class per index
        greys[index] = colour[0]
    cut = BINARY_THRESHOLD if max(greys.values(), default=0) > BINARY_THRESHOLD else 0
    foreground = [index for index, grey in greys.items() if grey > cut]
    table = np.zeros(256, dtype=bool)
    table[foreground] = True
    return table[indices]


def read_mask(path: Path) -> BinaryMask:
    """Read a mask file as a boolean array.

    1-bit masks: foreground is 1. Palette masks: any non-zero index, unless the palette
    is of greys and does not start with black (_palette_foreground): then as grey.
    Others are read as grey (RGB via Pillow's convert("L")): foreground is grey > 127,
    which survives lossy JPEG masks; masks whose values never exceed 127 (0/1 masks, label
    values) use > 0 instead, except JPEG masks, whose low values are compression noise.
    """
    decoded = read_image(path)
    image = decoded.image
    values = _raw_values(path, image)
    if image.mode == "P":
        return BinaryMask(_palette_foreground(image, values), None)
    if image.mode == "1":
        return BinaryMask(values > 0, None)
    if image.format == "JPEG" or values.max(initial=0) > BINARY_THRESHOLD:
        pixels = values > BINARY_THRESHOLD
        is_mask_png = image.format == "PNG" and image.mode == "L"
        if is_mask_png and np.array_equal(values, pixels.view(np.uint8) * np.uint8(255)):
            return BinaryMask(pixels, decoded.data)  # no need to encode what is there
        return BinaryMask(pixels, None)
    return BinaryMask(values > 0, None)


def read_binary_mask(path: Path) -> np.ndarray:
    """The boolean pixels of a mask file (see read_mask)."""
    return read_mask(path).pixels


def read_label_map(path: Path) -> np.ndarray:
    """Read a single-channel label map (palette indices or grey values) as integers."""
    image = read_image(path).image
    if image.mode not in ("P", "L", "I", "I;16", "I;16B", "I;16L", "1"):
        raise PixelError(
            f"a label map must be single-channel or palette, got mode {image.mode!r}", path
        )
    if image.format == "JPEG":
        raise PixelError("a label map cannot be lossy JPEG", path)
    return _raw_values(path, image).astype(np.int64)


# zlib level of images whose pixels are re-encoded (BMP, TIFF, display turns, volume slices):
# on the real 2D samples, level 3 encodes 2.6-3.2x faster than Pillow's default 6 for 0-7%
# more bytes (benchmarks/bench_png.py; README, "Benchmark").
PNG_LEVEL = 3


def _png_ready(image: Image.Image) -> Image.Image:
    """The image as PNG holds it losslessly: 32-bit integers within 16 bits as 16-bit grey;
    values beyond, or floating-point ones, are refused (PNG holds at most 16-bit integers)."""
    if image.mode == "F":
        raise PixelError("floating-point pixels: a PNG cannot hold them losslessly")
    if image.mode != "I":
        return image
    values = np.asarray(image)
    low, high = (int(values.min()), int(values.max())) if values.size else (0, 0)
    if low < 0 or high > 65535:
        raise PixelError(f"32-bit pixels from {low} to {high}: a PNG holds 0 to 65535 at most")
    return Image.fromarray(values.astype(np.uint16))


def encode_png(pixels: np.ndarray | Image.Image, compress_level: int = PNG_LEVEL) -> bytes:
    """Encode pixels as PNG, losslessly (deterministic bytes for the same pixels)."""
    image = _png_ready(pixels if isinstance(pixels, Image.Image) else Image.fromarray(pixels))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()


# Masks are long runs of 0 and 255: zlib's fastest level costs them about 1 KB each and
# halves both encoding and decoding time (decoded by validation again for every build).
MASK_COMPRESS_LEVEL = 1


def encode_mask(mask: np.ndarray) -> bytes:
    """A boolean mask as a single-channel 0/255 PNG."""
    return encode_png(mask.astype(np.uint8) * 255, MASK_COMPRESS_LEVEL)


def decode_mask(data: bytes) -> np.ndarray:
    """Inverse of encode_mask (used by validation): a 0/255 PNG back to booleans."""
    image = Image.open(io.BytesIO(data))
    if image.mode != "L":
        raise PixelError(f"mask PNG must be single-channel 'L', got {image.mode!r}")
    return _pixels(image) > BINARY_THRESHOLD
