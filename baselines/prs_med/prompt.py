"""The one prompt: training and inference build it with the same functions.

A sequence is `[bos] [image x K] prompt-tokens [answer-tokens eos]`: the image's K tokens
sit right after the (optional) BOS, the prompt is the question in a fixed frame, and only
the answer and its EOS are labelled. The prompt's token ids are computed alone and the
answer's appended, so a training sequence without its answer IS the inference sequence,
token for token. Padding is told apart by the lengths, never by a token id.
"""

from __future__ import annotations

from dataclasses import dataclass

IGNORE = -100  # labels the loss skips


def prompt_text(question: str) -> str:
    """The text the LM reads after the image tokens (the mask branch reads its states)."""
    return f"USER: {' '.join(question.split())}\nASSISTANT:"


def answer_text(answer: str) -> str:
    return " " + " ".join(answer.split())


@dataclass(frozen=True)
class Encoded:
    """One row's token ids with the image slots left as `pad` placeholders."""

    ids: list[int]
    prompt_length: int  # BOS + image slots + prompt tokens
    labels: list[int]


def image_slot(tokenizer) -> int:
    """Where the image tokens start: after BOS when the tokenizer has one."""
    return 1 if tokenizer.bos_token_id is not None else 0


def encode_prompt(tokenizer, question: str, image_tokens: int) -> list[int]:
    """Token ids of the inference prompt (image slots hold the pad id; they are replaced
    by the image's embeddings)."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    text = tokenizer(prompt_text(question), add_special_tokens=False)["input_ids"]
    return [*bos, *[tokenizer.pad_token_id] * image_tokens, *text]


def encode_example(
    tokenizer, question: str, answer: str, image_tokens: int, max_answer_tokens: int
) -> Encoded:
    """The training sequence: the inference prompt, then the answer and EOS (labelled)."""
    prompt = encode_prompt(tokenizer, question, image_tokens)
    target = tokenizer(answer_text(answer), add_special_tokens=False)["input_ids"]
    target = [*target[: max_answer_tokens - 1], tokenizer.eos_token_id]
    return Encoded(
        ids=[*prompt, *target],
        prompt_length=len(prompt),
        labels=[IGNORE] * len(prompt) + target,
    )
