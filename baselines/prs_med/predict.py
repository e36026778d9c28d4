"""Inference: masks and greedy answers for images and questions, in batches."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from pipeline.geometry.facts import compute_facts
from pipeline.io.images import as_rgb

from ..scoring.metrics import binarise, resize_prob
from .checkpoint import load_checkpoint
from .data import collate_prompts, image_array
from .prompt import encode_prompt


@dataclass(frozen=True)
class Prediction:
    prob: np.ndarray  # float32 probabilities on the decoder's grid (square)
    answer: str | None  # None where the preset renders answers from the mask


def pick_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available")
    return device


class Predictor:
    """A checkpoint ready to answer: `predict(images, questions)`."""

    def __init__(self, checkpoint: str | Path, device: str = "auto") -> None:
        self.device = pick_device(device)
        self.model, self.tokenizer, self.config = load_checkpoint(checkpoint, self.device)
        self.preset = self.model.preset

    def encode(self, image: Image.Image, question: str) -> dict:
        """One row's model inputs (runs in DataLoader workers)."""
        return {
            "pixel_values": image_array(image, self.preset.image_size),
            "ids": encode_prompt(self.tokenizer, question, self.model.image_tokens),
        }

    def predict_encoded(self, items: Sequence[dict]) -> list[Prediction]:
        batch = collate_prompts(items, self.tokenizer.pad_token_id)
        autocast = self.device == "cuda" and self.preset.mixed_precision == "bf16"
        with torch.autocast(self.device, dtype=torch.bfloat16, enabled=autocast):
            logits, sequences = self.model.predict(
                batch["pixel_values"].to(self.device),
                batch["input_ids"].to(self.device),
                batch["attention_mask"].to(self.device),
                self.preset.max_answer_tokens,
            )
        probs = torch.sigmoid(logits.float()).cpu().numpy()
        answers: list[str | None] = [None] * len(items)
        if sequences is not None:
            answers = [
                self.tokenizer.decode(ids, skip_special_tokens=True).strip()
                for ids in sequences.cpu().tolist()
            ]
        return [Prediction(p, a) for p, a in zip(probs, answers, strict=True)]

    def predict(self, images: Sequence[Image.Image], questions: Sequence[str]) -> list[Prediction]:
        return self.predict_encoded(
            [self.encode(i, q) for i, q in zip(images, questions, strict=True)]
        )


def mask_at(prob: np.ndarray, width: int, height: int) -> np.ndarray:
    """A probability map resized (bilinear) to an image's own size, thresholded at 0.5:
    the mask `mmrs evaluate` scores."""
    return binarise(resize_prob(prob, width, height))


def describe_mask(mask: np.ndarray) -> str:
    """A plain answer from a mask's own facts (for presets that do not generate text)."""
    facts = compute_facts(mask)
    if not facts.present:
        return "No target is visible in this image."
    return f"The target is in the {facts.zone} of the image; it is {facts.size}."


def overlay(image: Image.Image, mask: np.ndarray) -> Image.Image:
    """The image with the mask tinted red and its outline drawn."""
    from scipy import ndimage

    rgb = np.asarray(as_rgb(image), dtype=np.float32)
    tinted = rgb.copy()
    tinted[mask] = 0.6 * rgb[mask] + 0.4 * np.array([255, 0, 0], dtype=np.float32)
    edge = mask & ~ndimage.binary_erosion(mask)
    tinted[edge] = (255, 255, 0)
    return Image.fromarray(tinted.astype(np.uint8))


def predict_image(
    checkpoint: str | Path,
    image_path: str | Path,
    question: str,
    out: str | Path | None,
    device: str,
) -> dict:
    """`mmrs predict`: the answer, and the mask and overlay PNGs at the image's own size."""
    image_path = Path(image_path)
    if not image_path.is_file():
        raise FileNotFoundError(f"{image_path}: no such image")
    try:
        with Image.open(image_path) as opened:
            image = opened.copy()  # decoded here: a truncated file fails here
    except UnidentifiedImageError as exc:
        raise ValueError(f"{image_path}: not an image format Pillow reads") from exc
    except (OSError, SyntaxError) as exc:
        raise ValueError(f"{image_path}: cannot read the image ({exc})") from exc
    predictor = Predictor(checkpoint, device)
    prediction = predictor.predict([image], [question])[0]
    mask = mask_at(prediction.prob, image.width, image.height)
    answer = prediction.answer if prediction.answer is not None else describe_mask(mask)
    result = {"answer": answer, "mask": None, "overlay": None}
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        result["mask"] = str(out / f"{image_path.stem}_mask.png")
        result["overlay"] = str(out / f"{image_path.stem}_overlay.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(result["mask"])
        overlay(image, mask).save(result["overlay"])
    return result
