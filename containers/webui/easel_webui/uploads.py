"""Checking concept uploads before they are listed or trained on.

A pre-signed POST lets the browser write straight to S3, so S3 stores whatever bytes arrive. The
browser therefore uploads to a staging prefix the listings and training jobs never read
(`concepts/<owner>/.incoming/<set>/`: set names cannot start with '.'), then asks the portal to
verify: the portal reads each staged object (bounded), checks that its signature matches its
extension, decodes it with Pillow, and only then writes it into the set with the right content
type. The fallback upload through the portal runs the same checks on the bytes it received.
"""

from __future__ import annotations

import io
import warnings

from PIL import Image

from easel_webui.errors import PortalError

# Extension -> (content type, Pillow format, leading bytes of that format)
IMAGE_TYPES: dict[str, tuple[str, str, tuple[bytes, ...]]] = {
    ".png": ("image/png", "PNG", (b"\x89PNG\r\n\x1a\n",)),
    ".jpg": ("image/jpeg", "JPEG", (b"\xff\xd8\xff",)),
    ".jpeg": ("image/jpeg", "JPEG", (b"\xff\xd8\xff",)),
    ".webp": ("image/webp", "WEBP", (b"RIFF",)),
    ".bmp": ("image/bmp", "BMP", (b"BM",)),
}
CAPTION_TYPE = "text/plain; charset=utf-8"
MAX_CAPTION_BYTES = 64 * 1024
MAX_IMAGE_PIXELS = 8192 * 8192
STAGING = ".incoming"


def extension(name: str) -> str:
    lower = name.lower()
    return lower[lower.rfind("."):] if "." in lower else ""


def content_type_for(name: str) -> str:
    """The one content type a file of this name may be stored with."""
    ext = extension(name)
    if ext in IMAGE_TYPES:
        return IMAGE_TYPES[ext][0]
    if ext == ".txt":
        return CAPTION_TYPE
    raise PortalError(
        f"{name}: only images (png, jpg, webp, bmp) and .txt captions can be uploaded"
    )


def staging_key(owner: str, set_name: str, file_name: str) -> str:
    return f"concepts/{owner}/{STAGING}/{set_name}/{file_name}"


def final_key(owner: str, set_name: str, file_name: str) -> str:
    return f"concepts/{owner}/{set_name}/{file_name}"


def check_upload(name: str, data: bytes) -> str:
    """The content type to store `data` under, or `PortalError` saying what is wrong with it."""
    content_type = content_type_for(name)
    if not data:
        raise PortalError(f"{name}: the file is empty")
    ext = extension(name)
    if ext == ".txt":
        if len(data) > MAX_CAPTION_BYTES:
            raise PortalError(f"{name}: captions are at most {MAX_CAPTION_BYTES // 1024} KB")
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            raise PortalError(f"{name}: a caption must be UTF-8 text") from None
        return content_type
    _, pil_format, signatures = IMAGE_TYPES[ext]
    if not data.startswith(signatures) or (pil_format == "WEBP" and data[8:12] != b"WEBP"):
        raise PortalError(
            f"{name}: the file is not a {pil_format} image (its first bytes do not match); "
            "export it again as an image or rename it to its real type"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=[pil_format]) as image:
                width, height = image.size
                if width * height > MAX_IMAGE_PIXELS:
                    raise PortalError(f"{name}: {width}x{height} is too large (max 8192x8192)")
                image.load()
    except PortalError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombWarning,
            Image.DecompressionBombError) as exc:
        raise PortalError(f"{name}: the image cannot be decoded ({exc.__class__.__name__}); "
                          "it may be truncated or corrupt") from None
    return content_type
