"""Mask reading that survives real data: JPEG greys, 1-bit, palette, RGB, 0/1, 16-bit."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.io.images import (
    PixelError,
    as_rgb,
    decode_mask,
    encode_png,
    read_binary_mask,
    read_image,
    read_label_map,
    read_mask,
)


def _square(value: int = 255, shape=(40, 40)) -> np.ndarray:
    pixels = np.zeros(shape, dtype=np.uint8)
    pixels[10:30, 5:20] = value
    return pixels


EXPECTED = _square(1).astype(bool)


def test_lossy_jpeg_mask_is_thresholded(tmp_path: Path) -> None:
    path = tmp_path / "m.jpg"
    Image.fromarray(_square()).convert("RGB").save(path, quality=60)
    values = np.asarray(Image.open(path).convert("L"))
    assert len(np.unique(values)) > 2  # grey levels from compression
    mask = read_binary_mask(path)
    assert abs(int(mask.sum()) - int(EXPECTED.sum())) <= 4
    assert mask[20, 12] and not mask[2, 2]


@pytest.mark.parametrize(
    "write",
    [
        lambda p: Image.fromarray(_square()).convert("1").save(p),  # 1-bit
        lambda p: Image.fromarray(_square(1)).save(p),  # 0/1
        lambda p: Image.fromarray(_square()).save(p),  # 0/255
        lambda p: Image.fromarray(np.stack([_square()] * 3, -1)).save(p),  # RGB
        lambda p: Image.fromarray(np.stack([_square()] * 4, -1)).save(p),  # RGBA
        lambda p: Image.fromarray(_square(1).astype(np.uint16) * 65535).save(p),  # 16-bit
    ],
)
def test_lossless_masks_read_exactly(tmp_path: Path, write) -> None:
    path = tmp_path / "m.png"
    write(path)
    assert np.array_equal(read_binary_mask(path), EXPECTED)


def test_a_mask_png_is_kept_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "m.png"
    Image.fromarray(_square()).save(path)  # single-channel 0/255: already the contract's
    read = read_mask(path)
    assert read.png == path.read_bytes()
    assert np.array_equal(decode_mask(read.png), EXPECTED)


@pytest.mark.parametrize(
    "write",
    [
        lambda p: Image.fromarray(_square(1)).save(p, format="PNG"),  # 0/1
        lambda p: Image.fromarray(_square(200)).save(p, format="PNG"),  # 0/200
        lambda p: Image.fromarray(np.stack([_square()] * 3, -1)).save(p, format="PNG"),  # RGB
        lambda p: Image.fromarray(_square()).convert("1").save(p, format="PNG"),  # 1-bit
        lambda p: Image.fromarray(_square()).save(p, format="JPEG", quality=95),  # lossy
    ],
)
def test_other_masks_are_encoded_again(tmp_path: Path, write) -> None:
    path = tmp_path / "m.img"
    write(path)
    assert read_mask(path).png is None


def test_palette_masks_use_indices(tmp_path: Path) -> None:
    values = _square(1)
    values[30:35, 30:35] = 2
    image = Image.fromarray(values, mode="P")
    image.putpalette([0, 0, 0, 10, 10, 10, 20, 20, 20] + [0] * 759)  # dark colours
    path = tmp_path / "p.png"
    image.save(path)
    assert read_binary_mask(path).sum() == EXPECTED.sum() + 25
    labels = read_label_map(path)
    assert set(np.unique(labels)) == {0, 1, 2}


@pytest.mark.parametrize("suffix", [".gif", ".tif"])
def test_a_file_of_several_frames_is_refused(tmp_path: Path, suffix: str) -> None:
    """Which frame of an animated GIF or a TIFF stack is the image or mask is not known; a
    TIFF's thumbnail leaves its first frame the picture, and so do a camera MPO's views."""
    frames = [Image.fromarray(_square()), Image.fromarray(_square()[:, ::-1].copy())]
    path = tmp_path / f"m{suffix}"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    for read in (read_image, read_mask, read_label_map):
        with pytest.raises(PixelError, match=rf"m{suffix}: 2 frames of 40x40 \(animated"):
            read(path)
    frames[0].save(path)  # one frame: read as usual
    assert np.array_equal(read_binary_mask(path), EXPECTED)
    if suffix == ".tif":  # with a thumbnail after it
        frames[0].save(path, save_all=True, append_images=[frames[1].resize((10, 10))])
        assert Image.open(path).n_frames == 2
        assert np.array_equal(read_binary_mask(path), EXPECTED)
    photo = [Image.fromarray(np.stack([_square()] * 3, -1)), Image.new("RGB", (40, 40))]  # views
    photo[0].save(tmp_path / "camera.mpo", save_all=True, append_images=photo[1:])
    decoded = read_image(tmp_path / "camera.mpo")
    assert (decoded.format, decoded.image.n_frames) == ("MPO", 2)
    assert np.asarray(decoded.image).max() > 200  # the first frame: the square, not black


def test_deep_pixels_are_encoded_losslessly_or_refused() -> None:
    """PNG holds at most 16-bit integers: 32-bit ones within that range are written as
    16-bit grey, others and floating-point pixels are refused rather than cut."""
    values = np.random.default_rng(0).integers(0, 65536, (30, 40), dtype=np.int32)
    written = Image.open(io.BytesIO(encode_png(Image.fromarray(values))))
    assert written.mode == "I;16"
    np.testing.assert_array_equal(np.asarray(written), values)
    values[0, 0], values[0, 1] = -1, 70000
    with pytest.raises(PixelError, match="32-bit pixels from -1 to 70000: a PNG holds 0 to"):
        encode_png(Image.fromarray(values))
    with pytest.raises(PixelError, match="floating-point pixels"):
        encode_png(Image.fromarray(values.astype(np.float32)))


def test_a_black_and_white_palette_means_the_same_in_either_order(tmp_path: Path) -> None:
    """A white lesion on black is the lesion whether the palette lists black or white
    first; class colours keep their indices (0 the background)."""
    lesion = EXPECTED
    for first, second, indices in (
        ((0, 0, 0), (255, 255, 255), lesion),  # black first: the lesion is index 1
        ((255, 255, 255), (0, 0, 0), ~lesion),  # white first: the lesion is index 0
        ((255, 255, 255), (200, 0, 0), lesion),  # a white background, a red class 1
    ):
        image = Image.fromarray(indices.astype(np.uint8), mode="P")
        image.putpalette([*first, *second] + [0] * 762)
        image.save(tmp_path / "p.png")
        assert np.array_equal(read_binary_mask(tmp_path / "p.png"), lesion), (first, second)


def test_a_mask_in_the_alpha_channel_is_read_as_it_shows_over_black(tmp_path: Path) -> None:
    """White everywhere, the lesion opaque on a transparent ground: the lesion, not the
    whole image; an opaque RGBA mask reads as its grey."""
    drawn = np.full((40, 40, 4), 255, np.uint8)
    drawn[..., 3] = _square()
    Image.fromarray(drawn, "RGBA").save(tmp_path / "a.png")
    assert np.array_equal(read_binary_mask(tmp_path / "a.png"), EXPECTED)
    Image.fromarray(drawn[..., [3, 3, 3]], "RGB").convert("RGBA").save(tmp_path / "o.png")
    assert np.array_equal(read_binary_mask(tmp_path / "o.png"), EXPECTED)
    Image.fromarray(drawn[..., 2:], "LA").save(tmp_path / "la.png")
    assert np.array_equal(read_binary_mask(tmp_path / "la.png"), EXPECTED)


def test_a_deep_image_is_shown_over_its_own_range() -> None:
    """A 12-bit film stretched to 8 bits (Pillow alone would clip it at 255: white); an
    8-bit image as Pillow converts it."""
    film = np.add.outer(np.arange(40), np.arange(60)).astype(np.uint16) * 40 + 100  # to 4000
    shown = np.asarray(as_rgb(Image.fromarray(film)))
    assert shown.shape == (40, 60, 3)
    assert (shown[0, 0, 0], shown[-1, -1, 0]) == (0, 255)
    assert len(np.unique(shown)) > 90  # the gradient, not white
    np.testing.assert_array_equal(np.argsort(shown[..., 0].ravel(), kind="stable"),
                                  np.argsort(film.ravel(), kind="stable"))  # fmt: skip
    flat = Image.fromarray(np.full((4, 4), 3000, np.uint16))
    assert np.asarray(as_rgb(flat)).max() == 0  # one value: nothing to stretch
    grey = Image.fromarray(_square())
    assert np.array_equal(np.asarray(as_rgb(grey)), np.asarray(grey.convert("RGB")))


def test_label_maps_must_be_lossless_single_channel(tmp_path: Path) -> None:
    Image.fromarray(np.stack([_square()] * 3, -1)).save(tmp_path / "rgb.png")
    with pytest.raises(PixelError, match="rgb.png: a label map must be single-channel"):
        read_label_map(tmp_path / "rgb.png")
    Image.fromarray(_square(2)).save(tmp_path / "l.jpg")
    with pytest.raises(PixelError, match="lossy JPEG"):
        read_label_map(tmp_path / "l.jpg")


def test_unreadable_files_name_the_file(tmp_path: Path) -> None:
    (tmp_path / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(PixelError, match=r"x\.png: cannot decode"):
        read_image(tmp_path / "x.png")
    with pytest.raises(PixelError, match=r"missing\.png: cannot read"):
        read_image(tmp_path / "missing.png")


def test_a_jpeg_read_for_its_soundness_only(tmp_path: Path) -> None:
    path = tmp_path / "photo.jpg"
    noise = np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path, quality=90)
    sound = read_image(path, pixels=False)
    assert (sound.width, sound.height) == (160, 120)  # the file's size, not the reduced one
    assert sound.data == path.read_bytes()
    assert sound.image.size == (20, 15)  # decoded at 1/8 scale
    path.write_bytes(path.read_bytes()[:3000])  # truncated in its entropy-coded data
    with pytest.raises(PixelError, match="truncated"):
        read_image(path, pixels=False)


@pytest.mark.parametrize("shape", [(50, 70), (4200, 4200)])  # one block; past 16 MiB: copied
def test_mask_pixels_are_read_whatever_pillow_holds(tmp_path: Path, shape) -> None:
    pixels = np.zeros(shape, np.uint8)
    pixels[shape[0] // 3 :, : shape[1] // 2] = 255
    path = tmp_path / "big.png"
    Image.fromarray(pixels).save(path, compress_level=1)
    assert np.array_equal(read_binary_mask(path), pixels == 255)
    assert np.array_equal(decode_mask(path.read_bytes()), pixels == 255)
