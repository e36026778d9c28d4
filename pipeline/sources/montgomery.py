"""Montgomery County chest X-rays: one target per lung from ManualMask/leftMask, rightMask.

The masks name the PATIENT's lungs; the PA radiographs are in radiological display
(the patient's left lung on the image's right), declared so: each lung's patient side is
found from the mediastinum (geometry/patient.radiograph_frame).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from ..io.display import Display
from .base import (
    Case,
    Discovered,
    MaskFile,
    Problem,
    SourceInfo,
    broken,
    find_root,
    image_files,
    stem,
)

NAME = "montgomery"
LUNGS = {"leftMask": "left lung", "rightMask": "right lung"}
LAYOUT = (
    "MontgomerySet/CXR_png/MCUCXR_<n>_<label>.png with "
    "MontgomerySet/ManualMask/leftMask/<same name> and ManualMask/rightMask/<same name>"
)
_PATIENT = re.compile(r"(?P<patient>MCUCXR_\d+)_\d")


def _holds(folder: Path) -> bool:
    return (folder / "CXR_png").is_dir() and (folder / "ManualMask").is_dir()


def discover(data_root: Path) -> Iterator[Discovered]:
    root = find_root(data_root, _holds, LAYOUT)
    mask_dirs = {target: root / "ManualMask" / folder for folder, target in LUNGS.items()}
    images = image_files(root / "CXR_png")
    yield from images.problems(NAME)
    names = {image.name for image in images}
    for image in images:
        case_id = stem(image)
        match = _PATIENT.fullmatch(case_id)
        patient = match["patient"] if match else case_id
        problems = (broken(NAME, folder / image.name, case_id) for folder in mask_dirs.values())
        problem = next((p for p in problems if p is not None), None)
        if problem is not None:
            yield problem
            continue
        masks = tuple(
            MaskFile(folder / image.name, target)
            for target, folder in mask_dirs.items()
            if (folder / image.name).is_file()
        )
        missing = [
            target for target, folder in mask_dirs.items() if not (folder / image.name).is_file()
        ]
        if missing:
            yield Problem(NAME, image, f"image has no {' or '.join(missing)} mask", case_id)
            continue
        yield Case(NAME, case_id, patient, image, masks, targets=tuple(LUNGS.values()))
    for folder in mask_dirs.values():
        if folder.is_dir():
            masks = image_files(folder)
            yield from (p for p in masks.problems(NAME) if p.file.name not in names)
            for mask in masks:
                if mask.name not in names:
                    yield Problem(NAME, mask, "mask has no image", stem(mask))


SOURCE = SourceInfo(
    name=NAME,
    modality="xray",
    target="left lung, right lung",
    license="Public research release of the U.S. National Library of Medicine (no licence)",
    citation=(
        "Jaeger et al., Two public chest X-ray datasets for computer-aided screening of pulmonary "
        "diseases, Quant. Imaging Med. Surg. 4(6):475-477 (2014); Candemir et al., Lung "
        "segmentation in chest radiographs using anatomical atlases with nonrigid registration, "
        "IEEE TMI 33(2):577-590 (2014)"
    ),
    homepage="https://lhncbc.nlm.nih.gov/LHC-downloads/downloads.html#tuberculosis-image-data-sets",
    layout=LAYOUT,
    discover=discover,
    redistributable=True,
    display=Display("radiological", plane="coronal", projection="pa"),
)
