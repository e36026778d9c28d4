"""BUSI: breast ultrasound in class folders; "normal" images are negative rows.

Masks sit beside their image: "<name>_mask.png", and "<name>_mask_1.png", "_mask_2.png" ...
for further lesions (each a separate instance of the same target). Names hold spaces and
parentheses, e.g. "benign (25)_mask_1.png".
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from .base import Case, Discovered, MaskFile, Problem, SourceInfo, find_root, image_files, stem

NAME = "busi"
TARGET = "breast tumor"
CLASSES = ("benign", "malignant", "normal")
LAYOUT = (
    "Dataset_BUSI_with_GT/<benign|malignant|normal>/<class> (<n>).png with "
    "<class> (<n>)_mask[_<k>].png"
)
# DOTALL: a file name may hold any character but "/", a newline too.
_MASK = re.compile(r"(?P<image>.+)_mask(?:_\d+)?", re.DOTALL)


def _holds(folder: Path) -> bool:
    return any((folder / name).is_dir() for name in CLASSES)


def discover(data_root: Path) -> Iterator[Discovered]:
    root = find_root(data_root, _holds, LAYOUT)
    for name in CLASSES:
        folder = root / name
        if not folder.is_dir():
            continue
        images: list[Path] = []
        masks: dict[str, list[Path]] = {}
        listed = image_files(folder)
        yield from listed.problems(NAME)
        for path in listed:
            match = _MASK.fullmatch(stem(path))
            if match:
                masks.setdefault(match["image"], []).append(path)
            else:
                images.append(path)
        for image in images:
            key = stem(image)
            found = masks.pop(key, [])
            if not found:
                yield Problem(NAME, image, "image has no mask", key)
                continue
            yield Case(
                NAME,
                key,
                key,
                image,
                tuple(MaskFile(mask, TARGET) for mask in found),
                targets=(TARGET,),
                absent_ok=(TARGET,) if name == "normal" else (),
            )
        for key, orphans in sorted(masks.items()):
            for mask in orphans:
                yield Problem(NAME, mask, "mask has no image", key)


SOURCE = SourceInfo(
    name=NAME,
    modality="ultrasound",
    target=TARGET,
    license="CC BY 4.0 (Data in Brief article); check the dataset page for redistribution",
    citation=(
        "Al-Dhabyani, Gomaa, Khaled, Fahmy, Dataset of breast ultrasound images, Data in Brief "
        "28:104863 (2020), doi:10.1016/j.dib.2019.104863"
    ),
    homepage="https://scholar.cu.edu.eg/?q=afahmy/pages/dataset",
    layout=LAYOUT,
    discover=discover,
    redistributable=None,
)
