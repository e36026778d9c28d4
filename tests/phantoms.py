"""Volume phantoms with KNOWN anatomy, written in many orientations and formats.

The phantom is built in LPS (array [S, P, L], direction identity): a bright elliptic
"body" centred on the world x = 0 midline, and a lesion on the patient's LEFT (+x in LPS),
ANTERIOR (-y) and SUPERIOR (+z) of the body's centre, so that any flip of any axis moves
it to a place the tests notice. Writers re-express the same physical content in other
voxel orders (sitk.DICOMOrient) and file formats.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

SHAPE = (24, 60, 72)  # S, P, L voxels
SPACING = (2.0, 2.2, 4.0)  # x (L), y (P), z (S) in mm: anisotropic; a body 120 mm wide
LESION_VALUE = 1


def phantom_arrays(lesion_side: str = "left", crop: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(image, labels) as LPS arrays [S, P, L]; `crop` makes the body fill the whole frame."""
    s, p, l_ = np.mgrid[0 : SHAPE[0], 0 : SHAPE[1], 0 : SHAPE[2]].astype(float)
    centre = (np.array(SHAPE) - 1) / 2
    body = ((p - centre[1]) / 24) ** 2 + ((l_ - centre[2]) / 30) ** 2 <= 1
    if crop:
        body = np.ones(SHAPE, dtype=bool)
    image = np.where(body, 400.0, 0.0) + np.random.default_rng(0).normal(0, 5, SHAPE)
    sign = 1 if lesion_side == "left" else -1
    lesion = (
        ((s - (centre[0] + 5)) / 4) ** 2
        + ((p - (centre[1] - 8)) / 5) ** 2
        + ((l_ - (centre[2] + sign * 16)) / 5) ** 2
    ) <= 1
    image[lesion] += 300
    return image.astype(np.int16), lesion.astype(np.uint8) * LESION_VALUE


def to_image(array: np.ndarray, origin_x: float | None = None) -> sitk.Image:
    """An LPS sitk image of an [S, P, L] array, centred on x = 0 unless told otherwise."""
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(SPACING)
    width = (SHAPE[2] - 1) * SPACING[0]
    x0 = -width / 2 if origin_x is None else origin_x
    image.SetOrigin((x0, -20.0, -30.0))
    return image


def reoriented(image: sitk.Image, code: str) -> sitk.Image:
    """The same physical content with voxels stored in orientation `code` (e.g. "RAS")."""
    return sitk.DICOMOrient(image, code)


def write(image: sitk.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path


def write_case(root: Path, image: np.ndarray, labels: np.ndarray, name: str = "p1") -> None:
    """A case as images/<name>.nii.gz and labels/<name>.nii.gz under root."""
    write(to_image(image), root / "images" / f"{name}.nii.gz")
    write(to_image(labels), root / "labels" / f"{name}.nii.gz")


def write_nifti_one_transform(image: sitk.Image, path: Path, keep: str) -> Path:
    """A NIfTI with only its qform (keep="qform") or only its sform (keep="sform") set."""
    import nibabel as nib

    write(image, path)
    nifti = nib.load(str(path))
    affine = nifti.affine
    if keep == "qform":
        nifti.set_sform(None, code=0)
        nifti.set_qform(affine, code=1)
    else:
        nifti.set_qform(None, code=0)
        nifti.set_sform(affine, code=1)
    nib.save(nifti, str(path))
    return path


def write_dicom_series(image: sitk.Image, folder: Path, modality: str = "MR") -> Path:
    """One DICOM file per slice with ImagePositionPatient/ImageOrientationPatient set.

    Files are named in REVERSE slice order, and SliceThickness is set to a wrong value, so
    a reader that sorts by name or trusts SliceThickness gets it wrong.
    """
    folder.mkdir(parents=True, exist_ok=True)
    image = sitk.Cast(image, sitk.sitkInt16)
    direction = image.GetDirection()
    series = "1.2.826.0.1.3680043.2.1125.1.42"
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    n = image.GetDepth()
    for k in range(n):
        plane = image[:, :, k]
        position = image.TransformIndexToPhysicalPoint((0, 0, k))
        tags = {
            "0008|0060": modality,
            "0020|000e": series,
            "0020|000d": "1.2.826.0.1.3680043.2.1125.1.41",
            "0010|0020": "PHANTOM",
            "0020|0032": "\\".join(f"{v:.6f}" for v in position),
            "0020|0037": "\\".join(
                f"{v:.6f}"
                for v in (
                    direction[0],
                    direction[3],
                    direction[6],
                    direction[1],
                    direction[4],
                    direction[7],
                )
            ),
            "0020|0013": str(k + 1),
            "0018|0050": "9.0",
            "0028|0030": f"{image.GetSpacing()[1]:.6f}\\{image.GetSpacing()[0]:.6f}",
            "0008|0018": f"{series}.{k + 1}",
        }
        for tag, value in tags.items():
            plane.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice_{n - k:03d}.dcm"))
        writer.Execute(plane)
    return folder
