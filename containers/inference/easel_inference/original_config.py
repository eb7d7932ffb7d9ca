"""The original (ldm / sgm) YAML config that A1111 reads beside a single-file checkpoint.

``to_original_config`` writes one from diffusers component configs; ``components_from_original``
reads one back into diffusers UNet / VAE configs, so that a ``<name>.yaml`` beside a checkpoint
decides the architecture, as it does in A1111.
"""

from __future__ import annotations

from typing import Any

_UNET_TARGETS = {
    "sd15": "ldm.modules.diffusionmodules.openaimodel.UNetModel",
    "sd2": "ldm.modules.diffusionmodules.openaimodel.UNetModel",
    "sdxl": "sgm.modules.diffusionmodules.openaimodel.UNetModel",
}


class OriginalConfigError(ValueError):
    """The original config cannot be read as a Stable Diffusion architecture."""


def _heads(unet: dict[str, Any]) -> list[int]:
    count = len(unet["block_out_channels"])
    heads = unet.get("num_attention_heads") or unet["attention_head_dim"]
    return list(heads) if isinstance(heads, list | tuple) else [heads] * count


def _attention_resolutions(unet: dict[str, Any]) -> list[int]:
    return [
        2**index
        for index, kind in enumerate(unet["down_block_types"])
        if str(kind).startswith("CrossAttn")
    ][::-1]


def _ddconfig(vae: dict[str, Any]) -> dict[str, Any]:
    base = vae["block_out_channels"][0]
    return {
        "double_z": True,
        "z_channels": vae["latent_channels"],
        "resolution": 256,
        "in_channels": vae["in_channels"],
        "out_ch": vae["out_channels"],
        "ch": base,
        "ch_mult": [channels // base for channels in vae["block_out_channels"]],
        "num_res_blocks": vae["layers_per_block"],
        "attn_resolutions": [],
        "dropout": 0.0,
    }


def _unet_params(arch: str, unet: dict[str, Any]) -> dict[str, Any]:
    base = unet["block_out_channels"][0]
    params: dict[str, Any] = {
        "use_checkpoint": False,
        "in_channels": unet["in_channels"],
        "out_channels": unet["out_channels"],
        "model_channels": base,
        "attention_resolutions": _attention_resolutions(unet),
        "num_res_blocks": unet["layers_per_block"],
        "channel_mult": [channels // base for channels in unet["block_out_channels"]],
        "context_dim": unet["cross_attention_dim"],
        "use_spatial_transformer": True,
        "legacy": False,
    }
    if unet.get("use_linear_projection"):
        head_channels = {
            channels // heads
            for channels, heads in zip(unet["block_out_channels"], _heads(unet), strict=True)
        }
        if len(head_channels) != 1:
            raise OriginalConfigError("attention heads must have one width across blocks")
        params["num_head_channels"] = head_channels.pop()
        params["use_linear_in_transformer"] = True
    else:
        params["num_heads"] = _heads(unet)[0]
    depth = unet.get("transformer_layers_per_block", 1)
    params["transformer_depth"] = list(depth) if isinstance(depth, list | tuple) else depth
    if arch == "sdxl":
        params["adm_in_channels"] = unet["projection_class_embeddings_input_dim"]
        params["num_classes"] = "sequential"
    if unet.get("upcast_attention"):
        params["use_fp16"] = False
    return params


def to_original_config(
    arch: str, *, unet: dict[str, Any], vae: dict[str, Any], prediction_type: str = "epsilon"
) -> dict[str, Any]:
    unet_section = {"target": _UNET_TARGETS[arch], "params": _unet_params(arch, unet)}
    first_stage = {
        "target": "ldm.models.autoencoder.AutoencoderKL",
        "params": {
            "embed_dim": vae["latent_channels"],
            "monitor": "val/rec_loss",
            "ddconfig": _ddconfig(vae),
            "lossconfig": {"target": "torch.nn.Identity"},
        },
    }
    if arch == "sdxl":
        time_embedder = {
            "target": "sgm.modules.encoders.modules.ConcatTimestepEmbedderND",
            "params": {"outdim": unet["addition_time_embed_dim"]},
        }
        emb_models = [
            {
                "is_trainable": False,
                "input_key": "txt",
                "target": "sgm.modules.encoders.modules.FrozenCLIPEmbedder",
                "params": {"layer": "hidden", "layer_idx": 11},
            },
            {
                "is_trainable": False,
                "input_key": "txt",
                "target": "sgm.modules.encoders.modules.FrozenOpenCLIPEmbedder2",
                "params": {
                    "arch": "ViT-bigG-14",
                    "version": "laion2b_s39b_b160k",
                    "freeze": True,
                    "layer": "penultimate",
                    "always_return_pooled": True,
                    "legacy": False,
                },
            },
        ] + [
            dict(time_embedder, is_trainable=False, input_key=key)
            for key in ("original_size_as_tuple", "crop_coords_top_left", "target_size_as_tuple")
        ]
        first_stage["target"] = "sgm.models.autoencoder.AutoencoderKLInferenceWrapper"
        return {
            "model": {
                "target": "sgm.models.diffusion.DiffusionEngine",
                "params": {
                    "scale_factor": vae["scaling_factor"],
                    "disable_first_stage_autocast": True,
                    "denoiser_config": {
                        "target": "sgm.modules.diffusionmodules.denoiser.DiscreteDenoiser",
                        "params": {
                            "num_idx": 1000,
                            "scaling_config": {
                                "target": "sgm.modules.diffusionmodules.denoiser_scaling.EpsScaling"
                            },
                            "discretization_config": {
                                "target": "sgm.modules.diffusionmodules.discretizer.LegacyDDPMDiscretization"
                            },
                        },
                    },
                    "network_config": unet_section,
                    "conditioner_config": {
                        "target": "sgm.modules.GeneralConditioner",
                        "params": {"emb_models": emb_models},
                    },
                    "first_stage_config": first_stage,
                },
            }
        }
    cond_stage: dict[str, Any] = {"target": "ldm.modules.encoders.modules.FrozenCLIPEmbedder"}
    if arch == "sd2":
        cond_stage = {
            "target": "ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder",
            "params": {"freeze": True, "layer": "penultimate"},
        }
    params: dict[str, Any] = {
        "linear_start": 0.00085,
        "linear_end": 0.012,
        "num_timesteps_cond": 1,
        "log_every_t": 200,
        "timesteps": 1000,
        "first_stage_key": "jpg",
        "cond_stage_key": "txt",
        "image_size": unet["sample_size"],
        "channels": unet["in_channels"],
        "cond_stage_trainable": False,
        "conditioning_key": "crossattn" if unet["in_channels"] == 4 else "hybrid",
        "monitor": "val/loss_simple_ema",
        "scale_factor": vae["scaling_factor"],
        "use_ema": False,
    }
    if prediction_type == "v_prediction":
        params["parameterization"] = "v"
    params.update(
        unet_config=unet_section, first_stage_config=first_stage, cond_stage_config=cond_stage
    )
    return {
        "model": {
            "base_learning_rate": 1.0e-04,
            "target": "ldm.models.diffusion.ddpm.LatentDiffusion",
            "params": params,
        }
    }


def arch_of_original(original: dict[str, Any]) -> str:
    try:
        params = original["model"]["params"]
    except (KeyError, TypeError) as exc:
        raise OriginalConfigError("original config has no model.params section") from exc
    if "network_config" in params or "conditioner_config" in params:
        return "sdxl"
    cond_target = str((params.get("cond_stage_config") or {}).get("target", ""))
    if "OpenCLIP" in cond_target:
        return "sd2"
    return "sd15"


def components_from_original(
    original: dict[str, Any], base: dict[str, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Override ``base`` (shipped configs of the same arch) with what the YAML says."""
    arch = arch_of_original(original)
    params = original["model"]["params"]
    section = params.get("network_config") or params.get("unet_config")
    try:
        unet_params = section["params"]
        ddconfig = params["first_stage_config"]["params"]["ddconfig"]
        model_channels = int(unet_params["model_channels"])
        block_out = [model_channels * int(mult) for mult in unet_params["channel_mult"]]
        attention_at = {int(value) for value in unet_params.get("attention_resolutions", [])}
        vae_base = int(ddconfig["ch"])
    except (KeyError, TypeError, ValueError) as exc:
        raise OriginalConfigError(f"original config is missing a UNet/VAE field: {exc}") from exc
    down = [
        "CrossAttnDownBlock2D" if 2**index in attention_at else "DownBlock2D"
        for index in range(len(block_out))
    ]
    up = [kind.replace("Down", "Up") for kind in reversed(down)]
    unet = dict(base["unet"])
    unet.update(
        in_channels=int(unet_params["in_channels"]),
        out_channels=int(unet_params["out_channels"]),
        block_out_channels=block_out,
        layers_per_block=int(unet_params["num_res_blocks"]),
        down_block_types=down,
        up_block_types=up,
        cross_attention_dim=unet_params.get("context_dim"),
        use_linear_projection=bool(unet_params.get("use_linear_in_transformer", False)),
    )
    if "image_size" in params and arch != "sdxl":
        unet["sample_size"] = int(params["image_size"])
    if isinstance(unet["cross_attention_dim"], list):
        unet["cross_attention_dim"] = unet["cross_attention_dim"][0]
    if "num_heads" in unet_params and int(unet_params["num_heads"]) > 0:
        unet["attention_head_dim"] = int(unet_params["num_heads"])
    elif "num_head_channels" in unet_params:
        width = int(unet_params["num_head_channels"])
        unet["attention_head_dim"] = [channels // width for channels in block_out]
    depth = unet_params.get("transformer_depth", 1)
    unet["transformer_layers_per_block"] = list(depth) if isinstance(depth, list) else depth
    if arch == "sdxl":
        unet["projection_class_embeddings_input_dim"] = int(unet_params["adm_in_channels"])
        for model in params.get("conditioner_config", {}).get("params", {}).get("emb_models", []):
            if "ConcatTimestepEmbedderND" in str(model.get("target", "")):
                unet["addition_time_embed_dim"] = int(model["params"]["outdim"])
                break
    vae = dict(base["vae"])
    vae_blocks = [vae_base * int(mult) for mult in ddconfig["ch_mult"]]
    vae.update(
        block_out_channels=vae_blocks,
        down_block_types=["DownEncoderBlock2D"] * len(vae_blocks),
        up_block_types=["UpDecoderBlock2D"] * len(vae_blocks),
        layers_per_block=int(ddconfig["num_res_blocks"]),
        latent_channels=int(ddconfig["z_channels"]),
    )
    if "scale_factor" in params:
        vae["scaling_factor"] = float(params["scale_factor"])
    scheduler = dict(base["scheduler"])
    scheduler["prediction_type"] = (
        "v_prediction" if params.get("parameterization") == "v" else "epsilon"
    )
    return dict(base, unet=unet, vae=vae, scheduler=scheduler)
