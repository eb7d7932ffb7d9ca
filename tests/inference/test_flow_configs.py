"""The released models' configs the package ships (single files load offline with them) build
architectures of the published sizes (counted on the meta device: no memory, no weights)."""

from __future__ import annotations

import pytest
from accelerate import init_empty_weights

from easel_contracts.families import ModelFamily
from easel_inference.flow_configs import CLIP_G, CLIP_L, SHIPPED, T5_XXL


def _count(model) -> int:
    """Parameters (tied ones once) and persistent buffers (SD3's position table is a buffer):
    what a file of the model holds."""
    saved = model.state_dict()
    return sum(p.numel() for p in model.parameters()) + sum(
        b.numel() for name, b in model.named_buffers() if name in saved)


def _fields(config: dict) -> dict:
    return {k: v for k, v in config.items()
            if not k.startswith("_") and k not in ("architectures", "model_type")}


# model cards: FLUX.1 "12 billion parameter", SD3.5 Large "8.1 billion", SD3.5 Medium "2.5 billion"
@pytest.mark.parametrize(("family", "published"), [
    (ModelFamily.FLUX_DEV, 12e9), (ModelFamily.FLUX_SCHNELL, 12e9),
    (ModelFamily.SD35_LARGE, 8.1e9), (ModelFamily.SD35_MEDIUM, 2.5e9)], ids=str)
def test_shipped_transformer_configs_have_the_published_size(family, published):
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

    cls = FluxTransformer2DModel if family.value.startswith("flux") else SD3Transformer2DModel
    with init_empty_weights():
        model = cls.from_config(_fields(SHIPPED[family]["transformer"]))
    assert abs(_count(model) - published) / published < 0.03


# released fp16 files: clip_l 246 MB, clip_g 1.39 GB, t5xxl_fp16 9.79 GB; ae.safetensors 335 MB
# (float32)
@pytest.mark.parametrize(("config", "published"), [
    (CLIP_L, 246e6 / 2), (CLIP_G, 1.39e9 / 2), (T5_XXL, 9.79e9 / 2)],
    ids=["clip_l", "clip_g", "t5xxl"])
def test_shipped_text_encoder_configs_match_the_released_files(config, published):
    from transformers import (
        CLIPTextConfig,
        CLIPTextModelWithProjection,
        T5Config,
        T5EncoderModel,
    )

    with init_empty_weights():
        if config is T5_XXL:
            model = T5EncoderModel(T5Config(**_fields(config)))
        else:
            model = CLIPTextModelWithProjection(CLIPTextConfig(**_fields(config)))
    assert abs(_count(model) - published) / published < 0.02


def test_shipped_flux_vae_matches_the_released_file():
    from diffusers import AutoencoderKL

    with init_empty_weights():
        vae = AutoencoderKL.from_config(_fields(SHIPPED[ModelFamily.FLUX_DEV]["vae"]))
    assert abs(_count(vae) - 335e6 / 4) / (335e6 / 4) < 0.01
