"""nnU-Net v2 raw datasets: DatasetXXX_Name/dataset.json, imagesTr/, labelsTr/.

dataset.json gives channel_names ({"0": "CT"}), labels ({"background": 0, "liver": 1}, a
region as a list: {"whole tumor": [1, 2, 3]}) and file_ending (".nii.gz", ".nrrd",
".mha", or ".png" for 2D datasets). Images are <case>_<XXXX><file_ending>, one file per
channel; channel 0000 is converted. Labels are labelsTr/<case><file_ending>. Every
dataset in that ecosystem becomes convertible without code.
"""

from __future__ import annotations

import re
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
)
from .dataset_json import ct_window, modality_of, read_dataset_json, source_name, structure_name

NAME = "nnunet"
LAYOUT = "DatasetXXX_Name/dataset.json with imagesTr/<case>_0000<ending>, labelsTr/<case><ending>"
CITATION = (
    "Isensee et al., nnU-Net: a self-configuring method for deep learning-based biomedical "
    "image segmentation, Nature Methods 18:203-211 (2021); cite the dataset's own authors"
)
_VOLUME_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


def _holds(folder: Path) -> bool:
    return (folder / "dataset.json").is_file() and (folder / "imagesTr").is_dir()


def _labels(raw: object, path: Path) -> dict[int | tuple[int, ...], str]:
    if not isinstance(raw, dict):
        raise LayoutError(f"{path}: 'labels' must map names to values")
    labels: dict[int | tuple[int, ...], str] = {}
    for name, value in raw.items():
        if isinstance(value, list):
            key: int | tuple[int, ...] = tuple(sorted(int(v) for v in value))
        else:
            key = int(value)
        if key in (0, (0,)):
            continue
        labels[key] = structure_name(str(name))
    return labels


def bind(data_root: Path) -> SourceInfo:
    root = find_root(data_root, _holds, LAYOUT)
    info = read_dataset_json(root)
    path = root / "dataset.json"
    try:
        raw_channels = info.get("channel_names") or info["modality"]
        channels = [str(v) for _, v in sorted(raw_channels.items(), key=lambda i: int(i[0]))]
        labels = _labels(info["labels"], path)
        ending = str(info["file_ending"])
    except (KeyError, AttributeError, ValueError, TypeError) as exc:
        raise LayoutError(f"{path}: needs channel_names, labels and file_ending ({exc})") from exc
    modality = modality_of(channels, path)
    is_volume = ending.lower() in _VOLUME_ENDINGS
    window = ct_window(root.name) if modality == "ct" else "percentile"
    name = source_name(NAME, root.name)
    targets = tuple(dict.fromkeys(labels.values()))
    pattern = re.compile(rf"(?P<case>.+)_(?P<channel>\d{{4}}){re.escape(ending)}", re.DOTALL)

    def discover(_: Path) -> Iterator[Discovered]:
        cases: dict[str, Path] = {}
        for image in sorted((root / "imagesTr").iterdir()):
            match = pattern.fullmatch(image.name)
            if match is None:
                if not image.name.startswith("."):
                    yield Problem(name, image, f"not <case>_<XXXX>{ending}")
                continue
            if match["channel"] == "0000":
                cases[match["case"]] = image
        for case_id, image in sorted(cases.items()):
            label = root / "labelsTr" / f"{case_id}{ending}"
            problem = broken(name, image, case_id) or broken(name, label, case_id)
            if problem is None and not label.is_file():
                problem = Problem(name, image, "image has no label file", case_id)
            if problem is not None:
                yield problem
                continue
            masks = (MaskFile(label, labels=labels),)
            yield Case(name, case_id, case_id, image, masks, targets=targets, absent_ok=targets)

    return SourceInfo(
        name=name,
        modality=modality,
        target=", ".join(targets),
        license=str(info.get("licence") or info.get("license") or "unknown"),
        citation=str(info.get("reference") or CITATION),
        homepage="https://github.com/MIC-DKFZ/nnUNet",
        layout=f"{LAYOUT}; channel 0000 ({channels[0]}) converted",
        discover=discover,
        redistributable=None,
        volume=VolumeSettings(window=window) if is_volume else None,
    )


def _unbound(data_root: Path) -> Iterator[Discovered]:
    yield from bind(data_root).discover(data_root)


SOURCE = SourceInfo(
    name=NAME,
    modality="ct",  # per dataset, from its channel_names (CT or MRI)
    target="the labels of the dataset's dataset.json",
    license="per dataset",
    citation=CITATION,
    homepage="https://github.com/MIC-DKFZ/nnUNet",
    layout=LAYOUT,
    discover=_unbound,
    bind=bind,
)
