"""PH2: dermoscopy images (BMP) with lesion masks, one folder per image."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from .base import Case, Discovered, MaskFile, Problem, SourceInfo, broken, find_root

NAME = "ph2"
TARGET = "skin lesion"
LAYOUT = (
    "PH2 Dataset images/IMD<n>/IMD<n>_Dermoscopic_Image/IMD<n>.bmp with "
    "IMD<n>_lesion/IMD<n>_lesion.bmp"
)


def _cases(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir() if p.is_dir() and (p / f"{p.name}_Dermoscopic_Image").is_dir()
    )


def discover(data_root: Path) -> Iterator[Discovered]:
    root = find_root(data_root, lambda folder: bool(_cases(folder)), LAYOUT)
    for folder in _cases(root):
        case_id = folder.name
        image = folder / f"{case_id}_Dermoscopic_Image" / f"{case_id}.bmp"
        mask = folder / f"{case_id}_lesion" / f"{case_id}_lesion.bmp"
        problem = broken(NAME, image, case_id) or broken(NAME, mask, case_id)
        if problem is not None:
            yield problem
        elif not image.is_file():
            yield Problem(NAME, image, "image file missing", case_id)
        elif not mask.is_file():
            yield Problem(NAME, image, f"image has no mask (expected {mask.name})", case_id)
        else:
            yield Case(NAME, case_id, case_id, image, (MaskFile(mask, TARGET),), targets=(TARGET,))


SOURCE = SourceInfo(
    name=NAME,
    modality="dermoscopy",
    target=TARGET,
    license="PH2 terms: research use; cite the paper",
    citation=(
        "Mendonca et al., PH2 - A dermoscopic image database for research and benchmarking, "
        "35th IEEE EMBC (2013), pp. 5437-5440"
    ),
    homepage="https://www.fc.up.pt/addi/ph2%20database.html",
    layout=LAYOUT,
    discover=discover,
    redistributable=False,
)
