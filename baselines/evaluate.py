"""`mmrs evaluate`: every system on the same rows of one split, scored side by side.

Systems: `prior` (fitted on the train split only), and checkpoints of the baseline, any
preset: one that generates answers is scored on its text; one whose preset renders answers
(`mask-only`) answers through the row's own template from the facts of its predicted mask.
Generation is greedy (deterministic); the metrics are those of baselines/scoring.

Outputs in --out: metrics.json, metrics.md, plots/, overlays/<system>/ (a seeded sample of
rows), scores/<system>.jsonl (one line a row); a checkpoint's folder gets a model card.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from pipeline.qa.templates import load_templates

from .scoring.answers import AnswerFacts, render_answer
from .scoring.metrics import binarise, resize_prob
from .scoring.prior import fit_prior
from .scoring.report import (
    RowScore,
    metrics_document,
    metrics_markdown,
    overlay,
    plot_metrics,
    score_row,
)

PRIOR = "prior"


@dataclass(frozen=True)
class System:
    name: str
    checkpoint: Path | None  # None: the built-in prior


def parse_system(text: str) -> System:
    """`prior` or `NAME=CHECKPOINT`."""
    name, sep, path = text.partition("=")
    if not sep:
        if name == PRIOR:
            return System(PRIOR, None)
        raise ValueError(f"--system {text!r}: give a checkpoint as NAME=CHECKPOINT (or `prior`)")
    if not name or name == PRIOR:
        raise ValueError(f"--system {text!r}: NAME must be set and must not be `prior`")
    checkpoint = Path(path)
    if not (checkpoint / "config.json").is_file():
        raise FileNotFoundError(f"--system {text!r}: {checkpoint} is not a checkpoint folder")
    return System(name, checkpoint)


@dataclass
class Timing:
    rows: int = 0
    seconds: float = 0.0  # predicting and scoring
    scoring: float = 0.0  # of which in the metrics


class _Encoded:
    """Rows as a checkpoint's inputs, plus the row itself without its image (DataLoader
    workers decode and resize; the main process only scores)."""

    def __init__(self, rows, predictor) -> None:
        self.rows, self.predictor = rows, predictor

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[dict, dict]:
        row = self.rows[int(index)]
        item = self.predictor.encode(row.pop("image"), row["question"])
        return item, row


def _score(row: dict, prob, answer: str, timing: Timing) -> RowScore:
    started = time.perf_counter()
    score = score_row(row, prob, answer)
    timing.scoring += time.perf_counter() - started
    return score


def _run_checkpoint(
    system: System, rows, batch_size: int, workers: int, device: str, progress: bool
):
    from torch.utils.data import DataLoader

    from .prs_med.predict import Predictor

    predictor = Predictor(system.checkpoint, device)
    templates = load_templates() if predictor.preset.answers != "generate" else None
    loader = DataLoader(
        _Encoded(rows, predictor),
        batch_size=batch_size,
        collate_fn=list,
        num_workers=workers,
    )
    timing, scores, outputs = Timing(), [], {}
    started = time.perf_counter()
    for batch in tqdm(loader, desc=f"evaluate {system.name}", unit="batch", disable=not progress):
        items, batch_rows = zip(*batch, strict=True)
        for row, prediction in zip(batch_rows, predictor.predict_encoded(items), strict=True):
            answer = prediction.answer
            if answer is None:  # rendered through the row's template from the mask's facts
                mask = binarise(resize_prob(prediction.prob, row["width"], row["height"]))
                facts = AnswerFacts.from_mask(mask, patient_frame=row.get("patient_frame"))
                answer = render_answer(row, facts, templates)
            scores.append(_score(row, prediction.prob, answer, timing))
            outputs[row["row_id"]] = (prediction.prob, answer)
    timing.rows, timing.seconds = len(scores), time.perf_counter() - started
    return predictor.config, scores, outputs, timing


def _run_prior(dataset: Path, rows, progress: bool):
    from .prs_med.data import load_split

    prior = fit_prior(load_split(dataset, "train").remove_columns("image"))
    templates = load_templates()
    timing, scores, outputs = Timing(), [], {}
    started = time.perf_counter()
    for row in tqdm(rows.remove_columns("image"), desc="evaluate prior", disable=not progress):
        prob, answer = prior.predict(row, templates)
        scores.append(_score(row, prob, answer, timing))
        outputs[row["row_id"]] = (prob, answer)
    timing.rows, timing.seconds = len(scores), time.perf_counter() - started
    return prior, scores, outputs, timing


def evaluate(
    dataset: str | Path,
    systems: list[System],
    out: str | Path,
    split: str = "test",
    seed: int = 0,
    batch_size: int = 16,
    workers: int = 2,
    device: str = "auto",
    overlays: int = 12,
    progress: bool = True,
) -> dict[str, Any]:
    """Score every system on the rows of `split`; write the reports into `out`."""
    from .prs_med.data import load_split, manifest_sha256

    if not systems:
        raise ValueError("name at least one --system (prior, or NAME=CHECKPOINT)")
    names = [s.name for s in systems]
    if len(set(names)) != len(names):
        raise ValueError(f"--system names must differ: {names}")
    dataset, out = Path(dataset), Path(out)
    data_hash = manifest_sha256(dataset)
    rows = load_split(dataset, split)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, tuple[str | None, list[RowScore]]] = {}
    outputs: dict[str, dict] = {}
    timings: dict[str, Timing] = {}
    configs: dict[str, dict] = {}
    for system in systems:
        if system.checkpoint is None:
            prior, scores, outputs[system.name], timings[system.name] = _run_prior(
                dataset, rows, progress
            )
            (out / "prior.json").write_text(prior.to_json())
        else:
            configs[system.name], scores, outputs[system.name], timings[system.name] = (
                _run_checkpoint(system, rows, batch_size, workers, device, progress)
            )
        results[system.name] = (str(system.checkpoint) if system.checkpoint else None, scores)
        _write_scores(out / "scores" / f"{system.name}.jsonl", scores)
    document = metrics_document(split, str(dataset), data_hash, results, seed)
    (out / "metrics.json").write_text(json.dumps(document, indent=2) + "\n")
    (out / "metrics.md").write_text(metrics_markdown(document))
    plot_metrics(document, out / "plots")
    _overlays(rows, outputs, out / "overlays", overlays, seed)
    for system in systems:
        if system.checkpoint is not None:
            from .prs_med.card import write_model_card

            write_model_card(system.checkpoint, configs[system.name], document, system.name)
    return {
        "out": str(out),
        "rows": len(rows),
        "timing": {name: asdict(t) for name, t in timings.items()},
        "overall": {
            name: {k: v for k, v in doc["overall"].items() if not isinstance(v, dict)}
            for name, doc in document["systems"].items()
        },
    }


def _write_scores(path: Path, scores: list[RowScore]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        for score in scores:
            handle.write(json.dumps(asdict(score), sort_keys=True) + "\n")


def _overlays(rows, outputs: dict[str, dict], folder: Path, count: int, seed: int) -> None:
    """Overlays of the same seeded sample of rows for every system."""
    picked = sorted(random.Random(seed).sample(range(len(rows)), min(count, len(rows))))
    for index in picked:
        row = rows[index]
        truth = row["mask"]
        for name, predicted in outputs.items():
            prob, answer = predicted[row["row_id"]]
            pred = binarise(resize_prob(prob, row["width"], row["height"]))
            target = folder / name / f"{index:06d}-{row['row_id'][:12]}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            overlay(row["image"], truth, pred, row["question"], answer, target)
