"""Component configs of the released SD3.5 and FLUX.1 models, shipped so single files load offline.

Values are those of the releases' diffusers folders (stabilityai/stable-diffusion-3.5-medium and
-large, black-forest-labs/FLUX.1-dev and -schnell); the tests build each architecture on the meta
device and check its parameter count against the published sizes. A file written by Easel's
builder carries its own (toy-size) configs in its metadata instead.
"""

from __future__ import annotations

from typing import Any

from easel_contracts.families import ModelFamily

CLIP_L: dict[str, Any] = {
    "architectures": ["CLIPTextModelWithProjection"], "model_type": "clip_text_model",
    "vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "projection_dim": 768,
    "num_hidden_layers": 12, "num_attention_heads": 12, "max_position_embeddings": 77,
    "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, "bos_token_id": 0, "eos_token_id": 2,
    "pad_token_id": 1,
}
CLIP_G: dict[str, Any] = {
    "architectures": ["CLIPTextModelWithProjection"], "model_type": "clip_text_model",
    "vocab_size": 49408, "hidden_size": 1280, "intermediate_size": 5120, "projection_dim": 1280,
    "num_hidden_layers": 32, "num_attention_heads": 20, "max_position_embeddings": 77,
    "hidden_act": "gelu", "layer_norm_eps": 1e-5, "bos_token_id": 0, "eos_token_id": 2,
    "pad_token_id": 1,
}
T5_XXL: dict[str, Any] = {
    "architectures": ["T5EncoderModel"], "model_type": "t5", "vocab_size": 32128,
    "d_model": 4096, "d_kv": 64, "d_ff": 10240, "num_layers": 24, "num_heads": 64,
    "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128,
    "feed_forward_proj": "gated-gelu", "layer_norm_epsilon": 1e-6, "dropout_rate": 0.1,
    "tie_word_embeddings": False, "is_encoder_decoder": True, "pad_token_id": 0,
    "eos_token_id": 1, "decoder_start_token_id": 0,
}


def _vae(scaling: float, shift: float) -> dict[str, Any]:
    return {
        "_class_name": "AutoencoderKL", "in_channels": 3, "out_channels": 3,
        "block_out_channels": [128, 256, 512, 512], "layers_per_block": 2,
        "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
        "latent_channels": 16, "norm_num_groups": 32, "sample_size": 1024, "act_fn": "silu",
        "scaling_factor": scaling, "shift_factor": shift, "use_quant_conv": False,
        "use_post_quant_conv": False, "force_upcast": True,
    }


def _sd3(layers: int, dual: int) -> dict[str, Any]:
    width = 64 * layers
    return {
        "_class_name": "SD3Transformer2DModel", "sample_size": 128, "patch_size": 2,
        "in_channels": 16, "out_channels": 16, "num_layers": layers, "attention_head_dim": 64,
        "num_attention_heads": layers, "joint_attention_dim": 4096,
        "caption_projection_dim": width, "pooled_projection_dim": 2048,
        "pos_embed_max_size": 384 if dual else 192, "dual_attention_layers": list(range(dual)),
        "qk_norm": "rms_norm",
    }


def _flux(guidance: bool) -> dict[str, Any]:
    return {
        "_class_name": "FluxTransformer2DModel", "patch_size": 1, "in_channels": 64,
        "num_layers": 19, "num_single_layers": 38, "attention_head_dim": 128,
        "num_attention_heads": 24, "joint_attention_dim": 4096, "pooled_projection_dim": 768,
        "guidance_embeds": guidance, "axes_dims_rope": [16, 56, 56],
    }


_SD3_SCHEDULER = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000,
                  "shift": 3.0}
_FLUX_DEV_SCHEDULER = {"_class_name": "FlowMatchEulerDiscreteScheduler",
                       "num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": True,
                       "base_shift": 0.5, "max_shift": 1.15, "base_image_seq_len": 256,
                       "max_image_seq_len": 4096}
_FLUX_SCHNELL_SCHEDULER = {"_class_name": "FlowMatchEulerDiscreteScheduler",
                           "num_train_timesteps": 1000, "shift": 1.0,
                           "use_dynamic_shifting": False}

_CLIP_L_PLAIN = dict(CLIP_L, architectures=["CLIPTextModel"])

# family -> component -> config; components named as the pipeline's attributes
SHIPPED: dict[ModelFamily, dict[str, dict[str, Any]]] = {
    ModelFamily.SD35_MEDIUM: {"transformer": _sd3(24, 13), "vae": _vae(1.5305, 0.0609),
                              "text_encoder": CLIP_L, "text_encoder_2": CLIP_G,
                              "text_encoder_3": T5_XXL, "scheduler": _SD3_SCHEDULER},
    ModelFamily.SD35_LARGE: {"transformer": _sd3(38, 0), "vae": _vae(1.5305, 0.0609),
                             "text_encoder": CLIP_L, "text_encoder_2": CLIP_G,
                             "text_encoder_3": T5_XXL, "scheduler": _SD3_SCHEDULER},
    ModelFamily.FLUX_DEV: {"transformer": _flux(True), "vae": _vae(0.3611, 0.1159),
                           "text_encoder": _CLIP_L_PLAIN, "text_encoder_2": T5_XXL,
                           "scheduler": _FLUX_DEV_SCHEDULER},
    ModelFamily.FLUX_SCHNELL: {"transformer": _flux(False), "vae": _vae(0.3611, 0.1159),
                               "text_encoder": _CLIP_L_PLAIN, "text_encoder_2": T5_XXL,
                               "scheduler": _FLUX_SCHNELL_SCHEDULER},
}
