"""Training: one readable loop on `accelerate` (one CPU, one GPU, or DDP under
`accelerate launch` / `torchrun`).

Losses: mask BCE + soft Dice on the decoder's output grid, plus the LM's cross-entropy on
the answer and EOS tokens only. AdamW, linear warm-up then cosine decay, gradient clipping.
Validation reads the build's `validation` split, never training rows. `last/` is written
at every validation (with the optimizer, scheduler, RNG states and position) and `best/`
when the validation loss improves; `--resume` continues from `last/` exactly.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from .checkpoint import STATE, load_weights, read_config, save_checkpoint
from .data import (
    MASK_SCALE,
    EpochSampler,
    RowDataset,
    collate_train,
    load_split,
    manifest_sha256,
    model_inputs,
)
from .model import PRSMed, build_model
from .predict import pick_device
from .presets import Preset
from .tokenizer import load_tokenizer, train_tokenizer


@dataclass
class TrainConfig:
    dataset: Path
    out: Path
    preset: Preset
    seed: int = 0
    max_steps: int | None = None  # else preset.epochs over the training split
    device: str = "auto"  # auto | cpu | cuda
    resume: bool = False
    val_every: int | None = None  # steps between validations; None: every epoch
    val_rows: int | None = 512  # validation rows scored (a fixed seeded subset); None: all
    balance: bool = False  # draw modalities equally often
    progress: bool = True
    log: Callable[[dict[str, Any]], None] | None = field(default=None, repr=False)


def mask_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-row BCE + soft Dice (target: the fraction of each cell the mask covers)."""
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean((1, 2))
    prob = torch.sigmoid(logits)
    overlap = (prob * target).sum((1, 2))
    dice = 1 - (2 * overlap + 1) / (prob.sum((1, 2)) + target.sum((1, 2)) + 1)
    return bce + dice


def dice_at_half(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-row Dice of the thresholded prediction on the output grid (empty/empty = 1)."""
    pred, truth = logits > 0, target > 0.5
    overlap = (pred & truth).sum((1, 2)).float()
    total = (pred.sum((1, 2)) + truth.sum((1, 2))).float()
    return torch.where(total > 0, 2 * overlap / total.clamp(min=1), torch.ones_like(total))


def training_sources(folder: Path) -> list[dict[str, Any]]:
    """The build's sources as a model card states them: name, modality, licence."""
    manifest = json.loads((Path(folder) / "manifest.json").read_text())
    return [
        {key: source.get(key) for key in ("name", "modality", "license", "citation")}
        for source in manifest.get("config", {}).get("sources", [])
    ]


def _accelerator(device: str, preset: Preset):
    from accelerate import Accelerator

    cpu = pick_device(device) == "cpu"
    precision = "no" if cpu else preset.mixed_precision
    return Accelerator(cpu=cpu, mixed_precision=precision)


def _rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _tokenizer(config: TrainConfig, train_rows):
    if config.resume:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(config.out / "last")
    if config.preset.lm:
        return load_tokenizer(config.preset.lm)
    columns = train_rows.select_columns(["question", "answer"])
    texts = (text for row in columns.iter(batch_size=1024) for key in row for text in row[key])
    return train_tokenizer(texts, config.preset.tokenizer_vocab)


def _loader(dataset: RowDataset, batch_size: int, sampler, workers: int, pad_id: int) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=partial(collate_train, pad_id=pad_id),
        num_workers=workers,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
    )


@torch.no_grad()
def validate(model: PRSMed, loader: DataLoader, accelerator, lm_weight: float) -> dict[str, float]:
    """Mean losses and Dice at 0.5 over the validation rows."""
    model.eval()
    totals = {"val_mask_loss": 0.0, "val_lm_loss": 0.0, "val_dice": 0.0}
    count = 0
    for batch in loader:
        out = model(**model_inputs(batch))
        rows = accelerator.gather_for_metrics(
            torch.stack(
                [
                    mask_loss(out.mask_logits.float(), batch["masks"]),
                    out.lm_loss,
                    dice_at_half(out.mask_logits, batch["masks"]),
                ],
                dim=1,
            )
        )
        for column, key in enumerate(totals):
            totals[key] += float(rows[:, column].sum())
        count += rows.shape[0]
    model.train()
    metrics = {key: value / max(count, 1) for key, value in totals.items()}
    metrics["val_loss"] = metrics["val_mask_loss"] + lm_weight * metrics["val_lm_loss"]
    metrics["val_rows"] = count
    return metrics


def train(config: TrainConfig) -> dict[str, Any]:
    """Train (or resume) a preset on a build folder; returns the run's summary."""
    preset = config.preset
    out = Path(config.out)
    if config.resume and not (out / "last" / STATE).is_file():
        raise FileNotFoundError(f"--resume: {out / 'last'} holds no training state to resume")
    if not config.resume and (out / "last").exists():
        raise ValueError(f"{out} already holds a run: pass --resume, or choose another --out")
    accelerator = _accelerator(config.device, preset)
    _seed_all(config.seed)
    data_hash = manifest_sha256(config.dataset)
    train_rows = load_split(config.dataset, "train")
    val_rows = load_split(config.dataset, "validation")
    if config.val_rows is not None and len(val_rows) > config.val_rows:
        order = np.random.default_rng(config.seed).permutation(len(val_rows))
        val_rows = val_rows.select(sorted(order[: config.val_rows].tolist()))
    tokenizer = _tokenizer(config, train_rows)
    if config.resume:
        saved = read_config(out / "last")
        if saved["dataset"]["manifest_sha256"] != data_hash:
            raise ValueError(
                f"--resume: {out / 'last'} was trained on another build "
                f"(manifest {saved['dataset']['manifest_sha256'][:12]}, this one {data_hash[:12]})"
            )
        preset = Preset.from_dict(saved["preset"])
    model = build_model(preset, tokenizer)
    if config.resume:
        load_weights(model, out / "last")

    encoder_size = preset.image_size
    grid = model.sam.config.prompt_encoder_config.image_embedding_size
    dataset = partial(
        RowDataset,
        tokenizer=tokenizer,
        image_size=encoder_size,
        mask_size=grid * MASK_SCALE,
        image_tokens=model.image_tokens,
        max_answer_tokens=preset.max_answer_tokens,
    )
    sampler = EpochSampler(train_rows["modality"], config.seed, balance=config.balance)
    pad = tokenizer.pad_token_id
    train_loader = _loader(dataset(train_rows), preset.batch_size, sampler, preset.num_workers, pad)
    val_loader = _loader(dataset(val_rows), preset.batch_size, None, preset.num_workers, pad)

    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=preset.lr, weight_decay=preset.weight_decay)
    world = accelerator.num_processes
    steps_per_epoch = math.ceil(len(train_rows) / (preset.batch_size * world))
    total_steps = config.max_steps or preset.epochs * steps_per_epoch
    from transformers import get_cosine_schedule_with_warmup

    scheduler = get_cosine_schedule_with_warmup(
        optimizer, min(preset.warmup_steps, total_steps // 10), total_steps
    )
    model, optimizer, train_loader, val_loader, scheduler = accelerator.prepare(
        model, optimizer, train_loader, val_loader, scheduler
    )

    step, best = 0, math.inf
    if config.resume:
        state = torch.load(out / "last" / STATE, map_location="cpu", weights_only=False)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, best = state["step"], state["best"]
        _set_rng_state(state["rng"])

    run_config = {
        "preset": preset.to_dict(),
        "dataset": {
            "folder": str(config.dataset),
            "manifest_sha256": data_hash,
            "rows": {"train": len(train_rows), "validation": len(val_rows)},
            "sources": training_sources(config.dataset),
        },
        "seed": config.seed,
        "total_steps": total_steps,
        "balance": config.balance,
    }
    log_file = out / "log.jsonl"
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)

    def log(entry: dict[str, Any]) -> None:
        if accelerator.is_main_process:
            with log_file.open("a") as handle:
                handle.write(json.dumps(entry, sort_keys=True) + "\n")
            if config.log:
                config.log(entry)

    def checkpoint(metrics: dict[str, Any]) -> None:
        nonlocal best
        accelerator.wait_for_everyone()
        if not accelerator.is_main_process:
            return
        unwrapped = accelerator.unwrap_model(model)
        info = {**run_config, "step": step, "metrics": metrics}
        if metrics["val_loss"] < best:
            best = metrics["val_loss"]
            save_checkpoint(out / "best", unwrapped, tokenizer, info)
        state = {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "step": step,
            "best": best,
            "rng": _rng_state(),
        }
        save_checkpoint(out / "last", unwrapped, tokenizer, info, state)

    model.train()
    bar = tqdm(
        total=total_steps,
        initial=step,
        desc=f"train {preset.name}",
        unit="step",
        disable=not (config.progress and accelerator.is_main_process),
    )
    samples, busy, waiting = 0, 0.0, 0.0
    metrics: dict[str, Any] = {}
    while step < total_steps:
        epoch, position = divmod(step, steps_per_epoch)
        sampler.seek(epoch, start=position * preset.batch_size * world)
        fetched = time.perf_counter()
        for batch in train_loader:
            started = time.perf_counter()
            waiting += started - fetched
            out_ = model(**model_inputs(batch))
            seg = mask_loss(out_.mask_logits.float(), batch["masks"]).mean()
            lm = out_.lm_loss.mean()
            loss = seg + preset.lm_loss_weight * lm
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(trainable, preset.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            step += 1
            samples += batch["pixel_values"].shape[0] * world
            fetched = time.perf_counter()
            busy += fetched - started
            rate = samples / max(busy + waiting, 1e-9)
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", samples_s=f"{rate:.1f}")
            log(
                {
                    "step": step,
                    "epoch": epoch,
                    "loss": loss.item(),
                    "mask_loss": seg.item(),
                    "lm_loss": lm.item(),
                    "lr": scheduler.get_last_lr()[0],
                    "samples_per_s": rate,
                    "data_wait_share": waiting / max(busy + waiting, 1e-9),
                }
            )
            end_of_epoch = step % steps_per_epoch == 0
            due = step % config.val_every == 0 if config.val_every else end_of_epoch
            if due or step == total_steps:
                metrics = validate(model, val_loader, accelerator, preset.lm_loss_weight)
                log({"step": step, "epoch": epoch, **metrics})
                checkpoint(metrics)
            if step == total_steps or end_of_epoch:
                break
    bar.close()
    return {
        "out": str(out),
        "steps": step,
        "samples_per_s": samples / max(busy + waiting, 1e-9) if samples else None,
        "data_wait_share": waiting / max(busy + waiting, 1e-9) if samples else None,
        "best_val_loss": best,
        **{f"last_{k}": v for k, v in metrics.items()},
    }
