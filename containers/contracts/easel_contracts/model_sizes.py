"""What each family's released components weigh: the one table of parameter counts.

Two plans read it: the serving memory plan (``memory_plan``: will a model fit an instance type)
and the training memory plan (``training_memory``: can a type train it). Both also use
``TOY_SHARE`` and ``released_bytes`` to tell a tiny random-weight model (the tests', local
mode's) from a released one and plan it by its own size.

A count is the number of tensor elements a component's weights hold: its parameters (tied ones
once: T5's input embedding is its shared table) and its persistent buffers (SD3's position table
is a buffer). That is what its file holds and what sits in memory once it is loaded.

The counts are those of the released models' architectures (the SD1.5, SD2.1-768-v, SDXL 1.0
base and refiner, SD3.5 medium and large and FLUX.1 dev and schnell configs); the inference tests
build each one at full size on the meta device from the configs the inference server ships and
check every number here against it.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from .families import ModelFamily, TextEncoder

TOY_SHARE = 0.05  # a model under this share of its family's released size is planned by its size


class ComponentSizes(BaseModel):
    """Tensor elements of one family's components as released."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    denoiser: int = Field(gt=0, description="the UNet (SD1.x/2.x/SDXL) or transformer")
    vae: int = Field(gt=0)
    text_encoders: dict[TextEncoder, int] = Field(
        description="each text encoder the family uses, in the family's order")

    @property
    def text_encoder_total(self) -> int:
        return sum(self.text_encoders.values())

    @property
    def total(self) -> int:
        return self.denoiser + self.vae + self.text_encoder_total


# the VAEs: SD1.x/2.x/SDXL share one 4-channel shape; SD3.5 and FLUX.1 a 16-channel one without
# the quant convolutions
_VAE_4CH = 83_653_863
_VAE_16CH = 83_819_683
# the text encoders as each family loads them: SDXL and FLUX.1 take CLIP-L without its
# projection, SD3.5 with it (it reads both CLIPs' pooled projections); SD2.x's OpenCLIP-H is the
# released 23 layers (the last one is dropped: SD2 reads the penultimate layer)
_CLIP_L = 123_060_480
_CLIP_L_PROJECTED = 123_650_304
_OPENCLIP_H = 340_387_840
_OPENCLIP_G = 694_659_840
_T5_XXL = 4_762_310_656  # the encoder only

MODEL_SIZES: dict[ModelFamily, ComponentSizes] = {
    ModelFamily.SD1: ComponentSizes(denoiser=859_520_964, vae=_VAE_4CH,
                                    text_encoders={"clip_l": _CLIP_L}),
    ModelFamily.SD2: ComponentSizes(denoiser=865_910_724, vae=_VAE_4CH,
                                    text_encoders={"openclip_h": _OPENCLIP_H}),
    ModelFamily.SDXL: ComponentSizes(denoiser=2_567_463_684, vae=_VAE_4CH,
                                     text_encoders={"clip_l": _CLIP_L,
                                                    "openclip_g": _OPENCLIP_G}),
    ModelFamily.SDXL_REFINER: ComponentSizes(denoiser=2_259_526_660, vae=_VAE_4CH,
                                             text_encoders={"openclip_g": _OPENCLIP_G}),
    ModelFamily.SD35_MEDIUM: ComponentSizes(
        denoiser=2_469_663_936, vae=_VAE_16CH,
        text_encoders={"clip_l": _CLIP_L_PROJECTED, "openclip_g": _OPENCLIP_G,
                       "t5xxl": _T5_XXL}),
    ModelFamily.SD35_LARGE: ComponentSizes(
        denoiser=8_146_280_768, vae=_VAE_16CH,
        text_encoders={"clip_l": _CLIP_L_PROJECTED, "openclip_g": _OPENCLIP_G,
                       "t5xxl": _T5_XXL}),
    ModelFamily.FLUX_DEV: ComponentSizes(denoiser=11_901_408_320, vae=_VAE_16CH,
                                         text_encoders={"clip_l": _CLIP_L, "t5xxl": _T5_XXL}),
    ModelFamily.FLUX_SCHNELL: ComponentSizes(denoiser=11_891_178_560, vae=_VAE_16CH,
                                             text_encoders={"clip_l": _CLIP_L,
                                                            "t5xxl": _T5_XXL}),
}


def sizes_of(family: ModelFamily | str) -> ComponentSizes:
    return MODEL_SIZES[ModelFamily(family)]


def released_bytes(family: ModelFamily | str, bytes_per_parameter: int = 2) -> int:
    """Bytes of a family's released weights (denoiser, text encoders, VAE), 16-bit unless told."""
    return sizes_of(family).total * bytes_per_parameter


def is_toy(family: ModelFamily | str, model_bytes: int | None) -> bool:
    """A model far smaller than its family's release (a tiny random-weight model): plans scale
    their figures down to its own size."""
    return model_bytes is not None and model_bytes < TOY_SHARE * released_bytes(family)

