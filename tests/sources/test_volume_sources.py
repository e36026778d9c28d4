"""The msd, nnunet and brats sources on phantoms written in their native layouts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

sitk = pytest.importorskip("SimpleITK")

import phantoms  # noqa: E402

from pipeline.build.cases import SourceMeta  # noqa: E402
from pipeline.build.extract import extract_case  # noqa: E402
from pipeline.build.run import BuildError, parse_source_arg  # noqa: E402
from pipeline.cli import main  # noqa: E402
from pipeline.geometry.slicing import resize  # noqa: E402
from pipeline.io.images import decode_mask  # noqa: E402
from pipeline.sources import Case, Problem  # noqa: E402


def _write(array: np.ndarray, path: Path) -> None:
    phantoms.write(phantoms.to_image(array), path)


def _discover(arg: str) -> tuple[list[Case], list[Problem]]:
    request = parse_source_arg(arg)
    found = list(request.source.discover(request.data_root))
    return [c for c in found if isinstance(c, Case)], [p for p in found if isinstance(p, Problem)]


def test_msd_task_from_its_dataset_json(tmp_path: Path) -> None:
    task = tmp_path / "Task09_Spleen"
    image, labels = phantoms.phantom_arrays()
    _write(image, task / "imagesTr" / "spleen_1.nii.gz")
    _write(labels, task / "labelsTr" / "spleen_1.nii.gz")
    _write(image, task / "imagesTr" / "spleen_2.nii.gz")  # listed, but no label
    (task / "dataset.json").write_text(
        json.dumps(
            {
                "name": "Spleen",
                "modality": {"0": "CT"},
                "labels": {"0": "background", "1": "spleen"},
                "licence": "CC-BY-SA 4.0",
                "training": [
                    {
                        "image": f"./imagesTr/spleen_{i}.nii.gz",
                        "label": f"./labelsTr/spleen_{i}.nii.gz",
                    }
                    for i in (1, 2)
                ],
            }
        )
    )
    request = parse_source_arg(f"msd={tmp_path}")  # the folder above the task works too
    source = request.source
    assert (source.name, source.modality) == ("msd_task09_spleen", "ct")
    assert source.volume.window == "abdomen"
    cases, problems = _discover(f"msd={task}")
    assert [c.case_id for c in cases] == ["spleen_1"]
    assert [(p.case_id, p.reason) for p in problems] == [("spleen_2", "image has no label file")]
    slices = extract_case(cases[0], SourceMeta.of(source))
    assert {t.patient_side for s in slices for t in s.targets if t.facts.present} == {"left"}


def test_msd_bad_dataset_json_is_a_clear_error(tmp_path: Path) -> None:
    task = tmp_path / "Task01_Broken"
    (task / "labelsTr").mkdir(parents=True)
    (task / "dataset.json").write_text('{"name": "Broken"}')
    with pytest.raises(BuildError, match="dataset.json: needs 'labels' and 'modality'"):
        parse_source_arg(f"msd={task}")
    (task / "dataset.json").write_text("{not json")
    with pytest.raises(BuildError, match="not valid JSON"):
        parse_source_arg(f"msd={task}")


def test_nnunet_channels_regions_and_problems(tmp_path: Path) -> None:
    root = tmp_path / "Dataset042_Phantom"
    image, labels = phantoms.phantom_arrays()
    labels = labels * 2  # the lesion is label 2; no voxel is edema (1)
    _write(image, root / "imagesTr" / "case_001_0000.nii.gz")
    _write(image * 2, root / "imagesTr" / "case_001_0001.nii.gz")
    _write(labels, root / "labelsTr" / "case_001.nii.gz")
    _write(image, root / "imagesTr" / "case_002_0000.nii.gz")
    (root / "imagesTr" / "notes.txt").write_text("not an image")
    (root / "dataset.json").write_text(
        json.dumps(
            {
                "channel_names": {"0": "T2", "1": "ADC"},
                "labels": {"background": 0, "edema": 1, "lesion": 2, "abnormal": [1, 2]},
                "numTraining": 2,
                "file_ending": ".nii.gz",
            }
        )
    )
    request = parse_source_arg(f"nnunet={root}")
    assert (request.source.name, request.source.modality) == ("nnunet_dataset042_phantom", "mri")
    cases, problems = _discover(f"nnunet={root}")
    assert [c.case_id for c in cases] == ["case_001"]
    assert sorted(p.reason for p in problems) == [
        "image has no label file",
        "not <case>_<XXXX>.nii.gz",
    ]
    slices = extract_case(cases[0], SourceMeta.of(request.source))
    for image_slice in slices:
        targets = {t.target: t for t in image_slice.targets}
        assert "edema" not in targets or not targets["edema"].facts.present
        if targets["lesion"].facts.present:
            lesion = decode_mask(targets["lesion"].mask_png)
            region = decode_mask(targets["abnormal"].mask_png)
            assert np.array_equal(lesion, region)  # the region [1, 2] holds only label 2 here
            assert targets["lesion"].patient_side == "left"


def test_nnunet_2d_png_dataset(tmp_path: Path) -> None:
    from PIL import Image

    root = tmp_path / "Dataset007_Slices"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    pixels = np.zeros((40, 50), dtype=np.uint8)
    pixels[2:10, 36:46] = 200
    labels = (pixels > 0).astype(np.uint8)
    Image.fromarray(pixels).save(root / "imagesTr" / "a_0000.png")
    Image.fromarray(labels).save(root / "labelsTr" / "a.png")
    (root / "dataset.json").write_text(
        json.dumps(
            {
                "channel_names": {"0": "CT"},
                "labels": {"background": 0, "nodule": 1},
                "file_ending": ".png",
            }
        )  # fmt: skip
    )
    request = parse_source_arg(f"nnunet={root}")
    assert request.source.volume is None and request.source.modality == "ct"
    (case,), _ = _discover(f"nnunet={root}")
    (image,) = extract_case(case, SourceMeta.of(request.source))
    (nodule,) = image.targets
    assert nodule.facts.zone == "upper right"


@pytest.mark.parametrize(
    ("folder", "sep", "sequence", "values", "patient"),
    [
        ("BraTS2021_00001", "_", "flair", (1, 2, 4), "BraTS2021_00001"),
        ("BraTS-GLI-00002-001", "-", "t2f", (1, 2, 3), "BraTS-GLI-00002"),
    ],
)
def test_brats_regions(
    tmp_path: Path, folder: str, sep: str, sequence: str, values: tuple, patient: str
) -> None:
    image, lesion = phantoms.phantom_arrays()
    core, oedema, enhancing = values[0], values[1], values[2]
    seg = np.where(lesion > 0, oedema, 0).astype(np.uint8)
    centre = np.array(np.nonzero(lesion)).mean(axis=1).round().astype(int)
    s, p, l_ = centre
    seg[s - 1 : s + 2, p - 2 : p + 3, l_ - 2 : l_ + 3] = enhancing
    seg[s, p - 1 : p + 2, l_ - 1 : l_ + 2] = core
    case = tmp_path / "Training" / folder
    _write(image, case / f"{folder}{sep}{sequence}.nii.gz")
    _write(seg, case / f"{folder}{sep}seg.nii.gz")
    (incomplete := tmp_path / "Training" / f"{folder}9").mkdir()
    _write(image, incomplete / f"{folder}9{sep}{sequence}.nii.gz")
    cases, problems = _discover(f"brats={tmp_path}")
    assert [(c.case_id, c.patient_id) for c in cases] == [(folder, patient)]
    assert [p.case_id for p in problems] == [f"{folder}9"]
    request = parse_source_arg(f"brats={tmp_path}", slices="all")
    slices = extract_case(cases[0], SourceMeta.of(request.source))
    labels = phantoms.to_image(seg)
    volume = sitk.GetArrayFromImage(labels)
    for image_slice in slices:
        masks = {t.target: decode_mask(t.mask_png) for t in image_slice.targets}
        plane = volume[image_slice.slice_index]

        def square(layer: np.ndarray, shape=(image_slice.height, image_slice.width)):
            return resize(layer, shape, nearest=True)  # 2.2 mm rows -> 2.0 mm, as written

        assert np.array_equal(masks["whole tumour"], square(plane > 0))
        assert np.array_equal(masks["tumour core"], square(np.isin(plane, (core, enhancing))))
        if "enhancing tumour" in masks:
            assert np.array_equal(masks["enhancing tumour"], square(plane == enhancing))


def test_cli_volume_options_fail_before_prefect(tmp_path: Path, capsys) -> None:
    out = str(tmp_path / "o")
    assert main(["build", "--source", f"brats={tmp_path}", "--slices", "every", "--out", out]) == 2
    assert "slices must be all, largest[:K] or stride[:N]" in capsys.readouterr().err
