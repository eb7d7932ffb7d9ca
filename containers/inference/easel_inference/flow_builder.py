"""Tiny random-weight SD3.5 and FLUX.1 pipelines (the flow-matching families), for CPU tests.

The architectures are diffusers' own (``SD3Transformer2DModel``, ``FluxTransformer2DModel``) at toy
size, with tiny CLIP and T5 encoders. CLIP tokenizers come from the shipped CLIP BPE vocabulary;
the T5 tokenizer is a small Unigram model trained here from a few sentences (no download, no
SentencePiece install): it suits random-weight tests only, never a real-size T5.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)
from easel_contracts.families import ModelFamily
from safetensors.torch import save_file
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    T5Config,
    T5EncoderModel,
    T5TokenizerFast,
)

from .flow_loader import FLOW_FAMILIES
from .tokenizer import build_clip_tokenizer

__all__ = ["FLOW_FAMILIES", "build_flow_pipeline", "save_flow_diffusers", "save_flow_single_file"]

_T5_CORPUS = (
    "a photo of a red fox in the snow",
    "an astronaut riding a horse on the moon",
    "a watercolor painting of a lighthouse at dusk",
    "portrait of a woman, studio light, 85mm",
    "a cat sitting on a windowsill, oil on canvas",
)
_TEXT_WIDTH = 32


def build_t5_tokenizer(vocab_size: int = 120) -> T5TokenizerFast:
    """A toy T5 tokenizer (Unigram, like T5's SentencePiece model) trained from a few prompts."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from tokenizers.trainers import UnigramTrainer

    tokenizer = Tokenizer(models.Unigram())
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    trainer = UnigramTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<unk>"],
                             unk_token="<unk>", show_progress=False)
    tokenizer.train_from_iterator(list(_T5_CORPUS), trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", tokenizer.token_to_id("</s>"))])
    return T5TokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>",
                           unk_token="<unk>", extra_ids=0)


def _t5(tokenizer: T5TokenizerFast, seed: int) -> T5EncoderModel:
    torch.manual_seed(seed)
    config = T5Config(vocab_size=len(tokenizer), d_model=_TEXT_WIDTH, d_kv=8, d_ff=37,
                      num_layers=2, num_heads=4, relative_attention_num_buckets=8,
                      pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    return T5EncoderModel(config).eval()


def _clip(seed: int, *, projection: bool, hidden: int = 16) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = CLIPTextConfig(vocab_size=49408, hidden_size=hidden, intermediate_size=2 * hidden,
                            num_hidden_layers=2, num_attention_heads=2, projection_dim=hidden,
                            max_position_embeddings=77, hidden_act="gelu",
                            bos_token_id=49406, eos_token_id=49407)
    model = CLIPTextModelWithProjection if projection else CLIPTextModel
    return model(config).eval()


def _vae(latent_channels: int, seed: int) -> AutoencoderKL:
    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(8, 16), latent_channels=latent_channels,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1, norm_num_groups=8, sample_size=64, use_quant_conv=False,
        use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035,
    ).eval()


def build_flow_pipeline(family: ModelFamily | str, *, seed: int = 0) -> Any:
    """A tiny random-weight pipeline of a flow-matching family (CPU, float32)."""
    family = ModelFamily(family)
    if family not in FLOW_FAMILIES:
        raise ValueError(f"{family.value} is not a flow-matching family")
    t5_tokenizer = build_t5_tokenizer()
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0 if family.value.startswith("sd35")
                                                else 1.0)
    if family in (ModelFamily.SD35_MEDIUM, ModelFamily.SD35_LARGE):
        torch.manual_seed(seed)
        transformer = SD3Transformer2DModel(
            sample_size=32, patch_size=2, in_channels=4, out_channels=4, num_layers=2,
            attention_head_dim=8, num_attention_heads=2, joint_attention_dim=_TEXT_WIDTH,
            caption_projection_dim=16, pooled_projection_dim=32, pos_embed_max_size=32,
            dual_attention_layers=(0,) if family is ModelFamily.SD35_MEDIUM else (),
            qk_norm="rms_norm" if family is ModelFamily.SD35_MEDIUM else None,
        ).eval()
        return StableDiffusion3Pipeline(
            transformer=transformer, scheduler=scheduler, vae=_vae(4, seed + 1),
            text_encoder=_clip(seed + 2, projection=True),
            tokenizer=build_clip_tokenizer(),
            text_encoder_2=_clip(seed + 3, projection=True),
            tokenizer_2=build_clip_tokenizer(pad_token="!"),
            text_encoder_3=_t5(t5_tokenizer, seed + 4), tokenizer_3=t5_tokenizer,
        )
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=_TEXT_WIDTH, pooled_projection_dim=16,
        guidance_embeds=family is ModelFamily.FLUX_DEV, axes_dims_rope=(4, 4, 8),
    ).eval()
    return FluxPipeline(
        transformer=transformer, scheduler=scheduler, vae=_vae(4, seed + 1),
        text_encoder=_clip(seed + 2, projection=False), tokenizer=build_clip_tokenizer(),
        text_encoder_2=_t5(t5_tokenizer, seed + 4), tokenizer_2=t5_tokenizer,
    )


def save_flow_diffusers(pipe: Any, folder: Path) -> Path:
    """The pipeline as a diffusers folder (safetensors weights, configs, tokenizers)."""
    pipe.save_pretrained(str(folder), safe_serialization=True)
    return folder


def write_spiece_model(tokenizer: T5TokenizerFast, path: Path) -> Path:
    """The toy tokenizer as a SentencePiece ``spiece.model`` (its Unigram pieces and scores)."""
    from .t5_spiece import CONTROL, NORMAL, UNKNOWN, Spiece, spiece_bytes

    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    specials = {"<pad>": CONTROL, "</s>": CONTROL, "<unk>": UNKNOWN}
    pieces = tuple((text, float(score), specials.get(text, NORMAL))
                   for text, score in model["vocab"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(spiece_bytes(Spiece(pieces)))
    return path


def _config_json(model: Any) -> dict[str, Any]:
    if hasattr(model.config, "to_json_string"):
        return json.loads(model.config.to_json_string())
    return json.loads(json.dumps(dict(model.config), default=list))


def _save(state: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in state.items()}, str(path),
              metadata={"format": "pt", **metadata})
    return path


def save_flow_single_file(pipe: Any, root: Path, name: str, *, embed_configs: bool = True,
                          write_tokenizer: bool = True) -> Path:
    """The pipeline in the single-file layout: ``Stable-diffusion/<name>.safetensors`` holds the
    transformer in the original key layout (SD3.5 also its VAE, as released files do); the
    text encoders go to ``text_encoder/`` (transformers keys) with the T5 ``spiece.model``, and
    FLUX's VAE to ``VAE/ae.safetensors`` (ldm keys). Exact configs travel in the metadata."""
    from easel_contracts.families import SEPARATE_PARTS, T5_TOKENIZER

    from .checkpoint_keys import VAE_PREFIX, vae_to_original
    from .flow_keys import to_original
    from .flow_loader import (
        COMPONENTS_METADATA_KEY,
        CONFIG_METADATA_KEY,
        encoder_slots,
        is_sd3,
    )
    from .pipelines import pipeline_family

    family = pipeline_family(pipe)
    kind = "sd3" if is_sd3(family) else "flux"
    state = to_original(kind, pipe.transformer.state_dict())
    vae = vae_to_original(pipe.vae.state_dict(), pipe.vae.config)
    configs = {"transformer": _config_json(pipe.transformer), "vae": _config_json(pipe.vae),
               "scheduler": _config_json(pipe.scheduler)}
    own = (lambda model: {CONFIG_METADATA_KEY: json.dumps(_config_json(model))}) \
        if embed_configs else (lambda _model: {})
    if kind == "sd3":
        state.update(vae)
    else:
        _save({k.removeprefix(VAE_PREFIX): v for k, v in vae.items()},
              root / SEPARATE_PARTS["vae"], own(pipe.vae))
    target = _save(state, root / "Stable-diffusion" / f"{name}.safetensors",
                   {COMPONENTS_METADATA_KEY: json.dumps(configs)} if embed_configs else {})
    for encoder, slot in encoder_slots(family).items():
        model = getattr(pipe, slot)
        weights = model.state_dict()
        weights.pop("encoder.embed_tokens.weight", None)  # T5 ties it to shared.weight
        _save(weights, root / SEPARATE_PARTS[encoder], own(model))
        if encoder == "t5xxl" and write_tokenizer:
            write_spiece_model(getattr(pipe, slot.replace("text_encoder", "tokenizer")),
                               root / T5_TOKENIZER)
    return target
