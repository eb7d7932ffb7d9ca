"""Base64 image decoding (with or without a ``data:`` prefix) and PNG encoding (with the
image's A1111 infotext)."""

from __future__ import annotations

import base64
import binascii
import io
from concurrent.futures import Future, ThreadPoolExecutor

from easel_contracts.infotext import PNG_TEXT_KEY
from PIL import Image, PngImagePlugin, UnidentifiedImageError

from .errors import BadRequest

MAX_DIMENSION = 8192
# zlib level 1: on a 512x512 picture about half the CPU time of PIL's default (6) for files about
# 15% larger (the PNG stays lossless); the encoding is on every request's critical path.
PNG_COMPRESS_LEVEL = 1
# zlib releases the GIL: a batch's PNGs encode side by side, and while the next batch denoises
PNG_THREADS = 4
_png_pool = ThreadPoolExecutor(max_workers=PNG_THREADS, thread_name_prefix="easel-png")


def decode_image(value: str, *, field: str, max_bytes: int) -> Image.Image:
    if not isinstance(value, str) or not value:
        raise BadRequest(f"{field} must be a base64 image", field=field)
    if value.startswith("data:"):
        _, _, value = value.partition(",")
    if len(value) > max_bytes * 4 // 3 + 4:
        raise BadRequest(f"{field} is larger than {max_bytes} bytes", field=field)
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadRequest(f"{field} is not valid base64", field=field) from exc
    if len(raw) > max_bytes:
        raise BadRequest(f"{field} is larger than {max_bytes} bytes", field=field)
    try:
        image = Image.open(io.BytesIO(raw))
        if image.width > MAX_DIMENSION or image.height > MAX_DIMENSION:
            raise BadRequest(
                f"{field} is {image.width}x{image.height}; at most {MAX_DIMENSION} a side",
                field=field,
            )
        image.load()
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise BadRequest(f"{field} is not a decodable image", field=field) from exc
    return image


def encode_png(image: Image.Image, *, parameters: str | None = None) -> str:
    """Base64 PNG; `parameters` (the image's infotext) goes into A1111's ``parameters`` text
    chunk, so a saved or downloaded image still says how it was made."""
    chunks = None
    if parameters:
        chunks = PngImagePlugin.PngInfo()
        chunks.add_text(PNG_TEXT_KEY, parameters)  # iTXt (UTF-8) when it is not Latin-1
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=chunks, compress_level=PNG_COMPRESS_LEVEL)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def encode_png_later(image: Image.Image, *, parameters: str | None = None) -> Future[str]:
    """``encode_png`` on the PNG threads: the same bytes, off the generating thread."""
    return _png_pool.submit(encode_png, image, parameters=parameters)
