"""Training: it learns, validates on the validation split only, and resumes exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import baselines.prs_med.train as training
from baselines.prs_med.checkpoint import load_checkpoint
from baselines.prs_med.data import load_split
from baselines.prs_med.predict import Predictor, mask_at
from baselines.prs_med.presets import resolve
from baselines.prs_med.train import TrainConfig, train


def _config(dataset: Path, out: Path, steps: int, **preset) -> TrainConfig:
    settings = {"num_workers": 0, "batch_size": 4, **preset}
    return TrainConfig(
        dataset=dataset,
        out=out,
        preset=resolve("tiny", settings),
        max_steps=steps,
        val_every=3,
        val_rows=8,
        progress=False,
    )


def _dice(pred: np.ndarray, truth: np.ndarray) -> float:
    total = pred.sum() + truth.sum()
    return 1.0 if total == 0 else float(2 * (pred & truth).sum() / total)


@pytest.fixture(scope="module")
def overfit(eight_rows: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("overfit") / "run"
    config = _config(eight_rows, out, 150, batch_size=8, lr=3e-3, warmup_steps=10)
    config.val_every = 150
    train(config)
    return out


def test_the_tiny_model_overfits_eight_rows(overfit: Path, eight_rows: Path) -> None:
    rows = load_split(eight_rows, "train")
    predictor = Predictor(overfit / "last", device="cpu")
    predictions = predictor.predict([r["image"] for r in rows], [r["question"] for r in rows])
    for row, prediction in zip(rows, predictions, strict=True):
        mask = mask_at(prediction.prob, row["width"], row["height"])
        assert _dice(mask, np.asarray(row["mask"]) > 127) >= 0.9, row["question"]
        assert prediction.answer == row["answer"]


def test_a_checkpoint_reloads_to_identical_outputs(overfit: Path, eight_rows: Path) -> None:
    rows = load_split(eight_rows, "train").select(range(3))
    first = Predictor(overfit / "best", device="cpu").predict(
        [r["image"] for r in rows], [r["question"] for r in rows]
    )
    model, _, config = load_checkpoint(overfit / "best")
    second = Predictor(overfit / "best", device="cpu").predict(
        [r["image"] for r in rows], [r["question"] for r in rows]
    )
    for a, b in zip(first, second, strict=True):
        assert np.array_equal(a.prob, b.prob) and a.answer == b.answer
    assert config["dataset"]["manifest_sha256"]
    assert sorted(p.name for p in (overfit / "last").iterdir()) == [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "training_state.pt",
    ]


def test_validation_reads_only_the_validation_split(
    small_build: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[set[str]] = []
    original = training.validate

    def spy(model, loader, accelerator, weight):
        seen.append(set(loader.dataset.rows["split"]))
        return original(model, loader, accelerator, weight)

    monkeypatch.setattr(training, "validate", spy)
    train(_config(small_build, tmp_path / "run", 3))
    assert seen == [{"validation"}]


def test_kill_and_resume_ends_with_the_weights_of_an_uninterrupted_run(
    small_build: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    train(_config(small_build, tmp_path / "whole", 6))

    original = training.save_checkpoint

    def killed_after_saving(folder, *args, **kwargs):
        original(folder, *args, **kwargs)
        if folder.name == "last":
            raise KeyboardInterrupt

    monkeypatch.setattr(training, "save_checkpoint", killed_after_saving)
    with pytest.raises(KeyboardInterrupt):
        train(_config(small_build, tmp_path / "killed", 6))
    monkeypatch.setattr(training, "save_checkpoint", original)
    config = _config(small_build, tmp_path / "killed", 6)
    config.resume = True
    summary = train(config)
    assert summary["steps"] == 6
    whole = load_file(tmp_path / "whole" / "last" / "model.safetensors")
    resumed = load_file(tmp_path / "killed" / "last" / "model.safetensors")
    assert whole.keys() == resumed.keys()
    for name, tensor in whole.items():
        assert torch.equal(tensor, resumed[name]), name
    logged = [line for line in (tmp_path / "killed" / "log.jsonl").read_text().splitlines()]
    assert len(logged) == len((tmp_path / "whole" / "log.jsonl").read_text().splitlines())


def test_a_run_folder_is_never_overwritten_and_resume_needs_a_run(
    small_build: Path, tmp_path: Path
) -> None:
    config = _config(small_build, tmp_path / "run", 3)
    config.resume = True
    with pytest.raises(FileNotFoundError, match="no training state"):
        train(config)
    train(_config(small_build, tmp_path / "run", 3))
    with pytest.raises(ValueError, match="already holds a run"):
        train(_config(small_build, tmp_path / "run", 3))


def test_rows_published_without_pixels_are_refused_with_how_to_rebuild(
    small_build: Path, tmp_path: Path
) -> None:
    import shutil

    from pipeline.release.publish import strip_pixels

    copy = tmp_path / "published"
    shutil.copytree(small_build, copy)
    shard = sorted((copy / "data").glob("train-*.parquet"))[0]
    strip_pixels(shard, tmp_path / "stripped.parquet")
    shutil.move(tmp_path / "stripped.parquet", shard)
    with pytest.raises(ValueError, match="no pixels.*REBUILD.md"):
        train(_config(copy, tmp_path / "run", 3))
