"""Every 3D sample in ../shared/real_samples, and SA-Med2D's sides, through the real code.

Read in place or arranged into a source's native layout in tmp_path; never copied into the
repository. Sides are checked against anatomy where it is certain (the spine is in the
midline, the heart lies left, paired structures named _left/_right), against an
independent reading of the NIfTI affine with nibabel (LIDC crops), and for invariance
under re-writing the same volume in another voxel order.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

sitk = pytest.importorskip("SimpleITK")

from pipeline.build.cases import ExtractedCase, SourceMeta  # noqa: E402
from pipeline.build.extract import extract_case  # noqa: E402
from pipeline.build.run import BuildConfig, build, parse_source_arg  # noqa: E402
from pipeline.checks.folder import validate  # noqa: E402
from pipeline.io.images import decode_mask  # noqa: E402
from pipeline.io.volumes import read_volume  # noqa: E402
from pipeline.sources import Case  # noqa: E402

SAMPLES = Path(__file__).resolve().parents[1].parent / "shared" / "real_samples"
pytestmark = pytest.mark.skipif(
    not SAMPLES.is_dir(),
    reason="../shared/real_samples not found: real-sample tests need the shared samples",
)
HIPPOCAMPUS = SAMPLES / "mri" / "msd_task04_hippocampus_udacity"
BRATS15 = SAMPLES / "mri" / "brats2015_deepmedic"
PYRADIOMICS = SAMPLES / "mri" / "pyradiomics_nrrd"
LIDC = SAMPLES / "ct" / "lidc_idri_nodule_vois"
DCMQI = SAMPLES / "ct" / "dcmqi_ct3slice_dicomseg"
SAM_MED2D = SAMPLES / "ct" / "sam_med2d_demo_amos_totalseg"


def _spec(folder: Path, name: str, **keys: object) -> str:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, **keys}, sort_keys=False))
    return str(path)


def _extract(arg: str, root: Path, others: bool = False) -> dict[str, list[ExtractedCase]]:
    """Every case's images; `others`: masks of images the spec leaves out are expected."""
    request = parse_source_arg(f"{arg}={root}")
    out = {}
    for case in request.source.discover(request.data_root):
        if not isinstance(case, Case):
            assert others and case.reason == "mask has no image", case
            continue
        out[case.case_id] = extract_case(case, SourceMeta.of(request.source))
    return out


def _sides(images: list[ExtractedCase], target: str) -> set[str | None]:
    return {t.patient_side for i in images for t in i.targets if t.target == target}


def _arrange_msd(root: Path) -> Path:
    task = root / "Task04_Hippocampus"
    for sub, dest in (("images", "imagesTr"), ("labels", "labelsTr")):
        shutil.copytree(HIPPOCAMPUS / sub, task / dest)
    (task / "dataset.json").write_text(
        json.dumps(
            {
                "name": "Hippocampus",
                "modality": {"0": "MRI"},
                "labels": {"0": "background", "1": "Anterior", "2": "Posterior"},
                "licence": "CC-BY-SA 4.0",
                "training": [
                    {"image": f"./imagesTr/{p.name}", "label": f"./labelsTr/{p.name}"}
                    for p in sorted((HIPPOCAMPUS / "images").glob("*.nii.gz"))
                ],
            }
        )
    )
    return task


def test_msd_hippocampus_builds_and_validates(tmp_path: Path) -> None:
    """uint8 and float32 images, a float32 label map, crops near the scanner centre."""
    task = _arrange_msd(tmp_path)
    request = parse_source_arg(f"msd={task}")
    assert request.source.name == "msd_task04_hippocampus"
    assert request.source.modality == "mri"
    out = tmp_path / "out"
    summary = build(BuildConfig((request,), out, progress=False))
    counts = summary.sources["msd_task04_hippocampus"]
    assert (counts.discovered, counts.converted, counts.skipped, counts.failed) == (12, 12, 0, 0)
    result = validate(out)
    assert result.ok, result.violations
    rows = pq.read_table(out / "data").to_pylist()
    assert {r["target"] for r in rows} == {"anterior", "posterior"}
    assert all(r["slice_axis"] == "axial" and r["spacing_mm"] == [1.0, 1.0, 1.0] for r in rows)
    # Crops of about 35 mm next to x = 0: the body is not seen and the scanner centre is
    # too near to be sure; no row states a side.
    assert all(r["patient_side"] is None for r in rows)
    assert not [r for r in rows if r["question_type"] == "laterality"]
    for case in ("hippocampus_001", "hippocampus_003"):  # uint8 image; float32 labels
        labels = sitk.GetArrayFromImage(
            sitk.ReadImage(str(HIPPOCAMPUS / "labels" / f"{case}.nii.gz"))
        )
        mine = [r for r in rows if r["case_id"] == case and r["question_type"] != "referring"]
        assert mine
        for row in mine:
            value = 1 if row["target"] == "anterior" else 2
            # the axial slice of a RAS file is its z index; display turns x and y
            expected = labels[row["slice_index"]] == value
            assert decode_mask(row["mask"]["bytes"]).sum() == expected.sum()


def test_brats2015_float_labels_regions_and_reorientation(tmp_path: Path) -> None:
    keys = {
        "modality": "mri",
        "images": "*/Flair_subtrMeanDivStd.nii.gz",
        "masks": "{parent}/OTMultiClass.nii.gz",
        "labels": {
            "whole tumour": [1, 2, 3, 4],
            "tumour core": [1, 3, 4],
            "enhancing tumour": [4],
        },
        "patient_id_regex": r"(?P<patient_id>brats_\d+_pat\d+)",
    }
    (images,) = _extract(_spec(tmp_path, "brats2015", **keys), BRATS15).values()
    assert {t.target for i in images for t in i.targets} == set(keys["labels"])
    whole = {i.slice_index: t for i in images for t in i.targets if t.target == "whole tumour"}
    labels = sitk.GetArrayFromImage(
        sitk.ReadImage(str(BRATS15 / "brats_2013_pat0004_1" / "OTMultiClass.nii.gz"))
    )
    for index, target in whole.items():
        assert target.facts.area_fraction * 240 * 240 == pytest.approx((labels[index] > 0).sum())
    sides = _sides(images, "whole tumour")
    assert len(sides) == 1 and None not in sides  # a whole brain: the midline is seen
    # The same volumes stored RAS: the same slices, facts and sides.
    copy = tmp_path / "ras" / "brats_2013_pat0004_1"
    copy.mkdir(parents=True)
    for name in ("Flair_subtrMeanDivStd.nii.gz", "OTMultiClass.nii.gz"):
        image = sitk.ReadImage(str(BRATS15 / "brats_2013_pat0004_1" / name))
        sitk.WriteImage(sitk.DICOMOrient(image, "RAS"), str(copy / name))
    (again,) = _extract(_spec(tmp_path, "brats2015_ras", **keys), tmp_path / "ras").values()
    assert [i.image_id for i in again] == [i.image_id for i in images]
    assert [(t.facts, t.patient_side) for i in again for t in i.targets] == [
        (t.facts, t.patient_side) for i in images for t in i.targets
    ]


def test_pyradiomics_nrrd_flipped_y_and_thick_slices(tmp_path: Path) -> None:
    for case in ("brain1", "breast1"):
        (tmp_path / case).mkdir()
        for kind in ("image", "label"):
            shutil.copy(PYRADIOMICS / f"{case}_{kind}.nrrd", tmp_path / case)
    keys = {
        "modality": "mri",
        "images": "*/*_image.nrrd",
        "masks": "{parent}/*_label.nrrd",
        "labels": {1: "lesion"},
        "slice_axis": "coronal",
    }
    cases = _extract(_spec(tmp_path, "pyradiomics", **keys), tmp_path)
    brain = cases["brain1/brain1_image"]
    # 25 slices of 6.5 mm under 0.78 mm pixels: coronal slices resampled to square pixels.
    assert all(i.spacing_mm[:2] == pytest.approx((0.78125, 0.78125)) for i in brain)
    assert all(i.height == round(25 * 6.5 / 0.78125) and i.width == 256 for i in brain)
    # Direction diag(1, -1, 1) (LAS): the same answers as the volume rewritten in LPS.
    lps = tmp_path / "lps" / "brain1"
    lps.mkdir(parents=True)
    for kind in ("image", "label"):
        image = sitk.ReadImage(str(PYRADIOMICS / f"brain1_{kind}.nrrd"))
        sitk.WriteImage(sitk.DICOMOrient(image, "LPS"), str(lps / f"brain1_{kind}.nrrd"))
    again = _extract(_spec(tmp_path, "pyradiomics_lps", **keys), tmp_path / "lps")
    ((_, rewritten),) = again.items()
    assert [i.image_id for i in rewritten] == [i.image_id for i in brain]
    assert _sides(rewritten, "lesion") == _sides(brain, "lesion") != {None}


def test_lidc_crops_sides_agree_with_the_nifti_qform(tmp_path: Path) -> None:
    """Crops in scanner coordinates (only the qform set): a side where the nodule lies wholly
    more than 50 mm from x = 0, read independently here through nibabel's affine."""
    nib = pytest.importorskip("nibabel")
    keys = {
        "modality": "ct",
        "images": "image/*.nii.gz",
        "masks": "nodule_mask/{name}",
        "labels": {1: "nodule"},
        "window": "lung",
        "slices": {"mode": "all", "min_pixels": 1},
        "patient_id_regex": r"(?P<patient_id>LIDC-IDRI-\d+)",
    }
    cases = _extract(_spec(tmp_path, "lidc", **keys), LIDC)
    assert len(cases) == 10
    stated = set()
    for case_id, images in cases.items():
        nifti = nib.load(str(LIDC / "nodule_mask" / f"{Path(case_id).name}.nii.gz"))
        assert nifti.header["sform_code"] == 0 and nifti.header["qform_code"] == 1
        data = np.asarray(nifti.dataobj)
        for image in images:
            (target,) = image.targets
            if not target.facts.present:
                continue
            i, j = np.nonzero(data[:, :, image.slice_index])  # LPS file: z is axial
            ras_x = (
                nifti.affine
                @ np.stack([i, j, np.full(i.shape, image.slice_index), np.ones(i.shape)])
            )[0]
            lps_x = -ras_x
            expected = "left" if lps_x.min() > 50 else "right" if lps_x.max() < -50 else None
            assert target.patient_side == expected, (case_id, image.slice_index)
            stated.add(expected)
    assert {"left", "right"} <= stated


def test_dcmqi_dicom_series_nrrd_labels_and_seg(tmp_path: Path) -> None:
    """Slice spacing from positions (1 mm), not SliceThickness (1.25 mm); the SEG's liver is
    the NRRD's liver; the spine is in the midline and the heart on the patient's left."""
    image = read_volume(DCMQI / "ct-3slice")
    assert image.GetSpacing()[2] == pytest.approx(1.0)
    common = {"modality": "ct", "images": "ct-3slice/", "window": "abdomen",
              "slices": {"mode": "all"}}  # fmt: skip
    nrrd = _spec(tmp_path, "dcmqi", masks="*_seg.nrrd",
                 labels={1: "liver", 2: "spine", 3: "heart"}, **common)  # fmt: skip
    (by_nrrd,) = _extract(nrrd, DCMQI).values()
    assert [i.spacing_mm[2] for i in by_nrrd] == pytest.approx([1.0] * 3)
    assert _sides(by_nrrd, "spine") == {"midline"}
    assert _sides(by_nrrd, "heart") == {"left"}
    seg = _spec(tmp_path, "dcmqi_seg", masks="liver.dcm", **common)
    (by_seg,) = _extract(seg, DCMQI).values()
    for a, b in zip(by_seg, by_nrrd, strict=True):
        (liver,) = a.targets
        assert liver.target == "liver"
        (same,) = [t for t in b.targets if t.target == "liver"]
        assert np.array_equal(decode_mask(liver.mask_png), decode_mask(same.mask_png))
        assert liver.patient_side == same.patient_side


@pytest.mark.parametrize("name", ["00_liver.dcm", "zz_liver.dcm"])
def test_a_dicom_seg_in_its_series_folder_is_read_beside_the_slices(
    tmp_path: Path, name: str
) -> None:
    """A SEG stored among the slices it segments (sorted before or after them) is not a
    second series of the folder: the case reads as with the SEG kept apart."""
    series = tmp_path / "ct"
    shutil.copytree(DCMQI / "ct-3slice", series)
    shutil.copy(DCMQI / "liver.dcm", series / name)
    common = {"modality": "ct", "window": "abdomen", "slices": {"mode": "all"}}
    beside = _spec(tmp_path, "beside", images="ct/", masks=f"ct/{name}", **common)
    (inside,) = _extract(beside, tmp_path).values()
    apart = _spec(tmp_path, "apart", images="ct-3slice/", masks="liver.dcm", **common)
    (alone,) = _extract(apart, DCMQI).values()
    assert [i.image_id for i in inside] == [i.image_id for i in alone]
    for a, b in zip(inside, alone, strict=True):
        assert [t.mask_png for t in a.targets] == [t.mask_png for t in b.targets]


def test_dicom_seg_of_another_series_is_refused(tmp_path: Path) -> None:
    from pipeline.io.images import PixelError

    series = tmp_path / "other"
    shutil.copytree(DCMQI / "ct-3slice", series)
    for file in series.iterdir():  # the same pixels under another series UID
        image = sitk.ReadImage(str(file))
        image.SetMetaData("0020|000e", "1.2.826.0.1.3680043.2.1125.99")
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        writer.SetFileName(str(file))
        writer.Execute(image)
    shutil.copy(DCMQI / "liver.dcm", tmp_path)
    seg = _spec(tmp_path, "other_seg", modality="ct", images="other/", masks="liver.dcm")
    request = parse_source_arg(f"{seg}={tmp_path}")
    (case,) = list(request.source.discover(tmp_path))
    with pytest.raises(PixelError, match="references series"):
        extract_case(case, SourceMeta.of(request.source))


# SA-Med2D slices are not in radiological display: AMOS ones are upside down (posterior at
# the top); TotalSegmentator ones are also mirrored (the patient's left on the image's left).
SAM_DISPLAYS = {
    "amos": ("amos_*.png", {"right": "left", "down": "anterior"}),
    "totalseg": ("s*.png", {"right": "right", "down": "anterior"}),
}
# Paired structures whose name gives their side. Heart chambers are named for the chamber,
# not the side: the right ventricle lies largely left of the midline (see test below).
PAIRED = ("lung", "rib", "autochthon", "hip", "gluteus", "femur", "kidney", "adrenal")


@pytest.mark.parametrize("origin", sorted(SAM_DISPLAYS))
def test_sam_med2d_named_sides_come_out_as_patient_sides(tmp_path: Path, origin: str) -> None:
    images, display = SAM_DISPLAYS[origin]
    arg = _spec(
        tmp_path,
        f"sam_med2d_{origin}",
        modality="ct",
        images=f"data_demo/images/{images}",
        masks="data_demo/masks/{stem}_*.png",
        target_regex=r"^{stem}_(?P<target>.+)_\d{3}$",
        display=display,
    )
    cases = _extract(arg, SAM_MED2D, others=True)
    checked = 0
    for case_id, (image,) in cases.items():
        for target in image.targets:
            words = target.target.split()
            if target.frame is None:
                # s0619_32: the pelvis fills the field of view from edge to edge, so the
                # body's midline is not seen: no side is stated there.
                assert case_id.endswith("s0619_32") and target.patient_side is None
                continue
            if words[0] in PAIRED and ("left" in words or "right" in words):
                assert target.patient_side == ("left" if "left" in words else "right"), target
                checked += 1
    if origin == "totalseg":
        assert checked >= 7
        (s0114,) = cases["data_demo/images/s0114_111"]
        side = {t.target: t.patient_side for t in s0114.targets}
        assert side["vertebrae T9"] == "midline"
        assert side["heart ventricle left"] == "left"
        assert side["heart ventricle right"] == "left"  # anatomy: the RV crosses to the left
    else:
        side = {t.target: t.patient_side for (i,) in cases.values() for t in i.targets}
        assert side["spleen"] == "left" and side["aorta"] == "left"
        assert side["inferior vena cava"] == "right"
