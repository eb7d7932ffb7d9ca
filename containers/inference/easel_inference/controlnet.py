"""ControlNet through A1111's ``alwayson_scripts.controlnet.args`` shape (canny preprocessor)."""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from .errors import BadRequest
from .images import decode_image

PREPROCESSORS = ("canny", "none")


def canny(image: Image.Image, *, low: float, high: float) -> Image.Image:
    import cv2

    edges = cv2.Canny(np.asarray(image.convert("RGB")), int(low), int(high))
    return Image.fromarray(np.stack([edges] * 3, axis=-1))


def _preprocess(unit: Any, image: Image.Image, index: int) -> Image.Image:
    module = (unit.module or "none").lower()
    if module.startswith("canny"):
        return canny(image, low=unit.threshold_a, high=unit.threshold_b)
    if module in ("none", ""):
        return image.convert("RGB")
    raise BadRequest(
        f"unknown ControlNet module {unit.module!r}; valid: {', '.join(PREPROCESSORS)}",
        field=f"alwayson_scripts.controlnet.args[{index}].module",
    )


def control_images(units: list[Any], request: Any, settings: Any, *, img2img: bool) -> dict:
    images = []
    for index, unit in enumerate(units):
        encoded = unit.image_b64()
        if encoded is None and img2img:
            encoded = request.init_images[0]
        if encoded is None:
            raise BadRequest(
                "ControlNet unit needs an image",
                field=f"alwayson_scripts.controlnet.args[{index}].image",
            )
        image = decode_image(
            encoded,
            field=f"alwayson_scripts.controlnet.args[{index}].image",
            max_bytes=settings.max_image_bytes,
        ).resize((request.width, request.height), Image.LANCZOS)
        images.append(_preprocess(unit, image, index))
    single = len(units) == 1
    key = "control_image" if img2img else "image"
    return {
        key: images[0] if single else images,
        "controlnet_conditioning_scale": units[0].weight if single else [u.weight for u in units],
        "control_guidance_start": units[0].guidance_start if single else [u.guidance_start for u in units],
        "control_guidance_end": units[0].guidance_end if single else [u.guidance_end for u in units],
    }


def controlnet_pipeline(model: Any, manager: Any, units: list[Any], *, kind: str) -> Any:
    from diffusers import AutoPipelineForImage2Image, AutoPipelineForText2Image

    available = list(manager.controlnet_files())
    names = []
    for index, unit in enumerate(units):
        name = unit.model or (available[0] if available else "")
        if not name:
            raise BadRequest(
                "no ControlNet model given and none under ControlNet/",
                field=f"alwayson_scripts.controlnet.args[{index}].model",
            )
        names.append(name)
    nets = [manager.controlnet(name, model) for name in names]
    controlnet = nets[0] if len(nets) == 1 else nets
    factory = AutoPipelineForImage2Image if kind == "img2img" else AutoPipelineForText2Image
    key = f"controlnet:{kind}:{'+'.join(names)}"
    return model.variant(key, lambda pipe: factory.from_pipe(pipe, controlnet=controlnet))
