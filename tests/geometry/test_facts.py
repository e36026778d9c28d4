"""Spatial facts against DESIGN.md's contract vectors and hand-built masks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.geometry import facts
from pipeline.geometry.facts import (
    analyse,
    compute_facts,
    prsmed_label,
    quadrant_of,
    size_word,
    zone_of,
)


def _mask(shape: tuple[int, int], pixels: list[tuple[int, int]]) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    for row, col in pixels:
        mask[row, col] = True
    return mask


def test_contract_vectors_synthetic(shared) -> None:
    vectors = json.loads((shared / "contract_vectors.json").read_text())["synthetic"]
    assert vectors
    for vector in vectors:
        found = compute_facts(_mask(tuple(vector["shape"]), vector["foreground_rc"]))
        assert found.centroid == pytest.approx(vector["centroid"], abs=1e-6), vector["name"]
        assert found.bbox == pytest.approx(vector["bbox"], abs=1e-6), vector["name"]
        assert found.area_fraction == pytest.approx(vector["area_fraction"], abs=1e-6)
        assert found.quadrant == vector["quadrant"], vector["name"]
        assert found.zone == vector["zone"], vector["name"]


@pytest.mark.parametrize(
    ("x", "y", "zone", "quadrant"),
    [
        (0.5, 0.5, "center", "lower right"),
        (1 / 3, 1 / 3, "center", "upper left"),
        (1 / 3 - 1e-9, 0.1, "upper left", "upper left"),
        (2 / 3, 2 / 3, "lower right", "lower right"),
        (0.9, 0.5, "middle right", "lower right"),
        (0.5, 0.9, "lower center", "lower right"),
        (0.49, 0.49, "center", "upper left"),
    ],
)
def test_zone_and_quadrant_ties_go_right_and_lower(x, y, zone, quadrant) -> None:
    assert zone_of(x, y) == zone
    assert quadrant_of(x, y) == quadrant


def test_empty_mask_has_only_null_positions() -> None:
    found = compute_facts(np.zeros((8, 8), dtype=bool))
    assert not found.present
    assert found.n_components == 0 and found.components == ()
    assert found.centroid is None and found.bbox is None
    assert found.zone is None and found.quadrant is None and found.size is None
    assert found.prsmed_position is None and found.area_fraction == 0.0


def test_components_are_eight_connected_and_ordered_by_area() -> None:
    mask = np.zeros((20, 20), dtype=bool)
    mask[2:4, 2:4] = True  # 4 px, upper left
    mask[4, 4] = True  # touches the first block diagonally: same component
    mask[10:18, 10:18] = True  # 64 px, lower right
    found, instances = analyse(mask)
    assert found.n_components == 2
    assert [c.area_fraction for c in found.components] == [64 / 400, 5 / 400]
    assert found.components[0].zone == "lower right"
    assert found.components[1].zone == "upper left"
    assert [int(i.full().sum()) for i in instances] == [64, 5]


def test_rows_of_one_run_that_do_not_touch_are_two_components() -> None:
    mask = np.zeros((6, 8), dtype=bool)
    mask[1, 0:2] = True  # columns 0-1
    mask[2, 3:5] = True  # columns 3-4: one column apart, not even diagonal neighbours
    assert not facts._one_run_per_row(mask[1:3, 0:5])
    assert compute_facts(mask).n_components == 2


def test_rows_of_one_run_touching_diagonally_are_one_component() -> None:
    mask = np.zeros((6, 8), dtype=bool)
    for row in range(5):
        mask[row, row : row + 1] = True  # a diagonal staircase
    assert facts._one_run_per_row(mask[0:5, 0:5])
    assert compute_facts(mask).n_components == 1


def _random_mask(rng: np.random.Generator) -> np.ndarray:
    """Ellipses, rings and specks: convex targets, holes, concave and separate parts."""
    height, width = rng.integers(4, 40, size=2)
    rows, cols = np.mgrid[:height, :width]
    mask = np.zeros((height, width), dtype=bool)
    for _ in range(rng.integers(1, 4)):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        ry, rx = rng.uniform(0.5, height / 2), rng.uniform(0.5, width / 2)
        inside = ((rows - cy) / ry) ** 2 + ((cols - cx) / rx) ** 2
        mask |= (inside <= 1) & (inside >= rng.choice([0.0, 0.4]))
    mask |= rng.random((height, width)) < rng.choice([0.0, 0.01])
    return mask


def test_instances_match_labelling_on_random_masks(monkeypatch) -> None:
    rng = np.random.default_rng(7)
    masks = [_random_mask(rng) for _ in range(400)]
    proofs = []
    one_run_per_row = facts._one_run_per_row

    def recorded(crop: np.ndarray) -> bool:
        proofs.append(one_run_per_row(crop))
        return proofs[-1]

    monkeypatch.setattr(facts, "_one_run_per_row", recorded)
    quick = [analyse(mask) for mask in masks]
    assert 0 < sum(proofs) < len(proofs)  # both ways were taken
    monkeypatch.setattr(facts, "_one_run_per_row", lambda crop: False)  # always label
    for mask, (found, instances) in zip(masks, quick, strict=True):
        labelled, labelled_instances = analyse(mask)
        assert found == labelled
        assert len(instances) == len(labelled_instances)
        for one, other in zip(instances, labelled_instances, strict=True):
            assert np.array_equal(one.full(), other.full())


def test_specks_below_minimum_are_not_instances(monkeypatch) -> None:
    monkeypatch.setattr(facts, "MIN_COMPONENT_FRACTION", 0.01)  # 4 px of 400
    mask = np.zeros((20, 20), dtype=bool)
    mask[5:10, 5:10] = True
    mask[18, 18] = True  # a 1-pixel speck
    found = compute_facts(mask)
    assert found.n_components == 1
    assert found.area_fraction == 26 / 400  # the speck stays in the area


def test_mask_of_only_specks_keeps_its_largest() -> None:
    mask = np.zeros((200, 200), dtype=bool)  # minimum is 4 px here
    mask[0, 0] = mask[100, 100] = True
    mask[50, 50:52] = True
    found = compute_facts(mask)
    assert found.n_components == 1
    assert found.components[0].area_fraction == 2 / 40000


def test_equal_components_are_ordered_by_first_pixel() -> None:
    mask = np.zeros((10, 10), dtype=bool)
    mask[8, 1] = True
    mask[1, 8] = True
    found = compute_facts(mask)
    assert [c.zone for c in found.components] == ["upper right", "lower left"]


@pytest.mark.parametrize(
    ("fraction", "word"),
    [(0.0, "tiny"), (0.0099, "tiny"), (0.01, "small"), (0.05, "medium"), (0.15, "large")],
)
def test_size_words(fraction, word) -> None:
    assert size_word(fraction) == word


def test_prsmed_label_box_crossing_centre_is_center() -> None:
    mask = np.zeros((10, 10), dtype=bool)
    mask[1:6, 1:6] = True  # box rows/cols 1..5 contains centre (5, 5)
    assert prsmed_label(mask) == ("center", True)


def test_prsmed_label_quadrants_and_near_flag() -> None:
    mask = np.zeros((100, 100), dtype=bool)
    mask[5:10, 80:90] = True  # box middle (84, 7): top right, far from (50, 50)
    assert prsmed_label(mask) == ("top right", False)
    mask = np.zeros((100, 100), dtype=bool)
    mask[52:60, 40:48] = True  # box middle (44, 56): bottom left, 8.5 px from centre
    assert prsmed_label(mask) == ("bottom left", True)


def test_prsmed_differs_from_zone_where_the_paper_rule_does() -> None:
    # A long thin mask crossing the centre: PRS-Med says "center"; the centroid zone is
    # where most of its pixels are.
    mask = np.zeros((90, 90), dtype=bool)
    mask[44:46, 10:50] = True
    mask[10:40, 10:20] = True
    found = compute_facts(mask)
    assert found.prsmed_position == "center"
    assert found.zone == "upper left"  # centroid (0.20, 0.32) by hand
