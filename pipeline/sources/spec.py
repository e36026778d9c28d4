"""A source for any folder of image/mask pairs, 2D or 3D, described by a YAML spec.

Keys (see README.md, "Adding a dataset"):
  name, modality, target, target_regex, images, masks, patient_id_regex, labels, display,
  license, citation, homepage; and optionally exclude (globs of files that are not images),
  split_regex (named group (?P<split>...) on the image's relative path: train/val/test) and
  negatives (true: an empty mask is a true negative, not a bad case), projection (a
  radiograph's: pa, ap or lateral) and display_names ({structure: name in the text}).
Volumes (images ending .nii, .nii.gz, .nrrd, .nhdr, .mha, .mhd, or a glob ending in "/"
for DICOM series folders) take the same keys, no display (volumes carry their geometry),
and window, slice_axis, slices ({mode, k, stride, min_pixels, negatives}), channel and
slice_gaps (refuse, or allow: a DICOM series with missing slices converts, each reported).
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Iterator
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import yaml

from ..geometry.slicing import SlicePolicy, VolumeError, VolumeSettings, parse_window
from ..io.dicomseg import is_seg, segment_labels
from ..io.display import parse_display, with_projection
from ..io.volumes import VOLUME_SUFFIXES
from .base import Case, Discovered, MaskFile, Problem, SourceInfo, broken, stem

KEYS = {
    "name",
    "modality",
    "target",
    "target_regex",
    "images",
    "masks",
    "patient_id_regex",
    "labels",
    "display",
    "projection",
    "display_names",
    "license",
    "citation",
    "homepage",
    "exclude",
    "split_regex",
    "negatives",
    "redistributable",
    "window",
    "slice_axis",
    "slices",
    "channel",
    "slice_gaps",
}
VOLUME_KEYS = ("window", "slice_axis", "slices", "channel", "slice_gaps")
REQUIRED = ("name", "modality", "images", "masks")
_SPLIT_WORDS = {
    "train": "train",
    "training": "train",
    "tr": "train",
    "val": "validation",
    "valid": "validation",
    "validation": "validation",
    "test": "test",
    "testing": "test",
    "ts": "test",
}
_GLOB_CHARS = re.compile(r"[*?\[]")


class SpecError(ValueError):
    """A YAML spec that cannot describe a source; the message names the file and key."""


def _regex(spec_path: Path, spec: dict, key: str, group: str) -> str | None:
    pattern = spec.get(key)
    if pattern is None:
        return None
    try:
        compiled = re.compile(pattern.replace("{stem}", "x"))
    except re.error as exc:
        raise SpecError(f"{spec_path}: {key} is not a valid regex ({exc})") from exc
    if group not in compiled.groupindex:
        raise SpecError(f"{spec_path}: {key} needs a named group (?P<{group}>...)")
    return pattern


def _labels(spec_path: Path, value: Any) -> dict[int | tuple[int, ...], str] | None:
    """{value: structure}; a region of several values as {structure: [values]}."""
    if value is None:
        return None
    if not isinstance(value, dict) or not value:
        raise SpecError(f"{spec_path}: labels must be a mapping {{value: structure}}")
    labels: dict[int | tuple[int, ...], str] = {}
    try:
        for key, name in value.items():
            if isinstance(name, list):  # a region: structure -> its label values
                labels[tuple(sorted(int(v) for v in name))] = str(key)
            else:
                labels[int(key)] = str(name)
    except (TypeError, ValueError) as exc:
        raise SpecError(
            f"{spec_path}: labels are {{integer: structure}} or {{structure: [integers]}} ({exc})"
        ) from exc
    if any(k == 0 or (isinstance(k, tuple) and 0 in k) for k in labels):
        raise SpecError(f"{spec_path}: labels must not name 0 (background)")
    return labels


def load_spec(spec_path: Path) -> SourceInfo:
    """Read a YAML spec into a SourceInfo whose discover() follows it."""
    try:
        text = spec_path.read_text()
        spec = yaml.safe_load(text)
    except OSError as exc:
        raise SpecError(f"{spec_path}: cannot read spec ({exc.strerror})") from exc
    except yaml.YAMLError as exc:
        raise SpecError(f"{spec_path}: not valid YAML ({exc})") from exc
    if not isinstance(spec, dict):
        raise SpecError(f"{spec_path}: a spec is a YAML mapping of keys")
    unknown = sorted(set(spec) - KEYS)
    if unknown:
        raise SpecError(f"{spec_path}: unknown key(s) {', '.join(unknown)}")
    missing = [key for key in REQUIRED if not spec.get(key)]
    if missing:
        raise SpecError(f"{spec_path}: missing key(s) {', '.join(missing)}")
    labels = _labels(spec_path, spec.get("labels"))
    volume = _volume_settings(spec_path, spec)
    target = spec.get("target")
    target_regex = _regex(spec_path, spec, "target_regex", "target")
    if labels is None and not target and not target_regex and volume is None:
        raise SpecError(f"{spec_path}: give target, target_regex or labels")
    patient_regex = _regex(spec_path, spec, "patient_id_regex", "patient_id")
    split_regex = _regex(spec_path, spec, "split_regex", "split")
    try:
        display = parse_display(spec.get("display", "none"))
        display = with_projection(display, spec.get("projection"))
    except ValueError as exc:
        raise SpecError(f"{spec_path}: {exc}") from exc
    for key in ("display", "projection"):
        if volume is not None and key in spec:
            raise SpecError(f"{spec_path}: {key} is for 2D images; volumes carry their geometry")
    if display.projection is not None and spec["modality"] != "xray":
        raise SpecError(f"{spec_path}: projection is for radiographs (modality xray)")
    display_names = _display_names(spec_path, spec.get("display_names"))
    exclude = spec.get("exclude") or []
    if isinstance(exclude, str):
        exclude = [exclude]
    name = str(spec["name"])
    images_glob, masks_pattern = str(spec["images"]), str(spec["masks"])
    _check_glob(spec_path, "images", images_glob)
    try:  # each placeholder as one folder name: {parent} is checked again per image
        _check_glob(spec_path, "masks", masks_pattern.format(stem="x", name="x", parent="x"))
    except (KeyError, IndexError, ValueError) as exc:
        raise SpecError(
            f"{spec_path}: masks {masks_pattern!r} may use only {{stem}}, {{name}} and "
            f"{{parent}} ({type(exc).__name__}: {exc})"
        ) from exc
    negatives = bool(spec.get("negatives", False))

    def discover(data_root: Path) -> Iterator[Discovered]:
        if not data_root.is_dir():
            raise SpecError(f"data root {data_root} is not a folder (spec {spec_path})")
        want_dirs = volume is not None and images_glob.endswith("/")
        matched = sorted(
            p
            for p in data_root.glob(images_glob.rstrip("/") if want_dirs else images_glob)
            if not any(fnmatch(p.name, pattern) for pattern in exclude)
        )
        images = [p for p in matched if (p.is_dir() if want_dirs else p.is_file())]
        if not images:
            raise SpecError(f"data root {data_root} has no file matching images: {images_glob!r}")
        for path in matched:
            if path.is_symlink() and not path.exists():  # a dangling link or a link loop
                yield broken(name, path, _case_id(data_root, path))
        used: set[Path] = set()  # the masks an image's pattern found, even one it cannot use
        for image in images:
            yield _case(data_root, image, used)
        # Masks the pattern can reach that no image claimed.
        reachable = _glob(
            data_root, _GLOB_CHARS.sub("*", masks_pattern.format(stem="*", name="*", parent="**"))
        )
        for mask in reachable:
            if mask not in used and mask not in images:
                yield Problem(name, mask, "mask has no image", stem(mask))

    def _case(data_root: Path, image: Path, used: set[Path]) -> Discovered:
        """The image's case, or why it is none; the mask files found go into used (an image
        that is a problem reports its masks with it, not as masks without an image)."""
        if image in used:  # an earlier image's mask, which `images` matches too
            reason = "a mask of another image, matched by `images` too (leave it out: exclude)"
            return Problem(name, image, reason, _case_id(data_root, image))
        relative = image.relative_to(data_root)
        parent = relative.parent.as_posix()
        pattern = masks_pattern.format(
            stem=glob.escape(stem(image)),
            name=glob.escape(image.name),
            parent=glob.escape(parent) if parent != "." else ".",
        )
        if _leaves_root(pattern):
            raise SpecError(
                f"{spec_path}: masks {masks_pattern!r} leaves the data root for image "
                f"{relative.as_posix()} (as {pattern!r})"
            )
        masks = [m for m in _glob(data_root, pattern) if m != image]
        used.update(masks)
        case_id = _case_id(data_root, image)
        if not masks:
            return Problem(name, image, f"image has no mask (looked for {pattern!r})", case_id)
        patient = stem(image)
        if patient_regex:
            match = re.search(
                patient_regex.replace("{stem}", re.escape(stem(image))),
                relative.as_posix(),
                re.DOTALL,  # a file name may hold a newline
            )
            if match is None:
                return Problem(
                    name, image, "patient_id_regex does not match the image path", case_id
                )
            patient = match["patient_id"]
        split = None
        if split_regex:
            match = re.search(split_regex, relative.as_posix(), re.DOTALL)
            word = match["split"].lower() if match else None
            split = _SPLIT_WORDS.get(word) if word else None
            if match and split is None:
                return Problem(name, image, f"split_regex matched unknown split {word!r}", case_id)
        files: list[MaskFile] = []
        for mask in masks:
            if labels is not None:
                files.append(MaskFile(mask, labels=labels))
                continue
            if volume is not None and is_seg(mask):  # a DICOM-SEG names its segments
                files.append(MaskFile(mask, labels=segment_labels(mask)))
                continue
            if not (target or target_regex):
                reason = "not a DICOM-SEG, and the spec names no target or labels"
                return Problem(name, mask, reason, case_id)
            mask_target = _target(image, mask)
            if mask_target is None:
                return Problem(name, mask, "target_regex does not match the mask name", case_id)
            files.append(MaskFile(mask, mask_target))
        named: list[str] = []
        for f in files:
            named += [f.target] if f.labels is None else list(f.labels.values())
        targets = tuple(dict.fromkeys(named))
        return Case(
            name,
            case_id,
            patient,
            image,
            tuple(files),
            official_split=split,
            targets=targets,
            absent_ok=targets if negatives or volume is not None else (),
        )

    def _target(image: Path, mask: Path) -> str | None:
        if target_regex:
            pattern = target_regex.replace("{stem}", re.escape(stem(image)))
            match = re.fullmatch(pattern, stem(mask), re.DOTALL) or re.search(
                pattern, stem(mask), re.DOTALL
            )
            if match is None:
                return None
            found = match["target"].replace("_", " ").strip()
            return str(target).format(mask_stem=stem(mask), target=found) if target else found
        return str(target).format(mask_stem=stem(mask))

    return SourceInfo(
        name=name,
        modality=str(spec["modality"]),
        target=str(target or (", ".join(labels.values()) if labels else "from target_regex")),
        license=str(spec.get("license", "unknown")),
        citation=str(spec.get("citation", "")),
        homepage=str(spec.get("homepage", "")),
        layout=f"images: {images_glob}; masks: {masks_pattern}",
        discover=discover,
        redistributable=spec.get("redistributable"),
        display=display,
        volume=volume,
        display_names=display_names,
        spec=text,
    )


def _display_names(spec_path: Path, value: Any) -> tuple[tuple[str, str], ...]:
    """{structure: name in the text} as (structure, name) pairs."""
    if value is None:
        return ()
    if not isinstance(value, dict) or not all(
        isinstance(v, str) and v.strip() for v in value.values()
    ):
        raise SpecError(f"{spec_path}: display_names must map structures to non-empty names")
    return tuple((str(k), v.strip()) for k, v in value.items())


def _volume_settings(spec_path: Path, spec: dict) -> VolumeSettings | None:
    """Volume settings when the spec describes volumes, else None."""
    images = str(spec.get("images", ""))
    is_volume = images.endswith("/") or images.lower().endswith(VOLUME_SUFFIXES)
    given = [key for key in VOLUME_KEYS if key in spec]
    if not is_volume:
        if given:
            raise SpecError(
                f"{spec_path}: {', '.join(given)} apply to volumes only (images ending "
                f"{', '.join(VOLUME_SUFFIXES)}, or a glob ending in / for DICOM folders)"
            )
        return None
    gaps = spec.get("slice_gaps", "refuse")
    if gaps not in ("refuse", "allow"):
        raise SpecError(f"{spec_path}: slice_gaps must be refuse or allow, got {gaps!r}")
    slices = spec.get("slices") or {}
    if not isinstance(slices, dict):
        raise SpecError(f"{spec_path}: slices must be a mapping (mode, k, stride, min_pixels)")
    try:
        window = spec.get("window", "percentile")
        target_windows: tuple = ()
        if isinstance(window, dict):
            default = window.get("default", "percentile")
            target_windows = tuple(
                (str(t), parse_window(w)) for t, w in window.items() if t != "default"
            )
            window = default
        return VolumeSettings(
            slice_axis=str(spec.get("slice_axis", "axial")),
            window=parse_window(window),
            target_windows=target_windows,
            slices=SlicePolicy(**slices),
            channel=spec.get("channel"),
            allow_gaps=gaps == "allow",
        )
    except (VolumeError, TypeError) as exc:
        raise SpecError(f"{spec_path}: {exc}") from exc


def _case_id(data_root: Path, image: Path) -> str:
    """The image's path under the data root without its extensions."""
    return image.relative_to(data_root).with_name(stem(image)).as_posix()


def _check_glob(spec_path: Path, key: str, pattern: str) -> None:
    """Refuse a glob that is absolute or whose '..' can climb above the data root."""
    if os.path.isabs(pattern):
        raise SpecError(
            f"{spec_path}: {key} {pattern!r} is absolute: globs are relative to the data root"
        )
    if _leaves_root(pattern):
        raise SpecError(f"{spec_path}: {key} {pattern!r} leaves the data root ('..' above it)")


def _leaves_root(pattern: str) -> bool:
    """Whether a relative glob can reach above the folder it starts from: a '..' at a
    depth that '**' (which may match no folder at all) cannot guarantee."""
    depth = 0
    for part in pattern.split("/"):
        if part == "..":
            depth -= 1
            if depth < 0:
                return True
        elif part not in ("", ".", "**"):
            depth += 1
    return False


def _glob(root: Path, pattern: str) -> list[Path]:
    """Files under root matching a glob pattern (a plain relative path matches itself);
    never one outside root (the pattern of unclaimed masks may reach there)."""
    base = Path(os.path.normpath(root))
    found = (Path(os.path.normpath(p)) for p in root.glob(pattern) if p.is_file())
    return sorted(p for p in found if p.is_relative_to(base))
