"""The model: padding never changes a row's outputs; pretrained parts load offline."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from baselines.prs_med.checkpoint import load_checkpoint, save_checkpoint
from baselines.prs_med.data import collate_prompts, collate_train, model_inputs
from baselines.prs_med.model import build_model
from baselines.prs_med.presets import _TINY_LM, _TINY_SAM, resolve
from baselines.prs_med.prompt import IGNORE, encode_example, encode_prompt
from baselines.prs_med.tokenizer import train_tokenizer

QUESTIONS = [
    ("Where is the polyp?", "The polyp is in the center."),
    (
        "Describe the position of the breast tumor in this ultrasound image, please.",
        "The breast tumor lies in the upper left of the image, in its upper left quadrant.",
    ),
]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer([text for pair in QUESTIONS for text in pair] * 4, vocab_size=400)


def _model(tokenizer, **overrides):
    torch.manual_seed(0)
    return build_model(resolve("tiny", overrides), tokenizer).eval()


def _items(tokenizer, model, pairs, pixels):
    items = []
    for index, ((question, answer), image) in enumerate(zip(pairs, pixels, strict=True)):
        example = encode_example(tokenizer, question, answer, model.image_tokens, 64)
        items.append(
            {
                "index": index,
                "pixel_values": image.numpy(),
                "mask": torch.zeros(64, 64).numpy(),
                "ids": example.ids,
                "labels": example.labels,
                "prompt_length": example.prompt_length,
                "prompt": encode_prompt(tokenizer, question, model.image_tokens),
            }
        )
    return items


def _forward(model, items, pad):
    batch = collate_train(items, pad)
    with torch.no_grad():
        return model(**model_inputs(batch))


def _predict(model, items, pad):
    batch = collate_prompts([{**item, "ids": item["prompt"]} for item in items], pad)
    return model.predict(batch["pixel_values"], batch["input_ids"], batch["attention_mask"], 8)


def test_a_row_gives_the_same_outputs_alone_and_batched_with_a_longer_row(tokenizer) -> None:
    model = _model(tokenizer)
    pad = tokenizer.pad_token_id
    torch.manual_seed(1)
    pixels = torch.randn(2, 3, 128, 128)
    items = _items(tokenizer, model, QUESTIONS, pixels)
    assert len(items[1]["ids"]) > len(items[0]["ids"]) + 10
    alone, both = _forward(model, items[:1], pad), _forward(model, items, pad)
    assert torch.allclose(alone.mask_logits[0], both.mask_logits[0], atol=1e-5)
    assert torch.allclose(alone.lm_loss[0], both.lm_loss[0], atol=1e-5)
    # inference pads on the left: still the same mask, and the same greedy answer
    (mask_alone, ids_alone), (mask_both, ids_both) = (
        _predict(model, items[:1], pad),
        _predict(model, items, pad),
    )
    assert torch.allclose(mask_alone[0], mask_both[0], atol=1e-5)
    assert ids_alone[0].tolist() == ids_both[0].tolist()
    # and the mask branch sees at inference exactly what it saw in training
    assert torch.allclose(alone.mask_logits[0], mask_alone[0], atol=1e-5)


@pytest.mark.parametrize("mask_tokens", [4, 0], ids=["mask-tokens", "papers-design"])
def test_generation_reads_the_answer_as_training_does(tokenizer, mask_tokens: int) -> None:
    """Teacher forcing the greedy answer: each position's argmax is the generated token (the
    mask tokens and positions are the same in both; generation goes on from the prompt's
    KV cache)."""
    model = _model(tokenizer, mask_tokens=mask_tokens)
    assert model.mask_tokens == mask_tokens
    pad = tokenizer.pad_token_id
    items = _items(tokenizer, model, QUESTIONS, torch.randn(2, 3, 128, 128))
    _, generated = _predict(model, items, pad)
    forced = []
    for item, ids in zip(items, generated.tolist(), strict=True):
        if tokenizer.eos_token_id in ids:
            ids = ids[: ids.index(tokenizer.eos_token_id) + 1]
        prompt = item["prompt"]
        forced.append(
            {
                **item,
                "ids": prompt + ids,
                "labels": [IGNORE] * len(prompt) + ids,
                "prompt_length": len(prompt),
                "answer": ids,
            }
        )
    out = _forward(model, forced, pad)
    for row, item in enumerate(forced):
        n = len(item["answer"])
        assert out.answer_logits[row, :n].argmax(-1).tolist() == item["answer"]


def test_the_answers_loss_reaches_the_mask_through_the_mask_tokens(tokenizer) -> None:
    model = _model(tokenizer).train()
    items = _items(tokenizer, model, QUESTIONS, torch.randn(2, 3, 128, 128))
    model(**model_inputs(collate_train(items, tokenizer.pad_token_id))).lm_loss.sum().backward()
    decoder = model.sam.mask_decoder.output_hypernetworks_mlps[0].layers[-1].weight
    assert decoder.grad is not None and decoder.grad.abs().sum() > 0
    assert model.mask_projector[0].weight.grad.abs().sum() > 0


def test_padding_is_never_attended_by_the_fusion(tokenizer) -> None:
    """Changing the padding's token ids changes nothing (masks come from the lengths)."""
    model = _model(tokenizer)
    pixels = torch.randn(2, 3, 128, 128)
    items = _items(tokenizer, model, QUESTIONS, pixels)
    first = _forward(model, items, tokenizer.pad_token_id)
    other = _forward(model, items, tokenizer.convert_tokens_to_ids("<unk>"))
    assert torch.allclose(first.mask_logits, other.mask_logits, atol=1e-6)
    assert torch.allclose(first.lm_loss, other.lm_loss, atol=1e-6)


def test_a_random_sam_encoder_does_not_start_at_zero(tokenizer) -> None:
    model = _model(tokenizer)
    qkv = model.sam.vision_encoder.layers[0].attn.qkv.weight
    assert qkv.std() > 1e-3


def _pretrained_parts(folder: Path, tokenizer) -> tuple[Path, Path, Path]:
    """Tiny random SAM and LM, saved as a user's pretrained folders would be."""
    from transformers import AutoConfig, AutoModelForCausalLM, SamConfig, SamModel

    torch.manual_seed(2)
    SamModel(SamConfig(**_TINY_SAM)).save_pretrained(folder / "sam")
    settings = dict(_TINY_LM)
    config = AutoConfig.for_model(
        settings.pop("model_type"),
        vocab_size=len(tokenizer),
        eos_token_id=tokenizer.eos_token_id,
        **settings,
    )
    AutoModelForCausalLM.from_config(config).save_pretrained(folder / "lm")
    tokenizer.save_pretrained(folder / "lm")
    return folder / "sam", folder / "lm", folder / "ckpt"


def test_pretrained_parts_load_through_from_pretrained_with_lora(tokenizer, tmp_path) -> None:
    from baselines.prs_med.tokenizer import load_tokenizer

    sam, lm, checkpoint = _pretrained_parts(tmp_path, tokenizer)
    preset = resolve("small", {"encoder": str(sam), "lm": str(lm), "image_size": 128})
    lm_tokenizer = load_tokenizer(str(lm))
    torch.manual_seed(3)
    model = build_model(preset, lm_tokenizer).eval()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("lora_A" in n for n in trainable)
    assert not any(n.startswith("sam.vision_encoder") for n in trainable)
    assert not any("lm." in n and "lora" not in n and "embed" in n for n in trainable)
    # the pretrained weights are the saved ones
    from transformers import SamModel

    saved = SamModel.from_pretrained(sam).vision_encoder.patch_embed.projection.weight
    assert torch.equal(model.sam.vision_encoder.patch_embed.projection.weight, saved)

    # save and load: identical outputs through the same from_pretrained path
    for name, param in model.named_parameters():
        if "lora_B" in name:  # LoRA starts at zero: make the adapters matter
            torch.nn.init.normal_(param, std=0.02)
    save_checkpoint(checkpoint, model, lm_tokenizer, {"preset": preset.to_dict()})
    loaded, loaded_tokenizer, _ = load_checkpoint(checkpoint)
    items = _items(lm_tokenizer, model, QUESTIONS, torch.randn(2, 3, 128, 128))
    pad = lm_tokenizer.pad_token_id
    before, after = _predict(model, items, pad), _predict(loaded, items, pad)
    assert torch.equal(before[0], after[0])
    assert before[1].tolist() == after[1].tolist()
    assert loaded_tokenizer.get_vocab() == lm_tokenizer.get_vocab()


def test_a_checkpoint_of_another_preset_is_refused(tokenizer, tmp_path) -> None:
    model = _model(tokenizer)
    save_checkpoint(tmp_path / "ckpt", model, tokenizer, {"preset": resolve("tiny").to_dict()})
    path = tmp_path / "ckpt" / "config.json"
    config = json.loads(path.read_text())
    config["preset"]["lm_config"]["num_hidden_layers"] = 3
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="do not fit the preset"):
        load_checkpoint(tmp_path / "ckpt")


@pytest.mark.parametrize(
    ("damage", "error", "named"),
    [
        ("model.safetensors", ValueError, "model.safetensors: cannot read the weights"),
        ("config.json", ValueError, "config.json: not JSON"),
        ("tokenizer.json", FileNotFoundError, "not a baseline checkpoint (no tokenizer.json)"),
    ],
)
def test_a_damaged_checkpoint_names_its_file(tokenizer, tmp_path, damage, error, named) -> None:
    model = _model(tokenizer)
    save_checkpoint(tmp_path / "ckpt", model, tokenizer, {"preset": resolve("tiny").to_dict()})
    path = tmp_path / "ckpt" / damage
    if damage == "tokenizer.json":
        path.unlink()
    else:
        path.write_text("{")
    with pytest.raises(error, match=re.escape(named)):
        load_checkpoint(tmp_path / "ckpt")


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"image_size": "big"}, "preset field image_size: expected int, got 'big'"),
        ({"freeze_encoder": 1}, "preset field freeze_encoder: expected bool, got 1"),
        ({"epochs": 0}, "preset field epochs must be at least 1, got 0"),
        ({"mask_tokens": -1}, "preset field mask_tokens must be at least 0, got -1"),
        ({"lr": 0}, "preset field lr must be above 0, got 0"),
    ],
)
def test_preset_values_of_the_wrong_type_or_range_are_named(overrides, named) -> None:
    with pytest.raises(ValueError, match=re.escape(named)):
        resolve("tiny", overrides)


def test_a_checkpoint_from_before_mask_tokens_loads_as_the_papers_design(
    tokenizer, tmp_path
) -> None:
    """Presets written before `mask_tokens` and `pooled_prompt` existed lack them."""
    model = _model(tokenizer, mask_tokens=0, pooled_prompt=False)
    preset = model.preset.to_dict()
    del preset["mask_tokens"], preset["pooled_prompt"]
    save_checkpoint(tmp_path / "ckpt", model, tokenizer, {"preset": preset})
    loaded, _, _ = load_checkpoint(tmp_path / "ckpt")
    assert loaded.mask_tokens == 0 and not loaded.preset.pooled_prompt
    items = _items(tokenizer, model, QUESTIONS, torch.randn(2, 3, 128, 128))
    pad = tokenizer.pad_token_id
    before, after = _predict(model, items, pad), _predict(loaded, items, pad)
    assert torch.equal(before[0], after[0]) and before[1].tolist() == after[1].tolist()


def test_a_deep_image_reaches_the_encoder_as_its_8_bit_film() -> None:
    """A 12-bit film (values x16) is the same input as its 8-bit film: stretched over its
    range, not clipped white at 255."""
    from PIL import Image

    from baselines.prs_med.data import image_array

    film = np.add.outer(np.arange(32), np.arange(32)).astype(np.uint8) * 4  # 0..248
    film[0, 0], film[-1, -1] = 0, 255
    deep = Image.fromarray(film.astype(np.uint16) * 16)
    assert deep.mode == "I;16"
    np.testing.assert_allclose(image_array(deep, 32), image_array(Image.fromarray(film), 32))
