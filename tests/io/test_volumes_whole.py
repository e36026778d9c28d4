"""A volume is read only when its file, or every slice of its series, was read whole.

Generated damage: a .nii.gz cut short, a valid gzip of half a NIfTI, a .nii cut short or
too long, NaN voxels (which ITK's NIfTI reader turns to 0); a DICOM series with a slice
truncated, removed, duplicated or replaced by a dangling link, and the real DICOM-SEG
sample with one of its slices cut short.
"""

from __future__ import annotations

import gzip
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sitk = pytest.importorskip("SimpleITK")

import phantoms  # noqa: E402

from pipeline.build.cases import SourceMeta  # noqa: E402
from pipeline.build.extract import extract_case  # noqa: E402
from pipeline.io.images import PixelError  # noqa: E402
from pipeline.io.volumes import read_labels, read_volume  # noqa: E402
from pipeline.sources.spec import load_spec  # noqa: E402

DCMQI = Path(__file__).resolve().parents[2].parent / "shared" / "real_samples" / "ct"
DCMQI = DCMQI / "dcmqi_ct3slice_dicomseg"


def _nifti(tmp_path: Path, array: np.ndarray | None = None) -> Path:
    image, _ = phantoms.phantom_arrays()
    return phantoms.write(phantoms.to_image(image if array is None else array), tmp_path / "a.nii")


def _damaged(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_a_nifti_that_is_not_whole_is_refused_with_the_reason(tmp_path: Path) -> None:
    raw = _nifti(tmp_path).read_bytes()
    packed = gzip.compress(raw)
    cases = {
        "cut.nii.gz": (packed[: len(packed) // 2], "gzip stream cut short"),
        "half.nii.gz": (gzip.compress(raw[: len(raw) // 2]), "decompressed size is 103856 bytes"),
        "cut.nii": (raw[:-1], "size is 207711 bytes, its header declares 207712"),
        "long.nii": (raw + bytes(8), "size is 207720 bytes, its header declares 207712"),
        "crc.nii.gz": (packed[:-8] + bytes(8), "corrupt gzip stream"),
        "empty.nii": (b"", "empty file"),
        "text.nii": (b"not a volume" * 50, "not a NIfTI file"),
    }
    for name, (data, reason) in cases.items():
        path = _damaged(tmp_path, name, data)
        with pytest.raises(PixelError, match=reason) as caught:
            read_volume(path)
        assert caught.value.path == path and str(path) not in caught.value.problem
    assert read_volume(_damaged(tmp_path, "whole.nii.gz", packed)).GetSize() == (72, 60, 24)
    # Whole data with bytes after the gzip stream (as zlib, ITK's reader, ignores them), in
    # gzip members (the first may end within the header), or with a wrong bitpix (the
    # datatype sizes the voxels): read.
    for name, data in {
        "padded.nii.gz": packed + b"trailing bytes",
        "members.nii.gz": gzip.compress(raw[:1000]) + gzip.compress(raw[1000:]),
        "short.nii.gz": b"".join(
            gzip.compress(raw[a:b]) for a, b in ((0, 200), (200, 400), (400, None))
        ),
        "bitpix.nii": raw[:72] + (0).to_bytes(2, "little") + raw[74:],
    }.items():
        assert read_volume(_damaged(tmp_path, name, data)).GetSize() == (72, 60, 24), name


def test_nifti_2_and_big_endian_headers_are_read_as_well(tmp_path: Path) -> None:
    from pipeline.io.nifti import NiftiError, check_nifti

    nib = pytest.importorskip("nibabel")
    image = np.arange(4 * 5 * 6, dtype=np.float32).reshape(6, 5, 4)  # [z, y, x]
    image[2, 1, 3] = np.nan
    for kind, name, header in (
        (nib.Nifti2Image, "two.nii", None),
        (nib.Nifti1Image, "big.nii.gz", nib.Nifti1Header(endianness=">")),
    ):
        path = tmp_path / name
        nib.save(kind(image.transpose(2, 1, 0), np.eye(4), header=header), str(path))
        flags = check_nifti(path)
        assert flags.shape == (6, 5, 4) and np.argwhere(flags).tolist() == [[2, 1, 3]]
        data = path.read_bytes()
        data = gzip.decompress(data) if name.endswith(".gz") else data
        cut = _damaged(tmp_path, "cut.nii", data[:-2])
        with pytest.raises(NiftiError, match="its header declares"):
            check_nifti(cut)


@pytest.mark.parametrize("name", ["a.nrrd", "a.mha"])
@pytest.mark.parametrize("compress", [False, True])
def test_nrrd_and_metaimage_cut_short_fail_with_a_clean_reason(
    tmp_path: Path, name: str, compress: bool
) -> None:
    image, _ = phantoms.phantom_arrays()
    path = tmp_path / name
    sitk.WriteImage(phantoms.to_image(image), str(path), compress)
    path.write_bytes(path.read_bytes()[:-1000])
    with pytest.raises(PixelError, match="cannot read volume") as caught:
        read_volume(path)
    problem = caught.value.problem
    assert str(tmp_path) not in problem and "0x" not in problem and "ITK" not in problem


def test_a_truncated_label_map_names_the_label_file(tmp_path: Path) -> None:
    image, labels = phantoms.phantom_arrays()
    reference = read_volume(phantoms.write(phantoms.to_image(image), tmp_path / "i.nii.gz"))
    packed = phantoms.write(phantoms.to_image(labels), tmp_path / "l.nii.gz").read_bytes()
    cut = _damaged(tmp_path, "l.nii.gz", packed[: len(packed) - 40])
    with pytest.raises(PixelError, match="gzip stream cut short") as caught:
        read_labels(cut, reference, tmp_path / "i.nii.gz")
    assert caught.value.path == cut


def test_nan_voxels_stay_nan_and_are_drawn_black(tmp_path: Path) -> None:
    image, labels = phantoms.phantom_arrays()
    values = image.astype(np.float32) - 1000  # a CT in HU: air -1000, the body -600
    values[:, :8, :] = np.nan  # the first 8 rows (posterior... stored first) undefined
    values[0, 0, 0] = np.inf
    phantoms.write(phantoms.to_image(values), tmp_path / "images" / "p1.nii.gz")
    phantoms.write(phantoms.to_image(labels), tmp_path / "labels" / "p1.nii.gz")
    read = sitk.GetArrayFromImage(read_volume(tmp_path / "images" / "p1.nii.gz"))
    assert np.array_equal(~np.isfinite(read), ~np.isfinite(values))
    assert np.array_equal(read[np.isfinite(read)], values[np.isfinite(values)])

    spec = tmp_path / "ct.yaml"
    spec.write_text(
        "name: ct\nmodality: ct\nimages: images/*.nii.gz\nmasks: labels/{name}\n"
        "labels: {1: lesion}\nwindow: lung\nslices: {mode: largest, k: 1}\n"
    )
    source = load_spec(spec)
    (case,) = [c for c in source.discover(tmp_path) if hasattr(c, "masks")]
    (extracted,) = extract_case(case, SourceMeta.of(source))
    grey = np.asarray(Image.open(io.BytesIO(extracted.image_bytes)))
    # Anterior is at the top of an axial slice: the NaN rows (low y = anterior in LPS) are
    # the top rows, resampled to square pixels (2.2 mm rows -> 2 mm).
    assert grey[:8].max() == 0  # black, where 0 HU would be light grey in a lung window
    assert grey[12:].max() > 0


def _series(tmp_path: Path, name: str = "series") -> Path:
    image, _ = phantoms.phantom_arrays()
    return phantoms.write_dicom_series(phantoms.to_image(image), tmp_path / name, "CT")


def _slice_file(folder: Path, k: int) -> Path:
    """The file of slice k (files are named in reverse slice order)."""
    return folder / f"slice_{len(list(folder.glob('slice_*.dcm'))) - k:03d}.dcm"


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        ("truncate_pixels", "holds .* bytes of pixel data, its header declares 8640"),
        ("truncate_header", "series reader cannot read"),
        ("remove", r"uneven slice gap: 8 mm between .* spacing is 4 mm"),
        ("duplicate", "lie at the same position"),
        ("dangling_link", "symbolic link that leads to no file"),
    ],
)
def test_a_series_with_a_bad_or_missing_slice_names_the_file(
    tmp_path: Path, damage: str, reason: str
) -> None:
    folder = _series(tmp_path)
    bad = _slice_file(folder, 10)
    data = bad.read_bytes()
    if damage == "truncate_pixels":
        bad.write_bytes(data[: len(data) - 4000])
    elif damage == "truncate_header":
        bad.write_bytes(data[:300])
    elif damage == "remove":
        bad.unlink()
        bad = _slice_file(folder, 10)  # the slice after the gap
    elif damage == "duplicate":
        bad = folder / "zz_copy.dcm"
        bad.write_bytes(data)
    else:
        bad.unlink()
        bad.symlink_to("gone.dcm")
    with pytest.raises(PixelError, match=reason) as caught:
        read_volume(folder)
    assert caught.value.path == bad


def test_a_series_with_notes_beside_it_reads_as_before(tmp_path: Path) -> None:
    folder = _series(tmp_path)
    before = read_volume(folder)
    (folder / "notes.txt").write_text("acquired 2020")
    (folder / ".DS_Store").write_bytes(b"\0\1")
    after = read_volume(folder)
    assert after.GetSpacing() == before.GetSpacing() == phantoms.SPACING
    assert np.array_equal(sitk.GetArrayViewFromImage(after), sitk.GetArrayViewFromImage(before))


@pytest.mark.skipif(not DCMQI.is_dir(), reason="../shared/real_samples not found")
def test_a_dicom_seg_case_with_a_cut_slice_names_the_slice(tmp_path: Path) -> None:
    series = tmp_path / "ct-3slice"
    shutil.copytree(DCMQI / "ct-3slice", series)
    shutil.copy(DCMQI / "liver.dcm", tmp_path / "liver.dcm")
    for path in (series, *series.iterdir()):
        path.chmod(0o755 if path.is_dir() else 0o644)
    middle = series / "02.dcm"
    middle.write_bytes(middle.read_bytes()[:-1000])
    spec = tmp_path / "seg.yaml"
    spec.write_text(
        "name: seg\nmodality: ct\nimages: ct-3slice/\nmasks: liver.dcm\nwindow: abdomen\n"
    )
    source = load_spec(spec)
    (case,) = [c for c in source.discover(tmp_path) if hasattr(c, "masks")]
    with pytest.raises(PixelError, match="02.dcm: slice holds") as caught:
        extract_case(case, SourceMeta.of(source))
    assert caught.value.path == middle


def test_a_report_of_its_own_series_beside_the_slices_is_not_a_slice(tmp_path: Path) -> None:
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    folder = _series(tmp_path)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR
    meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.2.1125.9.1"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    report = Dataset()
    report.file_meta = meta
    report.SOPClassUID, report.SOPInstanceUID = (
        meta.MediaStorageSOPClassUID,
        "1.2.826.0.1.3680043.2.1125.9.1",
    )
    report.SeriesInstanceUID, report.Modality = "1.2.826.0.1.3680043.2.1125.9", "SR"
    pydicom.dcmwrite(folder / "report.dcm", report, enforce_file_format=True)
    assert read_volume(folder).GetSize() == (72, 60, 24)


def test_a_series_with_gaps_converts_when_allowed_with_each_gap_reported(tmp_path: Path) -> None:
    """slice_gaps: allow places the slices on their grid; the missing ones are never
    written and are reported; the other slices come out as from the whole series."""
    import json

    from pipeline.build.cases import CaseError
    from pipeline.build.run import BuildConfig, SourceRequest, build

    image, labels = phantoms.phantom_arrays()
    volume = phantoms.to_image((image - 200).astype(np.int16))  # grey in the abdomen window
    for name in ("whole", "gapped"):
        phantoms.write_dicom_series(volume, tmp_path / name / "images" / "p1", "CT")
        phantoms.write(phantoms.to_image(labels), tmp_path / name / "labels" / "p1.nrrd")
    series = tmp_path / "gapped" / "images" / "p1"
    for path in [_slice_file(series, k) for k in (15, 16)]:  # the lesion spans 13..20
        path.unlink()
    text = (
        "name: ct\nmodality: ct\nimages: images/*/\nmasks: labels/{name}.nrrd\n"
        "labels: {1: lesion}\nwindow: abdomen\nslices: {mode: all, negatives: 0}\n"
    )
    (tmp_path / "refuse.yaml").write_text(text)
    (tmp_path / "allow.yaml").write_text(text + "slice_gaps: allow\n")
    (tmp_path / "coronal.yaml").write_text(text + "slice_gaps: allow\nslice_axis: coronal\n")

    def extract(spec: str, root: str):
        source = load_spec(tmp_path / spec)
        (case,) = [c for c in source.discover(tmp_path / root) if hasattr(c, "masks")]
        return extract_case(case, SourceMeta.of(source))

    whole = {i.slice_index: i for i in extract("refuse.yaml", "whole")}
    with pytest.raises(PixelError, match="uneven slice gap: 12 mm"):
        extract("refuse.yaml", "gapped")
    with pytest.raises(CaseError, match="only its own axial slices can be written"):
        extract("coronal.yaml", "gapped")
    gapped = {i.slice_index: i for i in extract("allow.yaml", "gapped")}
    assert sorted(gapped) == [13, 14, 17, 18, 19, 20] and sorted(whole) == list(range(13, 21))
    for index, found in gapped.items():
        assert found.image_bytes == whole[index].image_bytes
        assert found.spacing_mm == whole[index].spacing_mm
        assert [t.mask_png for t in found.targets] == [t.mask_png for t in whole[index].targets]

    out = tmp_path / "out"
    source = load_spec(tmp_path / "allow.yaml")
    counts = build(
        BuildConfig((SourceRequest(source, tmp_path / "gapped"),), out, progress=False)
    ).sources["ct"]
    assert (counts.converted, counts.skipped, counts.failed) == (1, 0, 0)
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert [(e["slice_axis"], e["slice_index"], e["status"]) for e in errors] == [
        ("axial", 15, "skipped"),
        ("axial", 16, "skipped"),
    ]
    assert errors[0]["reason"].startswith("no slice here: the series jumps 12 mm from slice_")
    assert errors[0]["file"] == "images/p1"
