"""One volume case -> its display-ready slices, each with masks, facts and patient frame.

Reads the image volume and every label file onto the image's grid (volumeio), turns them
to LPS (slicing.orient, views only), chooses slices by the source's policy from each
target's area per slice, and per chosen slice: windows the image to 8-bit grey, resamples
to square pixels, and analyses every target's mask. A target absent from a chosen slice
gives negative rows there: a label map annotates all its structures, so its absence is a
fact. One image is written per slice and window (targets may ask for different windows).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import replace

import numpy as np

from ..geometry.slicing import (
    AXIS_OF,
    Oriented,
    VolumeBody,
    body_threshold,
    display_slice,
    midline,
    orient,
    patient_frame,
    pixel_spacing,
    resize,
    square_shape,
    window_range,
)
from ..io.images import encode_png, to_grey
from ..io.volumes import (
    GeometryError,
    in_scanner_coordinates,
    missing_slices,
    orientation_known,
    read_labels,
    read_volume,
    voxel_view,
)
from ..sources.base import Case, MaskFile
from .cases import CaseError, ExtractedCase, SourceMeta, analyse_targets, label_layers

MAX_HISTOGRAM_VALUES = 4096  # label ranges counted by per-slice histograms


def _layers(mask_file: MaskFile, values: np.ndarray) -> dict[str, np.ndarray]:
    if mask_file.labels is not None:
        return label_layers(values, mask_file.labels)
    return {mask_file.target: values != 0}


def _value_sets(labels: Mapping) -> dict[str, list[int]]:
    """The label values that make up each target of a label map."""
    sets: dict[str, list[int]] = defaultdict(list)
    for key, target in labels.items():
        sets[target] += list(key) if isinstance(key, tuple) else [key]
    return dict(sets)


def _areas(case: Case, label_views: list[np.ndarray], axis: int, n: int) -> dict[str, np.ndarray]:
    """Pixels of each target on each slice along the oriented axis.

    Counted from one histogram of label values per slice: no whole-volume temporary.
    """
    areas = {target: np.zeros(n, dtype=np.int64) for target in case.targets}
    for mask_file, view in zip(case.masks, label_views, strict=True):
        low, high = int(view.min()), int(view.max())
        if mask_file.labels is None:  # a binary file: every non-zero value
            sets = {mask_file.target: None}
        else:
            sets = _value_sets(mask_file.labels)
        slices = [view.take(i, axis=axis) for i in range(n)]
        if high - low <= MAX_HISTOGRAM_VALUES:
            counts = np.stack(
                [np.bincount((s.ravel() - low).astype(np.intp), minlength=high - low + 1)
                 for s in slices]
            )  # fmt: skip
            zero = -low if low <= 0 <= high else None
        for target, values in sets.items():
            if high - low > MAX_HISTOGRAM_VALUES:  # sparse huge values: count slice by slice
                count = np.array(
                    [(s != 0).sum() if values is None else np.isin(s, values).sum() for s in slices]
                )
            elif values is None:
                count = counts.sum(axis=1) - (counts[:, zero] if zero is not None else 0)
            else:
                columns = [v - low for v in values if low <= v <= high]
                count = counts[:, columns].sum(axis=1)
            areas[target] = areas.get(target, np.zeros(n, dtype=np.int64)) + count
    return areas


def _asked(case: Case, index: int, masks: dict[str, np.ndarray], negatives: int) -> list[str]:
    """Targets present on the slice, and up to `negatives` absent ones (a stable hash pick)."""
    present = [t for t, m in masks.items() if m.any()]
    absent = [t for t, m in masks.items() if not m.any()]
    absent.sort(key=lambda t: hashlib.sha256(f"{case.case_id}|{index}|{t}".encode()).digest())
    return present + sorted(absent[:negatives])


def _leave_out(
    case: Case,
    missing: tuple[tuple[int, str], ...],
    direction: tuple[float, ...],
    axis_name: str,
    oriented: Oriented,
    areas: dict[str, np.ndarray],
) -> None:
    """A series' missing slices are never chosen (their areas become 0); slices across
    them, along another axis, would show the gaps: refused."""
    # the oriented axis of the series' own slices: the world axis its third index runs along
    own = 2 - int(np.argmax(np.abs(np.asarray(direction).reshape(3, 3)[:, 2])))
    if own != AXIS_OF[axis_name]:
        name = next(n for n, a in AXIS_OF.items() if a == own)
        raise CaseError(
            f"{case.image.name} has missing slices ({missing[0][1]}); only its own "
            f"{name} slices can be written, not {axis_name} ones"
        )
    for index, _ in missing:
        at = oriented.source_index(own, index)  # the same flip both ways
        for area in areas.values():
            area[at] = 0


def extract_volume(case: Case, source: SourceMeta) -> list[ExtractedCase]:
    """The chosen slices of one volume case (errors as in extract.py)."""
    settings = source.volume
    assert settings is not None
    image = read_volume(case.image, settings.channel, settings.allow_gaps)
    missing = missing_slices(image)
    try:
        label_arrays = [
            read_labels(m.path, image, case.image, settings.channel) for m in case.masks
        ]
    except GeometryError as exc:
        raise CaseError(str(exc)) from exc
    voxels, geometry = voxel_view(image)
    oriented = orient(voxels, *geometry)
    label_views = [orient(values, *geometry).view for values in label_arrays]
    axis_name = settings.slice_axis
    axis = AXIS_OF[axis_name]
    areas = _areas(case, label_views, axis, oriented.view.shape[axis])
    if missing:
        _leave_out(case, missing, geometry[2], axis_name, oriented, areas)
    chosen = settings.slices.choose(areas, oriented.view.shape[axis])
    threshold = body_threshold(oriented.view, source.modality)
    known = orientation_known(case.image, image)  # else no side: the patient's left is unknown
    body = midline(oriented, threshold) if known else None
    outlines = VolumeBody(oriented, threshold)
    scanner = known and in_scanner_coordinates(case.image, image)
    row_mm, col_mm, slice_mm = pixel_spacing(oriented, axis_name)
    windows = {}
    for target in areas:
        window = settings.window_for(target)
        if window not in windows:
            windows[window] = window_range(window, oriented.view, source.modality)

    slices: list[ExtractedCase] = []
    first: dict[str, int] = {}  # each image id: the slice that made it first
    identical: list[tuple[int, str]] = []  # later slices with the same image, left out
    for index in chosen:
        pixels = display_slice(oriented.view, axis_name, index)
        shape = square_shape(pixels.shape, row_mm, col_mm)
        finest = min(row_mm, col_mm)
        masks: dict[str, np.ndarray] = {t: np.zeros(shape, dtype=bool) for t in areas}
        for mask_file, view in zip(case.masks, label_views, strict=True):
            for target, layer in _layers(mask_file, display_slice(view, axis_name, index)).items():
                masks[target] |= resize(layer, shape, nearest=True)
        frame = patient_frame(oriented, axis_name, index, shape, body, scanner)
        seen = None  # the body on this slice, to check that targets lie in it
        if frame is not None and not frame.strict and axis_name != "sagittal":
            found = outlines.slice(axis_name, index)
            seen = None if found is None else resize(found, shape, nearest=True)
        elif frame is not None:
            seen = np.ones(shape, dtype=bool)  # a sagittal slice: x is the same everywhere
        by_window: dict[object, list[str]] = defaultdict(list)
        for target in _asked(case, index, masks, settings.slices.negatives):
            by_window[settings.window_for(target)].append(target)
        for window, targets in by_window.items():
            grey = resize(to_grey(pixels, *windows[window]), shape, nearest=False)
            image_bytes = encode_png(grey, source.png_level)
            image_id = hashlib.sha256(image_bytes).hexdigest()
            source_index = oriented.source_index(axis, index)
            if image_id in first:  # one image, one set of rows: the first slice's
                identical.append((source_index, _identical(source, case, first[image_id])))
                continue
            first[image_id] = source_index
            asked = {t: masks[t] for t in targets}
            slices.append(
                ExtractedCase(
                    case=case,
                    source=source,
                    image_bytes=image_bytes,
                    image_id=image_id,
                    width=shape[1],
                    height=shape[0],
                    targets=analyse_targets(
                        asked, frame, seen, image_id, display_names=source.display_names
                    ),
                    slice_axis=axis_name,
                    slice_index=source_index,
                    spacing_mm=(finest, finest, slice_mm),
                )
            )
    if not slices:
        raise CaseError(
            f"no slice of {case.image.name} has a target covering "
            f"{settings.slices.min_pixels} pixels or more"
        )
    left_out = (*missing, *identical)
    return [replace(item, left_out=left_out) for item in slices]


def _identical(source: SourceMeta, case: Case, index: int) -> str:
    return f"identical image already converted as {source.name}/{case.case_id} (slice {index})"
