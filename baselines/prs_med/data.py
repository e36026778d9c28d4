"""One data path for training, validation, prediction and evaluation.

A build folder is read with `datasets.load_dataset(folder)` (the layout MMRS publishes), one
split at a time. Images and masks are resized for the preset in the DataLoader's workers;
the order is a seeded permutation per epoch (optionally balanced across modalities), so a
resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from pipeline.io.images import as_rgb

from .prompt import IGNORE, encode_example

# SAM's pixel statistics (0-255 RGB): pretrained encoders expect them, random ones don't mind.
PIXEL_MEAN = np.array([123.675, 116.28, 103.53], dtype=np.float32)
PIXEL_STD = np.array([58.395, 57.12, 57.375], dtype=np.float32)
MASK_SCALE = 4  # SAM's decoder gives masks at 4x its embedding grid


def manifest_sha256(folder: str | Path) -> str:
    """The content hash of a build's manifest (what a checkpoint records of its data)."""
    path = Path(folder) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: not an MMRS build (no manifest.json)")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_split(folder: str | Path, split: str):
    """One split of a build folder as a `datasets.Dataset` (Image features decoded lazily)."""
    import datasets

    manifest_sha256(folder)
    manifest = json.loads((Path(folder) / "manifest.json").read_text())
    rows = manifest.get("rows_per_split", {})
    if not rows.get(split):
        raise ValueError(f"{folder}: the build has no {split!r} rows (splits: {rows})")
    dataset = datasets.load_dataset(str(folder), split=split)
    _check_pixels(dataset, folder, split)
    return dataset


def _check_pixels(dataset, folder: str | Path, split: str) -> None:
    """Published copies may withhold pixels (sources not marked redistributable)."""
    import pyarrow.compute as pc

    table = dataset.data.table
    missing = table.column("image").is_null()
    if pc.any(missing).as_py():
        sources = sorted(set(pc.filter(table.column("source"), missing).to_pylist()))
        raise ValueError(
            f"{folder}: {split} rows of {', '.join(sources)} have no pixels (withheld when the "
            "build was published); rebuild them from the raw data as the folder's REBUILD.md "
            "says, then use the rebuilt folder"
        )


def image_array(image: Image.Image, size: int) -> np.ndarray:
    """An image as the encoder's normalised (3, size, size) float32 input."""
    rgb = as_rgb(image).resize((size, size), Image.Resampling.BILINEAR)
    pixels = (np.asarray(rgb, dtype=np.float32) - PIXEL_MEAN) / PIXEL_STD
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))


def mask_array(mask: Image.Image, size: int) -> np.ndarray:
    """A 0/255 mask as the fraction of each output cell it covers (size x size float32)."""
    binary = Image.fromarray((np.asarray(mask.convert("L")) > 127).astype(np.uint8) * 255)
    return np.asarray(binary.resize((size, size), Image.Resampling.BOX), dtype=np.float32) / 255


class RowDataset(Dataset):
    """Rows of one split, encoded for the model (in DataLoader workers)."""

    def __init__(
        self,
        rows,
        tokenizer,
        image_size: int,
        mask_size: int,
        image_tokens: int,
        max_answer_tokens: int,
    ) -> None:
        self.rows = rows
        self.tokenizer = tokenizer
        self.image_size = image_size
        self.mask_size = mask_size
        self.image_tokens = image_tokens
        self.max_answer_tokens = max_answer_tokens

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.rows[int(index)]
        encoded = encode_example(
            self.tokenizer,
            row["question"],
            row["answer"],
            self.image_tokens,
            self.max_answer_tokens,
        )
        return {
            "index": int(index),
            "pixel_values": image_array(row["image"], self.image_size),
            "mask": mask_array(row["mask"], self.mask_size),
            "ids": encoded.ids,
            "labels": encoded.labels,
            "prompt_length": encoded.prompt_length,
        }


def collate_train(items: Sequence[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-padded prompts (as `collate_prompts`, what inference reads) and right-padded
    answers with their labels; masks come from the lengths."""
    prompts = collate_prompts(
        [{**item, "ids": item["ids"][: item["prompt_length"]]} for item in items], pad_id
    )
    length = max(len(item["ids"]) - item["prompt_length"] for item in items)
    answers = torch.full((len(items), length), pad_id, dtype=torch.long)
    labels = torch.full((len(items), length), IGNORE, dtype=torch.long)
    attention = torch.zeros((len(items), length), dtype=torch.long)
    for row, item in enumerate(items):
        start = item["prompt_length"]
        n = len(item["ids"]) - start
        answers[row, :n] = torch.tensor(item["ids"][start:])
        labels[row, :n] = torch.tensor(item["labels"][start:])
        attention[row, :n] = 1
    return {
        **prompts,
        "index": torch.tensor([item["index"] for item in items]),
        "masks": torch.from_numpy(np.stack([item["mask"] for item in items])),
        "answer_ids": answers,
        "answer_mask": attention,
        "labels": labels,
    }


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The arguments of the model's training forward, from a `collate_train` batch."""
    keys = ("pixel_values", "input_ids", "attention_mask", "answer_ids", "answer_mask", "labels")
    return {key: batch[key] for key in keys}


def collate_prompts(items: Sequence[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-padded prompts for generation (items: pixel_values and ids)."""
    length = max(len(item["ids"]) for item in items)
    ids = torch.full((len(items), length), pad_id, dtype=torch.long)
    attention = torch.zeros((len(items), length), dtype=torch.long)
    for row, item in enumerate(items):
        n = len(item["ids"])
        ids[row, length - n :] = torch.tensor(item["ids"])
        attention[row, length - n :] = 1
    return {
        "pixel_values": torch.from_numpy(np.stack([item["pixel_values"] for item in items])),
        "input_ids": ids,
        "attention_mask": attention,
    }


class EpochSampler(Sampler[int]):
    """A seeded order per epoch; `balance` draws modalities equally often (with replacement).

    `start` skips the first indices of the current epoch (a resumed run).
    """

    def __init__(self, modalities: Sequence[str], seed: int, balance: bool = False) -> None:
        self.n = len(modalities)
        self.seed = seed
        self.epoch = 0
        self.start = 0
        self.weights = None
        if balance:
            counts = Counter(modalities)
            self.weights = torch.tensor([1.0 / counts[m] for m in modalities], dtype=torch.float64)

    def seek(self, epoch: int, start: int = 0) -> None:
        """Position the sampler (not named set_epoch: accelerate calls that with the
        iteration count of its own loader, which would reset `start`)."""
        self.epoch, self.start = epoch, start

    def order(self) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        if self.weights is not None:
            drawn = torch.multinomial(self.weights, self.n, replacement=True, generator=generator)
            return drawn.tolist()
        return torch.randperm(self.n, generator=generator).tolist()

    def __iter__(self):
        return iter(self.order()[self.start :])

    def __len__(self) -> int:
        return self.n - self.start
