"""The PRS-Med-style model, from transformers and peft parts.

image -> SAM vision encoder -> image embedding (C x h x w)
  -> pooled to a grid, projected (LLaVA's two-layer MLP) -> image tokens in the LM's input
LM (causal, LoRA where the preset says) reads [bos] [image tokens] prompt [answer]
fusion: the image embedding's tokens attend to the LM's last hidden states of the PROMPT
  (key padding mask: padding and answer positions are never attended), residual + norm
SAM mask decoder: the fused embedding, with the LM's state at the prompt's last token as
  its sparse prompt -> mask logits (4h x 4w)

The mask branch reads only prompt states, which a causal LM computes without seeing the
answer: the states it gets at training (teacher forcing) are the states it gets at inference.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, SamConfig, SamModel

from .presets import Preset
from .prompt import IGNORE, image_slot


@dataclass
class Output:
    mask_logits: torch.Tensor  # (B, 4h, 4w)
    lm_loss: torch.Tensor  # (B,) mean cross-entropy over each row's labelled tokens


class PRSMed(nn.Module):
    def __init__(self, preset: Preset, sam: SamModel, lm: nn.Module, slot: int) -> None:
        super().__init__()
        self.preset = preset
        self.sam = sam
        self.lm = lm
        self.slot = slot
        channels = sam.config.vision_config.output_channels
        hidden = lm.config.hidden_size
        self.image_tokens = preset.lm_image_grid**2
        self.pool = nn.AdaptiveAvgPool2d(preset.lm_image_grid)
        self.projector = nn.Sequential(
            nn.Linear(channels, hidden), nn.GELU(), nn.Linear(hidden, hidden)
        )
        self.prompt_proj = nn.Linear(hidden, channels)
        self.fusion = nn.MultiheadAttention(channels, max(1, channels // 32), batch_first=True)
        self.fusion_norm = nn.LayerNorm(channels)
        self.seg_query = nn.Linear(hidden, channels)

    # --- the parts -------------------------------------------------------------------
    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """SAM's image embedding (B, C, h, w)."""
        if self.preset.freeze_encoder:
            with torch.no_grad():
                return self.sam.vision_encoder(pixel_values).last_hidden_state
        return self.sam.vision_encoder(pixel_values).last_hidden_state

    def lm_embeddings(
        self, input_ids: torch.Tensor, image: torch.Tensor, image_start: torch.Tensor
    ) -> torch.Tensor:
        """The LM's input embeddings with each row's image tokens at image_start[row]."""
        embeds = self.lm.get_input_embeddings()(input_ids)
        tokens = self.projector(self.pool(image).flatten(2).transpose(1, 2)).to(embeds.dtype)
        positions = image_start[:, None] + torch.arange(self.image_tokens, device=embeds.device)
        index = positions[:, :, None].expand(-1, -1, embeds.shape[-1])
        return embeds.scatter(1, index, tokens)

    def segment(
        self,
        image: torch.Tensor,
        states: torch.Tensor,
        prompt_mask: torch.Tensor,
        last: torch.Tensor,
    ) -> torch.Tensor:
        """Mask logits from the image embedding and the LM's prompt states.

        prompt_mask: (B, L) True on the prompt's positions; last: (B,) index of each row's
        last prompt token.
        """
        batch, channels, height, width = image.shape
        states = states.to(self.prompt_proj.weight.dtype)
        keys = self.prompt_proj(states)
        queries = image.flatten(2).transpose(1, 2)
        attended, _ = self.fusion(
            queries, keys, keys, key_padding_mask=~prompt_mask, need_weights=False
        )
        fused = self.fusion_norm(queries + attended).transpose(1, 2)
        fused = fused.reshape(batch, channels, height, width)
        query = self.seg_query(states[torch.arange(batch, device=states.device), last])
        dense = self.sam.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        positional = self.sam.get_image_wide_positional_embeddings()
        masks, _ = self.sam.mask_decoder(
            image_embeddings=fused,
            image_positional_embeddings=positional.expand(batch, -1, -1, -1),
            sparse_prompt_embeddings=query[:, None, None, :],
            dense_prompt_embeddings=dense.expand(batch, -1, height, width),
            multimask_output=False,
        )
        return masks[:, 0, 0]

    # --- training: right-padded prompt + answer ------------------------------------------
    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        prompt_lengths: torch.Tensor,
        labels: torch.Tensor,
    ) -> Output:
        image = self.encode_image(pixel_values)
        start = torch.full_like(prompt_lengths, self.slot)
        embeds = self.lm_embeddings(input_ids, image, start)
        out = self.lm(
            inputs_embeds=embeds, attention_mask=attention_mask, output_hidden_states=True
        )
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        prompt_mask = positions[None, :] < prompt_lengths[:, None]
        mask_logits = self.segment(image, _states(out, embeds), prompt_mask, prompt_lengths - 1)
        return Output(mask_logits, row_lm_loss(out.logits, labels))

    # --- inference: left-padded prompts ---------------------------------------------------
    @torch.no_grad()
    def predict(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        max_new_tokens: int,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Mask logits and (when the preset generates answers) the greedy answer ids.

        input_ids are LEFT-padded prompts, as `encode_prompt` gives them.
        """
        image = self.encode_image(pixel_values)
        start = (attention_mask.shape[1] - attention_mask.sum(1)) + self.slot
        embeds = self.lm_embeddings(input_ids, image, start)
        last = torch.full_like(start, input_ids.shape[1] - 1)
        if self.preset.answers != "generate":
            out = self.lm(
                inputs_embeds=embeds, attention_mask=attention_mask, output_hidden_states=True
            )
            return self.segment(image, _states(out, embeds), attention_mask.bool(), last), None
        generated = self.lm.generate(
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            pad_token_id=self.lm.config.pad_token_id,
            eos_token_id=self.lm.config.eos_token_id,
            output_hidden_states=True,
            return_dict_in_generate=True,
        )
        states = generated.hidden_states[0][-1]  # the first step: the whole prompt
        return self.segment(image, states, attention_mask.bool(), last), generated.sequences


def _states(out, embeds: torch.Tensor) -> torch.Tensor:
    """The LM's last hidden states; its input embeddings when it has no layers (the
    mask-only preset reads the prompt's token embeddings)."""
    return out.hidden_states[-1] if out.hidden_states else embeds


def row_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Each row's mean next-token cross-entropy over its labelled tokens (0 if none)."""
    shifted = labels[:, 1:]
    losses = F.cross_entropy(
        logits[:, :-1].float().transpose(1, 2), shifted, ignore_index=IGNORE, reduction="none"
    )
    counts = (shifted != IGNORE).sum(1)
    return losses.sum(1) / counts.clamp(min=1)


def build_model(preset: Preset, tokenizer) -> PRSMed:
    """The model of a preset: pretrained parts through `from_pretrained`, the rest random."""
    if preset.encoder:
        sam = SamModel.from_pretrained(preset.encoder)
    else:
        sam = SamModel(SamConfig(**preset.sam))
    if preset.lm:
        lm = AutoModelForCausalLM.from_pretrained(preset.lm, dtype=torch.float32)
        lm.config.pad_token_id = tokenizer.pad_token_id
    else:
        settings = dict(preset.lm_config)
        config = AutoConfig.for_model(
            settings.pop("model_type"),
            vocab_size=len(tokenizer),
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            **settings,
        )
        lm = AutoModelForCausalLM.from_config(config)
    lm.generation_config.pad_token_id = tokenizer.pad_token_id
    lm.generation_config.eos_token_id = tokenizer.eos_token_id
    if preset.lora:
        from peft import LoraConfig, get_peft_model

        lm = get_peft_model(lm, LoraConfig(task_type="CAUSAL_LM", **preset.lora))
    model = PRSMed(preset, sam, lm, image_slot(tokenizer))
    if preset.freeze_encoder:
        model.sam.vision_encoder.requires_grad_(False)
    return model
