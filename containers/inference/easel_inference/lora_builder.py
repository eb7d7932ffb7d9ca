"""Random-weight LoRA files for tests and benchmarks, in both supported key formats."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from .lora_format import ModuleIndex

UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")


def _targets(pipe: Any) -> list[tuple[str, str, torch.nn.Module]]:
    index = ModuleIndex(pipe)
    chosen = []
    for (component, name), module in index.modules.items():
        suffixes = UNET_TARGETS if component == "unet" else TEXT_TARGETS
        if any(name.endswith("." + suffix) for suffix in suffixes):
            chosen.append((component, name, module))
    return chosen


def _pair(module: torch.nn.Module, rank: int, generator: torch.Generator) -> tuple:
    weight = module.weight
    out_features, in_features = weight.shape[0], weight.shape[1]
    down = torch.randn(rank, in_features, generator=generator) / in_features**0.5
    # the weight may live on a GPU (the full-size benches): its scale comes back as a float
    up = torch.randn(out_features, rank, generator=generator) * float(weight.float().std()) * 2
    return down, up


def random_kohya_lora(pipe: Any, *, rank: int = 4, alpha: float = 2.0, seed: int = 0) -> dict:
    """A1111/kohya keys: ``lora_unet_<module_with_underscores>.lora_down.weight`` + ``.alpha``."""
    generator = torch.Generator().manual_seed(seed)
    prefixes = {"unet": "lora_unet_", "text_encoder": "lora_te_", "text_encoder_2": "lora_te2_"}
    if getattr(pipe, "text_encoder_2", None) is not None:
        prefixes["text_encoder"] = "lora_te1_"
    state = {}
    for component, name, module in _targets(pipe):
        if component.startswith("text_encoder") and not name.startswith("text_model."):
            name = "text_model." + name
        stem = prefixes[component] + name.replace(".", "_")
        down, up = _pair(module, rank, generator)
        state[stem + ".lora_down.weight"] = down.contiguous()
        state[stem + ".lora_up.weight"] = up.contiguous()
        state[stem + ".alpha"] = torch.tensor(float(alpha))
    return state


def random_diffusers_lora(pipe: Any, *, rank: int = 4, seed: int = 1) -> dict:
    """diffusers/PEFT keys: ``unet.<module>.lora_A.weight`` / ``lora_B.weight`` (alpha = rank)."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for component, name, module in _targets(pipe):
        if component != "unet":
            continue
        down, up = _pair(module, rank, generator)
        state[f"unet.{name}.lora_A.weight"] = down.contiguous()
        state[f"unet.{name}.lora_B.weight"] = up.contiguous()
    return state


def save_random_loras(pipe: Any, lora_dir: str | Path, *, seed: int = 0) -> dict[str, Path]:
    """Write ``<dir>/<arch>-kohya.safetensors`` style files; returns name -> path."""
    lora_dir = Path(lora_dir)
    lora_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    kohya = lora_dir / "style-kohya.safetensors"
    save_file(random_kohya_lora(pipe, seed=seed), str(kohya), metadata={"format": "pt"})
    written["style-kohya"] = kohya
    peft = lora_dir / "detail-diffusers.safetensors"
    # the adapter config as diffusers' save_lora_weights writes it ("unet."-prefixed LoraConfig
    # fields), so stock diffusers/PEFT can load the file too
    adapter = {"unet.r": 4, "unet.lora_alpha": 4, "unet.target_modules": list(UNET_TARGETS)}
    metadata = {"format": "pt", "lora_adapter_metadata": json.dumps(adapter)}
    save_file(random_diffusers_lora(pipe, seed=seed + 1), str(peft), metadata=metadata)
    written["detail-diffusers"] = peft
    return written


def random_flow_kohya_lora(pipe: Any, *, rank: int = 4, alpha: float = 2.0,
                           seed: int = 3) -> dict:
    """A kohya LoRA on an SD3.5 / FLUX.1 transformer: ``lora_unet_<original module>`` keys for
    every linear of the original layout (fused ``qkv`` and FLUX's ``linear1`` included), plus
    CLIP-L's attention (``lora_te1_``)."""
    from .flow_keys import groups_for

    generator = torch.Generator().manual_seed(seed)
    transformer = pipe.transformer
    kind = "sd3" if type(pipe).__name__.startswith("StableDiffusion3") else "flux"
    weights = transformer.state_dict()
    state = {}
    for group in groups_for(kind, weights):
        if not group.original.endswith(".weight") or weights[group.parts[0]].ndim != 2:
            continue
        rows = sum(weights[part].shape[0] for part in group.parts)
        columns = weights[group.parts[0]].shape[1]
        scale = float(torch.cat([weights[p] for p in group.parts]).float().std())
        stem = "lora_unet_" + group.original[: -len(".weight")].replace(".", "_")
        state[stem + ".lora_down.weight"] = torch.randn(rank, columns, generator=generator) \
            / columns**0.5
        state[stem + ".lora_up.weight"] = torch.randn(rows, rank, generator=generator) * scale * 2
        state[stem + ".alpha"] = torch.tensor(float(alpha))
    for component, name, module in _targets(pipe):
        if component == "text_encoder":
            stem = "lora_te1_" + ("text_model." + name if not name.startswith("text_model.")
                                  else name).replace(".", "_")
            down, up = _pair(module, rank, generator)
            state[stem + ".lora_down.weight"] = down.contiguous()
            state[stem + ".lora_up.weight"] = up.contiguous()
            state[stem + ".alpha"] = torch.tensor(float(alpha))
    return state


def random_flow_diffusers_lora(pipe: Any, *, rank: int = 4, seed: int = 4) -> dict:
    """A diffusers/PEFT LoRA on an SD3.5 / FLUX.1 transformer's attention:
    ``transformer.<module>.lora_A.weight`` / ``lora_B.weight`` (alpha = rank)."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for (component, name), module in ModuleIndex(pipe).modules.items():
        if component == "transformer" and name.rsplit(".", 1)[-1] in ("to_q", "to_k", "to_v"):
            down, up = _pair(module, rank, generator)
            state[f"transformer.{name}.lora_A.weight"] = down.contiguous()
            state[f"transformer.{name}.lora_B.weight"] = up.contiguous()
    return state
