"""Dice, IoU, the PRS-Med threshold sweep, the false-positive test, resizing and the
bootstrap, on hand-made masks with known values and against direct NumPy computations."""

from __future__ import annotations

import numpy as np
import pytest

from baselines.scoring.metrics import (
    SWEEP,
    bootstrap_ci,
    dice,
    iou,
    is_false_positive,
    minmax,
    prsmed_scores,
    resize_prob,
)


def _block(shape=(20, 20), rows=slice(5, 15), cols=slice(5, 15)) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[rows, cols] = True
    return mask


def test_known_values() -> None:
    empty = np.zeros((20, 20), dtype=bool)
    truth = _block()  # 10 x 10 = 100 pixels
    assert dice(empty, empty) == iou(empty, empty) == 1.0
    assert dice(empty, truth) == iou(empty, truth) == 0.0
    assert dice(truth, empty) == 0.0
    disjoint = _block(rows=slice(0, 4), cols=slice(0, 4))
    assert dice(disjoint, truth) == iou(disjoint, truth) == 0.0
    nested = _block(rows=slice(7, 12), cols=slice(7, 12))  # 25 pixels inside
    assert dice(nested, truth) == pytest.approx(2 * 25 / 125)
    assert iou(nested, truth) == pytest.approx(25 / 100)
    shifted = _block(cols=slice(6, 16))  # off by one column: 90 shared
    assert dice(shifted, truth) == pytest.approx(180 / 200)
    assert iou(shifted, truth) == pytest.approx(90 / 110)
    assert dice(truth, truth) == iou(truth, truth) == 1.0


def test_against_a_direct_numpy_computation() -> None:
    rng = np.random.default_rng(3)
    for _ in range(20):
        pred, truth = rng.random((2, 17, 23)) > rng.random(2)[:, None, None]
        both = np.logical_and(pred, truth).sum()
        either = np.logical_or(pred, truth).sum()
        if pred.sum() + truth.sum():
            assert dice(pred, truth) == pytest.approx(2 * both / (pred.sum() + truth.sum()))
        if either:
            assert iou(pred, truth) == pytest.approx(both / either)


def test_shapes_must_agree() -> None:
    with pytest.raises(ValueError, match="shape"):
        dice(np.zeros((3, 4), bool), np.zeros((4, 3), bool))


def _sweep_table(prob: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per threshold, the Dice and IoU of `minmax(prob) >= t`: the paper's loop, written out."""
    scaled = minmax(prob)
    dices = [dice(scaled >= t, truth) for t in np.linspace(1, 0, 256)]
    ious = [iou(scaled >= t, truth) for t in np.linspace(1, 0, 256)]
    return np.array(dices), np.array(ious)


def test_sweep_of_a_perfect_binary_map() -> None:
    truth = _block()
    everything = dice(np.ones_like(truth), truth)  # what threshold 0 keeps
    assert SWEEP[0] == 1.0 and SWEEP[-1] == 0.0 and len(SWEEP) == 256
    mdice, miou = prsmed_scores(truth.astype(np.float32), truth)
    assert mdice == pytest.approx((255 + everything) / 256)
    assert miou == pytest.approx((255 + iou(np.ones_like(truth), truth)) / 256)


def test_sweep_of_a_constant_map_keeps_pixels_only_at_threshold_zero() -> None:
    truth = _block()
    mdice, miou = prsmed_scores(np.full(truth.shape, 0.8), truth)
    assert mdice == pytest.approx(dice(np.ones_like(truth), truth) / 256)
    assert miou == pytest.approx(100 / 400 / 256)


def test_sweep_against_the_threshold_loop() -> None:
    rng = np.random.default_rng(7)
    for _ in range(5):
        truth = rng.random((24, 31)) > 0.6
        prob = rng.random((24, 31)) * 0.4 + truth * rng.random() * 0.5
        dices, ious = _sweep_table(prob, truth)
        assert prsmed_scores(prob, truth) == pytest.approx((dices.mean(), ious.mean()))
    # min-max normalisation: an affine change of the map changes nothing
    assert prsmed_scores(3 * prob + 2, truth) == pytest.approx(prsmed_scores(prob, truth))


def test_mean_of_row_means_is_the_papers_mean_of_threshold_means() -> None:
    rng = np.random.default_rng(11)
    rows = [(rng.random((12, 12)), rng.random((12, 12)) > 0.5) for _ in range(4)]
    table = np.array([_sweep_table(prob, truth)[0] for prob, truth in rows])  # rows x thresholds
    papers = table.mean(axis=0).mean()  # per threshold over rows, then over thresholds
    ours = np.mean([prsmed_scores(prob, truth)[0] for prob, truth in rows])
    assert ours == pytest.approx(papers)


def test_false_positive_is_above_a_thousandth_of_the_image() -> None:
    pred = np.zeros((100, 100), dtype=bool)
    pred.flat[:10] = True  # exactly 0.1 %
    assert is_false_positive(pred) is False
    pred.flat[10] = True
    assert is_false_positive(pred) is True
    assert not is_false_positive(np.zeros((5, 5), dtype=bool))


def test_resize_prob_is_bilinear_to_the_image_size() -> None:
    halves = np.array([[0.0, 1.0], [0.0, 1.0]], dtype=np.float32)
    big = resize_prob(halves, width=8, height=6)
    assert big.shape == (6, 8) and big.dtype == np.float32
    assert (big[:, :4] < 0.5).all() and (big[:, 4:] >= 0.5).all()
    assert 0.0 < big[0, 3] < big[0, 4] < 1.0  # interpolated, not nearest
    assert np.allclose(resize_prob(np.full((7, 9), 0.7), 30, 20), 0.7)
    same = np.random.default_rng(0).random((5, 6)).astype(np.float32)
    assert np.array_equal(resize_prob(same, 6, 5), same)
    for bad in (np.full((4, 4), 1.5), np.full((4, 4), np.nan), np.zeros((2, 2, 2))):
        with pytest.raises(ValueError):
            resize_prob(bad, 4, 4)


def test_bootstrap_is_seeded_and_brackets_the_mean() -> None:
    values = np.random.default_rng(5).random(200)
    low, high = bootstrap_ci(values, seed=1)
    assert low < values.mean() < high
    assert bootstrap_ci(values, seed=1) == (low, high)
    assert bootstrap_ci(values, seed=2) != (low, high)
    assert bootstrap_ci([0.25] * 9, seed=0) == (0.25, 0.25)
    assert bootstrap_ci([True, False], seed=0, n_resamples=50)[0] >= 0.0
    with pytest.raises(ValueError):
        bootstrap_ci([], seed=0)
