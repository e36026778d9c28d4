"""BraTS 2021 and later: one folder per case, one NIfTI per MRI sequence plus `seg`.

- BraTS 2021: BraTS2021_00000/BraTS2021_00000_{flair,t1,t1ce,t2,seg}.nii.gz; labels 1
  necrotic core, 2 oedema, 4 enhancing tumour.
- BraTS 2023+: BraTS-GLI-00000-000/BraTS-GLI-00000-000-{t1c,t1n,t2f,t2w,seg}.nii.gz;
  labels 1 necrotic core, 2 oedema, 3 enhancing tumour.
Targets are the challenge's regions: whole tumour (all labels), tumour core (necrotic core
and enhancing), enhancing tumour. The FLAIR (t2f) sequence is converted: the whole tumour
is defined on it. The patient is the case folder's name without its timepoint suffix.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from ..geometry.slicing import VolumeSettings
from .base import Case, Discovered, LayoutError, MaskFile, Problem, SourceInfo, broken

NAME = "brats"
LAYOUT = "<case>/<case>_flair.nii.gz + <case>_seg.nii.gz (2021) or <case>-t2f / -seg (2023+)"
REGIONS_2021 = {(1, 2, 4): "whole tumour", (1, 4): "tumour core", (4,): "enhancing tumour"}
REGIONS_2023 = {(1, 2, 3): "whole tumour", (1, 3): "tumour core", (3,): "enhancing tumour"}
_TIMEPOINT = re.compile(r"^(?P<patient>BraTS-[A-Za-z]+-\d+)-\d+$")


def _files(folder: Path) -> tuple[Path, Path, dict] | None:
    """(image, seg, regions) of a case folder, None when it is not a BraTS case."""
    name = folder.name
    for sep, image, regions in (("_", "flair", REGIONS_2021), ("-", "t2f", REGIONS_2023)):
        seg = folder / f"{name}{sep}seg.nii.gz"
        if seg.is_file() or (folder / f"{name}{sep}{image}.nii.gz").is_file():
            return folder / f"{name}{sep}{image}.nii.gz", seg, regions
    return None


def _case_folders(data_root: Path) -> list[Path]:
    """Case folders in the data root, or one folder below it (e.g. a training folder)."""
    for root in (data_root, *sorted(p for p in data_root.iterdir() if p.is_dir())):
        found = sorted(p for p in root.iterdir() if p.is_dir() and _files(p) is not None)
        if found:
            return found
    raise LayoutError(f"data root {data_root} does not hold the expected layout: {LAYOUT}")


def discover(data_root: Path) -> Iterator[Discovered]:
    if not data_root.is_dir():
        raise LayoutError(f"data root {data_root} is not a folder (expected {LAYOUT})")
    for folder in _case_folders(data_root):
        image, seg, regions = _files(folder)  # type: ignore[misc]
        match = _TIMEPOINT.match(folder.name)
        patient = match["patient"] if match else folder.name
        problem = broken(NAME, image, folder.name) or broken(NAME, seg, folder.name)
        if problem is not None:
            yield problem
        elif not image.is_file():
            yield Problem(NAME, folder, f"case has no {image.name}", folder.name)
        elif not seg.is_file():
            yield Problem(NAME, image, f"case has no {seg.name} (no ground truth)", folder.name)
        else:
            targets = tuple(regions.values())
            masks = (MaskFile(seg, labels=regions),)
            yield Case(NAME, folder.name, patient, image, masks, targets=targets,
                       absent_ok=targets)  # fmt: skip


SOURCE = SourceInfo(
    name=NAME,
    modality="mri",
    target="whole tumour, tumour core, enhancing tumour",
    license="BraTS data use agreement (CC BY-NC-SA for the 2021+ challenge data); cite BraTS",
    citation=(
        "Baid et al., The RSNA-ASNR-MICCAI BraTS 2021 Benchmark on Brain Tumor Segmentation "
        "and Radiogenomic Classification, arXiv:2107.02314 (2021); Menze et al., IEEE TMI "
        "34(10):1993-2024 (2015)"
    ),
    homepage="https://www.synapse.org/brats",
    layout=LAYOUT,
    discover=discover,
    redistributable=False,
    volume=VolumeSettings(window="percentile"),
)
