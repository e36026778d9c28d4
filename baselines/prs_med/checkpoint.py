"""Checkpoint folders: weights, resolved config, tokenizer, the data they were trained on.

```
<checkpoint>/model.safetensors   the trainable weights (every weight of a random-init preset)
<checkpoint>/config.json         the resolved preset, the dataset and its manifest hash, metrics
<checkpoint>/tokenizer*.json     the tokenizer (trained on the build for `tiny`)
<checkpoint>/training_state.pt   optimizer, scheduler, RNG states, position (`last` only)
```
A folder is written beside its final name and renamed into place, so a kill never leaves a
half-written checkpoint where a resume would read it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .model import PRSMed, build_model
from .presets import Preset

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
TOKENIZER = "tokenizer.json"  # what tokenizer.save_pretrained writes for a fast tokenizer
STATE = "training_state.pt"
FORMAT = "mmrs-prs-med/1"


def saved_weights(model: PRSMed) -> dict[str, torch.Tensor]:
    """The weights a checkpoint keeps: every trainable one (pretrained frozen parts are
    reloaded from their source)."""
    return {
        name: param.detach().to("cpu").contiguous()
        for name, param in model.named_parameters()
        if param.requires_grad
    }


def save_checkpoint(
    folder: Path,
    model: PRSMed,
    tokenizer,
    config: dict[str, Any],
    state: dict[str, Any] | None = None,
) -> None:
    """Write a checkpoint folder atomically (replacing one already there)."""
    folder = Path(folder)
    scratch = folder.with_name(f".{folder.name}.partial")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    save_file(saved_weights(model), scratch / WEIGHTS, metadata={"format": FORMAT})
    (scratch / CONFIG).write_text(json.dumps({"format": FORMAT, **config}, indent=2) + "\n")
    tokenizer.save_pretrained(scratch)
    if state is not None:
        torch.save(state, scratch / STATE)
    old = folder.with_name(f".{folder.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)
    scratch.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def read_config(folder: Path) -> dict[str, Any]:
    path = Path(folder) / CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: not a baseline checkpoint (no {CONFIG})")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not JSON ({exc})") from exc
    if not isinstance(config, dict):
        raise ValueError(f"{path}: not a baseline checkpoint (not a JSON object)")
    if config.get("format") != FORMAT:
        raise ValueError(f"{path}: not a baseline checkpoint (format {config.get('format')!r})")
    return config


def load_weights(model: PRSMed, folder: Path) -> None:
    """Load a checkpoint's weights into a model built from the same preset."""
    path = Path(folder) / WEIGHTS
    try:
        weights = load_file(path)
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"{path}: cannot read the weights ({exc})") from exc
    expected = {name for name, param in model.named_parameters() if param.requires_grad}
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(dict(model.named_parameters())))
    if missing or unexpected:
        raise ValueError(
            f"{folder}: weights do not fit the preset (missing {missing[:5]}, "
            f"unexpected {unexpected[:5]})"
        )
    model.load_state_dict(weights, strict=False)


def load_checkpoint(folder: str | Path, device: str = "cpu") -> tuple[PRSMed, Any, dict]:
    """The model, tokenizer and config of a checkpoint folder, in eval mode on `device`."""
    from transformers import AutoTokenizer

    folder = Path(folder)
    config = read_config(folder)
    if not (folder / TOKENIZER).is_file():
        raise FileNotFoundError(f"{folder}: not a baseline checkpoint (no {TOKENIZER})")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = build_model(Preset.from_dict(config["preset"]), tokenizer)
    load_weights(model, folder)
    return model.to(device).eval(), tokenizer, config
