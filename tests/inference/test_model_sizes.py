"""The one table of parameter counts (``easel_contracts.model_sizes``) is what the released
architectures hold: each component is built at full size on the meta device (no memory, no
weights) from the configs the inference server ships, and counted."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from easel_contracts.families import FAMILIES, ModelFamily
from easel_contracts.model_sizes import MODEL_SIZES
from easel_inference.archconfigs import full_components, refiner_unet, text_encoder_names
from easel_inference.flow_configs import SHIPPED
from easel_inference.flow_loader import encoder_slots, is_sd3

_ARCH = {ModelFamily.SD1: "sd15", ModelFamily.SD2: "sd2", ModelFamily.SDXL: "sdxl"}


def _fields(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items()
            if not k.startswith("_") and k not in ("architectures", "model_type")}


def _configs(family: ModelFamily) -> dict[str, tuple[str, dict[str, Any]]]:
    """component -> (class name, config) for the family's denoiser, VAE and text encoders."""
    if family in SHIPPED:
        shipped = SHIPPED[family]
        denoiser = "SD3Transformer2DModel" if is_sd3(family) else "FluxTransformer2DModel"
        parts = {"denoiser": (denoiser, shipped["transformer"]),
                 "vae": ("AutoencoderKL", shipped["vae"])}
        for kind, slot in encoder_slots(family).items():
            parts[kind] = (shipped[slot]["architectures"][0], shipped[slot])
        return parts
    arch = "sdxl" if family is ModelFamily.SDXL_REFINER else _ARCH[family]
    components = full_components(arch)
    if family is ModelFamily.SDXL_REFINER:  # SDXL's VAE and second encoder, its own UNet
        return {"denoiser": ("UNet2DConditionModel", refiner_unet()),
                "vae": ("AutoencoderKL", components["vae"]),
                "openclip_g": ("CLIPTextModelWithProjection", components["text_encoder_2"])}
    parts = {"denoiser": ("UNet2DConditionModel", components["unet"]),
             "vae": ("AutoencoderKL", components["vae"])}
    for kind, name in zip(FAMILIES[family].text_encoders, text_encoder_names(arch), strict=True):
        parts[kind] = (components[name]["architectures"][0], components[name])
    return parts


def _build(class_name: str, config: dict[str, Any]) -> torch.nn.Module:
    import diffusers
    import transformers

    with torch.device("meta"):
        if class_name.startswith("T5"):
            return transformers.T5EncoderModel(transformers.T5Config(**_fields(config)))
        if class_name.startswith("CLIP"):
            config_object = transformers.CLIPTextConfig(**_fields(config))
            return getattr(transformers, class_name)(config_object)
        return getattr(diffusers, class_name).from_config(_fields(config))


def _count(model: torch.nn.Module) -> int:
    """Parameters (tied ones once) and persistent buffers: what the component's file holds."""
    saved = model.state_dict()
    return sum(p.numel() for p in model.parameters()) + sum(
        b.numel() for name, b in model.named_buffers() if name in saved)


_CASES = [(family, component) for family in ModelFamily
          for component in ("denoiser", "vae", *FAMILIES[family].text_encoders)]


@pytest.mark.parametrize(("family", "component"), _CASES,
                         ids=[f"{f.value}-{c}" for f, c in _CASES])
def test_table_holds_the_architectures_parameter_count(family, component):
    class_name, config = _configs(family)[component]
    model = _build(class_name, config)
    assert next(model.parameters()).is_meta
    sizes = MODEL_SIZES[family]
    table = {"denoiser": sizes.denoiser, "vae": sizes.vae, **sizes.text_encoders}
    assert table[component] == _count(model)


# the released single files, in float16 (bytes, from the releases' file listings):
# sd_xl_base_1.0.safetensors and sd_xl_refiner_1.0.safetensors hold the UNet, the VAE and the
# text encoders
@pytest.mark.parametrize(("family", "file_bytes"), [
    (ModelFamily.SDXL, 6_938_078_334), (ModelFamily.SDXL_REFINER, 6_075_981_930)], ids=str)
def test_sdxl_totals_match_the_released_single_files(family, file_bytes):
    assert abs(MODEL_SIZES[family].total * 2 - file_bytes) / file_bytes < 0.001
