"""The PRS-Med-style model, from transformers and peft parts.

image -> SAM vision encoder -> image embedding (C x h x w)
  -> pooled to a grid, projected (LLaVA's two-layer MLP) -> image tokens in the LM's input
LM (causal, LoRA where the preset says) reads [bos] [image tokens] prompt
fusion: the image embedding's tokens attend to the LM's last hidden states of the PROMPT
  (key padding mask: padding is never attended), residual + norm
SAM mask decoder: the fused embedding, with the LM's state at the prompt's last token as
  its sparse prompt -> mask logits (4h x 4w)
answer: the LM goes on from the prompt (its KV cache) through `mask_tokens` tokens read off
  the predicted mask, then the answer: what it says is conditioned on what it segments
  (`mask_tokens = 0` is the paper's design, the answer read off the prompt alone)

Prompts are LEFT-padded in training as at inference, with positions counted from each
row's first real token, so the mask branch reads exactly the states it reads at inference,
and the answer follows the same positions in both.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

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
    answer_logits: torch.Tensor | None  # (B, A, vocab): position i predicts labels[:, i]


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
        if preset.pooled_prompt:
            self.pooled_query = nn.Linear(hidden, channels)
        self.cache_argument = _cache_argument(lm)
        self.mask_tokens = preset.mask_tokens
        if self.mask_tokens:
            cells = preset.mask_grid**2
            self.mask_projector = nn.Sequential(
                nn.Linear(2 * cells + 1, hidden),
                nn.GELU(),
                nn.Linear(hidden, self.mask_tokens * hidden),
            )

    # --- the parts -------------------------------------------------------------------
    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """SAM's image embedding (B, C, h, w)."""
        if self.preset.freeze_encoder:
            with torch.no_grad():
                return self.sam.vision_encoder(pixel_values).last_hidden_state
        return self.sam.vision_encoder(pixel_values).last_hidden_state

    def lm_embeddings(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, image: torch.Tensor
    ) -> torch.Tensor:
        """The LM's input embeddings of left-padded prompts, each row's image tokens in
        its image slots (right after its BOS)."""
        embeds = self.lm.get_input_embeddings()(input_ids)
        tokens = self.projector(self.pool(image).flatten(2).transpose(1, 2)).to(embeds.dtype)
        start = (attention_mask.shape[1] - attention_mask.sum(1)) + self.slot
        positions = start[:, None] + torch.arange(self.image_tokens, device=embeds.device)
        index = positions[:, :, None].expand(-1, -1, embeds.shape[-1])
        return embeds.scatter(1, index, tokens)

    def mask_embeddings(self, mask_logits: torch.Tensor) -> torch.Tensor:
        """The predicted mask as `mask_tokens` LM tokens (B, M, hidden): a two-layer MLP
        reads the share of each grid cell the mask covers, the same cells normalised to
        sum to 1 (where the mask lies, whatever its size) and its log area.

        Not detached: the answer's loss reaches the mask through them. (Detached, the LM
        no longer needs the target's place in its prompt states, the decoder's prompt
        loses it, and a tiny run learned to segment both lungs whichever one was asked.)"""
        prob = torch.sigmoid(mask_logits.float())[:, None]
        cells = F.adaptive_avg_pool2d(prob, self.preset.mask_grid).flatten(1)
        area = cells.mean(1, keepdim=True)
        where = cells / cells.sum(1, keepdim=True).clamp(min=1e-6)
        features = torch.cat([cells, where * cells.shape[1] ** 0.5, area.clamp(min=1e-4).log()], 1)
        tokens = self.mask_projector(features.to(self.mask_projector[0].weight.dtype))
        return tokens.reshape(len(tokens), self.mask_tokens, -1)

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
        sparse = [self.seg_query(states[torch.arange(batch, device=states.device), last])]
        if self.preset.pooled_prompt:
            weights = prompt_mask.to(states.dtype)[:, :, None]
            pooled = (states * weights).sum(1) / weights.sum(1)
            sparse.append(self.pooled_query(pooled))
        dense = self.sam.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        positional = self.sam.get_image_wide_positional_embeddings()
        masks, _ = self.sam.mask_decoder(
            image_embeddings=fused,
            image_positional_embeddings=positional.expand(batch, -1, -1, -1),
            sparse_prompt_embeddings=torch.stack(sparse, 1)[:, None],
            dense_prompt_embeddings=dense.expand(batch, -1, height, width),
            multimask_output=False,
        )
        return masks[:, 0, 0]

    # --- the prompt, shared by training and inference -----------------------------------
    def read_prompt(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, Any, torch.Tensor, torch.Tensor]:
        """Mask logits of LEFT-padded prompts, with the LM's output (its KV cache when the
        preset generates answers), the prompt embeddings and the positions."""
        image = self.encode_image(pixel_values)
        embeds = self.lm_embeddings(input_ids, attention_mask, image)
        positions = (attention_mask.cumsum(1) - 1).clamp(min=0)
        out = self.lm(
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            position_ids=positions,
            output_hidden_states=True,
            use_cache=self.preset.answers == "generate",
            logits_to_keep=1,  # only the last prompt token's logits are ever read
        )
        last = torch.full_like(positions[:, 0], input_ids.shape[1] - 1)
        mask_logits = self.segment(image, _states(out, embeds), attention_mask.bool(), last)
        return mask_logits, out, embeds, positions

    # --- training: left-padded prompts, right-padded answers (teacher forcing) -----------
    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        answer_ids: torch.Tensor,
        answer_mask: torch.Tensor,
        labels: torch.Tensor,
    ) -> Output:
        """labels: (B, A) the answer's ids and EOS, IGNORE on its padding."""
        mask_logits, out, _, positions = self.read_prompt(pixel_values, input_ids, attention_mask)
        if self.preset.answers != "generate":
            return Output(mask_logits, mask_logits.new_zeros(len(mask_logits)), None)
        tail = self.lm.get_input_embeddings()(answer_ids)
        tail_mask = answer_mask
        if self.mask_tokens:
            tail = torch.cat([self.mask_embeddings(mask_logits).to(tail.dtype), tail], 1)
            tail_mask = torch.cat([answer_mask.new_ones(len(tail), self.mask_tokens), tail_mask], 1)
        steps = torch.arange(1, tail.shape[1] + 1, device=positions.device)
        cache = out["cache"] if "cache" in out else out["past_key_values"]
        answer = self.lm(
            inputs_embeds=tail,
            attention_mask=torch.cat([attention_mask, tail_mask], 1),
            position_ids=positions[:, -1:] + steps,
            **{self.cache_argument: cache},
        )
        # the prompt's last logits predict the first tail token; the answer's own ids are
        # predicted from the last mask token on
        logits = torch.cat([out.logits[:, -1:], answer.logits], 1)
        logits = logits[:, self.mask_tokens : self.mask_tokens + labels.shape[1]]
        return Output(mask_logits, row_lm_loss(logits, labels), logits)

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

        input_ids are LEFT-padded prompts, as `collate_prompts` gives them.
        """
        mask_logits, out, embeds, _ = self.read_prompt(pixel_values, input_ids, attention_mask)
        if self.preset.answers != "generate":
            return mask_logits, None
        # generate goes on from the prompt's KV cache, less its last token: it reads at
        # least one token past its cache (the prompt's last, then any mask tokens)
        cache = out["cache"] if "cache" in out else out["past_key_values"]
        cache.crop(-1)
        if self.mask_tokens:
            tokens = self.mask_embeddings(mask_logits).to(embeds.dtype)
            embeds = torch.cat([embeds, tokens], 1)
            attention_mask = torch.cat(
                [attention_mask, attention_mask.new_ones(len(tokens), self.mask_tokens)], 1
            )
        generated = self.lm.generate(
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            pad_token_id=self.lm.config.pad_token_id,
            eos_token_id=self.lm.config.eos_token_id,
            **{self.cache_argument: cache},
        )
        return mask_logits, generated


def _cache_argument(lm: nn.Module) -> str:
    """The LM's keyword for a KV cache (transformers 5 renamed `past_key_values` `cache`)."""
    base = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def _states(out, embeds: torch.Tensor) -> torch.Tensor:
    """The LM's last hidden states; its input embeddings when it has no layers (the
    mask-only preset reads the prompt's token embeddings)."""
    return out.hidden_states[-1] if out.hidden_states else embeds


def row_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Each row's mean cross-entropy over its labelled tokens (0 if none); logits[:, i]
    predicts labels[:, i]."""
    losses = F.cross_entropy(
        logits.float().transpose(1, 2), labels, ignore_index=IGNORE, reduction="none"
    )
    return losses.sum(1) / (labels != IGNORE).sum(1).clamp(min=1)


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
