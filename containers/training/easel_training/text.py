"""Prompt encoding the way the Stable Diffusion pipelines condition the UNet.

SD1.x/2.x: the text encoder's last hidden state. SDXL: the penultimate hidden states of both
encoders side by side, plus the second encoder's pooled projection.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class PromptEncoding:
    hidden: torch.Tensor           # [N, tokens, dim]
    pooled: torch.Tensor | None    # [N, dim] (SDXL)

    def select(self, index: torch.Tensor) -> PromptEncoding:
        pooled = None if self.pooled is None else self.pooled.index_select(0, index)
        return PromptEncoding(self.hidden.index_select(0, index), pooled)


def tokenize(tokenizer: Any, prompts: list[str]) -> torch.Tensor:
    return tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length,
                     truncation=True, return_tensors="pt").input_ids


def encode_token_ids(text_encoders: list[Any], token_ids: list[torch.Tensor], *,
                     sdxl: bool) -> PromptEncoding:
    if not sdxl:
        output = text_encoders[0](token_ids[0])
        return PromptEncoding(output.last_hidden_state, None)
    hidden_parts = []
    pooled = None
    for encoder, ids in zip(text_encoders, token_ids, strict=True):
        output = encoder(ids, output_hidden_states=True)
        hidden_parts.append(output.hidden_states[-2])
        pooled = output.text_embeds if hasattr(output, "text_embeds") else output[0]
    return PromptEncoding(torch.cat(hidden_parts, dim=-1), pooled)

