"""PNG Info: read a generated image's settings back from its `parameters` text chunk.

Served by the portal only (the PNG Info page and A1111's ``POST /sdapi/v1/png-info``), so the
request and answer models are the portal's own. Only the PNG's chunks are read, never its pixels:
Pillow parses the header and the chunks before the image data, so a huge or hostile image costs
no decoding.
"""

from __future__ import annotations

import base64
import binascii
import io
from collections.abc import Mapping
from typing import Any

from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field

from easel_contracts.infotext import PNG_TEXT_KEY, parse_infotext
from easel_contracts.invocations import MAX_IMAGE_B64_CHARS, MAX_IMAGE_BYTES, MAX_PROMPT_CHARS
from easel_webui.errors import PortalError


class PngInfoRequest(BaseModel):
    """A1111's ``POST /sdapi/v1/png-info`` body: the image as base64 (a ``data:`` prefix is
    allowed)."""

    model_config = ConfigDict(extra="ignore")

    image: str = Field(min_length=1, max_length=MAX_IMAGE_B64_CHARS)


class PngInfoResponse(BaseModel):
    """A1111's answer: the infotext as is, the image's other text chunks, and the infotext
    parsed into A1111's ``parameters`` mapping (empty when the image has none)."""

    info: str
    items: dict[str, str]
    parameters: dict[str, Any]


# the Generate form's fields, from A1111's parameter names ("send to txt2img")
TXT2IMG_FIELDS = {
    "Prompt": "prompt", "Negative prompt": "negative_prompt", "Steps": "steps",
    "CFG scale": "cfg_scale", "Seed": "seed", "Size-1": "width", "Size-2": "height",
    "Sampler": "sampler_name", "Denoising strength": "denoising_strength", "Model": "checkpoint",
}


def decode_base64_image(value: str) -> bytes:
    if value.startswith("data:"):
        value = value.partition(",")[2]
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise PortalError("image: not valid base64; send the PNG file's bytes as base64",
                          status_code=422) from None
    return data


def read_png_info(data: bytes) -> PngInfoResponse:
    """The image's infotext, other text chunks and parsed parameters; `PortalError` when the
    bytes are not an image."""
    if not data:
        raise PortalError("image: the file is empty; choose a PNG made by Easel or A1111",
                          status_code=422)
    if len(data) > MAX_IMAGE_BYTES:
        raise PortalError(f"image: at most {MAX_IMAGE_BYTES // (1024 * 1024)} MB",
                          status_code=413)
    try:
        with Image.open(io.BytesIO(data)) as image:
            chunks = dict(image.info)
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError):
        raise PortalError("image: not an image file; choose a PNG made by Easel or A1111",
                          status_code=422) from None
    text = chunks.pop(PNG_TEXT_KEY, "")
    info = text if isinstance(text, str) else ""
    items = {str(key): value for key, value in chunks.items() if isinstance(value, str)}
    return PngInfoResponse(info=info, items=items,
                           parameters=parse_infotext(info) if info else {})


def txt2img_fields(parameters: dict[str, Any]) -> dict[str, str]:
    """The Generate form's fields that `parameters` (A1111's mapping) fills in."""
    return {field: str(parameters[name]) for name, field in TXT2IMG_FIELDS.items()
            if str(parameters.get(name, "")).strip()}


def sent_settings(query: Mapping[str, str]) -> dict[str, Any]:
    """What "Send to txt2img" put in the Generate page's address, in the shape of a reused
    gallery image's settings (the page's script fills the form from it)."""
    sent: dict[str, Any] = {field: query[field][:MAX_PROMPT_CHARS]
                            for field in TXT2IMG_FIELDS.values() if query.get(field)}
    checkpoint = sent.pop("checkpoint", None)
    if checkpoint:
        sent["override_settings"] = {"sd_model_checkpoint": checkpoint}
    return sent
