"""Turning declared pixel orientations to radiological display."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.io.display import parse_display


def _marked() -> np.ndarray:
    image = np.zeros((4, 6), dtype=np.uint8)
    image[0, 0] = 1  # first row, first column
    return image


@pytest.mark.parametrize(
    ("declared", "plane", "where"),
    [
        ({"right": "left", "down": "posterior"}, "axial", (0, 0)),  # already radiological
        ({"right": "right", "down": "posterior"}, "axial", (0, 5)),  # neurological: flip
        ({"right": "L", "down": "A"}, "axial", (3, 0)),  # upside down
        ({"right": "left", "down": "inferior"}, "coronal", (0, 0)),
        ({"right": "superior", "down": "left"}, "coronal", (5, 0)),  # transposed
        ({"right": "anterior", "down": "inferior"}, "sagittal", (0, 5)),
    ],
)
def test_mapped_display_turns_pixels(declared, plane, where) -> None:
    display = parse_display(declared)
    assert display.plane == plane
    turned = display.apply(_marked())
    assert tuple(int(i) for i in np.argwhere(turned)[0]) == where


def test_transposed_display_swaps_the_shape_of_rgb_images() -> None:
    display = parse_display({"right": "inferior", "down": "right"})
    assert display.apply(np.zeros((4, 6, 3))).shape == (6, 4, 3)


@pytest.mark.parametrize(
    "bad",
    [{"right": "left", "down": "right"}, {"right": "up", "down": "left"}, {"right": "left"}, 3],
)
def test_bad_display_declarations_are_errors(bad) -> None:
    with pytest.raises(ValueError, match="display"):
        parse_display(bad)


def test_none_and_radiological_change_nothing() -> None:
    assert not parse_display("none").knows_patient
    assert parse_display("radiological").knows_patient
    assert not parse_display("radiological").changes_pixels
