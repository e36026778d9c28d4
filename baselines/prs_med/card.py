"""A checkpoint's model card (huggingface_hub ModelCard) and its upload as a model repo."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.release.publish import REPO_ID

from .checkpoint import CONFIG, STATE, WEIGHTS, read_config

CARD = "README.md"


def _metrics_table(document: dict[str, Any]) -> str:
    names = list(document["systems"])
    keys = ("rows", "dice", "iou", "prsmed_mdice", "prsmed_miou", "answer_accuracy")
    keys += ("consistency", "negative_fpr")
    lines = ["| metric | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for key in keys:
        cells = []
        for name in names:
            value = document["systems"][name]["overall"].get(key)
            cells.append(
                "n/a" if value is None else f"{value:.3f}" if key != "rows" else f"{value}"
            )
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def model_card_text(config: dict[str, Any], document: dict[str, Any] | None, name: str) -> str:
    """The card's Markdown, with the Hub's YAML metadata."""
    from huggingface_hub import ModelCardData

    preset = config["preset"]
    dataset = config["dataset"]
    sources = dataset.get("sources", [])
    data = ModelCardData(
        license="apache-2.0",
        library_name="mmrs",
        pipeline_tag="image-segmentation",
        tags=["medical-imaging", "segmentation", "position-reasoning", "mmrs", "prs-med"],
    )
    parts = [
        f"---\n{data.to_yaml()}\n---",
        f"# MMRS baseline `{name}` (preset `{preset['name']}`)",
        "A PRS-Med-style position-reasoning segmenter trained with `mmrs train`: a SAM-family "
        "image encoder and mask decoder, a causal language model that reads the image tokens "
        "and the question, and a fusion of the image tokens with the model's prompt states.",
        "## Parts",
        f"- encoder: {preset['encoder'] or 'random init (' + str(preset['image_size']) + ' px)'}",
        f"- language model: {preset['lm'] or 'random init, tokenizer trained on the build'}",
        f"- LoRA: {preset['lora'] or 'none (the LM trains whole)'}",
        "- answers: "
        + (
            "generated (greedy)"
            + (
                f", reading the predicted mask as {preset['mask_tokens']} tokens"
                if preset.get("mask_tokens")
                else ""
            )
            if preset["answers"] == "generate"
            else "rendered from the predicted mask through the question's template"
        ),
        "## Training data",
        f"- MMRS build, manifest sha256 `{dataset['manifest_sha256']}`",
        f"- rows: {dataset.get('rows')}; steps: {config.get('step')}; seed: {config.get('seed')}",
    ]
    parts += [f"- {s['name']} ({s['modality']}): {s['license']}" for s in sources]
    if document is not None:
        parts += [
            f"## Evaluation ({document['split']} split, beside reference systems)",
            "Dice and IoU at 0.5 on the prediction at the image's own size; `prsmed_*`: the "
            "paper's 256-threshold mean; answers read with MMRS's fact parser. Full tables: "
            "`mmrs evaluate`'s metrics.md.",
            _metrics_table(document),
        ]
    parts += [
        "## Limitations",
        "- A research baseline, not a medical device: never use it for diagnosis.",
        f"- Images are resized to {preset['image_size']} x {preset['image_size']} px; the "
        "answers use MMRS's controlled vocabulary (image zones, the patient's side where known).",
        "- Scores hold for the sources it was trained on; compare them with the `prior` "
        "(above), which some sources' position questions make strong.",
        "## Licence",
        "The code and these weights: Apache-2.0. The training data keep their own licences "
        "(above); check them before you redistribute or use the model commercially.",
    ]
    return "\n\n".join(parts) + "\n"


def write_model_card(
    checkpoint: Path, config: dict[str, Any], document: dict[str, Any] | None, name: str
) -> Path:
    """Write README.md (a ModelCard) into the checkpoint folder."""
    from huggingface_hub import ModelCard

    path = Path(checkpoint) / CARD
    ModelCard(model_card_text(config, document, name)).save(path)
    return path


def publish_checkpoint(
    checkpoint: str | Path,
    repo_id: str,
    private: bool = False,
    revision: str | None = None,
    dry_run: bool = False,
) -> list[str]:
    """Upload a checkpoint as a model repository (one commit); returns the files.

    The token comes from HF_TOKEN or the login cache, as for datasets. The resume state is
    never uploaded; a card is written first where the folder has none.
    """
    checkpoint = Path(checkpoint)
    config = read_config(checkpoint)
    if not REPO_ID.fullmatch(repo_id):
        raise ValueError(f"repo id must look like owner/name, got {repo_id!r}")
    if not (checkpoint / CARD).is_file():
        write_model_card(checkpoint, config, None, checkpoint.name)
    files = sorted(p.name for p in checkpoint.iterdir() if p.is_file() and p.name != STATE)
    missing = {WEIGHTS, CONFIG} - set(files)
    if missing:
        raise FileNotFoundError(f"{checkpoint}: missing {sorted(missing)}")
    if dry_run:
        return files
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi()
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    if revision:
        api.create_branch(repo_id, repo_type="model", branch=revision, exist_ok=True)
    api.create_commit(
        repo_id,
        operations=[
            CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(checkpoint / name))
            for name in files
        ],
        commit_message=f"MMRS baseline ({config['preset']['name']}, step {config.get('step')})",
        repo_type="model",
        revision=revision,
    )
    return files
