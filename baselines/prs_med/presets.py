"""The baseline's variants as data: one registry, resolved into the config a checkpoint keeps.

A preset names its pretrained parts by Hugging Face id or local folder (`encoder`, `lm`);
`None` builds that part with random weights from the preset's own small config (`sam`,
`lm_config`). Any field can be overridden from the command line (`--set key=value`), and the
resolved dictionary is what a checkpoint stores and reloads.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

# A small SAM: 128 px input, 8 px patches (a 16 x 16 embedding grid, 64 x 64 masks).
_TINY_SAM = {
    "vision_config": {
        "hidden_size": 64,
        "output_channels": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "mlp_dim": 256,
        "image_size": 128,
        "patch_size": 8,
        "window_size": 8,
        "global_attn_indexes": [1],
        "num_pos_feats": 32,
        # SamVisionConfig's default (1e-10) starts a random encoder at zero
        "initializer_range": 0.02,
    },
    "prompt_encoder_config": {"hidden_size": 64, "image_size": 128, "patch_size": 8},
    "mask_decoder_config": {
        "hidden_size": 64,
        "mlp_dim": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "iou_head_hidden_dim": 64,
    },
}
# A small Llama-type causal LM; its vocabulary is the tokenizer trained on the build's text.
_TINY_LM = {
    "model_type": "llama",
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 512,
    "initializer_range": 0.02,
}
# The paper's LoRA: r = 16, alpha = 16 on the attention projections.
_PAPER_LORA = {
    "r": 16,
    "lora_alpha": 16,
    "lora_dropout": 0.05,
    "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
}


# The Python types a preset field's annotation allows (an int passes for a float)
_KINDS: dict[str, tuple[type, ...]] = {
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "str": (str,),
    "str | None": (str, type(None)),
    "dict[str, Any]": (dict,),
    "dict[str, Any] | None": (dict, type(None)),
}
_AT_LEAST = {
    "image_size": 1, "lm_image_grid": 1, "mask_tokens": 0, "mask_grid": 1,
    "tokenizer_vocab": 1, "max_answer_tokens": 1, "batch_size": 1, "epochs": 1,
    "warmup_steps": 0, "num_workers": 0, "weight_decay": 0, "lm_loss_weight": 0, "grad_clip": 0,
}  # fmt: skip


@dataclass(frozen=True)
class Preset:
    """Everything that defines a model and how it trains."""

    name: str
    description: str
    image_size: int  # the encoder's square input, in pixels
    encoder: str | None = None  # a SamModel: Hugging Face id or folder; None: random `sam`
    sam: dict[str, Any] = field(default_factory=dict)
    lm: str | None = None  # a causal LM: Hugging Face id or folder; None: random `lm_config`
    lm_config: dict[str, Any] = field(default_factory=dict)
    lora: dict[str, Any] | None = None  # peft LoraConfig fields; None trains the LM whole
    freeze_encoder: bool = False
    lm_image_grid: int = 4  # the image reaches the LM as grid x grid pooled tokens
    # the answer reads the predicted mask as this many LM tokens (0: the paper's design, the
    # answer reads the prompt alone), from the mask pooled to mask_grid x mask_grid cells
    mask_tokens: int = 0
    mask_grid: int = 16
    # the decoder's sparse prompt also reads the mean of the prompt's states, where each
    # word is one linear step away (the last state must first learn to attend to it)
    pooled_prompt: bool = False
    answers: str = "generate"  # "generate": the LM answers; "template": rendered from the mask
    lm_loss_weight: float = 1.0
    tokenizer_vocab: int = 2048  # for a tokenizer trained on the build (lm is None)
    max_answer_tokens: int = 64
    batch_size: int = 8
    epochs: int = 20
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 20
    grad_clip: float = 1.0
    mixed_precision: str = "no"  # "bf16": autocast, with fp32 master weights, on GPUs
    num_workers: int = 2

    def __post_init__(self) -> None:
        """Every field of its type, and counts and rates within range (a `--set` value, a
        preset file or a checkpoint's config: an error that names the field, not a
        failure deep in training)."""
        for item in fields(self):
            value = getattr(self, item.name)
            kinds = _KINDS[item.type]
            if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
                raise ValueError(f"preset field {item.name}: expected {item.type}, got {value!r}")
            low = _AT_LEAST.get(item.name)
            if low is not None and value < low:
                raise ValueError(f"preset field {item.name} must be at least {low}, got {value!r}")
        if self.lr <= 0:
            raise ValueError(f"preset field lr must be above 0, got {self.lr!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preset:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown preset field(s) {unknown}; known: {sorted(known)}")
        return cls(**data)

    def with_overrides(self, overrides: dict[str, Any]) -> Preset:
        """This preset with fields replaced (values already parsed)."""
        return Preset.from_dict({**self.to_dict(), **overrides})


PRESETS: dict[str, Preset] = {
    preset.name: preset
    for preset in (
        Preset(
            name="tiny",
            description="random init, trains on 2 CPU cores in minutes",
            image_size=128,
            sam=_TINY_SAM,
            lm_config=_TINY_LM,
            mask_tokens=4,
            pooled_prompt=True,
        ),
        Preset(
            name="mask-only",
            description="the tiny segmenter without the language model: the prompt's token "
            "embeddings condition the mask; answers are rendered from the predicted mask",
            image_size=128,
            sam=_TINY_SAM,
            lm_config={**_TINY_LM, "num_hidden_layers": 0},
            answers="template",
            lm_loss_weight=0.0,
            pooled_prompt=True,
        ),
        Preset(
            name="small",
            description="one GPU: pretrained SAM ViT-B and a 0.5B instruction LM with LoRA",
            image_size=1024,
            encoder="facebook/sam-vit-base",
            lm="Qwen/Qwen2.5-0.5B-Instruct",
            lora=_PAPER_LORA,
            freeze_encoder=True,
            lm_image_grid=8,
            batch_size=4,
            epochs=20,
            lr=1e-4,
            warmup_steps=200,
            mixed_precision="bf16",
            num_workers=8,
            mask_tokens=4,
            pooled_prompt=True,
        ),
        Preset(
            name="full",
            description="the paper's scale: MedSAM (SAM ViT-B) and a 7B Mistral-class LM "
            "(the base of LLaVA-Med 1.5) with LoRA r=16, bf16 autocast",
            image_size=1024,
            encoder="wanglab/medsam-vit-base",
            lm="mistralai/Mistral-7B-Instruct-v0.2",
            lora=_PAPER_LORA,
            freeze_encoder=True,
            lm_image_grid=16,
            batch_size=4,
            epochs=20,
            lr=1e-4,
            warmup_steps=500,
            mixed_precision="bf16",
            num_workers=8,
            mask_tokens=4,
            pooled_prompt=True,
        ),
    )
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None


def parse_override(text: str) -> tuple[str, Any]:
    """`key=value` from the command line; the value is read as JSON where it parses
    (`lr=3e-4`, `lora=null`, `lm_config={"num_hidden_layers": 4}`), else kept as text."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"--set {text!r}: expected KEY=VALUE")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def resolve(name: str, overrides: dict[str, Any] | None = None) -> Preset:
    """A registered preset with `overrides` applied."""
    preset = get_preset(name)
    return preset.with_overrides(overrides) if overrides else replace(preset)
