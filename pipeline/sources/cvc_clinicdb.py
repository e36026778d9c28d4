"""CVC-ClinicDB: colonoscopy frames with polyp masks ("Original" + "Ground Truth").

The original release holds TIFF files; the common re-packaging holds PNG/ and TIF/ copies of
the same frames, in which case PNG/ is used. File names are frame numbers; the release
records no patient or sequence, so each frame is its own patient_id.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from .base import (
    Case,
    Discovered,
    LayoutError,
    MaskFile,
    SourceInfo,
    find_root,
    image_files,
    pair_by_stem,
    stem,
)

NAME = "cvc_clinicdb"
TARGET = "polyp"
LAYOUT = "CVC-ClinicDB/Original/<n>.tif|png with CVC-ClinicDB/Ground Truth/<n>.tif|png"


def _holds(folder: Path) -> bool:
    return (folder / "Original").is_dir() and (folder / "Ground Truth").is_dir()


def _root(data_root: Path) -> Path:
    for candidate in (data_root, data_root / "PNG", data_root / "CVC-ClinicDB" / "PNG"):
        if candidate.is_dir() and _holds(candidate):
            return candidate
    try:
        return find_root(data_root, _holds, LAYOUT)
    except LayoutError:
        nested = data_root / "CVC-ClinicDB"
        if nested.is_dir():
            return find_root(nested, _holds, LAYOUT)
        raise


def discover(data_root: Path) -> Iterator[Discovered]:
    root = _root(data_root)

    def make_case(image: Path, mask: Path) -> Case:
        return Case(
            NAME, stem(image), stem(image), image, (MaskFile(mask, TARGET),), targets=(TARGET,)
        )

    yield from pair_by_stem(
        NAME, image_files(root / "Original"), image_files(root / "Ground Truth"), make_case
    )


SOURCE = SourceInfo(
    name=NAME,
    modality="endoscopy",
    target=TARGET,
    license="CVC-ClinicDB terms: research use; cite the paper",
    citation=(
        "Bernal et al., WM-DOVA maps for accurate polyp highlighting in colonoscopy: Validation "
        "vs. saliency maps from physicians, Computerized Medical Imaging and Graphics 43:99-111 "
        "(2015)"
    ),
    homepage="https://polyp.grand-challenge.org/CVCClinicDB/",
    layout=LAYOUT,
    discover=discover,
    redistributable=False,
)
