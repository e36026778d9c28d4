"""Kvasir-SEG: colonoscopy frames with polyp masks (JPEG masks with grey levels)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from .base import Case, Discovered, MaskFile, SourceInfo, find_root, image_files, pair_by_stem, stem

NAME = "kvasir_seg"
TARGET = "polyp"
LAYOUT = "Kvasir-SEG/images/<id>.jpg with Kvasir-SEG/masks/<id>.jpg"


def _holds(folder: Path) -> bool:
    return (folder / "images").is_dir() and (folder / "masks").is_dir()


def discover(data_root: Path) -> Iterator[Discovered]:
    root = find_root(data_root, _holds, LAYOUT)

    def make_case(image: Path, mask: Path) -> Case:
        return Case(
            NAME, stem(image), stem(image), image, (MaskFile(mask, TARGET),), targets=(TARGET,)
        )

    yield from pair_by_stem(
        NAME, image_files(root / "images"), image_files(root / "masks"), make_case
    )


SOURCE = SourceInfo(
    name=NAME,
    modality="endoscopy",
    target=TARGET,
    license="Kvasir-SEG terms: research and educational use; cite the paper",
    citation=(
        "Jha et al., Kvasir-SEG: A Segmented Polyp Dataset, MultiMedia Modeling (MMM) 2020, "
        "LNCS 11962, pp. 451-462"
    ),
    homepage="https://datasets.simula.no/kvasir-seg/",
    layout=LAYOUT,
    discover=discover,
    redistributable=False,
)
