"""`mmrs train`, `predict`, `evaluate` and `publish` of a checkpoint, end to end; the flows."""

from __future__ import annotations

import json
from pathlib import Path

import huggingface_hub
import pytest

from pipeline.cli import main

METRIC_KEYS = {
    "rows", "dice", "iou", "prsmed_mdice", "prsmed_miou", "answer_accuracy", "consistency",
    "negative_fpr", "by_question_type",
}  # fmt: skip


@pytest.fixture(scope="module")
def runs(small_build: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    for preset in ("tiny", "mask-only"):
        code = main(
            ["train", str(small_build), "--preset", preset, "--out", str(root / preset),
             "--max-steps", "3", "--batch-size", "4", "--num-workers", "0", "--val-rows", "8",
             "-q"]
        )  # fmt: skip
        assert code == 0
    return {preset: root / preset / "best" for preset in ("tiny", "mask-only")}


def test_predict_prints_an_answer_and_writes_the_mask_at_the_image_size(
    runs: dict[str, Path], small_build: Path, tmp_path: Path, capsys
) -> None:
    from PIL import Image

    image = next((small_build.parent / "Kvasir-SEG" / "images").iterdir())
    code = main(
        ["predict", str(runs["tiny"]), str(image), "--question", "Where is the polyp?",
         "--out", str(tmp_path)]
    )  # fmt: skip
    assert code == 0
    assert capsys.readouterr().out.endswith("\n")  # the answer (3 steps may give an empty one)
    with Image.open(image) as original, Image.open(tmp_path / f"{image.stem}_mask.png") as mask:
        assert mask.size == original.size and mask.mode == "L"
    assert (tmp_path / f"{image.stem}_overlay.png").is_file()
    # a preset without generation answers from its own mask's facts
    assert main(["predict", str(runs["mask-only"]), str(image), "--question", "Where?"]) == 0
    said = capsys.readouterr().out
    assert said.startswith("The target is in the ") or said.startswith("No target")


def test_predict_names_an_image_it_cannot_read(
    runs: dict[str, Path], small_build: Path, tmp_path: Path, capsys
) -> None:
    image = next((small_build.parent / "Kvasir-SEG" / "images").iterdir())
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(image.read_bytes()[: image.stat().st_size // 2])
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"not an image")
    for path, reason in ((cut, "cannot read the image"), (garbage, "not an image format")):
        code = main(["predict", str(runs["tiny"]), str(path), "--question", "Where?"])
        assert code == 2
        assert capsys.readouterr().err.startswith(f"mmrs: error: {path}: {reason}")


def test_evaluate_scores_every_system_on_the_same_rows(
    runs: dict[str, Path], small_build: Path, tmp_path: Path
) -> None:
    args = ["evaluate", str(small_build), "--system", "prior",
            "--system", f"tiny={runs['tiny']}", "--system", f"mask-only={runs['mask-only']}",
            "--num-workers", "0", "--overlays", "3", "-q"]  # fmt: skip
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    first = (tmp_path / "a" / "metrics.json").read_text()
    assert first == (tmp_path / "b" / "metrics.json").read_text()
    metrics = json.loads(first)
    assert metrics["split"] == "test"
    assert list(metrics["systems"]) == ["prior", "tiny", "mask-only"]
    rows = None
    for name, system in metrics["systems"].items():
        assert METRIC_KEYS <= set(system["overall"])
        assert set(system["per_modality"]) == {"endoscopy", "ultrasound"}
        assert set(system["per_source"]) == {"kvasir_seg", "busi"}
        rows = rows or system["overall"]["rows"]
        assert system["overall"]["rows"] == rows
        assert (system["checkpoint"] is None) == (name == "prior")
    # mask-only answers come from its own mask: consistent by construction
    assert metrics["systems"]["mask-only"]["overall"]["consistency"] in (None, 1.0)
    out = tmp_path / "a"
    assert "| prior | tiny | mask-only |" in (out / "metrics.md").read_text()
    assert len(list((out / "overlays" / "tiny").glob("*.png"))) == 3
    assert sorted(p.name for p in (out / "scores").iterdir()) == [
        "mask-only.jsonl", "prior.jsonl", "tiny.jsonl",
    ]  # fmt: skip
    assert list((out / "plots").glob("*.png"))
    card = (runs["tiny"] / "README.md").read_text()
    assert "apache-2.0" in card and "| metric | prior | tiny | mask-only |" in card
    assert "reading the predicted mask as 4 tokens" in card
    assert (
        json.loads((runs["tiny"] / "config.json").read_text())["dataset"]["manifest_sha256"] in card
    )


def test_evaluate_refuses_unknown_systems(small_build: Path, tmp_path: Path, capsys) -> None:
    assert main(["evaluate", str(small_build), "--system", "tiny", "--out", str(tmp_path)]) == 2
    assert "NAME=CHECKPOINT" in capsys.readouterr().err
    code = main(["evaluate", str(small_build), "--system", f"x={tmp_path}", "--out", str(tmp_path)])
    assert code == 2
    assert "not a checkpoint folder" in capsys.readouterr().err


def test_publish_uploads_a_checkpoint_as_a_model_repository(
    runs: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    calls = []

    def record(name):
        def method(self, *args, **kwargs):
            if name == "create_commit":
                kwargs["sent"] = sorted(op.path_in_repo for op in kwargs["operations"])
            calls.append((name, kwargs))

        return method

    for name in ("create_repo", "create_branch", "create_commit"):
        monkeypatch.setattr(huggingface_hub.HfApi, name, record(name))
    checkpoint = str(runs["mask-only"])
    assert main(["publish", checkpoint, "--repo-id", "me/mmrs-tiny", "--dry-run"]) == 0
    assert calls == [] and "(model)" in capsys.readouterr().out
    assert main(["publish", checkpoint, "--repo-id", "me/mmrs-tiny"]) == 0
    (_, repo), (_, commit) = calls
    assert repo["repo_type"] == "model" and commit["repo_type"] == "model"
    assert "training_state.pt" not in commit["sent"]
    assert {"README.md", "config.json", "model.safetensors", "tokenizer.json"} <= set(
        commit["sent"]
    )
    assert main(["publish", checkpoint, "--repo-id", "not a repo"]) == 2


def test_train_and_evaluate_flows(small_build: Path, tmp_path: Path, prefect_api: str) -> None:
    from flows import evaluate_baseline, train_baseline

    summary = train_baseline(
        str(small_build), str(tmp_path / "run"), max_steps=2, batch_size=4,
        overrides={"num_workers": 0},
    )  # fmt: skip
    assert summary["steps"] == 2
    result = evaluate_baseline(
        str(small_build), ["prior", f"tiny={tmp_path / 'run' / 'best'}"], str(tmp_path / "eval")
    )
    assert set(result["overall"]) == {"prior", "tiny"}
    assert (tmp_path / "eval" / "metrics.json").is_file()


def test_the_baseline_deployments_load() -> None:
    import yaml
    from prefect.flows import load_flow_from_entrypoint

    project = Path(__file__).resolve().parents[2]
    deployments = yaml.safe_load((project / "prefect.yaml").read_text())["deployments"]
    names = set()
    for deployment in deployments:
        names.add(load_flow_from_entrypoint(str(project / deployment["entrypoint"])).name)
    assert {"train-baseline", "evaluate-baseline", "build-mmrs"} <= names
