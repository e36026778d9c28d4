"""Reading 3D volumes and label maps through SimpleITK (the one place that does).

Axis order, the classic source of silent flips: a SimpleITK image is indexed (x, y, z)
with physical points in LPS millimetres (DICOM's frame: +x = patient's Left, +y =
Posterior, +z = Superior), whatever the file format; `sitk.GetArrayViewFromImage` gives the
same voxels as a numpy array indexed [z, y, x]. NIfTI's RAS affines are converted by ITK on
reading; with only a qform or only an sform set, ITK takes the one that is set.

Formats: NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr), MetaImage (.mha, .mhd), and DICOM
series (a folder of one series; slices ordered by ImagePositionPatient and the slice
spacing taken from those positions, never from SliceThickness).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .dicomseg import is_seg, read_seg
from .images import PixelError

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
# Two grids are the same when origins and spacings agree to this (mm) and directions to
# this (cosine); a label map on another grid is resampled onto the image only when its
# physical box lies within the image's box widened by one voxel.
GRID_TOLERANCE_MM = 1e-3
DIRECTION_TOLERANCE = 1e-4


class GeometryError(ValueError):
    """An image and a label map that do not describe the same physical space."""


def _sitk():
    try:
        import SimpleITK as sitk
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise PixelError("3D volumes need SimpleITK: pip install 'mmrs[volumes]'") from exc
    return sitk


def is_volume(path: Path) -> bool:
    """A volume file by its name, or a folder (a DICOM series)."""
    name = path.name.lower()
    return path.is_dir() or name.endswith(VOLUME_SUFFIXES) or name.endswith(".dcm")


def _series_files(folder: Path) -> list[str]:
    sitk = _sitk()
    series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise PixelError(f"{folder}: no DICOM series found")
    if len(series) > 1:
        raise PixelError(
            f"{folder}: holds {len(series)} DICOM series ({', '.join(series)}); "
            f"give one series per folder"
        )
    return list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series[0]))


def read_volume(path: Path, channel: int | None = None):
    """A 3D scalar SimpleITK image from a file or a DICOM series folder.

    A 4D volume (or one with several components per voxel) needs `channel`; without it
    that is an error naming the file, never a silent choice.
    """
    sitk = _sitk()
    try:
        if path.is_dir():
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(_series_files(path))
            image = reader.Execute()
        else:
            image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        message = str(exc).strip().splitlines()
        raise PixelError(f"{path}: cannot read volume ({message[-1] if message else exc})") from exc
    if image.GetNumberOfComponentsPerPixel() > 1:
        if channel is None:
            raise PixelError(
                f"{path}: {image.GetNumberOfComponentsPerPixel()} channels per voxel; "
                f"choose one with the source's `channel` setting"
            )
        image = sitk.VectorIndexSelectionCast(image, channel)
    if image.GetDimension() == 4:
        size = image.GetSize()
        if channel is None and size[3] == 1:
            channel = 0  # a singleton fourth axis (x, y, z, 1) is a plain volume
        if channel is None:
            raise PixelError(
                f"{path}: 4D volume with {size[3]} channels; choose one with `channel`"
            )
        if not 0 <= channel < size[3]:
            raise PixelError(f"{path}: channel {channel} out of range 0..{size[3] - 1}")
        image = sitk.Extract(image, [*size[:3], 0], [0, 0, 0, channel])
    if image.GetDimension() != 3:
        raise PixelError(f"{path}: expected a 3D volume, got {image.GetDimension()}D")
    return image


def in_scanner_coordinates(path: Path, image) -> bool:
    """Whether physical x = 0 is the scanner's (table) centre: DICOM, or a NIfTI whose
    transform in use is marked scanner-anatomical. Other formats do not say.

    A NIfTI whose first voxel sits at the world origin is not trusted even so: that is the
    default geometry of a converter that knew none (SimpleITK and others still write the
    scanner code), not a position on a table.
    """
    name = path.name.lower()
    if path.is_dir() or name.endswith(".dcm"):
        return True
    if name.endswith((".nii", ".nii.gz")):
        codes = {
            image.GetMetaData(key)
            for key in ("qform_code_name", "sform_code_name")
            if image.HasMetaDataKey(key)
        }
        at_origin = np.all(np.abs(image.GetOrigin()) <= 2 * max(image.GetSpacing()))
        return codes - {"NIFTI_XFORM_UNKNOWN"} == {"NIFTI_XFORM_SCANNER_ANAT"} and not at_origin
    return False


def voxel_view(image) -> tuple[np.ndarray, tuple]:
    """The voxels as a numpy view [z, y, x] (no copy) and (spacing, origin, direction)."""
    sitk = _sitk()
    geometry = (image.GetSpacing(), image.GetOrigin(), image.GetDirection())
    return sitk.GetArrayViewFromImage(image), geometry


def _smallest_label_type(labels):
    """Labels cast to the smallest integer type that holds them (memory on big volumes)."""
    sitk = _sitk()
    small = (sitk.sitkUInt8, sitk.sitkInt8, sitk.sitkUInt16, sitk.sitkInt16)
    if labels.GetPixelID() in small:
        return labels  # already small: no copy
    stats = sitk.MinimumMaximumImageFilter()
    stats.Execute(labels)
    low, high = stats.GetMinimum(), stats.GetMaximum()
    if low >= 0 and high <= 255:
        return sitk.Cast(labels, sitk.sitkUInt8)
    if low >= -(2**15) and high < 2**15:
        return sitk.Cast(labels, sitk.sitkInt16)
    return sitk.Cast(labels, sitk.sitkInt32)


def describe_grid(image) -> str:
    spacing = ", ".join(f"{v:g}" for v in image.GetSpacing())
    origin = ", ".join(f"{v:.2f}" for v in image.GetOrigin())
    direction = ", ".join(f"{v:.3f}" for v in image.GetDirection())
    return (
        f"size {image.GetSize()}, spacing ({spacing}), origin ({origin}), direction ({direction})"
    )


def same_grid(a, b) -> bool:
    return (
        a.GetSize() == b.GetSize()
        and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=GRID_TOLERANCE_MM)
        and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=GRID_TOLERANCE_MM)
        and np.allclose(a.GetDirection(), b.GetDirection(), atol=DIRECTION_TOLERANCE)
    )


def _box(image) -> tuple[np.ndarray, np.ndarray]:
    """Physical bounding box (min, max corners) of an image's voxel edges."""
    size = np.array(image.GetSize())
    corners = []
    for corner in np.ndindex(2, 2, 2):
        index = np.where(np.array(corner) == 1, size - 0.5, -0.5)
        corners.append(image.TransformContinuousIndexToPhysicalPoint(index.tolist()))
    points = np.array(corners)
    return points.min(axis=0), points.max(axis=0)


def read_labels(path: Path, reference, image_path: Path, channel: int | None = None) -> np.ndarray:
    """A label map on the reference image's grid, as an integer array [z, y, x].

    Float label maps must hold whole numbers. A label map on another grid is resampled
    (nearest neighbour) onto the image when its physical box lies within the image's;
    otherwise a GeometryError names both geometries. A DICOM-SEG gives its segment
    numbers on the grid of the series it references (dicomseg.py).
    """
    if is_seg(path):
        return read_seg(path, image_path, reference)
    sitk = _sitk()
    labels = read_volume(path, channel)
    values = sitk.GetArrayViewFromImage(labels)
    if np.issubdtype(values.dtype, np.floating):
        if not np.isfinite(values).all():
            raise PixelError(f"{path}: label map holds NaN or infinite values")
        rounded = np.rint(values)
        if np.abs(values - rounded).max() > 1e-3:
            raise PixelError(f"{path}: float label map holds non-integer values")
        labels = sitk.Round(labels)
    labels = _smallest_label_type(labels)
    if not same_grid(labels, reference):
        low, high = _box(labels)
        ref_low, ref_high = _box(reference)
        slack = max(reference.GetSpacing()) + GRID_TOLERANCE_MM
        if (low < ref_low - slack).any() or (high > ref_high + slack).any():
            raise GeometryError(
                f"{path.name} does not lie within its image: labels {describe_grid(labels)}; "
                f"image {describe_grid(reference)}"
            )
        labels = sitk.Resample(labels, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    return sitk.GetArrayFromImage(labels)
