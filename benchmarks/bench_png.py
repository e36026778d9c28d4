"""Time and bytes of the lossless encodings a re-encoded image can get (README, "Benchmark").

A source whose pixels must be re-encoded (BMP, TIFF, a display turn) spends most of its
build compressing. This measures, on the images given (default: the real samples' 2D
images, decoded once, untimed), each PNG zlib level and WebP lossless (which the `datasets`
Image feature and the Hub viewer also read): CPU seconds per megapixel to encode and to
decode, and bytes against PNG level 6. CPU time (`time.process_time`) rather than wall
time, so a busy machine moves the figures less; the median of `--repeats` runs per image.

    python benchmarks/bench_png.py [--images DIR ...] [--repeats 3]
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from PIL import Image

SAMPLES = Path(__file__).resolve().parents[1].parent / "shared" / "real_samples"
SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


def _png(level: int) -> Callable[[Image.Image], bytes]:
    def encode(image: Image.Image) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", compress_level=level)
        return buffer.getvalue()

    return encode


def _webp(method: int) -> Callable[[Image.Image], bytes]:
    def encode(image: Image.Image) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, format="WEBP", lossless=True, quality=100, method=method)
        return buffer.getvalue()

    return encode


ENCODINGS = {f"png-{level}": _png(level) for level in range(10)} | {
    f"webp-lossless-m{method}": _webp(method) for method in (0, 4)
}


def _images(folders: list[Path]) -> list[Image.Image]:
    """Every image under the folders that is not a mask, decoded to RGB or L."""
    found = []
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            if path.suffix.lower() not in SUFFIXES or "mask" in path.as_posix().lower():
                continue
            with Image.open(path) as image:
                mode = "L" if image.mode in ("L", "I;16", "I", "F", "1") else "RGB"
                found.append(image.convert(mode))
    return found


def _cpu(work: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.process_time()
        work()
        times.append(time.process_time() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, action="append", help="folder of images")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    folders = args.images or [
        SAMPLES / m for m in ("dermoscopy", "endoscopy", "ultrasound", "xray")
    ]
    images = _images(folders)
    if not images:
        raise SystemExit(f"no images found under {', '.join(map(str, folders))}")
    megapixels = sum(i.width * i.height for i in images) / 1e6
    print(f"{len(images)} images, {megapixels:.2f} megapixels in all")
    rows = {}
    for name, encode in ENCODINGS.items():
        encoded = [encode(image) for image in images]
        encode_s = sum(_cpu(lambda i=i, e=encode: e(i), args.repeats) for i in images)
        decode_s = sum(
            _cpu(lambda d=d: Image.open(io.BytesIO(d)).load(), args.repeats) for d in encoded
        )
        rows[name] = (encode_s / megapixels, decode_s / megapixels, sum(map(len, encoded)))
    base = rows["png-6"]
    print(f"{'encoding':<20} {'encode s/MP':>11} {'decode s/MP':>11} {'MB':>8} {'bytes/png-6':>11}")
    for name, (encode_s, decode_s, size) in rows.items():
        ratio = size / base[2]
        print(f"{name:<20} {encode_s:>11.4f} {decode_s:>11.4f} {size / 1e6:>8.2f} {ratio:>11.3f}")


if __name__ == "__main__":
    main()
