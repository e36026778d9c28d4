"""`--png-level`: the zlib level of re-encoded images changes their bytes, never their pixels."""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.build.cases import SourceMeta
from pipeline.build.extract import extract_case
from pipeline.build.stages import ExtractJob
from pipeline.cli import main
from pipeline.io.display import NO_DISPLAY
from pipeline.sources.base import Case, MaskFile


def _case(tmp_path: Path, suffix: str) -> Case:
    gradient = np.add.outer(np.arange(48), np.arange(64)) * 2  # compressible, as photos are
    pixels = np.stack([gradient, gradient[::-1], gradient[:, ::-1]], axis=-1).astype(np.uint8)
    image = tmp_path / f"image{suffix}"
    Image.fromarray(pixels).save(image)
    mask = np.zeros((48, 64), np.uint8)
    mask[10:20, 5:25] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    return Case(
        "s", "c", "p", image, (MaskFile(tmp_path / "mask.png", "lesion"),), targets=("lesion",)
    )


def _meta(level: int) -> SourceMeta:
    return SourceMeta("s", "dermoscopy", "CC0", NO_DISPLAY, png_level=level)


def test_a_re_encoded_image_gets_the_level_asked_and_the_same_pixels(tmp_path: Path) -> None:
    case = _case(tmp_path, ".bmp")
    (fast,), (small,) = extract_case(case, _meta(0)), extract_case(case, _meta(9))
    assert fast.image_bytes != small.image_bytes
    assert len(fast.image_bytes) > len(small.image_bytes)

    def pixels(data: bytes) -> np.ndarray:
        return np.asarray(Image.open(io.BytesIO(data)))

    np.testing.assert_array_equal(pixels(fast.image_bytes), pixels(small.image_bytes))
    np.testing.assert_array_equal(pixels(fast.image_bytes), np.asarray(Image.open(case.image)))
    # the level is part of the extract key: a cache never hands one level's bytes to another
    job = ExtractJob(0, _meta(0), (case,), tmp_path / "store")
    assert job.key != replace(job, source=_meta(9)).key


def test_a_kept_image_keeps_its_own_bytes_whatever_the_level(tmp_path: Path) -> None:
    case = _case(tmp_path, ".png")
    (one,), (other,) = extract_case(case, _meta(0)), extract_case(case, _meta(9))
    assert one.image_bytes == other.image_bytes == case.image.read_bytes()


def test_a_camera_mpo_is_encoded_again_at_its_full_size(tmp_path: Path) -> None:
    """An MPO (a JPEG with a preview after it) is read as its first frame, in full: its
    bytes are not kept, so its pixels are encoded again, never from a reduced decode."""
    case = _case(tmp_path, ".png")
    photo = Image.open(case.image)
    mpo = tmp_path / "photo.jpg"
    photo.save(mpo, format="MPO", save_all=True, append_images=[Image.new("RGB", (16, 12))])
    case = replace(case, image=mpo)
    (extracted,) = extract_case(case, _meta(3))
    written = Image.open(io.BytesIO(extracted.image_bytes))
    assert (written.format, written.size) == ("PNG", photo.size)
    np.testing.assert_array_equal(np.asarray(written), np.asarray(Image.open(mpo)))
    assert (extracted.width, extracted.height) == photo.size


@pytest.mark.parametrize("level", ["10", "-1", "fast"])
def test_a_level_outside_zlib_is_refused(level: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["build", "--source", "kvasir_seg=x", "--out", "y", "--png-level", level])
    assert exit_.value.code == 2
    assert "must be a zlib level from 0 to 9" in capsys.readouterr().err
