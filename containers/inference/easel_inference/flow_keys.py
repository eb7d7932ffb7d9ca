"""SD3.5 MMDiT and FLUX.1 transformer weights between the original single-file key layout
(Stability's ``joint_blocks.*``, Black Forest Labs' ``double_blocks.*`` / ``single_blocks.*``) and
diffusers' module names, in both directions, from one table.

One original tensor is one or more diffusers tensors: copied, concatenated along dim 0 (fused
``qkv``; a FLUX single block's ``linear1`` is q, k, v and the MLP input), or with its two halves
swapped (the final AdaLN: shift-scale in the originals, scale-shift in diffusers). Split sizes come
from the target model's own tensor shapes, so any width converts (diffusers' converter fixes the
FLUX inner width at 3072, which toy-size test models do not have).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

SD3_PREFIX = "model.diffusion_model."


class FlowKeyError(ValueError):
    """The weights do not fit the transformer built for them; says which keys."""


@dataclass(frozen=True)
class Group:
    original: str
    parts: tuple[str, ...]
    swap: bool = False


def _linear(original: str, diffusers: str, *, bias: bool = True) -> list[Group]:
    groups = [Group(f"{original}.weight", (f"{diffusers}.weight",))]
    if bias:
        groups.append(Group(f"{original}.bias", (f"{diffusers}.bias",)))
    return groups


def _fused(original: str, parts: Iterable[str]) -> list[Group]:
    parts = tuple(parts)
    return [Group(f"{original}.weight", tuple(f"{p}.weight" for p in parts)),
            Group(f"{original}.bias", tuple(f"{p}.bias" for p in parts))]


def _block_indices(keys: Iterable[str], prefix: str) -> list[int]:
    return sorted({int(key[len(prefix):].split(".", 1)[0]) for key in keys
                   if key.startswith(prefix)})


def flux_groups(diffusers_keys: Iterable[str]) -> list[Group]:
    keys = set(diffusers_keys)
    groups = [
        *_linear("img_in", "x_embedder"), *_linear("txt_in", "context_embedder"),
        *_linear("time_in.in_layer", "time_text_embed.timestep_embedder.linear_1"),
        *_linear("time_in.out_layer", "time_text_embed.timestep_embedder.linear_2"),
        *_linear("vector_in.in_layer", "time_text_embed.text_embedder.linear_1"),
        *_linear("vector_in.out_layer", "time_text_embed.text_embedder.linear_2"),
        *_linear("final_layer.linear", "proj_out"),
        Group("final_layer.adaLN_modulation.1.weight", ("norm_out.linear.weight",), swap=True),
        Group("final_layer.adaLN_modulation.1.bias", ("norm_out.linear.bias",), swap=True),
    ]
    if "time_text_embed.guidance_embedder.linear_1.weight" in keys:
        groups += [*_linear("guidance_in.in_layer", "time_text_embed.guidance_embedder.linear_1"),
                   *_linear("guidance_in.out_layer", "time_text_embed.guidance_embedder.linear_2")]
    for i in _block_indices(keys, "transformer_blocks."):
        o, d = f"double_blocks.{i}", f"transformer_blocks.{i}"
        groups += [
            *_linear(f"{o}.img_mod.lin", f"{d}.norm1.linear"),
            *_linear(f"{o}.txt_mod.lin", f"{d}.norm1_context.linear"),
            *_fused(f"{o}.img_attn.qkv", (f"{d}.attn.to_{x}" for x in "qkv")),
            *_fused(f"{o}.txt_attn.qkv", (f"{d}.attn.add_{x}_proj" for x in "qkv")),
            Group(f"{o}.img_attn.norm.query_norm.scale", (f"{d}.attn.norm_q.weight",)),
            Group(f"{o}.img_attn.norm.key_norm.scale", (f"{d}.attn.norm_k.weight",)),
            Group(f"{o}.txt_attn.norm.query_norm.scale", (f"{d}.attn.norm_added_q.weight",)),
            Group(f"{o}.txt_attn.norm.key_norm.scale", (f"{d}.attn.norm_added_k.weight",)),
            *_linear(f"{o}.img_attn.proj", f"{d}.attn.to_out.0"),
            *_linear(f"{o}.txt_attn.proj", f"{d}.attn.to_add_out"),
            *_linear(f"{o}.img_mlp.0", f"{d}.ff.net.0.proj"),
            *_linear(f"{o}.img_mlp.2", f"{d}.ff.net.2"),
            *_linear(f"{o}.txt_mlp.0", f"{d}.ff_context.net.0.proj"),
            *_linear(f"{o}.txt_mlp.2", f"{d}.ff_context.net.2"),
        ]
    for i in _block_indices(keys, "single_transformer_blocks."):
        o, d = f"single_blocks.{i}", f"single_transformer_blocks.{i}"
        groups += [
            *_fused(f"{o}.linear1", (*(f"{d}.attn.to_{x}" for x in "qkv"), f"{d}.proj_mlp")),
            *_linear(f"{o}.linear2", f"{d}.proj_out"),
            Group(f"{o}.norm.query_norm.scale", (f"{d}.attn.norm_q.weight",)),
            Group(f"{o}.norm.key_norm.scale", (f"{d}.attn.norm_k.weight",)),
            *_linear(f"{o}.modulation.lin", f"{d}.norm.linear"),
        ]
    return groups


def _sd3_attention(o: str, d: str, *, context: bool, proj: bool, keys: set[str]) -> list[Group]:
    names = ("add_q_proj", "add_k_proj", "add_v_proj") if context else ("to_q", "to_k", "to_v")
    groups = _fused(f"{o}.qkv", (f"{d}.{n}" for n in names))
    if proj:
        groups += _linear(f"{o}.proj", f"{d}.to_add_out" if context else f"{d}.to_out.0")
    norms = ("norm_added_q", "norm_added_k") if context else ("norm_q", "norm_k")
    for ln, norm in zip(("ln_q", "ln_k"), norms, strict=True):
        if f"{d}.{norm}.weight" in keys:
            groups.append(Group(f"{o}.{ln}.weight", (f"{d}.{norm}.weight",)))
    return groups


def sd3_groups(diffusers_keys: Iterable[str]) -> list[Group]:
    keys = set(diffusers_keys)
    groups = [
        Group("pos_embed", ("pos_embed.pos_embed",)),
        *_linear("x_embedder.proj", "pos_embed.proj"),
        *_linear("context_embedder", "context_embedder"),
        *_linear("t_embedder.mlp.0", "time_text_embed.timestep_embedder.linear_1"),
        *_linear("t_embedder.mlp.2", "time_text_embed.timestep_embedder.linear_2"),
        *_linear("y_embedder.mlp.0", "time_text_embed.text_embedder.linear_1"),
        *_linear("y_embedder.mlp.2", "time_text_embed.text_embedder.linear_2"),
        *_linear("final_layer.linear", "proj_out"),
        Group("final_layer.adaLN_modulation.1.weight", ("norm_out.linear.weight",), swap=True),
        Group("final_layer.adaLN_modulation.1.bias", ("norm_out.linear.bias",), swap=True),
    ]
    blocks = _block_indices(keys, "transformer_blocks.")
    for i in blocks:
        o, d = f"joint_blocks.{i}", f"transformer_blocks.{i}"
        last = f"{d}.ff_context.net.2.weight" not in keys  # context_pre_only: no context output
        groups += [
            *_linear(f"{o}.x_block.adaLN_modulation.1", f"{d}.norm1.linear"),
            *_sd3_attention(f"{o}.x_block.attn", f"{d}.attn", context=False, proj=True, keys=keys),
            *_linear(f"{o}.x_block.mlp.fc1", f"{d}.ff.net.0.proj"),
            *_linear(f"{o}.x_block.mlp.fc2", f"{d}.ff.net.2"),
            *_sd3_attention(f"{o}.context_block.attn", f"{d}.attn", context=True,
                            proj=not last, keys=keys),
            Group(f"{o}.context_block.adaLN_modulation.1.weight",
                  (f"{d}.norm1_context.linear.weight",), swap=last),
            Group(f"{o}.context_block.adaLN_modulation.1.bias",
                  (f"{d}.norm1_context.linear.bias",), swap=last),
        ]
        if not last:
            groups += [*_linear(f"{o}.context_block.mlp.fc1", f"{d}.ff_context.net.0.proj"),
                       *_linear(f"{o}.context_block.mlp.fc2", f"{d}.ff_context.net.2")]
        if f"{d}.attn2.to_q.weight" in keys:
            groups += _sd3_attention(f"{o}.x_block.attn2", f"{d}.attn2", context=False,
                                     proj=True, keys=keys)
    return groups


def _swap(tensor: torch.Tensor) -> torch.Tensor:
    first, second = tensor.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def groups_for(kind: str, diffusers_keys: Iterable[str]) -> list[Group]:
    return sd3_groups(diffusers_keys) if kind == "sd3" else flux_groups(diffusers_keys)


def to_original(kind: str, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A diffusers transformer state dict in the original single-file layout (SD3 keys carry
    ``model.diffusion_model.``; FLUX keys are bare, as BFL's files are)."""
    prefix = SD3_PREFIX if kind == "sd3" else ""
    out: dict[str, torch.Tensor] = {}
    for group in groups_for(kind, state):
        tensor = torch.cat([state[part] for part in group.parts], dim=0)
        out[prefix + group.original] = _swap(tensor) if group.swap else tensor
    unused = set(state) - {part for group in groups_for(kind, state) for part in group.parts}
    if unused:
        raise FlowKeyError(f"no original key for {sorted(unused)[:3]}")
    return out


def to_diffusers(kind: str, original: Mapping[str, torch.Tensor],
                 shapes: Mapping[str, Any], *, name: str) -> dict[str, torch.Tensor]:
    """The original-layout denoiser tensors of ``original`` (prefix stripped) as the diffusers
    state dict of a model whose tensor ``shapes`` are given; every tensor must be used and
    every target filled, else :class:`FlowKeyError` names the first ones."""
    bare = {key.removeprefix(SD3_PREFIX): value for key, value in original.items()}
    out: dict[str, torch.Tensor] = {}
    missing: list[str] = []
    for group in groups_for(kind, shapes):
        tensor = bare.pop(group.original, None)
        if tensor is None:
            missing.append(group.original)
            continue
        if group.swap:
            tensor = _swap(tensor)
        sizes = [int(shapes[part][0]) for part in group.parts]
        if sum(sizes) != tensor.shape[0]:
            raise FlowKeyError(f"{name}: {group.original} has {tensor.shape[0]} rows, the model "
                               f"built for it needs {sum(sizes)}")
        for part, piece in zip(group.parts, torch.split(tensor, sizes, dim=0), strict=True):
            if tuple(piece.shape) != tuple(shapes[part]):
                raise FlowKeyError(f"{name}: {group.original} is {tuple(tensor.shape)}, the model "
                                   f"built for it needs {tuple(shapes[part])} for {part}")
            out[part] = piece
    if missing:
        raise FlowKeyError(f"{name}: lacks {len(missing)} transformer tensors, e.g. {missing[:3]}")
    if bare:
        raise FlowKeyError(f"{name}: has {len(bare)} transformer tensors the model does not "
                           f"use, e.g. {sorted(bare)[:3]}")
    return out
