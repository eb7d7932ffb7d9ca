"""Bounds on the A1111 generation parameters the portal accepts (pages and API alike).

Known fields are checked here so a bad value is answered with its field name before any GPU time
is spent; other A1111 fields pass through to the model server, which checks them again.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from easel_webui.errors import PortalError, describe_validation

MAX_IMAGE_B64_CHARS = 12 * 1024 * 1024


class GenerationPayload(BaseModel):
    model_config = ConfigDict(extra="allow")

    prompt: str = Field(default="", max_length=20000)
    negative_prompt: str = Field(default="", max_length=20000)
    seed: int = Field(default=-1, ge=-1, le=2**32 - 1)
    steps: int = Field(default=20, ge=1, le=150)
    cfg_scale: float = Field(default=7.0, ge=0.0, le=30.0)
    width: int = Field(default=512, ge=64, le=2048)
    height: int = Field(default=512, ge=64, le=2048)
    batch_size: int = Field(default=1, ge=1, le=8)
    n_iter: int = Field(default=1, ge=1, le=8)
    sampler_name: str | None = Field(default=None, max_length=64)
    override_settings: dict[str, Any] = Field(default_factory=dict)
    alwayson_scripts: dict[str, Any] = Field(default_factory=dict)

    @field_validator("width", "height")
    @classmethod
    def _multiple_of_8(cls, value: int) -> int:
        if value % 8:
            raise ValueError("must be a multiple of 8")
        return value

    @field_validator("cfg_scale")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value


class Img2ImgPayload(GenerationPayload):
    init_images: list[str] = Field(min_length=1, max_length=8)
    denoising_strength: float = Field(default=0.75, ge=0.0, le=1.0)

    @field_validator("init_images")
    @classmethod
    def _sizes(cls, value: list[str]) -> list[str]:
        for image in value:
            if not isinstance(image, str) or not image or len(image) > MAX_IMAGE_B64_CHARS:
                raise ValueError("each image must be base64 text of at most 12 MB")
        return value


def validate_payload(task: str, payload: Any) -> dict[str, Any]:
    if not isinstance(payload, dict):
        raise PortalError("payload: must be a JSON object")
    model = Img2ImgPayload if task == "img2img" else GenerationPayload
    try:
        checked = model.model_validate(payload)
    except ValidationError as exc:
        raise PortalError(describe_validation(list(exc.errors())), status_code=422) from None
    return checked.model_dump(exclude_none=True)
