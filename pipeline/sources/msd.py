"""Medical Segmentation Decathlon: any task, driven by its dataset.json.

Layout: TaskXX_Name/dataset.json, imagesTr/<case>.nii.gz, labelsTr/<case>.nii.gz
(imagesTs has no labels and is not converted). Label names, the modality and the
licence come from dataset.json. Multi-channel (4D) tasks are converted from their first
channel (its name is stated in the source's layout line), CT tasks with a window chosen
by the task's name (lung, abdomen, brain, bone; else by percentile).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from ..geometry.slicing import VolumeSettings
from .base import (
    Case,
    Discovered,
    LayoutError,
    MaskFile,
    Problem,
    SourceInfo,
    broken,
    find_root,
    stem,
)
from .dataset_json import ct_window, modality_of, read_dataset_json, source_name, structure_name

NAME = "msd"
LAYOUT = "TaskXX_Name/dataset.json with imagesTr/<case>.nii.gz and labelsTr/<case>.nii.gz"
CITATION = (
    "Antonelli et al., The Medical Segmentation Decathlon, Nature Communications 13:4128 "
    "(2022); Simpson et al., arXiv:1902.09063 (2019)"
)


def _holds(folder: Path) -> bool:
    return (folder / "dataset.json").is_file() and (folder / "labelsTr").is_dir()


def bind(data_root: Path) -> SourceInfo:
    root = find_root(data_root, _holds, LAYOUT)
    info = read_dataset_json(root)
    path = root / "dataset.json"
    try:
        labels = {int(k): structure_name(v) for k, v in info["labels"].items() if int(k) != 0}
        channels = [str(v) for _, v in sorted(info["modality"].items(), key=lambda i: int(i[0]))]
    except (KeyError, AttributeError, ValueError) as exc:
        raise LayoutError(f"{path}: needs 'labels' and 'modality' mappings ({exc})") from exc
    modality = modality_of(channels, path)
    task = str(info.get("name") or root.name)
    window = ct_window(f"{task} {root.name}") if modality == "ct" else "percentile"
    name = source_name(NAME, root.name)
    entries = info.get("training") or []

    def discover(_: Path) -> Iterator[Discovered]:
        pairs = {}
        for entry in entries:
            if isinstance(entry, dict) and "image" in entry and "label" in entry:
                pairs[root / entry["image"]] = root / entry["label"]
        if not pairs:  # a dataset.json without a training list: pair by file name
            for image in sorted((root / "imagesTr").glob("*.nii*")):
                pairs[image] = root / "labelsTr" / image.name
        for image, label in sorted(pairs.items()):
            if image.name.startswith("._"):
                continue  # macOS resource forks shipped in the MSD archives
            case_id = stem(image)
            problem = broken(name, image, case_id) or broken(name, label, case_id)
            if problem is not None:
                yield problem
            elif not image.is_file():
                yield Problem(name, image, "image listed in dataset.json is missing", case_id)
            elif not label.is_file():
                yield Problem(name, image, "image has no label file", case_id)
            else:
                masks = (MaskFile(label, labels=labels),)
                targets = tuple(dict.fromkeys(labels.values()))
                yield Case(name, case_id, case_id, image, masks, targets=targets,
                           absent_ok=targets)  # fmt: skip

    return SourceInfo(
        name=name,
        modality=modality,
        target=", ".join(dict.fromkeys(labels.values())),
        license=str(info.get("licence") or info.get("license") or "CC BY-SA 4.0"),
        citation=CITATION,
        homepage="http://medicaldecathlon.com/",
        layout=f"{LAYOUT}; channel 0 ({channels[0]}) converted",
        discover=discover,
        redistributable=True,
        volume=VolumeSettings(window=window, channel=0 if len(channels) > 1 else None),
    )


def _unbound(data_root: Path) -> Iterator[Discovered]:
    yield from bind(data_root).discover(data_root)


SOURCE = SourceInfo(
    name=NAME,
    modality="mri",  # per task, from its dataset.json (CT or MRI)
    target="the labels of the task's dataset.json",
    license="CC BY-SA 4.0",
    citation=CITATION,
    homepage="http://medicaldecathlon.com/",
    layout=LAYOUT,
    discover=_unbound,
    redistributable=True,
    bind=bind,
)
