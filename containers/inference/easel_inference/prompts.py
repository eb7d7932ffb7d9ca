"""A1111 prompt attention syntax and prompts beyond 77 tokens.

``(word)`` x1.1, ``[word]`` /1.1, ``(word:1.3)`` explicit, ``\\(`` literal, ``BREAK`` starts a new
75-token chunk. Long prompts are split into 75-token chunks, each encoded as its own 77-token
sequence and concatenated; weights scale the token embeddings and the chunk's mean is restored,
as A1111 does. (Own implementation: ``compel`` uses a different syntax and weighting scheme.)
"""

from __future__ import annotations

import re
from typing import Any

import torch

CHUNK = 75
_TOKEN = re.compile(
    r"\\[\\()\[\]:]|\(|\[|:\s*([+-]?(?:\d+\.?\d*|\.\d+))\s*\)|\)|\]|\bBREAK\b|(?:(?!\bBREAK\b)[^\\()\[\]:])+|:"
)
UP, DOWN = 1.1, 1 / 1.1


def parse_attention(text: str) -> list[tuple[str, float]]:
    """Fragments and their weights; ``("BREAK", -1)`` marks a chunk break."""
    fragments: list[list[Any]] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def scale(start: int, factor: float) -> None:
        for fragment in fragments[start:]:
            if fragment[1] >= 0:
                fragment[1] *= factor

    for match in _TOKEN.finditer(text):
        token = match.group(0)
        if token.startswith("\\"):
            fragments.append([token[1:], 1.0])
        elif token == "(":
            round_open.append(len(fragments))
        elif token == "[":
            square_open.append(len(fragments))
        elif match.group(1) is not None and round_open:
            scale(round_open.pop(), float(match.group(1)))
        elif token == ")" and round_open:
            scale(round_open.pop(), UP)
        elif token == "]" and square_open:
            scale(square_open.pop(), DOWN)
        elif token == "BREAK":
            fragments.append(["BREAK", -1.0])
        else:
            fragments.append([token, 1.0])
    for start in round_open:
        scale(start, UP)
    for start in square_open:
        scale(start, DOWN)
    merged: list[list[Any]] = []
    for fragment in fragments:
        if merged and merged[-1][1] == fragment[1] and fragment[1] >= 0:
            merged[-1][0] += fragment[0]
        else:
            merged.append(list(fragment))
    return [(str(t), float(w)) for t, w in merged if t]


def _chunks(tokenizer: Any, text: str) -> list[tuple[list[int], list[float]]]:
    chunks: list[tuple[list[int], list[float]]] = []
    ids: list[int] = []
    weights: list[float] = []
    for fragment, weight in parse_attention(text):
        if weight < 0:
            chunks.append((ids, weights))
            ids, weights = [], []
            continue
        tokens = tokenizer(fragment, add_special_tokens=False, truncation=False).input_ids
        for token in tokens:
            if len(ids) == CHUNK:
                chunks.append((ids, weights))
                ids, weights = [], []
            ids.append(token)
            weights.append(weight)
    if ids or not chunks:
        chunks.append((ids, weights))
    return chunks


def _encode_chunks(
    tokenizer: Any, encoder: Any, chunks: list[tuple[list[int], list[float]]], *,
    layer: int | None, device: str, pooled: bool, final_norm: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    outputs, pooled_out = [], None
    for ids, weights in chunks:
        padding = CHUNK - len(ids)
        sequence = [bos, *ids, eos] + [pad] * padding
        scale = torch.tensor([1.0, *weights, 1.0] + [1.0] * padding, device=device)
        input_ids = torch.tensor([sequence], device=device)
        result = encoder(input_ids, output_hidden_states=True)
        if layer is None:
            hidden = result[0]
        else:
            hidden = result.hidden_states[layer]
        if layer is not None and final_norm:
            norm = getattr(encoder, "final_layer_norm", None) or encoder.text_model.final_layer_norm
            hidden = norm(hidden)
        if pooled and pooled_out is None:
            pooled_out = result[0]
        if all(weight == 1.0 for weight in weights):
            outputs.append(hidden)
            continue
        original_mean = hidden.float().mean()
        weighted = hidden.float() * scale[None, :, None]
        new_mean = weighted.mean()
        if abs(float(new_mean)) > 1e-6:
            weighted = weighted * (original_mean / new_mean)
        outputs.append(weighted.to(hidden.dtype))
    return torch.cat(outputs, dim=1), pooled_out


def _pad_chunks(first: list, second: list) -> None:
    while len(first) < len(second):
        first.append(([], []))
    while len(second) < len(first):
        second.append(([], []))


@torch.no_grad()
def encode_prompt_pair(
    pipe: Any, prompt: str, negative: str, *, clip_skip: int | None, device: str
) -> dict[str, torch.Tensor]:
    """``prompt_embeds`` / ``negative_prompt_embeds`` (+ pooled for SDXL) for the pipeline."""
    skip = max(0, (clip_skip or 1) - 1)
    xl = getattr(pipe, "text_encoder_2", None) is not None
    dtype = pipe.unet.dtype
    if not xl:
        positive, negative_chunks = _chunks(pipe.tokenizer, prompt), _chunks(pipe.tokenizer, negative)
        _pad_chunks(positive, negative_chunks)
        layer = None if skip == 0 else -(skip + 1)
        embeds = [
            _encode_chunks(pipe.tokenizer, pipe.text_encoder, chunks, layer=layer, device=device,
                           pooled=False, final_norm=True)[0].to(dtype)
            for chunks in (positive, negative_chunks)
        ]
        return {"prompt_embeds": embeds[0], "negative_prompt_embeds": embeds[1]}
    pairs = [(pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)]
    texts = {"prompt": prompt, "negative": negative}
    chunk_sets = {
        label: [_chunks(tokenizer, text) for tokenizer, _ in pairs] for label, text in texts.items()
    }
    longest = max(len(chunks) for sets in chunk_sets.values() for chunks in sets)
    for sets in chunk_sets.values():
        for chunks in sets:
            chunks.extend([([], [])] * (longest - len(chunks)))
    results = {}
    for label in texts:
        per_encoder, pooled = [], None
        for (tokenizer, encoder), chunks in zip(pairs, chunk_sets[label], strict=True):
            is_second = encoder is pipe.text_encoder_2
            hidden, pooled_here = _encode_chunks(
                tokenizer, encoder, chunks, layer=-(skip + 2), device=device, pooled=is_second
            )
            per_encoder.append(hidden)
            if is_second:
                pooled = pooled_here
        results[label] = (torch.cat(per_encoder, dim=-1).to(dtype), pooled.to(dtype))
    positive, negative_result = results["prompt"], results["negative"]
    negative_embeds, negative_pooled = negative_result
    if not negative and getattr(pipe.config, "force_zeros_for_empty_prompt", False):
        negative_embeds = torch.zeros_like(negative_embeds)
        negative_pooled = torch.zeros_like(negative_pooled)
    return {
        "prompt_embeds": positive[0],
        "negative_prompt_embeds": negative_embeds,
        "pooled_prompt_embeds": positive[1],
        "negative_pooled_prompt_embeds": negative_pooled,
    }
