"""Map diffusers state dicts to the original (ldm / sgm) single-file key layout.

The loading direction is handled by diffusers' single-file loader; this module is the writing
direction, so that checkpoints made by the builder (or by training) look like the files people
download and load in A1111 or ComfyUI.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
SD1_TEXT_PREFIX = "cond_stage_model.transformer."
SD2_TEXT_PREFIX = "cond_stage_model.model."
SDXL_TEXT_PREFIXES = ("conditioner.embedders.0.transformer.", "conditioner.embedders.1.model.")
REFINER_TEXT_PREFIX = "conditioner.embedders.0.model."  # the SDXL refiner's OpenCLIP-G

_UNET_RESNET_PARTS = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_VAE_ATTENTION_PARTS = {
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
}


class KeyMappingError(ValueError):
    """A diffusers weight has no place in the original layout."""


def _as_list(value: Any, count: int) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else [value] * count


def unet_module_map(config: Mapping[str, Any]) -> dict[str, tuple[str, bool]]:
    """diffusers module prefix -> (ldm module prefix, is_resnet)."""
    blocks = len(config["block_out_channels"])
    per_block = _as_list(config["layers_per_block"], blocks)
    if len(set(per_block)) != 1:
        raise KeyMappingError("layers_per_block must be the same for every block")
    layers = per_block[0]
    mapping: dict[str, tuple[str, bool]] = {
        "time_embedding.linear_1": ("time_embed.0", False),
        "time_embedding.linear_2": ("time_embed.2", False),
        "add_embedding.linear_1": ("label_emb.0.0", False),
        "add_embedding.linear_2": ("label_emb.0.2", False),
        "conv_in": ("input_blocks.0.0", False),
        "conv_norm_out": ("out.0", False),
        "conv_out": ("out.2", False),
        "mid_block.resnets.0": ("middle_block.0", True),
        "mid_block.attentions.0": ("middle_block.1", False),
        "mid_block.resnets.1": ("middle_block.2", True),
    }
    for block in range(blocks):
        for layer in range(layers):
            index = 1 + block * (layers + 1) + layer
            mapping[f"down_blocks.{block}.resnets.{layer}"] = (f"input_blocks.{index}.0", True)
            mapping[f"down_blocks.{block}.attentions.{layer}"] = (f"input_blocks.{index}.1", False)
        if block < blocks - 1:
            index = (block + 1) * (layers + 1)
            mapping[f"down_blocks.{block}.downsamplers.0.conv"] = (f"input_blocks.{index}.0.op", False)
        for layer in range(layers + 1):
            index = block * (layers + 1) + layer
            mapping[f"up_blocks.{block}.resnets.{layer}"] = (f"output_blocks.{index}.0", True)
            mapping[f"up_blocks.{block}.attentions.{layer}"] = (f"output_blocks.{index}.1", False)
        if block < blocks - 1:
            has_attention = str(config["up_block_types"][block]).startswith("CrossAttn")
            index = block * (layers + 1) + layers
            slot = 2 if has_attention else 1
            mapping[f"up_blocks.{block}.upsamplers.0.conv"] = (f"output_blocks.{index}.{slot}.conv", False)
    return mapping


def _split_on_module(key: str, modules: Mapping[str, Any]) -> tuple[str, str]:
    parts = key.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        prefix = ".".join(parts[:cut])
        if prefix in modules:
            return prefix, ".".join(parts[cut:])
    raise KeyMappingError(f"no original-layout name for UNet weight {key!r}")


def unet_to_original(state: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict:
    modules = unet_module_map(config)
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        prefix, rest = _split_on_module(key, modules)
        target, is_resnet = modules[prefix]
        if is_resnet:
            head, _, tail = rest.partition(".")
            rest = f"{_UNET_RESNET_PARTS.get(head, head)}.{tail}"
        out[f"{UNET_PREFIX}{target}.{rest}"] = tensor
    return out


_VAE_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"^(encoder|decoder)\.conv_norm_out\."), r"\1.norm_out."),
    (re.compile(r"^(encoder|decoder)\.mid_block\.resnets\.0\."), r"\1.mid.block_1."),
    (re.compile(r"^(encoder|decoder)\.mid_block\.resnets\.1\."), r"\1.mid.block_2."),
    (re.compile(r"^(encoder|decoder)\.mid_block\.attentions\.0\."), r"\1.mid.attn_1."),
    (re.compile(r"^encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\."), r"encoder.down.\1.block.\2."),
    (re.compile(r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\."), r"encoder.down.\1.downsample."),
)


def vae_to_original(state: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict:
    blocks = len(config["block_out_channels"])
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        new = key
        for pattern, replacement in _VAE_PATTERNS:
            new = pattern.sub(replacement, new)
        up = re.match(r"^decoder\.up_blocks\.(\d+)\.(resnets|upsamplers)\.(\d+)\.(.*)$", new)
        if up:
            level = blocks - 1 - int(up.group(1))
            if up.group(2) == "resnets":
                new = f"decoder.up.{level}.block.{up.group(3)}.{up.group(4)}"
            else:
                new = f"decoder.up.{level}.upsample.{up.group(4)}"
        new = new.replace(".conv_shortcut.", ".nin_shortcut.")
        if ".attn_1." in new:
            head, _, tail = new.partition(".attn_1.")
            for diffusers_name, original_name in _VAE_ATTENTION_PARTS.items():
                if tail.startswith(diffusers_name + "."):
                    tail = original_name + tail[len(diffusers_name) :]
                    break
            new = f"{head}.attn_1.{tail}"
            if tail.endswith(".weight") and not tail.startswith("norm.") and tensor.ndim == 2:
                tensor = tensor.reshape(*tensor.shape, 1, 1)
        out[VAE_PREFIX + new] = tensor
    return out


def _with_text_model_prefix(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Newer transformers drop the ``text_model.`` level of CLIPTextModel; restore it."""
    out = {}
    for key, tensor in state.items():
        if key.startswith(("text_model.", "text_projection.")):
            out[key] = tensor
        else:
            out["text_model." + key] = tensor
    return out


def clip_to_original(state: Mapping[str, torch.Tensor], *, prefix: str) -> dict:
    """OpenAI CLIP layout (SD1.x, SDXL's first encoder): the HF names under a prefix."""
    named = _with_text_model_prefix(state)
    return {prefix + key: tensor for key, tensor in named.items() if not key.endswith("position_ids")}


def open_clip_to_original(state: Mapping[str, torch.Tensor], *, prefix: str) -> dict:
    """OpenCLIP layout (SD2.x, SDXL's second encoder): fused qkv, resblocks, projection matrix."""
    named = _with_text_model_prefix(state)
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    simple = {
        "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
        "text_model.embeddings.position_embedding.weight": "positional_embedding",
        "text_model.final_layer_norm.weight": "ln_final.weight",
        "text_model.final_layer_norm.bias": "ln_final.bias",
    }
    layer_parts = {
        "layer_norm1": "ln_1",
        "layer_norm2": "ln_2",
        "mlp.fc1": "mlp.c_fc",
        "mlp.fc2": "mlp.c_proj",
        "self_attn.out_proj": "attn.out_proj",
    }
    for key, tensor in named.items():
        if key.endswith("position_ids"):
            continue
        if key in simple:
            out[prefix + simple[key]] = tensor
            continue
        if key == "text_projection.weight":
            out[prefix + "text_projection"] = tensor.T.contiguous()
            continue
        match = re.match(r"^text_model\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$", key)
        if not match:
            raise KeyMappingError(f"no original-layout name for text encoder weight {key!r}")
        layer, part, kind = int(match.group(1)), match.group(2), match.group(3)
        projection = re.match(r"^self_attn\.(q|k|v)_proj$", part)
        if projection:
            qkv.setdefault((layer, kind), {})[projection.group(1)] = tensor
            continue
        if part not in layer_parts:
            raise KeyMappingError(f"no original-layout name for text encoder weight {key!r}")
        out[f"{prefix}transformer.resblocks.{layer}.{layer_parts[part]}.{kind}"] = tensor
    for (layer, kind), parts in qkv.items():
        fused = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
        out[f"{prefix}transformer.resblocks.{layer}.attn.in_proj_{kind}"] = fused
    return out


CONTROLNET_PREFIX = "control_model."


def controlnet_to_original(state: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict:
    """A diffusers ControlNet under the original (lllyasviel) names: the UNet encoder half
    (``input_blocks``, ``middle_block``, ``time_embed``), ``input_hint_block``, ``zero_convs`` and
    ``middle_block_out``, all under ``control_model.``."""
    unet_config = dict(config)
    unet_config.setdefault(
        "up_block_types",
        [kind.replace("Down", "Up") for kind in reversed(config["down_block_types"])],
    )
    modules = {
        name: target
        for name, target in unet_module_map(unet_config).items()
        if not name.startswith("up_blocks.") and not name.startswith(("conv_norm_out", "conv_out"))
    }
    hint_blocks = len(config.get("conditioning_embedding_out_channels", ())) * 2 - 2
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        name, _, kind = key.rpartition(".")
        hint = re.match(r"^controlnet_cond_embedding\.(conv_in|conv_out|blocks\.(\d+))$", name)
        zero = re.match(r"^controlnet_down_blocks\.(\d+)$", name)
        if hint:
            if hint.group(1) == "conv_in":
                index = 0
            elif hint.group(1) == "conv_out":
                index = 2 * (hint_blocks + 1)
            else:
                index = 2 * (int(hint.group(2)) + 1)
            target = f"input_hint_block.{index}.{kind}"
        elif zero:
            target = f"zero_convs.{zero.group(1)}.0.{kind}"
        elif name == "controlnet_mid_block":
            target = f"middle_block_out.0.{kind}"
        else:
            prefix, rest = _split_on_module(key, modules)
            mapped, is_resnet = modules[prefix]
            if is_resnet:
                head, _, tail = rest.partition(".")
                rest = f"{_UNET_RESNET_PARTS.get(head, head)}.{tail}"
            target = f"{mapped}.{rest}"
        out[CONTROLNET_PREFIX + target] = tensor
    return out
