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
    labels, attention = batch["labels"], batch["attention_mask"]
    slot = image_slot(tok)
    for row, example in enumerate((short, long)):
        n, p = len(example.ids), example.prompt_length
        assert (labels[row, :p] == IGNORE).all()  # BOS, image slots, prompt
        assert (labels[row, slot : slot + 4] == IGNORE).all()
        assert (labels[row, n:] == IGNORE).all()  # padding
        assert (attention[row, n:] == 0).all() and (attention[row, :n] == 1).all()
        assert labels[row, n - 1] == tok.eos_token_id  # EOS is learned
        assert (labels[row, p:n] == torch.tensor(example.ids[p:])).all()


def test_answers_are_cut_to_the_limit_and_still_end_with_eos() -> None:
    tok = tokenizer()
    example = encode_example(tok, TEXTS[0], TEXTS[1] * 5, image_tokens=4, max_answer_tokens=6)
    assert len(example.ids) - example.prompt_length == 6
    assert example.ids[-1] == tok.eos_token_id


def test_the_trained_tokenizer_is_deterministic() -> None:
    assert tokenizer().get_vocab() == tokenizer().get_vocab()
