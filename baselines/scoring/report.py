"""Scores of rows, their summaries per cell (overall, per modality, per source), and the
reports: metrics.json's document, metrics.md's tables, the plots and the overlays.

Every summary value is a mean over the rows the metric applies to, with that number of
rows (`n`) and a seeded 95 % bootstrap interval (`ci95`); a metric with no rows is null,
never 0. `answer_accuracy` covers every question type but referring, whose
`by_question_type["referring"]` is the mean Dice of the instance mask (the row's mask).
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no screen: render to files only
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image, ImageDraw, ImageFont  # noqa: E402

from pipeline.io.images import as_rgb  # noqa: E402
from pipeline.qa.templates import FAMILIES  # noqa: E402

from .answers import Row, as_mask, consistent, row_mask, score_answer  # noqa: E402
from .metrics import (  # noqa: E402
    binarise,
    bootstrap_ci,
    dice,
    iou,
    is_false_positive,
    prsmed_scores,
    resize_prob,
)

# The metrics of a cell, in report order, with their labels.
METRICS: dict[str, str] = {
    "dice": "Dice @0.5",
    "iou": "IoU @0.5",
    "prsmed_mdice": "PRS-Med mDice",
    "prsmed_miou": "PRS-Med mIoU",
    "answer_accuracy": "answer accuracy",
    "consistency": "consistency",
    "negative_fpr": "negative FPR",
}


@dataclass(frozen=True)
class RowScore:
    """One row's scores under one system; None where a score does not apply.

    dice, iou, prsmed_*: rows with a target; false_positive: rows without one;
    answer_correct: every question type but referring; referring_dice: referring rows;
    consistent: position rows (the answer's zones against the system's own mask).
    """

    row_id: str
    source: str
    modality: str
    question_type: str
    has_target: bool
    dice: float | None = None
    iou: float | None = None
    prsmed_mdice: float | None = None
    prsmed_miou: float | None = None
    answer_correct: bool | None = None
    referring_dice: float | None = None
    consistent: bool | None = None
    false_positive: bool | None = None


def score_row(row: Row, prob_map: np.ndarray, answer: str) -> RowScore:
    """Score a system's probability map (any size, values in [0, 1]) and answer for a row.

    The map is resized bilinearly to the image's own size (`width` x `height`) and
    thresholded at 0.5 for Dice, IoU, the false-positive test and consistency; the PRS-Med
    sweep reads the resized map itself.
    """
    truth = row_mask(row)
    width, height = row["width"], row["height"]
    if truth.shape != (height, width):
        raise ValueError(
            f"row {row['row_id']!r}: mask {truth.shape[::-1]} is not the image's {width}x{height}"
        )
    prob = resize_prob(prob_map, width, height)
    pred = binarise(prob)
    kind = row["question_type"]
    has_target = bool(truth.any())
    scores: dict[str, Any] = {}
    if has_target:
        scores["dice"], scores["iou"] = dice(pred, truth), iou(pred, truth)
        scores["prsmed_mdice"], scores["prsmed_miou"] = prsmed_scores(prob, truth)
    else:
        scores["false_positive"] = is_false_positive(pred)
    if kind == "referring":
        scores["referring_dice"] = dice(pred, truth)
    else:
        scores["answer_correct"] = score_answer(row, answer)
    if kind == "position":
        scores["consistent"] = consistent(answer, pred, row["target"], row.get("target_name"))
    return RowScore(
        row_id=row["row_id"],
        source=row["source"],
        modality=row["modality"],
        question_type=kind,
        has_target=has_target,
        **scores,
    )


# --- summaries -----------------------------------------------------------------------

_VALUES: dict[str, Callable[[RowScore], float | bool | None]] = {
    "dice": lambda s: s.dice,
    "iou": lambda s: s.iou,
    "prsmed_mdice": lambda s: s.prsmed_mdice,
    "prsmed_miou": lambda s: s.prsmed_miou,
    "answer_accuracy": lambda s: s.answer_correct,
    "consistency": lambda s: s.consistent,
    "negative_fpr": lambda s: s.false_positive,
}


def _type_value(score: RowScore) -> float | bool | None:
    return score.referring_dice if score.question_type == "referring" else score.answer_correct


def _stat(values: list[float], seed: int) -> tuple[float | None, int, list[float] | None]:
    """(mean, n, [lo, hi]) of a metric's values; (None, 0, None) without any."""
    if not values:
        return None, 0, None
    return float(np.mean(values)), len(values), list(bootstrap_ci(values, seed))


def _cell(scores: Sequence[RowScore], seed: int) -> dict[str, Any]:
    """One cell's summary (the keys of metrics.json, in a fixed order)."""
    columns: dict[str, list[float]] = {
        name: [float(v) for s in scores if (v := get(s)) is not None]
        for name, get in _VALUES.items()
    }
    types = list(FAMILIES) + sorted({s.question_type for s in scores} - set(FAMILIES))
    by_type: dict[str, list[float]] = {kind: [] for kind in types}
    for score in scores:
        if (value := _type_value(score)) is not None:
            by_type[score.question_type].append(float(value))
    cell: dict[str, Any] = {"rows": len(scores)}
    n: dict[str, Any] = {}
    ci95: dict[str, Any] = {}
    for name, values in columns.items():
        cell[name], n[name], ci95[name] = _stat(values, seed)
    cell["by_question_type"], n["by_question_type"], ci95["by_question_type"] = {}, {}, {}
    for kind, values in by_type.items():
        stat = _stat(values, seed)
        cell["by_question_type"][kind] = stat[0]
        n["by_question_type"][kind] = stat[1]
        ci95["by_question_type"][kind] = stat[2]
    cell["n"], cell["ci95"] = n, ci95
    return cell


def _grouped(scores: Sequence[RowScore], key: Callable[[RowScore], str], seed: int) -> dict:
    groups: dict[str, list[RowScore]] = {}
    for score in scores:
        groups.setdefault(key(score), []).append(score)
    return {name: _cell(groups[name], seed) for name in sorted(groups)}


def summarise(scores: Iterable[RowScore], seed: int) -> dict[str, Any]:
    """{"overall", "per_modality", "per_source"} summaries of a system's row scores.

    Each cell: rows, dice, iou, prsmed_mdice, prsmed_miou, answer_accuracy, consistency,
    negative_fpr, by_question_type {type: value} (every question type; referring: mean
    Dice), n {metric: rows counted} and ci95 {metric: [lo, hi]} (by_question_type nested
    alike). Null where a metric has no rows. Intervals: `metrics.bootstrap_ci` with `seed`.
    """
    scores = list(scores)
    return {
        "overall": _cell(scores, seed),
        "per_modality": _grouped(scores, lambda s: s.modality, seed),
        "per_source": _grouped(scores, lambda s: s.source, seed),
    }


def metrics_document(
    split: str,
    folder: str | Path,
    manifest_sha256: str,
    systems: Mapping[str, tuple[str | Path | None, Sequence[RowScore]]],
    seed: int,
) -> dict[str, Any]:
    """metrics.json's document: every system's summaries on the same rows.

    `systems` maps a name to (its checkpoint or None, its row scores); every system must
    have scored exactly the same rows (a ValueError names the first that did not). Systems
    keep the order given (metrics.md's columns); every other key is in a fixed order and
    every value plain JSON, so the document is identical for the same inputs and seed.
    """
    expected: list[str] | None = None
    documents: dict[str, Any] = {}
    for name, (checkpoint, scores) in systems.items():
        ids = sorted(s.row_id for s in scores)
        if expected is None:
            expected = ids
        elif ids != expected:
            raise ValueError(f"system {name!r} was scored on other rows than the others")
        documents[name] = {
            "checkpoint": None if checkpoint is None else str(checkpoint),
            **summarise(scores, seed),
        }
    return {
        "split": split,
        "dataset": {"folder": str(folder), "manifest_sha256": manifest_sha256},
        "systems": documents,
    }


# --- metrics.md ----------------------------------------------------------------------


def _format(value: float | None, n: int, ci: list[float] | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}] (n={n})"


def _table(
    doc: Mapping[str, Any], labels: dict[str, str], pick: Callable[[dict], dict | None]
) -> list[str]:
    """A markdown table: one row per label, one column per system; pick(system) gives the
    system's cell (None where it has no such cell)."""
    names = list(doc["systems"])
    lines = ["| | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for key, label in labels.items():
        cells = []
        for name in names:
            cell = pick(doc["systems"][name])
            if cell is None:
                cells.append("n/a")
            elif key == "rows":
                cells.append(str(cell["rows"]))
            elif key in METRICS:
                cells.append(_format(cell[key], cell["n"][key], cell["ci95"][key]))
            else:
                cells.append(
                    _format(
                        cell["by_question_type"][key],
                        cell["n"]["by_question_type"][key],
                        cell["ci95"]["by_question_type"][key],
                    )
                )
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def metrics_markdown(doc: Mapping[str, Any]) -> str:
    """metrics.md: the summaries side by side, one column per system.

    Tables: overall; per question type (overall); per modality; per source. Each value
    is "mean [95 % interval] (n=rows)", or n/a where the metric has no rows.
    """
    systems = doc["systems"]
    types = {
        kind: "referring (mean Dice)" if kind == "referring" else kind
        for cell in (s["overall"] for s in systems.values())
        for kind in cell["by_question_type"]
    }
    overall = {"rows": "rows", **METRICS}
    lines = [
        f"# Evaluation on the {doc['split']} split",
        "",
        f"Dataset: `{doc['dataset']['folder']}` (manifest SHA-256 "
        f"`{doc['dataset']['manifest_sha256']}`).",
        "",
        "Each value: mean [95 % bootstrap interval] (n = rows counted). Dice, IoU and the "
        "PRS-Med mDice/mIoU (mean over 256 thresholds of a min-max-normalised map) on rows "
        "with a target; negative FPR on rows without one (prediction above 0.1 % of the "
        "image); answer accuracy over every question type but referring, which is scored by "
        "the Dice of its instance mask; consistency: on position rows, the answer's zones "
        "equal those of the system's own mask.",
        "",
        "## Overall",
        "",
        *_table(doc, overall, lambda s: s["overall"]),
        "",
        "## Per question type",
        "",
        *_table(doc, types, lambda s: s["overall"]),
    ]
    for section, key in (("Per modality", "per_modality"), ("Per source", "per_source")):
        lines += ["", f"## {section}"]
        for group in sorted({g for s in systems.values() for g in s[key]}):
            lines += ["", f"### {group}", ""]
            lines += _table(doc, overall, lambda s, group=group, key=key: s[key].get(group))
    return "\n".join(lines) + "\n"


# --- plots and overlays --------------------------------------------------------------


def _bars(
    cells: Mapping[str, Any], groups: list[str], metric: str
) -> tuple[list[float], list[list[float]]]:
    """Bar heights (NaN where null) and their [below, above] interval lengths."""
    means, below, above = [], [], []
    for group in groups:
        cell = cells.get(group)
        value = None if cell is None else cell[metric]
        low, high = (value, value) if value is None else cell["ci95"][metric]
        means.append(math.nan if value is None else value)
        below.append(0.0 if value is None else max(0.0, value - low))
        above.append(0.0 if value is None else max(0.0, high - value))
    return means, [below, above]


def plot_metrics(doc: Mapping[str, Any], out_dir: str | Path) -> list[Path]:
    """Bar charts of Dice @0.5 and answer accuracy per modality and system, with their
    95 % intervals; n/a where a metric has no rows. Returns the PNGs written (their bytes
    depend only on the document: no software or date metadata)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    systems = doc["systems"]
    modalities = sorted({m for s in systems.values() for m in s["per_modality"]})
    written = []
    for metric in ("dice", "answer_accuracy"):
        figure, axis = plt.subplots(figsize=(1.2 + 1.1 * max(1, len(modalities)), 3.6))
        width = 0.8 / max(1, len(systems))
        for index, name in enumerate(systems):
            means, errors = _bars(systems[name]["per_modality"], modalities, metric)
            x = np.arange(len(modalities)) + (index - (len(systems) - 1) / 2) * width
            axis.bar(x, np.nan_to_num(means), width, yerr=errors, capsize=2, label=name)
            for xi, value in zip(x, means, strict=True):
                if math.isnan(value):
                    axis.text(xi, 0.02, "n/a", ha="center", va="bottom", fontsize=7, rotation=90)
        axis.set_xticks(range(len(modalities)), modalities)
        axis.set_ylim(0, 1)
        axis.set_ylabel(METRICS[metric])
        axis.set_title(f"{METRICS[metric]} per modality ({doc['split']})")
        axis.legend(fontsize=8)
        path = out / f"{metric}_per_modality.png"
        figure.savefig(path, dpi=100, bbox_inches="tight", metadata={"Software": None})
        plt.close(figure)
        written.append(path)
    return written


TRUE_COLOUR = (0, 230, 0)  # the true mask's contour
PRED_COLOUR = (255, 0, 255)  # the predicted mask's contour
OVERLAY_MIN_WIDTH = 384  # small images are enlarged (nearest) to at least this width


def _edge(mask: np.ndarray, width: int = 2) -> np.ndarray:
    """The mask's pixels within `width` 4-neighbour steps of its outside (the image's
    border counts as outside)."""
    edge = np.zeros_like(mask)
    for _ in range(width):
        rest = mask & ~edge
        padded = np.pad(rest, 1)
        inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
        edge |= rest & ~inner
    return edge


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=13)  # Pillow >= 10.1 with FreeType
    except (TypeError, ImportError):
        return ImageFont.load_default()


def overlay(
    image: Image.Image | np.ndarray,
    true_mask: Any,
    pred_mask: Any,
    question: str,
    answer: str,
    path: str | Path,
) -> Path:
    """Write a PNG: the image with the true (green, drawn just inside the true mask) and
    predicted (magenta, just outside the predicted mask) contours, and the question and
    answer below it. Masks are boolean (or 0/255) at the image's size; images narrower
    than OVERLAY_MIN_WIDTH are enlarged by a whole factor (nearest)."""
    picture = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    picture = as_rgb(picture)
    scale = max(1, math.ceil(OVERLAY_MIN_WIDTH / picture.width))
    size = (picture.width * scale, picture.height * scale)
    canvas = np.array(picture.resize(size, Image.Resampling.NEAREST))
    masks = []
    for mask in (true_mask, pred_mask):
        mask = as_mask(mask)
        if mask.shape != (picture.height, picture.width):
            raise ValueError(f"mask {mask.shape[::-1]} is not the image's {picture.size}")
        masks.append(mask.repeat(scale, axis=0).repeat(scale, axis=1))
    # The truth's contour just inside it, the prediction's just outside: both stay visible
    # where they coincide.
    canvas[_edge(masks[0])] = TRUE_COLOUR
    canvas[_edge(~masks[1]) & ~_edge(np.ones_like(masks[1]))] = PRED_COLOUR
    font = _font()
    chars = max(20, size[0] // 7)
    text = [
        *textwrap.wrap(f"Q: {question}", chars),
        *textwrap.wrap(f"A: {answer}", chars),
        "green: truth   magenta: prediction",
    ]
    line = 17
    sheet = Image.new("RGB", (size[0], size[1] + line * len(text) + 8), "white")
    sheet.paste(Image.fromarray(canvas), (0, 0))
    draw = ImageDraw.Draw(sheet)
    for index, words in enumerate(text):
        draw.text((4, size[1] + 4 + line * index), words, fill="black", font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, format="PNG")
    return path
