"""LoRA adapters (peft) on the UNet and text encoders, and export in A1111/kohya key names.

Export names: ``lora_unet_<module path with _>.lora_down.weight`` / ``.lora_up.weight`` /
``.alpha``. SD1.x/2.x UNet paths use the diffusers module names (as kohya's sd-scripts do for
those models); SDXL UNet paths use the original sgm block names (``input_blocks_4_1_...``), as
kohya's SDXL LoRAs do. Text encoders: ``lora_te_`` (SD), ``lora_te1_``/``lora_te2_`` (SDXL).

SD3.5 and FLUX.1 LoRAs are exported in the diffusers (peft) format that their pipelines'
``load_lora_weights`` read: ``transformer.<module path>.lora_A.weight`` / ``.lora_B.weight``, with
the alpha/rank scale folded into ``lora_B`` (that format carries no alpha).
"""

from __future__ import annotations

import re
from typing import Any

import torch
from easel_contracts.families import ModelFamily
from peft import LoraConfig

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
# the transformer's attention projections: image stream (to_*) and text stream (add_*, to_add_out)
# of the joint blocks; SD3.5 medium's second image attention (attn2) and FLUX's single blocks
# match the same names
FLOW_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj",
                "to_add_out"]
TEXT_ENCODER_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
ADAPTER = "default"

_DOWN = re.compile(r"^down_blocks\.(\d+)\.attentions\.(\d+)\.(.*)$")
_MID = re.compile(r"^mid_block\.attentions\.0\.(.*)$")
_UP = re.compile(r"^up_blocks\.(\d+)\.attentions\.(\d+)\.(.*)$")


def add_lora(model: torch.nn.Module, *, rank: int, alpha: float, dropout: float,
             targets: list[str]) -> None:
    """Freeze ``model`` and add a trainable float32 LoRA adapter on ``targets``."""
    model.requires_grad_(False)
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout,
                        init_lora_weights="gaussian", target_modules=targets)
    model.add_adapter(config)
    for parameter in model.parameters():
        if parameter.requires_grad:
            parameter.data = parameter.data.float()


def lora_layers(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """Modules holding our adapter, by their module path."""
    return {
        name: module for name, module in model.named_modules()
        if hasattr(module, "lora_A") and ADAPTER in getattr(module, "lora_A", {})
    }


def sgm_unet_path(path: str, layers_per_block: int) -> str:
    """A diffusers SDXL UNet module path in the original sgm layout."""
    per_block = layers_per_block + 1
    if match := _DOWN.match(path):
        block, layer, rest = int(match[1]), int(match[2]), match[3]
        return f"input_blocks.{1 + block * per_block + layer}.1.{rest}"
    if match := _MID.match(path):
        return f"middle_block.1.{match[1]}"
    if match := _UP.match(path):
        block, layer, rest = int(match[1]), int(match[2]), match[3]
        return f"output_blocks.{block * per_block + layer}.1.{rest}"
    raise ValueError(f"no sgm name for UNet module {path!r}")


def clip_text_path(path: str) -> str:
    """CLIP text-encoder module paths as in the original CLIP/kohya naming (``text_model.`` first);
    recent transformers versions drop that level from ``CLIPTextModel``."""
    return path if path.startswith("text_model.") else f"text_model.{path}"


def kohya_name(prefix: str, path: str) -> str:
    return f"{prefix}_{path.replace('.', '_')}"


def export_kohya(unet: torch.nn.Module, text_encoders: list[torch.nn.Module], *, sdxl: bool,
                 dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The trained adapters as an A1111/kohya LoRA state dict."""
    entries: list[tuple[str, torch.nn.Module]] = []
    layers_per_block = unet.config.layers_per_block
    if not isinstance(layers_per_block, int):
        layers_per_block = layers_per_block[0]
    for path, module in lora_layers(unet).items():
        mapped = sgm_unet_path(path, layers_per_block) if sdxl else path
        entries.append((kohya_name("lora_unet", mapped), module))
    prefixes = ["lora_te1", "lora_te2"] if sdxl else ["lora_te"]
    for prefix, encoder in zip(prefixes, text_encoders, strict=False):
        for path, module in lora_layers(encoder).items():
            entries.append((kohya_name(prefix, clip_text_path(path)), module))
    state: dict[str, torch.Tensor] = {}
    for name, module in entries:
        down = module.lora_A[ADAPTER].weight.detach()
        up = module.lora_B[ADAPTER].weight.detach()
        state[f"{name}.lora_down.weight"] = down.to("cpu", dtype).contiguous()
        state[f"{name}.lora_up.weight"] = up.to("cpu", dtype).contiguous()
        state[f"{name}.alpha"] = torch.tensor(float(module.lora_alpha[ADAPTER]), dtype=dtype)
    return state


def export_diffusers(transformer: torch.nn.Module, *,
                     dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The trained transformer adapters as a diffusers-format LoRA state dict."""
    state: dict[str, torch.Tensor] = {}
    for path, module in lora_layers(transformer).items():
        down = module.lora_A[ADAPTER].weight.detach().float()
        up = module.lora_B[ADAPTER].weight.detach().float() * float(module.scaling[ADAPTER])
        state[f"transformer.{path}.lora_A.weight"] = down.to("cpu", dtype).contiguous()
        state[f"transformer.{path}.lora_B.weight"] = up.to("cpu", dtype).contiguous()
    return state


def kohya_metadata(*, rank: int, alpha: float, sdxl: bool, v2: bool, output_name: str,
                   steps: int, base_model: str) -> dict[str, str]:
    """The ``ss_*`` metadata A1111 and kohya tools display for a LoRA."""
    return {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(rank),
        "ss_network_alpha": str(alpha),
        "ss_base_model_version": "sdxl_base_v1-0" if sdxl else ("sd_v2" if v2 else "sd_v1"),
        "ss_v2": str(v2),
        "ss_output_name": output_name,
        "ss_max_train_steps": str(steps),
        "ss_sd_model_name": base_model,
        "ss_training_comment": "trained with Easel",
    }


def flow_metadata(*, rank: int, alpha: float, family: ModelFamily, output_name: str,
                  steps: int, base_model: str) -> dict[str, str]:
    """The ``ss_*`` metadata of an SD3.5/FLUX.1 LoRA (kohya's base-model names ``sd3`` and
    ``flux1``), and the family in Easel's own key."""
    return {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(rank),
        "ss_network_alpha": str(alpha),
        "ss_base_model_version": "flux1" if family.value.startswith("flux") else "sd3",
        "ss_output_name": output_name,
        "ss_max_train_steps": str(steps),
        "ss_sd_model_name": base_model,
        "ss_training_comment": "trained with Easel",
        "easel_family": family.value,
    }


def trainable_state(modules: dict[str, torch.nn.Module]) -> dict[str, torch.nn.Parameter]:
    """Every trainable parameter, named ``<component>.<parameter path>``."""
    return {
        f"{component}.{name}": parameter
        for component, module in modules.items()
        for name, parameter in module.named_parameters()
        if parameter.requires_grad
    }


def copy_into(parameters: dict[str, torch.nn.Parameter], saved: dict[str, Any]) -> None:
    missing = sorted(set(parameters) - set(saved))
    unexpected = sorted(set(saved) - set(parameters))
    if missing or unexpected:
        raise ValueError(f"checkpoint does not match the model: missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}")
    with torch.no_grad():
        for name, parameter in parameters.items():
            parameter.copy_(saved[name].to(parameter.device, parameter.dtype))
