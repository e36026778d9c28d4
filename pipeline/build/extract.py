"""One case -> its pixels and facts: read, check, turn to display, encode masks, analyse.

The only stage that reads source pixels. A pure function of the case and its source's
metadata, so it runs the same in any worker; its output is everything the QA stage needs,
so a change of templates never reads an image again. Bad cases raise CaseError (skipped:
the data is wrong) or PixelError (failed: a file cannot be read); the build records either
and goes on.
"""

from __future__ import annotations

import hashlib

import numpy as np

from ..geometry.patient import frame_2d, radiograph_frame
from ..io.images import (
    KEPT_FORMATS,
    encode_png,
    grey_levels,
    read_image,
    read_label_map,
    read_mask,
)
from ..sources.base import Case
from .cases import CaseError, ExtractedCase, SourceMeta, analyse_targets, label_layers

_EXIF_ORIENTATION = 0x0112
CROSS_SECTIONS = ("ct", "mri")


def _read_masks(
    case: Case, shape: tuple[int, int]
) -> tuple[dict[str, np.ndarray], dict[str, bytes]]:
    """Union of every mask file per target, checked against the image size.

    Also the own bytes of each target's mask file where that one file is the whole target
    and already a mask PNG (single-channel 0/255): written as they are, like images.
    """
    masks: dict[str, np.ndarray] = {t: np.zeros(shape, dtype=bool) for t in case.targets}
    files: dict[str, list[bytes | None]] = {}
    for mask_file in case.masks:
        if mask_file.labels is not None:
            layers = label_layers(read_label_map(mask_file.path), mask_file.labels)
            pngs: dict[str, bytes | None] = dict.fromkeys(layers)
        else:
            read = read_mask(mask_file.path)
            layers, pngs = {mask_file.target: read.pixels}, {mask_file.target: read.png}
        for target, layer in layers.items():
            if layer.shape != shape:
                raise CaseError(
                    f"image/mask size mismatch: {case.image.name} is {shape[1]}x{shape[0]}, "
                    f"{mask_file.path.name} is {layer.shape[1]}x{layer.shape[0]}"
                )
            masks[target] = masks.get(target, np.zeros(shape, dtype=bool)) | layer
            files.setdefault(target, []).append(pngs[target])
    kept = {t: found[0] for t, found in files.items() if len(found) == 1 and found[0]}
    return masks, kept


def extract_case(case: Case, source: SourceMeta) -> list[ExtractedCase]:
    """Every image of one case: one for a 2D case, one per chosen slice of a volume."""
    if source.volume is not None:
        from .extract_volume import extract_volume  # SimpleITK only where volumes are

        return extract_volume(case, source)
    return [extract_image(case, source)]


def extract_image(case: Case, source: SourceMeta) -> ExtractedCase:
    """Pixels and facts of one 2D case (see the module docstring for its errors)."""
    display = source.display
    # A CT/MRI cross-section in a known display shows the body's outline, a frontal chest
    # film its mediastinum; the columns of either run from the patient's right to left
    # (axial or coronal). Any other image (a lateral film, an undeclared one) does not.
    frame_of = None
    if display.knows_patient and display.plane != "sagittal":
        if source.modality in CROSS_SECTIONS:
            frame_of = frame_2d
        elif source.modality == "xray" and display.frontal:
            frame_of = radiograph_frame
    decoded = read_image(case.image, pixels=frame_of is not None or display.changes_pixels)
    orientation = decoded.image.getexif().get(_EXIF_ORIENTATION, 1)
    if orientation not in (0, 1):
        raise CaseError(
            f"{case.image.name}: EXIF orientation {orientation} makes the displayed image "
            f"differ from its stored pixels; the mask's frame is ambiguous"
        )
    shape = (decoded.height, decoded.width)
    masks, kept = _read_masks(case, shape)
    empty = [t for t, m in masks.items() if not m.any() and t not in case.absent_ok]
    if empty:
        files = ", ".join(f.path.name for f in case.masks)
        raise CaseError(f"empty mask for {', '.join(empty)} ({files})")

    grey = display.apply(grey_levels(decoded.image)) if frame_of else None
    found = frame_of(grey) if frame_of else None
    if display.changes_pixels:
        image_bytes = encode_png(display.apply(np.asarray(decoded.image)), source.png_level)
        masks = {t: display.apply(m) for t, m in masks.items()}
        kept = {}
    elif decoded.format in KEPT_FORMATS:
        image_bytes = decoded.data  # no pixel changes: the source's own bytes
    else:
        image_bytes = encode_png(decoded.image, source.png_level)  # lossless, for viewers
    height, width = next(iter(masks.values())).shape if masks else shape
    image_id = hashlib.sha256(image_bytes).hexdigest()
    return ExtractedCase(
        case=case,
        source=source,
        image_bytes=image_bytes,
        image_id=image_id,
        width=width,
        height=height,
        targets=analyse_targets(
            masks, *(found or (None, None)), image_id, kept, source.display_names
        ),
    )
