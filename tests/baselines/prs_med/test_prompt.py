"""The one prompt: training without its answer is inference; labels on the answer only."""

from __future__ import annotations

import torch

from baselines.prs_med.data import collate_train
from baselines.prs_med.prompt import IGNORE, encode_example, encode_prompt, image_slot
from baselines.prs_med.tokenizer import train_tokenizer

TEXTS = [
    "Where is the polyp in this endoscopic image?",
    "The polyp is in the upper left of the image.",
    "How many separate breast tumor regions are visible?",
    "Two.",
]


def tokenizer():
    return train_tokenizer(TEXTS * 4, vocab_size=300)


def test_training_prompt_without_its_answer_is_the_inference_prompt() -> None:
    tok = tokenizer()
    for question, answer in (TEXTS[:2], TEXTS[2:]):
        example = encode_example(tok, question, answer, image_tokens=16, max_answer_tokens=64)
        prompt = encode_prompt(tok, question, image_tokens=16)
        assert example.ids[: example.prompt_length] == prompt
        assert len(example.ids) > len(prompt)


def test_labels_cover_the_answer_and_eos_only() -> None:
    tok = tokenizer()
    short = encode_example(tok, "Where?", "Two.", image_tokens=4, max_answer_tokens=64)
    long = encode_example(tok, TEXTS[0], TEXTS[1], image_tokens=4, max_answer_tokens=64)
    items = [
        {
            "index": i,
            "pixel_values": torch.zeros(3, 8, 8).numpy(),
            "mask": torch.zeros(4, 4).numpy(),
            "ids": e.ids,
            "labels": e.labels,
            "prompt_length": e.prompt_length,
        }
        for i, e in enumerate((short, long))
    ]
    batch = collate_train(items, pad_id=tok.pad_token_id)
    slot = image_slot(tok)
    width = batch["input_ids"].shape[1]
    for row, example in enumerate((short, long)):
        n, p = len(example.ids), example.prompt_length
        assert (torch.tensor(example.labels[:p]) == IGNORE).all()  # BOS, image slots, prompt
        assert example.labels[slot : slot + 4] == [IGNORE] * 4
        assert example.labels[n - 1] == tok.eos_token_id  # EOS is learned
        # prompts are left-padded, as inference pads them; answers right-padded
        assert batch["input_ids"][row, width - p :].tolist() == example.ids[:p]
        assert (batch["attention_mask"][row, : width - p] == 0).all()
        assert (batch["attention_mask"][row, width - p :] == 1).all()
        answer, labels = batch["answer_ids"][row], batch["labels"][row]
        assert answer[: n - p].tolist() == example.ids[p:] == labels[: n - p].tolist()
        assert (labels[n - p :] == IGNORE).all()  # padding
        assert (batch["answer_mask"][row, : n - p] == 1).all()
        assert (batch["answer_mask"][row, n - p :] == 0).all()


def test_answers_are_cut_to_the_limit_and_still_end_with_eos() -> None:
    tok = tokenizer()
    example = encode_example(tok, TEXTS[0], TEXTS[1] * 5, image_tokens=4, max_answer_tokens=6)
    assert len(example.ids) - example.prompt_length == 6
    assert example.ids[-1] == tok.eos_token_id


def test_the_trained_tokenizer_is_deterministic() -> None:
    assert tokenizer().get_vocab() == tokenizer().get_vocab()
