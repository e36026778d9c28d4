"""3D volumes: orientation, display, the patient's side, slices, windows and bad geometry.

Phantoms (tests/phantoms.py) hold a lesion on the patient's LEFT, anterior and superior,
written in many voxel orders and formats: every one must give the same answers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

sitk = pytest.importorskip("SimpleITK")

import phantoms  # noqa: E402

from pipeline.build.cases import CaseError, SourceMeta  # noqa: E402
from pipeline.build.extract import extract_case  # noqa: E402
from pipeline.geometry.slicing import SlicePolicy, orient  # noqa: E402
from pipeline.io.images import decode_mask  # noqa: E402
from pipeline.sources.spec import load_spec  # noqa: E402

ORIENTATIONS = ("LPS", "RAS", "LAS", "PIR", "SRA", "ILP")


def _spec(root: Path, images: str, masks: str, **extra: object) -> Path:
    lines = [
        "name: phantom",
        "modality: mri",
        f'images: "{images}"',
        f'masks: "{masks}"',
        "labels: {1: lesion}",
        *(f"{key}: {value}" for key, value in extra.items()),
    ]
    path = root / "phantom.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _slices(root: Path, spec: Path):
    source = load_spec(spec)
    cases = [c for c in source.discover(root) if hasattr(c, "masks")]
    assert len(cases) == 1
    return extract_case(cases[0], SourceMeta.of(source))


def _lesion(image) -> tuple[str | None, tuple[float, float]]:
    (target,) = [t for t in image.targets if t.target == "lesion"]
    return target.patient_side, target.facts.centroid


def _write_pair(root: Path, fmt: str, code: str) -> tuple[str, str]:
    image, labels = phantoms.phantom_arrays()
    img = phantoms.reoriented(phantoms.to_image(image), code)
    lab = phantoms.reoriented(phantoms.to_image(labels), code)
    if fmt in ("qform", "sform"):
        phantoms.write_nifti_one_transform(img, root / "images" / "p1.nii.gz", fmt)
        phantoms.write_nifti_one_transform(lab, root / "labels" / "p1.nii.gz", fmt)
        return "images/*.nii.gz", "labels/{name}"
    if fmt == "dicom":
        phantoms.write_dicom_series(img, root / "images" / "p1")
        phantoms.write(lab, root / "labels" / "p1.nrrd")
        return "images/*/", "labels/{name}.nrrd"
    suffix = {"nrrd": ".nrrd", "mha": ".mha", "nifti": ".nii.gz"}[fmt]
    phantoms.write(img, root / "images" / f"p1{suffix}")
    phantoms.write(lab, root / "labels" / f"p1{suffix}")
    return f"images/*{suffix}", "labels/{name}"


@pytest.mark.parametrize("code", ORIENTATIONS)
def test_orientation_matches_sitk_dicomorient(code: str) -> None:
    image, _ = phantoms.phantom_arrays()
    stored = phantoms.reoriented(phantoms.to_image(image), code)
    view = orient(
        sitk.GetArrayViewFromImage(stored),
        stored.GetSpacing(),
        stored.GetOrigin(),
        stored.GetDirection(),
    )
    expected = sitk.DICOMOrient(stored, "LPS")
    assert np.array_equal(view.view, sitk.GetArrayViewFromImage(expected))
    assert np.allclose(view.origin, expected.GetOrigin())
    assert np.allclose(view.spacing, expected.GetSpacing()[::-1])


FORMATS = [("nifti", c) for c in ORIENTATIONS] + [
    ("qform", "RAS"),
    ("sform", "PIR"),
    ("qform", "LAS"),
    ("sform", "SRA"),
    ("nrrd", "RAS"),
    ("nrrd", "ILP"),
    ("mha", "LAS"),
    ("dicom", "LPS"),
    ("dicom", "RAS"),
]


@pytest.mark.parametrize(("fmt", "code"), FORMATS)
@pytest.mark.parametrize("axis", ["axial", "coronal", "sagittal"])
def test_lesion_on_the_patients_left_in_every_orientation_format_and_axis(
    tmp_path: Path, fmt: str, code: str, axis: str
) -> None:
    images, masks = _write_pair(tmp_path, fmt, code)
    spec = _spec(tmp_path, images, masks, slice_axis=axis, slices="{mode: all}")
    slices = _slices(tmp_path, spec)
    with_lesion = [s for s in slices if any(t.facts.present for t in s.targets)]
    assert with_lesion
    for image in with_lesion:
        side, (x, y) = _lesion(image)
        assert side == "left", (image.slice_index, image.targets)
        if axis in ("axial", "coronal"):
            assert x > 0.5  # the patient's left on the image's right
        if axis == "axial":
            assert y < 0.5  # anterior at the top
        if axis == "sagittal":
            assert x < 0.5  # anterior on the image's left
        if axis in ("coronal", "sagittal"):
            assert y < 0.5  # superior at the top
        # square pixels at the finer spacing; the slice spacing recorded
        finest = 2.2 if axis == "sagittal" else 2.0  # in-plane: (P, S) or (L, P|S)
        assert image.spacing_mm[0] == image.spacing_mm[1] == pytest.approx(finest, abs=1e-6)


def test_right_lesion_is_right_and_slice_index_is_the_source_files(tmp_path: Path) -> None:
    image, labels = phantoms.phantom_arrays(lesion_side="right")
    stored = phantoms.reoriented(phantoms.to_image(image), "RAS")
    phantoms.write(stored, tmp_path / "images" / "p1.nii.gz")
    phantoms.write(
        phantoms.reoriented(phantoms.to_image(labels), "RAS"), tmp_path / "labels" / "p1.nii.gz"
    )
    spec = _spec(tmp_path, "images/*.nii.gz", "labels/{name}", slices="{mode: largest, k: 1}")
    (only,) = _slices(tmp_path, spec)
    side, (x, _) = _lesion(only)
    assert side == "right" and x < 0.5
    # RAS stores z as S too: the source index equals the LPS axial index
    source_labels = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "labels" / "p1.nii.gz")))
    areas = source_labels.reshape(source_labels.shape[0], -1).sum(axis=1)
    assert only.slice_index == int(np.argmax(areas))


def _without_orientation(array: np.ndarray, path: Path) -> None:
    """The phantom array (LPS [S, P, L]) in a file that says nothing of the patient's axes:
    a NIfTI with qform and sform codes 0, or an NRRD with spacings but no space."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.name.endswith(".nii.gz"):
        import nibabel as nib

        nifti = nib.Nifti1Image(np.ascontiguousarray(array.transpose(2, 1, 0)), None)
        nifti.header.set_zooms(phantoms.SPACING)
        nifti.set_qform(None, code=0)
        nifti.set_sform(None, code=0)
        nib.save(nifti, str(path))
        return
    kind = {"int16": "short", "uint8": "unsigned char"}[array.dtype.name]
    header = (
        f"NRRD0004\ntype: {kind}\ndimension: 3\nsizes: {' '.join(map(str, array.shape[::-1]))}"
        f"\nspacings: {' '.join(map(str, phantoms.SPACING))}\nendian: little\nencoding: raw\n\n"
    )
    path.write_bytes(header.encode() + array.astype(f"<{array.dtype.str[1:]}").tobytes())


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
def test_a_file_without_the_patients_axes_gives_no_side(tmp_path: Path, suffix: str) -> None:
    """SimpleITK reads such a file with an identity direction, which would pass for LPS:
    its lesion (on the left in LPS, on the right by NIfTI's own default) has no side."""
    image, labels = phantoms.phantom_arrays()
    _without_orientation(image, tmp_path / "images" / f"p1{suffix}")
    _without_orientation(labels, tmp_path / "labels" / f"p1{suffix}")
    spec = _spec(tmp_path, f"images/*{suffix}", "labels/{name}", slices="{mode: all}")
    slices = _slices(tmp_path, spec)
    assert any(t.facts.present for s in slices for t in s.targets)
    assert {t.patient_side for s in slices for t in s.targets} == {None}
    assert all(t.frame is None for s in slices for t in s.targets)


def test_crop_without_body_is_null_unless_scanner_coordinates_make_it_certain(
    tmp_path: Path,
) -> None:
    image, labels = phantoms.phantom_arrays(crop=True)
    # A crop on the patient's left (x from +60 mm): DICOM is in scanner coordinates.
    img = phantoms.to_image(image, origin_x=60.0)
    lab = phantoms.to_image(labels, origin_x=60.0)
    phantoms.write_dicom_series(img, tmp_path / "dicom" / "images" / "p1")
    phantoms.write(lab, tmp_path / "dicom" / "labels" / "p1.nrrd")
    spec = _spec(tmp_path / "dicom", "images/*/", "labels/{name}.nrrd")
    for s in _slices(tmp_path / "dicom", spec):
        assert _lesion(s)[0] in ("left", None)
        assert any(t.frame is not None and t.frame.strict for t in s.targets)
    assert {_lesion(s)[0] for s in _slices(tmp_path / "dicom", spec)} == {"left"}
    # The same crop as NRRD: nothing says where the scanner's centre is.
    phantoms.write(img, tmp_path / "nrrd" / "images" / "p1.nrrd")
    phantoms.write(lab, tmp_path / "nrrd" / "labels" / "p1.nrrd")
    spec = _spec(tmp_path / "nrrd", "images/*.nrrd", "labels/{name}")
    assert {_lesion(s)[0] for s in _slices(tmp_path / "nrrd", spec)} == {None}
    # A NIfTI marked scanner but with its first voxel at the world origin (a converter's
    # default geometry, as SimpleITK writes for an array): not trusted.
    default = phantoms.to_image(image, origin_x=0.0)
    default.SetOrigin((0.0, 0.0, 0.0))
    phantoms.write(default, tmp_path / "nifti" / "images" / "p1.nii.gz")
    labels_default = phantoms.to_image(labels)
    labels_default.SetOrigin((0.0, 0.0, 0.0))
    phantoms.write(labels_default, tmp_path / "nifti" / "labels" / "p1.nii.gz")
    spec = _spec(tmp_path / "nifti", "images/*.nii.gz", "labels/{name}")
    assert {_lesion(s)[0] for s in _slices(tmp_path / "nifti", spec)} == {None}
    # The same NIfTI placed on the patient's left (scanner code 1, as SimpleITK writes): left.
    default.SetOrigin((60.0, -20.0, -30.0))
    labels_default.SetOrigin((60.0, -20.0, -30.0))
    phantoms.write(default, tmp_path / "nifti" / "images" / "p1.nii.gz")
    phantoms.write(labels_default, tmp_path / "nifti" / "labels" / "p1.nii.gz")
    assert {_lesion(s)[0] for s in _slices(tmp_path / "nifti", spec)} == {"left"}
    # Near the scanner centre a DICOM crop is not certain either.
    img = phantoms.to_image(image, origin_x=-90.0)  # the lesion near x = 0
    lab = phantoms.to_image(labels, origin_x=-90.0)
    phantoms.write_dicom_series(img, tmp_path / "near" / "images" / "p1")
    phantoms.write(lab, tmp_path / "near" / "labels" / "p1.nrrd")
    spec = _spec(tmp_path / "near", "images/*/", "labels/{name}.nrrd")
    assert {_lesion(s)[0] for s in _slices(tmp_path / "near", spec)} == {None}


def test_dicom_slices_are_ordered_by_position_not_name_or_thickness(tmp_path: Path) -> None:
    from pipeline.io.volumes import read_volume

    image, _ = phantoms.phantom_arrays()
    stored = phantoms.to_image(image)
    phantoms.write_dicom_series(stored, tmp_path / "s")
    read = read_volume(tmp_path / "s")
    assert read.GetSpacing()[2] == pytest.approx(phantoms.SPACING[2])  # not SliceThickness 9
    assert np.array_equal(sitk.GetArrayViewFromImage(read), image)


def test_slice_policies() -> None:
    areas = {"a": np.array([0, 5, 50, 40, 0, 30]), "b": np.array([0, 0, 0, 0, 0, 0])}
    assert SlicePolicy("largest", k=2).choose(areas, 6) == [2, 3]
    assert SlicePolicy("all").choose(areas, 6) == [2, 3, 5]
    assert SlicePolicy("stride", stride=2).choose(areas, 6) == [2, 5]
    assert SlicePolicy("all", min_pixels=1).choose(areas, 6) == [1, 2, 3, 5]
    empty = {"a": np.zeros(6, dtype=int)}
    assert SlicePolicy().choose(empty, 6) == [3]  # negative rows from the middle slice


def test_empty_label_volume_gives_negative_rows(tmp_path: Path) -> None:
    image, labels = phantoms.phantom_arrays()
    phantoms.write(phantoms.to_image(image), tmp_path / "images" / "p1.nii.gz")
    phantoms.write(phantoms.to_image(np.zeros_like(labels)), tmp_path / "labels" / "p1.nii.gz")
    (only,) = _slices(tmp_path, _spec(tmp_path, "images/*.nii.gz", "labels/{name}"))
    (target,) = only.targets
    assert target.target == "lesion" and not target.facts.present
    assert not decode_mask(target.mask_png).any()


def test_label_on_another_grid_is_resampled_or_refused(tmp_path: Path) -> None:
    image, labels = phantoms.phantom_arrays()
    img = phantoms.to_image(image)
    phantoms.write(img, tmp_path / "images" / "p1.nii.gz")
    # The same physical space at half the resolution: resampled onto the image.
    coarse = sitk.Resample(
        phantoms.to_image(labels),
        [s // 2 for s in img.GetSize()],
        sitk.Transform(),
        sitk.sitkNearestNeighbor,
        img.GetOrigin(),
        [s * 2 for s in img.GetSpacing()],
        img.GetDirection(),
    )
    phantoms.write(coarse, tmp_path / "labels" / "p1.nii.gz")
    spec = _spec(tmp_path, "images/*.nii.gz", "labels/{name}", slices="{mode: largest, k: 1}")
    (only,) = _slices(tmp_path, spec)
    assert _lesion(only)[0] == "left"
    # A label map 500 mm away: an error naming both geometries.
    far = phantoms.to_image(labels)
    far.SetOrigin((500.0, 0.0, 0.0))
    phantoms.write(far, tmp_path / "labels" / "p1.nii.gz")
    within = r"/labels/p1\.nii\.gz does not lie within its image.*labels size.*image size"
    with pytest.raises(CaseError, match=within):
        _slices(tmp_path, spec)


def test_four_d_volume_needs_a_channel(tmp_path: Path) -> None:
    from pipeline.io.images import PixelError

    image, labels = phantoms.phantom_arrays()
    four = sitk.JoinSeries([phantoms.to_image(image), phantoms.to_image(image * 2)])
    phantoms.write(four, tmp_path / "images" / "p1.nii.gz")
    phantoms.write(phantoms.to_image(labels), tmp_path / "labels" / "p1.nii.gz")
    with pytest.raises(PixelError, match="4D volume with 2 channels"):
        _slices(tmp_path, _spec(tmp_path, "images/*.nii.gz", "labels/{name}"))
    spec = _spec(tmp_path, "images/*.nii.gz", "labels/{name}", channel=1)
    assert _slices(tmp_path, spec)
    # A singleton fourth axis (x, y, z, 1) is a plain volume: no channel needed.
    single = sitk.JoinSeries([phantoms.to_image(image)])
    phantoms.write(single, tmp_path / "images" / "p1.nii.gz")
    assert _slices(tmp_path, _spec(tmp_path, "images/*.nii.gz", "labels/{name}"))


def test_windows_constant_and_nan_volumes(tmp_path: Path) -> None:
    from pipeline.geometry.slicing import parse_window, window_range
    from pipeline.io.images import to_grey

    ct = np.array([[[-1000.0, 40.0, 240.0, np.nan]]])
    low, high = window_range(parse_window("abdomen"), ct, "ct")
    assert (low, high) == (-160.0, 240.0)
    grey = to_grey(ct[0], low, high)
    assert grey.tolist() == [[0, 128, 255, 0]]
    assert to_grey(np.full((2, 2), 7.0), 7.0, 7.0).tolist() == [[0, 0], [0, 0]]
    assert window_range("percentile", np.full((2, 2, 2), np.nan), "mri") == (0.0, 1.0)
    with pytest.raises(ValueError, match="CT preset"):
        window_range("lung", ct, "mri")


def test_one_mask_file_per_structure_named_after_it(tmp_path: Path) -> None:
    image, labels = phantoms.phantom_arrays()
    phantoms.write(phantoms.to_image(image), tmp_path / "images" / "p1.nii.gz")
    mirrored = labels[:, :, ::-1]  # the same lesion on the patient's right
    phantoms.write(phantoms.to_image(labels), tmp_path / "masks" / "p1_lesion_left.nii.gz")
    phantoms.write(phantoms.to_image(mirrored), tmp_path / "masks" / "p1_lesion_right.nii.gz")
    spec = tmp_path / "per_structure.yaml"
    spec.write_text(
        "name: per_structure\nmodality: mri\nimages: images/*.nii.gz\n"
        'masks: "masks/{stem}_*.nii.gz"\n'
        'target_regex: "^{stem}_(?P<target>.+)$"\n'
        "slices: {mode: largest, k: 1}\n"
    )
    images = _slices(tmp_path, spec)
    sides = {t.target: t.patient_side for i in images for t in i.targets if t.facts.present}
    assert sides == {"lesion left": "left", "lesion right": "right"}


def test_unreadable_series_and_volume_fail_with_the_file_named(tmp_path: Path) -> None:
    from pipeline.io.images import PixelError
    from pipeline.io.volumes import read_volume

    (tmp_path / "empty_series").mkdir()
    (tmp_path / "empty_series" / "notes.txt").write_text("no DICOM here")
    with pytest.raises(PixelError, match="empty_series: no DICOM series found"):
        read_volume(tmp_path / "empty_series")
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(PixelError, match="broken.nii.gz: cannot read volume"):
        read_volume(broken)
