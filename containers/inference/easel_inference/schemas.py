"""Request bodies: the invocation envelope and A1111 txt2img / img2img payloads, with bounds."""

from __future__ import annotations

import math
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

TASKS = (
    "txt2img", "img2img", "sd-models", "sd-vae", "loras", "samplers", "schedulers", "options"
)
_SAFE_NAME = re.compile(r"^[^/\\\x00]+$")
MAX_SEED = 2**32 - 1


def check_name(value: str, *, what: str) -> str:
    """A model or LoRA name: no path separators, no parent references, no NUL."""
    if not value or not _SAFE_NAME.match(value) or value in (".", "..") or ".." in value:
        raise ValueError(f"{what} must be a plain name without path separators")
    return value


class Invocation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task: Literal[
        "txt2img", "img2img", "sd-models", "sd-vae", "loras", "controlnet-models", "samplers",
        "schedulers", "options",
    ]
    payload: dict[str, Any] = Field(default_factory=dict)


class OverrideSettings(BaseModel):
    model_config = ConfigDict(extra="ignore")

    sd_model_checkpoint: str | None = Field(default=None, max_length=256)
    CLIP_stop_at_last_layers: int | None = Field(default=None, ge=1, le=12)
    sd_vae: str | None = Field(default=None, max_length=256)

    @field_validator("sd_model_checkpoint")
    @classmethod
    def _plain_checkpoint(cls, value: str | None) -> str | None:
        if value is None:
            return None
        # A1111 titles look like "name.safetensors [hash]": keep the name
        value = re.sub(r"\s*\[[0-9a-fA-F]+\]$", "", value.strip())
        return check_name(value, what="override_settings.sd_model_checkpoint")

    @field_validator("sd_vae")
    @classmethod
    def _plain_vae(cls, value: str | None) -> str | None:
        if value is None or value.strip() in ("", "Automatic", "None"):
            return None
        return check_name(value.strip(), what="override_settings.sd_vae")


class ControlNetUnit(BaseModel):
    model_config = ConfigDict(extra="ignore")

    enabled: bool = True
    module: str = Field(default="canny", max_length=64)
    model: str = Field(default="", max_length=256)
    weight: float = Field(default=1.0, ge=0.0, le=2.0, allow_inf_nan=False)
    image: str | dict[str, Any] | None = None
    input_image: str | None = None
    threshold_a: float = Field(default=100.0, ge=0.0, le=255.0, allow_inf_nan=False)
    threshold_b: float = Field(default=200.0, ge=0.0, le=255.0, allow_inf_nan=False)
    guidance_start: float = Field(default=0.0, ge=0.0, le=1.0, allow_inf_nan=False)
    guidance_end: float = Field(default=1.0, ge=0.0, le=1.0, allow_inf_nan=False)

    @field_validator("model")
    @classmethod
    def _plain_model(cls, value: str) -> str:
        value = re.sub(r"\s*\[[0-9a-fA-F]+\]$", "", value.strip())
        return check_name(value, what="controlnet model") if value else value

    def image_b64(self) -> str | None:
        if isinstance(self.image, dict):
            image = self.image.get("image")
            return image if isinstance(image, str) else None
        return self.image or self.input_image


class GenerationRequest(BaseModel):
    """Fields shared by txt2img and img2img (A1111 ``/sdapi/v1`` names)."""

    model_config = ConfigDict(extra="ignore")

    prompt: str = Field(default="", max_length=20000)
    negative_prompt: str = Field(default="", max_length=20000)
    seed: int = Field(default=-1, ge=-1, le=MAX_SEED)
    sampler_name: str | None = Field(default=None, max_length=64)
    sampler_index: str | None = Field(default=None, max_length=64)
    scheduler: str | None = Field(default=None, max_length=64)
    steps: int = Field(default=20, ge=1, le=150)
    cfg_scale: float = Field(default=7.0, ge=0.0, le=30.0, allow_inf_nan=False)
    width: int = Field(default=512, ge=64, le=4096)
    height: int = Field(default=512, ge=64, le=4096)
    batch_size: int = Field(default=1, ge=1, le=8)
    n_iter: int = Field(default=1, ge=1, le=16)
    eta: float | None = Field(default=None, ge=0.0, le=1.0, allow_inf_nan=False)
    clip_skip: int | None = Field(default=None, ge=1, le=12)
    enable_hr: bool = False
    override_settings: OverrideSettings = Field(default_factory=OverrideSettings)
    alwayson_scripts: dict[str, Any] = Field(default_factory=dict)

    @field_validator("width", "height")
    @classmethod
    def _multiple_of_eight(cls, value: int) -> int:
        if value % 8:
            raise ValueError("must be a multiple of 8")
        return value

    @field_validator("cfg_scale", "eta")
    @classmethod
    def _finite(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value

    @model_validator(mode="after")
    def _no_hires_fix(self) -> GenerationRequest:
        if self.enable_hr:
            raise ValueError("enable_hr (hires fix) is not supported by this server")
        return self

    def controlnet_units(self) -> list[ControlNetUnit]:
        script = self.alwayson_scripts.get("controlnet") or self.alwayson_scripts.get("ControlNet")
        if not script:
            return []
        args = script.get("args", []) if isinstance(script, dict) else None
        if not isinstance(args, list):
            raise ValueError("alwayson_scripts.controlnet.args must be a list")  # noqa: TRY004
        units = [ControlNetUnit.model_validate(arg) for arg in args if isinstance(arg, dict)]
        return [unit for unit in units if unit.enabled]


class Txt2ImgRequest(GenerationRequest):
    pass


class Img2ImgRequest(GenerationRequest):
    init_images: list[str] = Field(min_length=1, max_length=8)
    denoising_strength: float = Field(default=0.75, ge=0.0, le=1.0, allow_inf_nan=False)
    mask: str | None = None
    mask_blur: int = Field(default=4, ge=0, le=64)
    inpainting_mask_invert: int = Field(default=0, ge=0, le=1)
    inpainting_fill: int = Field(default=1, ge=0, le=3)
    inpaint_full_res: bool = False
