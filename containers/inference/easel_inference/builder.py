"""Random-weight Stable Diffusion pipelines and A1111-layout model folders.

Used by the tests (tiny models, CPU), local mode (a demo model), the training tests and the GPU
benchmarks (full-size architectures). Nothing is downloaded: configs ship with the package and the
tokenizer is built from the CLIP BPE vocabulary.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import yaml
from diffusers import (
    AutoencoderKL,
    ControlNetModel,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from . import checkpoint_keys
from .archconfigs import check_arch, components_for, text_encoder_names, tokenizer_pad_tokens
from .original_config import to_original_config
from .tokenizer import build_clip_tokenizer

COMPONENTS_METADATA_KEY = "easel.components"
ARCH_METADATA_KEY = "easel.arch"
MODEL_FOLDERS = ("Stable-diffusion", "Lora", "ControlNet", "VAE")


def _text_encoder(config: dict[str, Any], *, with_projection: bool) -> torch.nn.Module:
    fields = {k: v for k, v in config.items() if k not in ("architectures", "torch_dtype")}
    text_config = CLIPTextConfig(**fields)
    model_class = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    return model_class(text_config).eval()


def _unet_config(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if not k.startswith("_")}


def build_pipeline(
    *, arch: str = "sd15", size: str = "tiny", seed: int = 0, inpainting: bool = False
) -> StableDiffusionPipeline | StableDiffusionXLPipeline:
    """A pipeline of the given architecture with random weights (CPU, float32); ``inpainting``
    gives the UNet the 9 input channels of an inpainting checkpoint (latents, mask, masked
    image latents)."""
    check_arch(arch)
    configs = components_for(arch, size)
    unet_config = _unet_config(configs["unet"])
    if inpainting:
        unet_config["in_channels"] = 9
    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_config(unet_config).eval()
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL.from_config(_unet_config(configs["vae"])).eval()
    scheduler = EulerDiscreteScheduler.from_config(_unet_config(configs["scheduler"]))
    encoders = {}
    for offset, name in enumerate(text_encoder_names(arch), start=2):
        torch.manual_seed(seed + offset)
        encoders[name] = _text_encoder(configs[name], with_projection=name == "text_encoder_2")
    tokenizers = {
        name: build_clip_tokenizer(pad_token=pad) for name, pad in tokenizer_pad_tokens(arch).items()
    }
    if arch == "sdxl":
        return StableDiffusionXLPipeline(
            vae=vae, unet=unet, scheduler=scheduler, **encoders, **tokenizers
        )
    return StableDiffusionPipeline(
        vae=vae,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
        **encoders,
        **tokenizers,
    )


def build_refiner(*, seed: int = 0) -> Any:
    """A tiny random-weight SDXL refiner: SDXL's second (OpenCLIP) text encoder only, a UNet that
    reads it and the aesthetic score (5 time ids, not base's 6), the base's VAE shape."""
    from diffusers import StableDiffusionXLImg2ImgPipeline

    configs = components_for("sdxl", "tiny")
    text_config = configs["text_encoder_2"]
    unet_config = _unet_config(configs["unet"])
    pooled = int(text_config.get("projection_dim", text_config["hidden_size"]))
    unet_config.update(
        cross_attention_dim=int(text_config["hidden_size"]),
        projection_class_embeddings_input_dim=5 * int(unet_config["addition_time_embed_dim"])
        + pooled)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_config(unet_config).eval()
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL.from_config(_unet_config(configs["vae"])).eval()
    torch.manual_seed(seed + 3)
    encoder = _text_encoder(text_config, with_projection=True)
    return StableDiffusionXLImg2ImgPipeline(
        vae=vae, unet=unet, text_encoder=None, tokenizer=None, text_encoder_2=encoder,
        tokenizer_2=build_clip_tokenizer(pad_token=tokenizer_pad_tokens("sdxl")["tokenizer_2"]),
        scheduler=EulerDiscreteScheduler.from_config(_unet_config(configs["scheduler"])),
        requires_aesthetics_score=True, force_zeros_for_empty_prompt=False)


def build_controlnet(pipe: Any, *, seed: int = 0) -> ControlNetModel:
    """A random-weight ControlNet matching the pipeline's UNet (conditioning on RGB images)."""
    torch.manual_seed(seed + 10)
    vae_scale = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    embedding_channels = [16, 32, 96, 256][: max(1, vae_scale.bit_length())]
    while len(embedding_channels) < vae_scale.bit_length():
        embedding_channels.append(embedding_channels[-1] * 2)
    controlnet = ControlNetModel.from_unet(
        pipe.unet, conditioning_embedding_out_channels=tuple(embedding_channels)
    )
    # diffusers starts the output convolutions at zero (no effect until trained); give them
    # small random values so that a random ControlNet visibly steers the image
    zero_started = [
        *controlnet.controlnet_down_blocks,
        controlnet.controlnet_mid_block,
        controlnet.controlnet_cond_embedding.conv_out,
    ]
    for module in zero_started:
        for parameter in module.parameters():
            torch.nn.init.normal_(parameter, std=0.05)
    return controlnet.eval()


def save_controlnet_file(controlnet: ControlNetModel, path: str | Path) -> Path:
    """A ControlNet as one safetensors file in the original (A1111 extension) key layout."""
    state = checkpoint_keys.controlnet_to_original(controlnet.state_dict(), controlnet.config)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata={"format": "pt"})
    return path


def pipeline_arch(pipe: Any) -> str:
    if getattr(pipe, "text_encoder_2", None) is not None:
        return "sdxl"
    return "sd2" if pipe.text_encoder.config.hidden_act == "gelu" else "sd15"


def component_configs(pipe: Any) -> dict[str, dict[str, Any]]:
    """JSON-ready diffusers/transformers configs of the pipeline's components."""
    configs: dict[str, dict[str, Any]] = {
        "unet": json.loads(json.dumps(dict(pipe.unet.config), default=list)),
        "vae": json.loads(json.dumps(dict(pipe.vae.config), default=list)),
        "scheduler": json.loads(json.dumps(dict(pipe.scheduler.config), default=list)),
    }
    for name in text_encoder_names(pipeline_arch(pipe)):
        configs[name] = json.loads(getattr(pipe, name).config.to_json_string())
    return configs


def original_state_dict(pipe: Any) -> dict[str, torch.Tensor]:
    """All pipeline weights under original (ldm/sgm) single-file key names."""
    arch = pipeline_arch(pipe)
    state = checkpoint_keys.unet_to_original(pipe.unet.state_dict(), pipe.unet.config)
    state.update(checkpoint_keys.vae_to_original(pipe.vae.state_dict(), pipe.vae.config))
    if arch == "sd15":
        state.update(
            checkpoint_keys.clip_to_original(
                pipe.text_encoder.state_dict(), prefix=checkpoint_keys.SD1_TEXT_PREFIX
            )
        )
    elif arch == "sd2":
        text = checkpoint_keys.open_clip_to_original(
            pipe.text_encoder.state_dict(), prefix=checkpoint_keys.SD2_TEXT_PREFIX
        )
        layers = pipe.text_encoder.config.num_hidden_layers
        if layers == 23:
            # the original OpenCLIP ViT-H has 24 blocks; SD2 reads the penultimate one, so
            # diffusers keeps 23. Write a 24th (a copy, never used) so A1111 can load the file.
            last = f"{checkpoint_keys.SD2_TEXT_PREFIX}transformer.resblocks.{layers - 1}."
            extra = f"{checkpoint_keys.SD2_TEXT_PREFIX}transformer.resblocks.{layers}."
            text.update(
                {k.replace(last, extra): v.clone() for k, v in text.items() if k.startswith(last)}
            )
        state.update(text)
    else:
        first, second = checkpoint_keys.SDXL_TEXT_PREFIXES
        state.update(checkpoint_keys.clip_to_original(pipe.text_encoder.state_dict(), prefix=first))
        state.update(
            checkpoint_keys.open_clip_to_original(pipe.text_encoder_2.state_dict(), prefix=second)
        )
    return {key: tensor.detach().contiguous().cpu() for key, tensor in state.items()}


def _checkpoint_path(path: str | Path) -> Path:
    path = Path(path)
    if path.suffix in (".safetensors", ".ckpt"):
        return path
    return path.with_name(path.name + ".safetensors")


def save_single_file(pipe: Any, path: str | Path, *, embed_configs: bool = True,
                     write_yaml: bool = True) -> Path:
    """Write ``<path>.safetensors`` in the original key layout and ``<name>.yaml`` beside it.

    ``path`` may already end in ``.safetensors`` (or ``.ckpt`` for a weights-only pickle).
    With ``embed_configs`` the exact diffusers component configs travel in the safetensors
    metadata so that the loader rebuilds non-standard (tiny) architectures exactly; without it
    (and without the YAML) the file looks like one downloaded from a model site.
    """
    target = _checkpoint_path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    arch = pipeline_arch(pipe)
    state = original_state_dict(pipe)
    configs = component_configs(pipe)
    if target.suffix == ".ckpt":
        torch.save({"state_dict": state}, target)
    else:
        metadata = {"format": "pt"}
        if embed_configs:
            metadata[ARCH_METADATA_KEY] = arch
            metadata[COMPONENTS_METADATA_KEY] = json.dumps(configs, sort_keys=True)
        save_file(state, str(target), metadata=metadata)
    if not write_yaml:
        return target
    original = to_original_config(
        arch,
        unet=configs["unet"],
        vae=configs["vae"],
        prediction_type=configs["scheduler"].get("prediction_type", "epsilon"),
    )
    target.with_suffix(".yaml").write_text(yaml.safe_dump(original, sort_keys=False), "utf-8")
    return target


def save_refiner_single_file(pipe: Any, path: str | Path, *, embed_configs: bool = True) -> Path:
    """An SDXL refiner (``build_refiner``) as ``<path>.safetensors`` in the original layout
    (UNet, VAE, its OpenCLIP-G under ``conditioner.embedders.0.model.``), as released refiner
    files are; ``embed_configs`` as in :func:`save_single_file`."""
    target = _checkpoint_path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    state = checkpoint_keys.unet_to_original(pipe.unet.state_dict(), pipe.unet.config)
    state.update(checkpoint_keys.vae_to_original(pipe.vae.state_dict(), pipe.vae.config))
    state.update(checkpoint_keys.open_clip_to_original(
        pipe.text_encoder_2.state_dict(), prefix=checkpoint_keys.REFINER_TEXT_PREFIX))
    if target.suffix == ".ckpt":
        torch.save({"state_dict": state}, target)
        return target
    metadata = {"format": "pt"}
    if embed_configs:
        configs = {name: json.loads(json.dumps(dict(getattr(pipe, name).config), default=list))
                   for name in ("unet", "vae", "scheduler")}
        configs["text_encoder_2"] = json.loads(pipe.text_encoder_2.config.to_json_string())
        metadata[COMPONENTS_METADATA_KEY] = json.dumps(configs, sort_keys=True)
    save_file({key: tensor.contiguous() for key, tensor in state.items()}, str(target),
              metadata=metadata)
    return target


def save_vae_file(pipe: Any, path: str | Path, *, seed: int = 20) -> Path:
    """A random VAE shaped like the pipeline's, as a single file in the ldm layout
    (``encoder.*`` / ``decoder.*`` keys, as standalone VAE downloads are)."""
    torch.manual_seed(seed)
    config = {k: v for k, v in dict(pipe.vae.config).items() if not k.startswith("_")}
    vae = AutoencoderKL.from_config(config)
    state = checkpoint_keys.vae_to_original(vae.state_dict(), vae.config)
    prefix = checkpoint_keys.VAE_PREFIX
    state = {key.removeprefix(prefix): tensor.contiguous() for key, tensor in state.items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata={"format": "pt"})
    return path


def save_diffusers(pipe: Any, path: str | Path) -> Path:
    """Write a diffusers folder (``model_index.json`` and one folder a component)."""
    path = Path(path)
    pipe.save_pretrained(str(path), safe_serialization=True)
    return path


def _save_lora_files(pipe: Any, lora_dir: Path, *, seed: int) -> None:
    from .lora_builder import save_random_loras

    save_random_loras(pipe, lora_dir, seed=seed)


def build_model_dir(
    root: str | Path,
    *,
    arch: str = "sd15",
    size: str = "tiny",
    name: str = "tiny",
    fmt: str = "single_file",
    with_lora: bool = False,
    with_controlnet: bool = False,
    seed: int = 0,
    with_vae: bool = False,
    inpainting: bool = False,
) -> Path:
    """An A1111-layout model folder (``Stable-diffusion/``, ``Lora/``, ``ControlNet/``, ``VAE/``)."""
    if fmt not in ("single_file", "diffusers"):
        raise ValueError(f"fmt must be 'single_file' or 'diffusers', got {fmt!r}")
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(f"name must be a plain file name, got {name!r}")
    root = Path(root)
    for folder in MODEL_FOLDERS:
        (root / folder).mkdir(parents=True, exist_ok=True)
    pipe = build_pipeline(arch=arch, size=size, seed=seed, inpainting=inpainting)
    if fmt == "single_file":
        save_single_file(pipe, root / "Stable-diffusion" / f"{name}.safetensors")
    else:
        save_diffusers(pipe, root / "Stable-diffusion" / name)
    if with_lora:
        _save_lora_files(pipe, root / "Lora", seed=seed)
    if with_vae:
        save_vae_file(pipe, root / "VAE" / f"{name}-vae.safetensors", seed=seed + 20)
    if with_controlnet:
        controlnet = build_controlnet(pipe, seed=seed)
        controlnet.save_pretrained(str(root / "ControlNet" / f"{name}-canny"))
    return root
