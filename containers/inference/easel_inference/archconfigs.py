"""Component configs for the supported architectures, shipped inside the package.

``full`` configs are the real SD1.5 / SD2.1-768-v / SDXL-base architectures (and the SDXL
refiner's UNet); ``tiny`` configs are the same layouts shrunk so that a 2-step 64x64 generation
runs well under a second on a CPU.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any, Literal

Arch = Literal["sd15", "sd2", "sdxl"]
Size = Literal["tiny", "full"]
ARCHES: tuple[str, ...] = ("sd15", "sd2", "sdxl")
SIZES: tuple[str, ...] = ("tiny", "full")

def text_encoder_names(arch: str) -> tuple[str, ...]:
    return ("text_encoder", "text_encoder_2") if arch == "sdxl" else ("text_encoder",)


def _read_json(arch: str, relative: str) -> dict[str, Any]:
    text = resources.files("easel_inference").joinpath("configs", arch, relative).read_text("utf-8")
    return json.loads(text)


def tokenizer_pad_tokens(arch: str) -> dict[str, str]:
    """Tokenizer name -> pad token, from the shipped tokenizer configs.

    SD1.x and SDXL's first encoder pad with ``<|endoftext|>``; the OpenCLIP encoders (SD2.x,
    SDXL's second) pad with ``!``.
    """
    names = ("tokenizer", "tokenizer_2") if check_arch(arch) == "sdxl" else ("tokenizer",)
    return {name: _read_json(arch, f"{name}/tokenizer_config.json")["pad_token"] for name in names}


def check_arch(arch: str) -> str:
    if arch not in ARCHES:
        raise ValueError(f"arch must be one of {', '.join(ARCHES)}, got {arch!r}")
    return arch


def full_components(arch: str) -> dict[str, dict[str, Any]]:
    """Shipped full-size configs: unet, vae, text_encoder(s), scheduler, model_index."""
    check_arch(arch)
    components = {
        "model_index": _read_json(arch, "model_index.json"),
        "unet": _read_json(arch, "unet/config.json"),
        "vae": _read_json(arch, "vae/config.json"),
        "scheduler": _read_json(arch, "scheduler/scheduler_config.json"),
    }
    for name in text_encoder_names(arch):
        components[name] = _read_json(arch, f"{name}/config.json")
    return components


def refiner_unet() -> dict[str, Any]:
    """The SDXL 1.0 refiner's UNet (shipped): it reads SDXL's second text encoder only (1280
    wide) and the aesthetic score; its VAE and that encoder are SDXL's."""
    return _read_json("sdxl", "refiner_unet/config.json")


def _tiny_text_encoder(config: dict[str, Any], *, hidden: int, projection: int) -> dict[str, Any]:
    # heads follow the real models' rule (64 channels a head, at least one) so that a checkpoint
    # without embedded configs can be reloaded from tensor shapes alone
    return dict(
        config,
        hidden_size=hidden,
        num_hidden_layers=2,
        num_attention_heads=max(1, hidden // 64),
        intermediate_size=hidden * 2,
        projection_dim=projection,
    )


def tiny_components(arch: str) -> dict[str, dict[str, Any]]:
    components = full_components(arch)
    vae = dict(
        components["vae"],
        block_out_channels=[32, 64],
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        layers_per_block=1,
        sample_size=64,
    )
    unet = dict(components["unet"], block_out_channels=[32, 64], layers_per_block=1, sample_size=32)
    if arch == "sdxl":
        text_hidden = {"text_encoder": 32, "text_encoder_2": 64}
        components["text_encoder"] = _tiny_text_encoder(
            components["text_encoder"], hidden=32, projection=32
        )
        components["text_encoder_2"] = _tiny_text_encoder(
            components["text_encoder_2"], hidden=64, projection=32
        )
        unet.update(
            down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"],
            up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"],
            transformer_layers_per_block=[1, 1],
            attention_head_dim=[2, 4],
            cross_attention_dim=sum(text_hidden.values()),
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=8 * 6 + 32,
        )
    else:
        components["text_encoder"] = _tiny_text_encoder(
            components["text_encoder"], hidden=32, projection=32
        )
        unet.update(
            down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
            up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"],
            cross_attention_dim=32,
            attention_head_dim=2 if arch == "sd15" else [2, 4],
        )
    components["unet"] = unet
    components["vae"] = vae
    return components


def components_for(arch: str, size: str) -> dict[str, dict[str, Any]]:
    if size not in SIZES:
        raise ValueError(f"size must be one of {', '.join(SIZES)}, got {size!r}")
    return tiny_components(arch) if size == "tiny" else full_components(arch)
