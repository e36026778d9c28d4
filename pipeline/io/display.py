"""How a 2D source's pixels map to the patient, and the turn to radiological display.

A source declares `display` as one of:
- "none": the pixels have no known relation to the patient (endoscopy, dermoscopy, ...);
- "radiological": already in the display convention of DESIGN.md;
- {"right": <patient direction>, "down": <patient direction>}: the patient direction that
  image-right and image-down point to. Such images are turned (transpose and flips only,
  no resampling) to the radiological display of their plane before any fact is computed:
  axial: right = patient's left, down = posterior; coronal: right = patient's left,
  down = inferior; sagittal: right = posterior, down = inferior.

A projection radiograph may also declare its `projection`: "pa" or "ap" (a frontal film:
displayed alike, the patient's left on the image's right, the whole thorax in view: its
plane is coronal) or "lateral". Only a frontal film in a known display gets a patient side
(geometry/patient.radiograph_frame).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

_DIRECTIONS = {
    "left": "left",
    "l": "left",
    "right": "right",
    "r": "right",
    "anterior": "anterior",
    "a": "anterior",
    "posterior": "posterior",
    "p": "posterior",
    "superior": "superior",
    "s": "superior",
    "inferior": "inferior",
    "i": "inferior",
}
_AXIS = {
    "left": "lr",
    "right": "lr",
    "anterior": "ap",
    "posterior": "ap",
    "superior": "si",
    "inferior": "si",
}
# plane -> (image right, image down) in radiological display
RADIOLOGICAL = {
    "axial": ("left", "posterior"),
    "coronal": ("left", "inferior"),
    "sagittal": ("posterior", "inferior"),
}
_PLANES = {
    frozenset(("lr", "ap")): "axial",
    frozenset(("lr", "si")): "coronal",
    frozenset(("ap", "si")): "sagittal",
}


@dataclass(frozen=True)
class Display:
    """A source's display declaration, resolved to a plane and a pixel turn."""

    kind: str  # "none" | "radiological" | "mapped"
    plane: str | None = None
    transpose: bool = False
    flip_lr: bool = False
    flip_ud: bool = False
    projection: str | None = None  # "pa" | "ap" | "lateral" for a projection radiograph

    @property
    def knows_patient(self) -> bool:
        return self.kind != "none"

    @property
    def frontal(self) -> bool:
        """A frontal (PA or AP) projection in a known display: its midline is findable."""
        return self.knows_patient and self.projection in FRONTAL

    @property
    def changes_pixels(self) -> bool:
        return self.transpose or self.flip_lr or self.flip_ud

    def apply(self, pixels: np.ndarray) -> np.ndarray:
        """Turn an array (rows, cols[, channels]) to radiological display."""
        if self.transpose:
            axes = (1, 0) + tuple(range(2, pixels.ndim))
            pixels = pixels.transpose(axes)
        if self.flip_lr:
            pixels = pixels[:, ::-1]
        if self.flip_ud:
            pixels = pixels[::-1, :]
        return np.ascontiguousarray(pixels)

    def describe(self) -> str:
        text = self.kind
        if self.kind == "mapped":
            text = f"{self.plane}, turned to radiological display"
        return f"{text}, {self.projection} projection" if self.projection else text


NO_DISPLAY = Display("none")
FRONTAL = ("pa", "ap")
PROJECTIONS = (*FRONTAL, "lateral")


def _direction(value: object, key: str) -> str:
    name = _DIRECTIONS.get(str(value).strip().lower())
    if name is None:
        raise ValueError(
            f"display.{key}: unknown patient direction {value!r} "
            f"(expected one of left, right, anterior, posterior, superior, inferior)"
        )
    return name


def parse_display(value: object) -> Display:
    """Parse a `display` declaration (see the module docstring)."""
    if value is None or value == "none":
        return NO_DISPLAY
    if value == "radiological":
        return Display("radiological")
    if not isinstance(value, dict) or set(value) != {"right", "down"}:
        raise ValueError(
            f"display must be 'none', 'radiological' or {{right: <direction>, down: "
            f"<direction>}}, got {value!r}"
        )
    right, down = _direction(value["right"], "right"), _direction(value["down"], "down")
    plane = _PLANES.get(frozenset((_AXIS[right], _AXIS[down])))
    if plane is None:
        raise ValueError(f"display: right={right} and down={down} lie on the same axis")
    target_right, target_down = RADIOLOGICAL[plane]
    transpose = _AXIS[right] != _AXIS[target_right]
    if transpose:
        right, down = down, right
    return Display(
        "mapped",
        plane=plane,
        transpose=transpose,
        flip_lr=right != target_right,
        flip_ud=down != target_down,
    )


def with_projection(display: Display, value: object) -> Display:
    """A display with a declared projection (None: none declared). A frontal film's plane is
    coronal; a projection needs a display that knows the patient."""
    if value is None:
        return display
    projection = str(value).strip().lower()
    if projection not in PROJECTIONS:
        raise ValueError(f"projection must be one of {', '.join(PROJECTIONS)}, got {value!r}")
    if not display.knows_patient:
        raise ValueError("projection needs a display (radiological or {right, down})")
    if projection in FRONTAL and display.plane not in (None, "coronal"):
        raise ValueError(f"a {projection} projection is coronal; display gives {display.plane}")
    plane = "coronal" if projection in FRONTAL else display.plane
    return replace(display, plane=plane, projection=projection)
