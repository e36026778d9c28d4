"""What a source adapter is and what it finds.

An adapter looks at a data root in its dataset's native layout and yields, in a
deterministic order, one `Case` per image (with its mask files and their meaning) or a
`Problem` for a file it cannot pair (a mask with no image, an image with no mask). It reads
no pixels: that is the converter's job.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import re
import stat
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..geometry.slicing import VolumeSettings
from ..io.display import NO_DISPLAY, Display

MODALITIES = ("ct", "mri", "xray", "ultrasound", "endoscopy", "dermoscopy")
SPLITS = ("train", "validation", "test")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


class LayoutError(ValueError):
    """A data root that does not hold the layout its source expects."""


@dataclass(frozen=True, slots=True)
class MaskFile:
    """One mask file and what it means: a binary mask of `target`, or a label map."""

    path: Path
    target: str | None = None
    # label value (or a tuple of values: a region such as a whole tumour) -> structure
    labels: Mapping[int | tuple[int, ...], str] | None = None

    def __post_init__(self) -> None:
        if (self.target is None) == (self.labels is None):
            raise ValueError(f"{self.path}: a mask file has either a target or labels")


# Slots: a build holds one Case (and its MaskFiles) per discovered image until its batch
# is recorded, so every byte per object counts.
@dataclass(frozen=True, slots=True, weakref_slot=True)
class Case:
    """One image to convert, with everything known about it before reading pixels."""

    source: str
    case_id: str
    patient_id: str
    image: Path
    masks: tuple[MaskFile, ...]
    official_split: str | None = None
    # Targets asked about even when their mask is empty in this image (negative rows).
    targets: tuple[str, ...] = ()
    # Targets whose empty mask is a true negative here (e.g. BUSI "normal"): they give
    # negative rows. An empty mask of any other target is a bad case and is skipped.
    absent_ok: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Problem:
    """A file discovery could not turn into a case; it is reported, never dropped."""

    source: str
    file: Path
    reason: str
    case_id: str | None = None


Discovered = Case | Problem


@dataclass(frozen=True)
class SourceInfo:
    """A registry entry: the single source of truth for CLI choices and the data card."""

    name: str
    modality: str
    target: str
    license: str
    citation: str
    homepage: str
    layout: str
    discover: Callable[[Path], Iterable[Discovered]] = field(repr=False, compare=False)
    redistributable: bool | None = None
    display: Display = NO_DISPLAY
    volume: VolumeSettings | None = None  # set for sources of 3D volumes
    # (source name, text name) of structures the readable-name rules get wrong (qa/names.py)
    display_names: tuple[tuple[str, str], ...] = ()
    # For sources described by the dataset itself (a dataset.json): the source as read
    # from a data root (name, modality, labels, windows); None for fixed sources.
    bind: Callable[[Path], SourceInfo] | None = field(default=None, repr=False, compare=False)
    spec: str | None = field(default=None, repr=False, compare=False)  # a YAML spec's text

    def at(self, data_root: Path) -> SourceInfo:
        """This source for a data root (bound sources read the dataset's description)."""
        return self.bind(data_root) if self.bind is not None else self

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z0-9_]+", self.name):
            raise ValueError(f"source name must match [a-z0-9_]+, got {self.name!r}")
        if self.modality not in MODALITIES:
            raise ValueError(
                f"source {self.name}: modality must be one of {', '.join(MODALITIES)}, "
                f"got {self.modality!r}"
            )


def stem(path: Path | str) -> str:
    """File name without all its extensions ("a.nii.gz" -> "a")."""
    name = path.name if isinstance(path, Path) else Path(path).name
    return name.split(".", 1)[0] if not name.startswith(".") else name


class Files(Sequence[Path]):
    """Files of one folder, sorted by name; each path is made when it is asked for.

    A source's discovery holds its listing until its last case: as names, it costs a
    fraction of what a list of paths would (a path keeps its parsed parts). Entries that
    match but cannot be read as files (a dangling link, a link loop) are kept apart, as
    `unreadable`, for the source to report (`problems`).
    """

    def __init__(
        self, folder: Path, names: Iterable[str], unreadable: Iterable[tuple[str, str]] = ()
    ) -> None:
        self.folder = folder
        self.names = sorted(names)
        self.unreadable = sorted(unreadable)  # (name, why)

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index):  # an int gives a Path, a slice a list of them
        if isinstance(index, slice):
            return [self.folder / name for name in self.names[index]]
        return self.folder / self.names[index]

    def problems(self, source: str) -> Iterator[Problem]:
        """A Problem for each entry that matched but cannot be read as a file."""
        for name, why in self.unreadable:
            yield Problem(source, self.folder / name, why, stem(name))


def _why_unreadable(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "symbolic link loop (following it never reaches a file)"
    if exc.errno == errno.ENOENT:
        return "dangling symbolic link (its target does not exist)"
    return f"cannot be read ({exc.strerror})"


def broken(source: str, path: Path, case_id: str | None) -> Problem | None:
    """A Problem for a path that is there but cannot be read as a file: a dangling link, a
    link loop, a folder (links are followed). None when it is a file, or is not there."""
    try:
        if stat.S_ISREG(os.stat(path).st_mode):
            return None
        why = "not a file"
    except OSError as exc:
        if exc.errno == errno.ENOENT and not os.path.islink(path):
            return None  # simply missing: the source says what it expected
        why = _why_unreadable(exc)
    return Problem(source, path, why, case_id)


def _listed(folder: Path, keep: Callable[[str], bool]) -> Files:
    names, unreadable = [], []
    with os.scandir(folder) as entries:
        for entry in entries:
            if not keep(entry.name):
                continue
            try:
                if entry.is_file():  # follows links; False for a dangling one
                    names.append(entry.name)
                elif entry.is_symlink():
                    os.stat(entry.path)  # a dangling link raises here; a link to a folder not
            except OSError as exc:
                unreadable.append((entry.name, _why_unreadable(exc)))
    return Files(folder, names, unreadable)


def files(folder: Path, pattern: str = "*") -> Files:
    """The files directly in a folder whose names match a glob pattern, sorted by name."""
    return _listed(folder, lambda name: fnmatch.fnmatchcase(name, pattern))


def image_files(folder: Path) -> Files:
    """Image files directly in a folder, sorted by name."""
    return _listed(folder, lambda name: os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES)


def walk(folder: Path) -> Iterator[Path]:
    """Every folder under `folder` (itself first), in name order, following links to
    folders but entering each folder once: a link loop ends where it comes back."""
    seen: set[tuple[int, int]] = set()
    pending = [folder]
    while pending:
        current = pending.pop()
        try:
            info = os.stat(current)
            with os.scandir(current) as entries:
                below = sorted(Path(e.path) for e in entries if _is_dir(e))
        except OSError:
            continue  # a dangling link, a loop, a folder that cannot be listed: nothing in it
        if (info.st_dev, info.st_ino) in seen:
            continue
        seen.add((info.st_dev, info.st_ino))
        yield current
        pending.extend(reversed(below))


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()  # follows links
    except OSError:  # a link loop
        return False


def find_root(data_root: Path, holds: Callable[[Path], bool], expected: str) -> Path:
    """The data root itself, or the one folder below it, that holds the layout.

    Users point at either the dataset folder or the folder they unpacked it into.
    """
    if not data_root.is_dir():
        raise LayoutError(f"data root {data_root} is not a folder (expected {expected})")
    if holds(data_root):
        return data_root
    below = sorted(p for p in data_root.iterdir() if p.is_dir() and holds(p))
    if len(below) == 1:
        return below[0]
    if len(below) > 1:
        names = ", ".join(p.name for p in below)
        raise LayoutError(f"data root {data_root} holds several candidate folders: {names}")
    raise LayoutError(f"data root {data_root} does not hold the expected layout: {expected}")


def pair_by_stem(
    source: str,
    images: Iterable[Path],
    masks: Sequence[Path],
    make_case: Callable[[Path, Path], Case],
    image_key: Callable[[Path], str] = stem,
    mask_key: Callable[[Path], str] = stem,
) -> Iterator[Discovered]:
    """Pair images and masks by key; unpaired files of either side, and listed entries that
    cannot be read as files, become Problems."""
    for listing in (images, masks):
        if isinstance(listing, Files):
            yield from listing.problems(source)
    by_key: dict[str, int] = {}  # key -> the first mask's index (indices: no path is kept)
    for index, mask in enumerate(masks):
        by_key.setdefault(mask_key(mask), index)
    used = bytearray(len(masks))
    for image in images:
        key = image_key(image)
        index = by_key.get(key)
        if index is None:
            yield Problem(source, image, "image has no mask", key)
            continue
        used[index] = True
        yield make_case(image, masks[index])
    for key, index in sorted(by_key.items()):
        if not used[index]:
            yield Problem(source, masks[index], "mask has no image", key)
