"""Row scores, their summaries (null where a metric has no rows), metrics.json's document,
metrics.md, the plots and the overlays."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from scoring_rows import hand_row

from baselines.scoring.prior import fit_prior
from baselines.scoring.report import (
    PRED_COLOUR,
    TRUE_COLOUR,
    RowScore,
    metrics_document,
    metrics_markdown,
    overlay,
    plot_metrics,
    score_row,
    summarise,
)
from pipeline.qa.templates import FAMILIES

KEYS = [
    "rows",
    "dice",
    "iou",
    "prsmed_mdice",
    "prsmed_miou",
    "answer_accuracy",
    "consistency",
    "negative_fpr",
    "by_question_type",
    "n",
    "ci95",
]


def _row(kind: str, mask: np.ndarray, question: str = "Where is the polyp?") -> dict:
    """A row whose mask is as `datasets` decodes it (mode L, 0/255)."""
    pil = Image.fromarray(mask.astype(np.uint8) * 255, mode="L")
    return hand_row(kind, mask, question, mask=pil, row_id=f"{kind}-{mask.sum()}")


def _block() -> np.ndarray:
    mask = np.zeros((40, 60), dtype=bool)
    mask[4:16, 6:18] = True  # upper left
    return mask


def test_score_row_resizes_and_scores_what_applies() -> None:
    truth = _block()
    half = truth[::2, ::2].astype(np.float32)  # the truth at half the size
    row = _row("position", truth)
    score = score_row(row, half, "The polyp is in the upper left of the image.")
    assert score.has_target and score.dice == pytest.approx(1.0, abs=0.05)
    assert score.prsmed_mdice is not None and score.prsmed_miou is not None
    assert score.answer_correct and score.consistent
    assert score.false_positive is None and score.referring_dice is None
    wrong = score_row(row, np.zeros((7, 7), np.float32), "It is in the center.")
    assert (wrong.dice, wrong.answer_correct, wrong.consistent) == (0.0, False, False)

    negative = _row("negative", np.zeros((40, 60), dtype=bool), "Is there a polyp?")
    clean = score_row(negative, np.zeros((40, 60), np.float32), "No polyp is visible.")
    assert not clean.has_target and clean.false_positive is False and clean.dice is None
    assert clean.answer_correct and clean.consistent is None
    noisy = np.zeros((40, 60), np.float32)
    noisy[:3, :3] = 1.0  # 9 pixels of 2400: above 0.1 %
    assert score_row(negative, noisy, "No.").false_positive is True

    referring = _row("referring", truth, "Segment the polyp in the upper left of the image.")
    score = score_row(referring, truth.astype(np.float32), "anything")
    assert score.referring_dice == 1.0 and score.answer_correct is None
    with pytest.raises(ValueError, match="image's"):
        score_row({**row, "width": 50}, half, "x")
    with pytest.raises(ValueError, match="position-.*rebuild"):  # published without pixels
        score_row({**row, "mask": {"bytes": None, "path": None}}, half, "x")


def _score(
    kind: str, modality: str = "ct", source: str = "s", index: int = 0, **values
) -> RowScore:
    return RowScore(f"{kind}-{modality}-{index}", source, modality, kind, True, **values)


def test_summaries_are_null_for_empty_cells_and_deterministic() -> None:
    scores = [
        _score("position", dice=1.0, iou=1.0, answer_correct=True, consistent=True),
        _score("position", index=1, dice=0.0, iou=0.0, answer_correct=False, consistent=True),
        _score("count", "mri", "t", dice=0.5, iou=0.25, answer_correct=True),
        _score("referring", "mri", "t", dice=0.5, iou=0.25, referring_dice=0.5),
    ]
    summary = summarise(scores, seed=0)
    assert list(summary) == ["overall", "per_modality", "per_source"]
    overall = summary["overall"]
    assert list(overall) == KEYS
    assert overall["rows"] == 4
    assert overall["dice"] == pytest.approx(0.5) and overall["n"]["dice"] == 4
    assert (
        overall["answer_accuracy"] == pytest.approx(2 / 3) and overall["n"]["answer_accuracy"] == 3
    )
    assert overall["consistency"] == 1.0 and overall["ci95"]["consistency"] == [1.0, 1.0]
    assert overall["negative_fpr"] is None and overall["ci95"]["negative_fpr"] is None
    assert overall["n"]["negative_fpr"] == 0
    assert overall["prsmed_mdice"] is None
    types = overall["by_question_type"]
    assert list(types) == list(FAMILIES)
    assert types["position"] == 0.5 and types["count"] == 1.0 and types["referring"] == 0.5
    assert types["negative"] is None and overall["ci95"]["by_question_type"]["negative"] is None
    assert list(summary["per_modality"]) == ["ct", "mri"]
    assert summary["per_modality"]["mri"]["consistency"] is None
    assert summary["per_source"]["t"]["rows"] == 2
    low, high = overall["ci95"]["dice"]
    assert low <= overall["dice"] <= high
    assert json.dumps(summarise(scores, seed=0)) == json.dumps(summary)
    assert summarise([], seed=0)["overall"]["dice"] is None


def test_document_requires_the_same_rows_for_every_system() -> None:
    scores = [_score("count", answer_correct=True), _score("size", answer_correct=False)]
    doc = metrics_document(
        "test", "out/mmrs", "ab" * 32, {"b": (None, scores), "a": ("ck", scores)}, 0
    )
    assert list(doc) == ["split", "dataset", "systems"]
    assert doc["dataset"] == {"folder": "out/mmrs", "manifest_sha256": "ab" * 32}
    assert list(doc["systems"]) == ["b", "a"]  # as given: metrics.md's column order
    assert list(doc["systems"]["a"]) == ["checkpoint", "overall", "per_modality", "per_source"]
    assert doc["systems"]["a"]["checkpoint"] == "ck" and doc["systems"]["b"]["checkpoint"] is None
    with pytest.raises(ValueError, match="'b'"):
        metrics_document("test", "f", "x", {"a": (None, scores), "b": (None, scores[:1])}, 0)


@pytest.fixture(scope="module")
def evaluated(scoring_rows: dict[str, list[dict]]) -> dict:
    """The prior and an oracle (the true mask and answer) scored on the build's test and
    validation rows."""
    prior = fit_prior(scoring_rows["train"])
    rows = scoring_rows["test"] + scoring_rows["validation"]
    systems: dict = {"prior": (None, []), "oracle": ("runs/oracle", [])}
    for row in rows:
        systems["prior"][1].append(score_row(row, *prior.predict(row)))
        truth = (np.asarray(row["mask"]) > 127).astype(np.float32)
        systems["oracle"][1].append(score_row(row, truth, row["answer"]))
    return metrics_document("test", "out/mmrs", "0" * 64, systems, seed=0)


def test_evaluation_of_a_real_build(evaluated: dict, scoring_rows: dict) -> None:
    oracle = evaluated["systems"]["oracle"]["overall"]
    assert oracle["rows"] == len(scoring_rows["test"]) + len(scoring_rows["validation"])
    assert oracle["dice"] == oracle["iou"] == oracle["answer_accuracy"] == 1.0
    assert oracle["consistency"] == 1.0 and oracle["negative_fpr"] == 0.0
    assert 0.99 < oracle["prsmed_mdice"] < 1.0  # threshold 0 keeps the whole image
    prior = evaluated["systems"]["prior"]["overall"]
    assert prior["answer_accuracy"] < 1.0 and prior["n"] == oracle["n"]
    for name in ("prior", "oracle"):
        for cell in evaluated["systems"][name]["per_modality"].values():
            assert list(cell) == KEYS
    text = json.dumps(evaluated, sort_keys=True)
    assert "NaN" not in text and json.loads(text) == evaluated


def test_markdown_puts_systems_side_by_side(evaluated: dict) -> None:
    text = metrics_markdown(evaluated)
    assert text == metrics_markdown(evaluated)
    assert "| | prior | oracle |" in text  # the systems in the order given
    assert "## Overall" in text and "## Per question type" in text and "## Per modality" in text
    for modality in evaluated["systems"]["prior"]["per_modality"]:
        assert f"### {modality}" in text
    assert "referring (mean Dice)" in text
    dice_row = next(line for line in text.splitlines() if line.startswith("| Dice @0.5 |"))
    n = evaluated["systems"]["oracle"]["overall"]["n"]["dice"]
    assert f"1.000 [1.000, 1.000] (n={n})" in dice_row
    assert "n/a" in text  # the empty cells (laterality has no test row, say)


def test_plots_are_written_deterministically(evaluated: dict, tmp_path) -> None:
    first = plot_metrics(evaluated, tmp_path / "one")
    second = plot_metrics(evaluated, tmp_path / "two")
    assert [p.name for p in first] == ["dice_per_modality.png", "answer_accuracy_per_modality.png"]
    for a, b in zip(first, second, strict=True):
        assert a.read_bytes() == b.read_bytes()
        assert Image.open(a).size[0] > 100


def test_overlay_draws_both_contours_and_the_text(tmp_path) -> None:
    image = np.full((40, 60, 3), 90, dtype=np.uint8)
    truth = _block()
    pred = np.zeros_like(truth)
    pred[20:30, 30:50] = True
    path = overlay(
        image, truth, pred, "Where is the polyp?", "In the upper left.", tmp_path / "o.png"
    )
    drawn = np.asarray(Image.open(path).convert("RGB"))
    assert drawn.shape[1] >= 384 and drawn.shape[0] > 40 * drawn.shape[1] // 60  # text below
    colours = {tuple(c) for c in drawn.reshape(-1, 3)}
    assert TRUE_COLOUR in colours and PRED_COLOUR in colours
    again = overlay(
        image, truth, pred, "Where is the polyp?", "In the upper left.", tmp_path / "p.png"
    )
    assert again.read_bytes() == path.read_bytes()
    with pytest.raises(ValueError, match="image's"):
        overlay(image, truth[:10], pred, "q", "a", tmp_path / "bad.png")
