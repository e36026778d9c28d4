"""DICOM Segmentation objects (DICOM-SEG) onto the grid of the series they reference.

Each frame of a SEG is one segment on one plane, placed by its ImagePositionPatient; it is
matched to the slice of the referenced image at that position. The SEG must reference the
image's series (ReferencedSeriesSequence); frames must lie in the image's planes, with its
orientation and pixel spacing. BINARY segments are read as they are; FRACTIONAL ones at half
their maximum. Segments may not overlap (one label value per voxel): overlapping ones are an
error, never a silent choice.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .images import PixelError

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
# DICOM files that are not slices: a DICOMDIR (an index) and a DICOM-SEG (masks)
OTHER_KINDS = ("1.2.840.10008.1.3.10", SEG_SOP_CLASS)
POSITION_TOLERANCE_MM = 0.01


def import_pydicom():
    """pydicom (the volumes extra), or an error that says how to install it."""
    try:
        import pydicom
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise PixelError("DICOM needs pydicom: pip install 'mmrs[volumes]'") from exc
    return pydicom


def is_seg(path: Path) -> bool:
    """Whether a file is a DICOM Segmentation object (header only)."""
    if not path.is_file() or path.suffix.lower() not in (".dcm", ""):
        return False
    try:
        header = import_pydicom().dcmread(path, stop_before_pixels=True)
    except Exception:  # noqa: BLE001 - not DICOM at all
        return False
    return str(header.get("SOPClassUID", "")) == SEG_SOP_CLASS


def segment_labels(path: Path) -> dict[int, str]:
    """Segment number -> its label (SegmentLabel, lower case), from the header."""
    header = import_pydicom().dcmread(path, stop_before_pixels=True)
    return {
        int(item.SegmentNumber): str(item.get("SegmentLabel") or f"segment {item.SegmentNumber}")
        .strip()
        .lower()
        for item in header.SegmentSequence
    }


def may_hold_slices(header) -> bool:
    """Whether a DICOM file may hold image slices: it is none of OTHER_KINDS."""
    return str(header.get("SOPClassUID", "")) not in OTHER_KINDS


def _series_uid(image_path: Path) -> str | None:
    """The series of an image's slices (a SEG beside them in the folder is not one)."""
    pydicom = import_pydicom()
    files = sorted(image_path.iterdir()) if image_path.is_dir() else [image_path]
    for file in files:
        try:
            header = pydicom.dcmread(file, stop_before_pixels=True)
            if may_hold_slices(header):
                return str(header.SeriesInstanceUID)
        except Exception:  # noqa: BLE001 - skip files that are not DICOM
            continue
    return None


def not_slices(paths: list[str]) -> bool:
    """Whether every file is DICOM that holds no slice (a DICOM-SEG, a DICOMDIR)."""
    pydicom = import_pydicom()
    for path in paths:
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # noqa: BLE001 - not DICOM: not one of these either
            return False
        if may_hold_slices(header):
            return False
    return True


def _frame_item(dataset, frame: int, name: str, path: Path):
    """A functional group item of one frame (per-frame, else shared)."""
    for groups in (
        dataset.PerFrameFunctionalGroupsSequence[frame],
        dataset.SharedFunctionalGroupsSequence[0],
    ):
        if name in groups:
            return groups[name].value[0]
    raise PixelError(f"SEG frame {frame} has no {name}", path)


def read_seg(path: Path, image_path: Path, reference) -> np.ndarray:
    """Segment numbers on the reference image's grid, as an array [z, y, x] (0 = none)."""
    pydicom = import_pydicom()
    try:
        seg = pydicom.dcmread(path)
        frames = seg.pixel_array
    except Exception as exc:  # noqa: BLE001 - any decoding problem is this file's
        raise PixelError(f"cannot read DICOM-SEG ({exc})", path) from exc
    referenced = {str(item.SeriesInstanceUID) for item in seg.get("ReferencedSeriesSequence", [])}
    series = _series_uid(image_path)
    if not referenced or series not in referenced:
        raise PixelError(
            f"references series {sorted(referenced) or 'none'}, but its image "
            f"{image_path.name} is series {series}",
            path,
        )
    if frames.ndim == 2:
        frames = frames[None]
    if seg.get("SegmentationType") == "FRACTIONAL":
        frames = frames >= int(seg.get("MaximumFractionalValue", 255)) / 2
    size = reference.GetSize()
    labels = np.zeros((size[2], size[1], size[0]), dtype=np.uint8)
    direction = np.asarray(reference.GetDirection()).reshape(3, 3)
    for frame in range(frames.shape[0]):
        position = _frame_item(seg, frame, "PlanePositionSequence", path).ImagePositionPatient
        orientation = _frame_item(
            seg, frame, "PlaneOrientationSequence", path
        ).ImageOrientationPatient
        spacing = _frame_item(seg, frame, "PixelMeasuresSequence", path).PixelSpacing
        segment = int(
            _frame_item(seg, frame, "SegmentIdentificationSequence", path).ReferencedSegmentNumber
        )
        index = np.asarray(
            reference.TransformPhysicalPointToContinuousIndex([float(v) for v in position])
        )
        k = int(round(index[2]))
        aligned = (
            np.allclose(index[:2], 0, atol=POSITION_TOLERANCE_MM)
            and abs(index[2] - k) < 1e-3
            and 0 <= k < size[2]
            and np.allclose(orientation, direction.T[:2].ravel(), atol=1e-4)
            and np.allclose(
                [float(v) for v in spacing][::-1], reference.GetSpacing()[:2], atol=1e-4
            )
            and frames.shape[1:] == (size[1], size[0])
        )
        if not aligned:
            raise PixelError(
                f"frame {frame + 1} at {list(position)} does not lie on a slice "
                f"of {image_path.name}",
                path,
            )
        layer = frames[frame].astype(bool)
        clash = layer & (labels[k] != 0) & (labels[k] != segment)
        if clash.any():
            raise PixelError(f"segments overlap on slice {k}; not supported", path)
        labels[k][layer] = segment
    return labels
