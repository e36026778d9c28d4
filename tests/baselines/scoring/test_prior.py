"""The prior: fitted on train rows only, from hand-made masks of known geometry and from a
small real build; deterministic, and saved as JSON that loads back to the same prior."""

from __future__ import annotations

import random

import numpy as np
import pytest
from scoring_rows import hand_row

from baselines.scoring.answers import AnswerFacts, score_answer
from baselines.scoring.prior import GRID, Prior, fit_prior


def _mask(rows: slice, cols: slice, shape=(90, 120)) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[rows, cols] = True
    return mask


UPPER_LEFT = _mask(slice(0, 30), slice(0, 40))  # the upper left ninth of the image
LOWER_RIGHT = _mask(slice(60, 90), slice(80, 120))
EMPTY = np.zeros((90, 120), dtype=bool)


def _rows(image: str, mask: np.ndarray, *kinds: str, **columns) -> list[dict]:
    """One image's training rows about the polyp, each with the whole mask."""
    base = {"image_id": image, "split": "train", **columns}
    return [hand_row(k, mask, row_id=f"{image}-{i}", **base) for i, k in enumerate(kinds)]


def _training() -> list[dict]:
    rows = []
    for image in ("a", "b"):
        rows += _rows(image, UPPER_LEFT, "position", "count", "size")
    rows += _rows("c", LOWER_RIGHT, "position", "size")
    rows += _rows("d", EMPTY, "negative", "negative")
    # A referring row's instance mask is not the target's: it must not count.
    rows += _rows("c", UPPER_LEFT, "referring")
    return rows


def test_prior_of_known_masks() -> None:
    prior = fit_prior(_training())
    entry = prior.entries["kvasir_seg", "polyp"]
    assert entry.images == 4  # a, b, c and the empty d; the referring row is not one
    assert entry.present  # three images of four show it
    assert (entry.zone, entry.size, entry.n_components) == (
        "upper left",
        "medium",
        1,
    )  # 1/9 of the image
    assert entry.zones == ("upper left",)
    # Mean of a, b (upper left), c (lower right), d (empty): 0.5 over the upper left ninth.
    expected = np.zeros((GRID, GRID), dtype=bool)
    expected[: GRID // 3, : GRID // 3] = True
    assert np.mean(entry.mask != expected) < 0.01
    mask, answer = prior.predict(_rows("z", LOWER_RIGHT, "position", split="test")[0])
    assert mask.dtype == np.float32 and mask.shape == (GRID, GRID)
    assert set(np.unique(mask)) == {0.0, 1.0}
    assert "upper left" in answer


def test_prior_says_absent_where_most_training_images_lack_the_target() -> None:
    rows = _rows("a", UPPER_LEFT, "position")
    for image in ("d", "e"):
        rows += _rows(image, EMPTY, "negative")
    prior = fit_prior(rows)
    assert not prior.entries["kvasir_seg", "polyp"].present
    row = _rows("z", EMPTY, "negative", split="test", template_id="negative_01")[0]
    mask, answer = prior.predict(row)
    assert not mask.any() and score_answer(row, answer)


def test_only_train_rows_are_read() -> None:
    rows = _training()
    rows[3] = {**rows[3], "split": "validation"}
    with pytest.raises(ValueError, match=rf"{rows[3]['row_id']}.*validation.*train split only"):
        fit_prior(rows)
    with pytest.raises(ValueError, match="test"):
        fit_prior([{**rows[0], "split": "test"}])
    with pytest.raises(ValueError, match=f"{rows[0]['row_id']}.*rebuild"):
        fit_prior([{**rows[0], "mask": None}])


def test_ties_break_the_same_whatever_the_row_order() -> None:
    rows = _rows("a", UPPER_LEFT, "position") + _rows("b", LOWER_RIGHT, "position")
    shuffled = rows[::-1]
    first, second = fit_prior(rows), fit_prior(shuffled)
    assert first.entries == second.entries
    assert first.entries["kvasir_seg", "polyp"].zone == "lower right"  # sorted: "l" < "u"


def test_multiple_choice_falls_back_to_the_most_frequent_letter() -> None:
    options = ["center", "lower right", "upper left", "middle left"]
    rows = _rows("a", UPPER_LEFT, "multiple_choice", options=options)  # letter C
    rows += _rows("b", UPPER_LEFT, "position")
    prior = fit_prior(rows)
    assert prior.entries["kvasir_seg", "polyp"].letter == "C"
    asked = ["center", "lower right", "upper right", "middle left"]  # no upper left
    row = _rows("z", UPPER_LEFT, "multiple_choice", options=asked, split="test")[0]
    assert prior.facts(row).zone == "upper right"  # option C
    assert prior.predict(row)[1].startswith("(C) upper right")


def test_relation_kinds_per_structure_pair() -> None:
    inside = {"target": "liver", "kind": "inside"}
    rows = _rows("a", UPPER_LEFT, "position", "relation", relation=inside)
    rows[0]["relation"] = None
    prior = fit_prior(rows)
    assert prior.relations == {("kvasir_seg", "polyp", "liver"): "inside"}
    row = {**rows[1], "question": "Is the polyp inside the liver?", "split": "test"}
    assert prior.facts(row).relation == "inside"
    assert prior.predict(row)[1].startswith("Yes")


def test_unseen_source_and_target_get_the_pooled_prior() -> None:
    prior = fit_prior(_training())
    row = _rows("z", UPPER_LEFT, "size", source="busi", target="breast tumor", split="test")[0]
    assert prior.facts(row) == AnswerFacts(
        zone="upper left",
        quadrant="upper left",
        size="medium",
        n_components=1,
        zones=("upper left",),
        prsmed_position=prior.pooled.prsmed_position,
        present=True,
    )


def test_json_is_deterministic_and_loads_back(scoring_rows: dict[str, list[dict]]) -> None:
    train = scoring_rows["train"]
    prior = fit_prior(train)
    text = prior.to_json()
    assert fit_prior(train).to_json() == text
    loaded = Prior.from_json(text)
    assert loaded.to_json() == text
    assert loaded.entries == prior.entries and loaded.relations == prior.relations
    for row in scoring_rows["test"] + scoring_rows["validation"]:
        (mask, answer), (again, answer_again) = prior.predict(row), loaded.predict(row)
        assert np.array_equal(mask, again) and answer == answer_again
    with pytest.raises(ValueError):
        fit_prior(scoring_rows["test"])
    order = list(range(len(train)))
    random.Random(0).shuffle(order)
    assert fit_prior([train[i] for i in order]).entries == prior.entries
