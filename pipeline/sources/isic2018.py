"""ISIC 2018 Task 1: dermoscopy images with lesion masks, official splits kept."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from .base import Case, Discovered, MaskFile, SourceInfo, files, find_root, pair_by_stem, stem

NAME = "isic2018"
TARGET = "skin lesion"
LAYOUT = (
    "ISIC2018_Task1-2_<Training|Validation|Test>_Input/ISIC_<id>.jpg with "
    "ISIC2018_Task1_<Training|Validation|Test>_GroundTruth/ISIC_<id>_segmentation.png"
)
SPLITS = {"Training": "train", "Validation": "validation", "Test": "test"}
_INPUT = re.compile(r"ISIC2018_Task1-2_(Training|Validation|Test)_Input")


def _inputs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and _INPUT.fullmatch(p.name))


def discover(data_root: Path) -> Iterator[Discovered]:
    root = find_root(data_root, lambda folder: bool(_inputs(folder)), LAYOUT)
    for input_dir in _inputs(root):
        official = _INPUT.fullmatch(input_dir.name).group(1)
        truth = root / f"ISIC2018_Task1_{official}_GroundTruth"
        masks = files(truth, "ISIC_*_segmentation.png") if truth.is_dir() else []
        split = SPLITS[official]

        def make_case(image: Path, mask: Path, split: str = split) -> Case:
            return Case(
                NAME,
                stem(image),
                stem(image),
                image,
                (MaskFile(mask, TARGET),),
                official_split=split,
                targets=(TARGET,),
            )

        yield from pair_by_stem(
            NAME,
            files(input_dir, "ISIC_*.jpg"),
            masks,
            make_case,
            mask_key=lambda mask: stem(mask).removesuffix("_segmentation"),
        )


SOURCE = SourceInfo(
    name=NAME,
    modality="dermoscopy",
    target=TARGET,
    license="CC BY-NC 4.0 (ISIC 2018 challenge data)",
    citation=(
        "Codella et al., Skin Lesion Analysis Toward Melanoma Detection 2018: A Challenge Hosted "
        "by the International Skin Imaging Collaboration (ISIC), arXiv:1902.03368; Tschandl et "
        "al., The HAM10000 dataset, Sci. Data 5:180161 (2018)"
    ),
    homepage="https://challenge.isic-archive.com/data/#2018",
    layout=LAYOUT,
    discover=discover,
    redistributable=True,
)
