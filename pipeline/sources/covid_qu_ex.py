"""COVID-QU-Ex: chest X-rays with lung masks, class folders inside Train/Val/Test.

Every folder "images/" with a sibling "lung masks/" is a set of cases; its Train, Val or
Test ancestor gives the official split. Where an "infection masks/" sibling exists (the
infection subset), the infection is a second target. The films are frontal (PA, and AP at
the bedside: both displayed with the patient's left on the image's right), declared "pa".
"""

from __future__ import annotations

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
    walk,
)

NAME = "covid_qu_ex"
LUNGS = "lungs"
INFECTION = "covid-19 infection"
SPLITS = {"train": "train", "val": "validation", "test": "test"}
LAYOUT = (
    "<Lung Segmentation Data>/<Train|Val|Test>/<COVID-19|Non-COVID|Normal>/images/<name>.png "
    "with lung masks/<name>.png"
)


def _image_dirs(folder: Path) -> list[Path]:
    return sorted(
        p / "images"
        for p in walk(folder)
        if (p / "lung masks").is_dir() and (p / "images").is_dir()
    )


def discover(data_root: Path) -> Iterator[Discovered]:
    root = find_root(data_root, lambda folder: bool(_image_dirs(folder)), LAYOUT)
    for image_dir in _image_dirs(root):
        group = image_dir.parent
        relative = group.relative_to(root)
        split = next((SPLITS[p.lower()] for p in relative.parts if p.lower() in SPLITS), None)
        lungs, infection = group / "lung masks", group / "infection masks"
        targets = (LUNGS, INFECTION) if infection.is_dir() else (LUNGS,)
        names = set()
        listed = image_files(image_dir)
        yield from listed.problems(NAME)
        for image in listed:
            names.add(image.name)
            case_id = f"{relative.as_posix()}/{image.stem}"
            masks = [MaskFile(lungs / image.name, LUNGS)]
            if infection.is_dir():
                masks.append(MaskFile(infection / image.name, INFECTION))
            problems = (broken(NAME, m.path, case_id) for m in masks)
            problem = next((p for p in problems if p is not None), None)
            if problem is not None:
                yield problem
                continue
            missing = [m for m in masks if not m.path.is_file()]
            if missing:
                yield Problem(
                    NAME, image, f"image has no {missing[0].path.parent.name} file", case_id
                )
                continue
            yield Case(
                NAME,
                case_id,
                image.stem,
                image,
                tuple(masks),
                official_split=split,
                targets=targets,
                absent_ok=(INFECTION,),
            )
        for folder in (lungs, infection):
            if folder.is_dir():
                masks = image_files(folder)
                yield from (p for p in masks.problems(NAME) if p.file.name not in names)
                for mask in masks:
                    if mask.name not in names:
                        yield Problem(
                            NAME, mask, "mask has no image", f"{relative.as_posix()}/{mask.stem}"
                        )


SOURCE = SourceInfo(
    name=NAME,
    modality="xray",
    target=f"{LUNGS}, {INFECTION}",
    license="CC BY-SA 4.0 (Kaggle release of COVID-QU-Ex)",
    citation=(
        "Tahir et al., COVID-19 infection localization and severity grading from chest X-ray "
        "images, Computers in Biology and Medicine 139:105002 (2021)"
    ),
    homepage="https://www.kaggle.com/datasets/anasmohammedtahir/covidqu",
    layout=LAYOUT,
    discover=discover,
    redistributable=True,
    display=Display("radiological", plane="coronal", projection="pa"),
)
