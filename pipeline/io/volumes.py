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

import json
import re
from pathlib import Path

import numpy as np

from .dicomseg import is_seg, not_slices, read_seg
from .dicomseries import Gaps, check_series
from .images import PixelError
from .nifti import NiftiError, check_nifti

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
MISSING_SLICES = "mmrs_missing_slices"  # metadata key of a series read with gaps
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


def _series_files(folder: Path, allow_gaps: bool = False) -> tuple[list[str], Gaps | None]:
    sitk = _sitk()
    series = list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))
    if len(series) > 1:  # a DICOM-SEG beside the slices is a series of its own to GDCM
        series = [
            uid
            for uid in series
            if not not_slices(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid))
        ]
    if not series:
        raise PixelError("no DICOM series found", folder)
    if len(series) > 1:
        raise PixelError(
            f"holds {len(series)} DICOM series ({', '.join(series)}); give one series per folder",
            folder,
        )
    files = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series[0]))
    return files, check_series(folder, files, series[0], allow_gaps)


def itk_reason(exc: RuntimeError, path: Path) -> str:
    """What an ITK error says about a file, without ITK's source lines, object addresses
    and the file's own path (the caller names it)."""
    lines = []
    for line in str(exc).splitlines():
        line = re.sub(r"^.*ITK ERROR: \w+\(0x[0-9a-fA-F]+\):\s*", "", line.strip())
        line = line.replace(f'"{path}"', "it").replace(str(path), "it")
        if line.startswith("File cannot be read"):  # MetaImage: its data is short or corrupt
            line = "its data cannot be read in full (truncated or corrupt)"
        if line and not line.startswith(("Exception thrown in SimpleITK", "Reason:")):
            lines.append(line)
    return lines[-1] if lines else "unreadable"


def read_volume(path: Path, channel: int | None = None, allow_gaps: bool = False):
    """A 3D scalar SimpleITK image from a file or a DICOM series folder.

    A 4D volume (or one with several components per voxel) needs `channel`; without it
    that is an error naming the file, never a silent choice. A series with gaps is an
    error unless `allow_gaps`: its slices are then placed on their even grid, the missing
    ones all NaN, and `missing_slices` of the image says where and why.
    """
    sitk = _sitk()
    non_finite = None
    try:
        if path.is_dir():
            files, gaps = _series_files(path, allow_gaps)
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(files)
            image = reader.Execute()
            if gaps is not None:
                image = _on_grid(image, gaps)
        else:
            if path.name.lower().endswith(NIFTI_SUFFIXES):
                non_finite = check_nifti(path)
            image = sitk.ReadImage(str(path))
    except NiftiError as exc:
        raise PixelError(f"cannot read volume: {exc}", path) from exc
    except RuntimeError as exc:
        raise PixelError(f"cannot read volume ({itk_reason(exc, path)})", path) from exc
    if non_finite is not None:
        image = _with_nan(image, non_finite)
    if image.GetNumberOfComponentsPerPixel() > 1:
        if channel is None:
            raise PixelError(
                f"{image.GetNumberOfComponentsPerPixel()} channels per voxel; "
                f"choose one with the source's `channel` setting",
                path,
            )
        image = sitk.VectorIndexSelectionCast(image, channel)
    if image.GetDimension() == 4:
        size = image.GetSize()
        if channel is None and size[3] == 1:
            channel = 0  # a singleton fourth axis (x, y, z, 1) is a plain volume
        if channel is None:
            raise PixelError(f"4D volume with {size[3]} channels; choose one with `channel`", path)
        if not 0 <= channel < size[3]:
            raise PixelError(f"channel {channel} out of range 0..{size[3] - 1}", path)
        image = sitk.Extract(image, [*size[:3], 0], [0, 0, 0, channel])
    if image.GetDimension() != 3:
        raise PixelError(f"expected a 3D volume, got {image.GetDimension()}D", path)
    return image


def _with_nan(image, non_finite: np.ndarray):
    """The image with NaN where its NIfTI file holds non-finite floats (ITK read 0 there)."""
    sitk = _sitk()
    if image.GetNumberOfComponentsPerPixel() > 1:  # NIfTI stores components slowest
        non_finite = np.moveaxis(non_finite, 0, -1)
    values = sitk.GetArrayFromImage(image)
    values[non_finite.reshape(values.shape)] = np.nan
    restored = sitk.GetImageFromArray(values, isVector=image.GetNumberOfComponentsPerPixel() > 1)
    restored.CopyInformation(image)
    for key in image.GetMetaDataKeys():  # the header's codes (in_scanner_coordinates)
        restored.SetMetaData(key, image.GetMetaData(key))
    return restored


def _on_grid(image, gaps: Gaps):
    """A series read with gaps, its slices placed on their even grid (missing ones NaN)."""
    sitk = _sitk()
    values = sitk.GetArrayViewFromImage(image)  # [slice, y, x] in the reader's order
    full = np.full((gaps.size, *values.shape[1:]), np.nan, dtype=np.float32)
    full[list(gaps.grid)] = values
    placed = sitk.GetImageFromArray(full)
    placed.SetOrigin(image.GetOrigin())  # the first file's position, as the reader's
    placed.SetDirection(image.GetDirection())
    placed.SetSpacing((*image.GetSpacing()[:2], gaps.spacing))
    for key in image.GetMetaDataKeys():
        placed.SetMetaData(key, image.GetMetaData(key))
    placed.SetMetaData(MISSING_SLICES, json.dumps(gaps.missing))
    return placed


def missing_slices(image) -> tuple[tuple[int, str], ...]:
    """The slices a series read with gaps lacks: (index along its own axis, why)."""
    if not image.HasMetaDataKey(MISSING_SLICES):
        return ()
    return tuple((int(k), str(why)) for k, why in json.loads(image.GetMetaData(MISSING_SLICES)))


# NRRD `space` values that name the patient's axes (teem writes the long forms)
ANATOMICAL_NRRD_SPACES = {
    f"{space}{time}"
    for space in ("right-anterior-superior", "left-anterior-superior", "left-posterior-superior")
    for time in ("", "-time")
}


def orientation_known(path: Path, image) -> bool:
    """Whether the file says how its axes lie in the patient: not a NIfTI whose qform and
    sform codes are both 0 (NIfTI's "no particular spatial orientation"), nor an NRRD
    without an anatomical `space`; SimpleITK gives both an identity direction, which would
    pass for LPS. DICOM, MetaImage (whose world is LPS) and the others: known."""
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        codes = {
            image.GetMetaData(key)
            for key in ("qform_code_name", "sform_code_name")
            if image.HasMetaDataKey(key)
        }
        return bool(codes - {"NIFTI_XFORM_UNKNOWN"})
    if name.endswith((".nrrd", ".nhdr")):
        space = image.GetMetaData("NRRD_space") if image.HasMetaDataKey("NRRD_space") else ""
        return space.lower() in ANATOMICAL_NRRD_SPACES
    return True


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
            raise PixelError("label map holds NaN or infinite values", path)
        rounded = np.rint(values)
        if np.abs(values - rounded).max() > 1e-3:
            raise PixelError("float label map holds non-integer values", path)
        labels = sitk.Round(labels)
    labels = _smallest_label_type(labels)
    if not same_grid(labels, reference):
        low, high = _box(labels)
        ref_low, ref_high = _box(reference)
        slack = max(reference.GetSpacing()) + GRID_TOLERANCE_MM
        if (low < ref_low - slack).any() or (high > ref_high + slack).any():
            raise GeometryError(
                f"{path} does not lie within its image: labels {describe_grid(labels)}; "
                f"image {describe_grid(reference)}"
            )
        labels = sitk.Resample(labels, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    return sitk.GetArrayFromImage(labels)
