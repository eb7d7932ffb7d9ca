"""Upscalers for A1111's extras (``/sdapi/v1/extra-single-image``) and their listing
(``/sdapi/v1/upscalers``): PIL's Lanczos and Nearest resamplers, and super-resolution models from
the model's ``ESRGAN/`` folder (``.pth`` / ``.safetensors``), named by file stem as A1111 names
them and loaded through spandrel, which detects the architecture (ESRGAN's RRDBNet and its kin)
from the weights.

The work is bounded: the input may hold at most ``max_pixels`` (``EASEL_MAX_PIXELS``) and the
answer at most ``MAX_SIDE`` a side; a model runs tile by tile (spandrel runs a whole image at
once), and the request's deadline is checked between tiles. ``.pth`` files are unpickled only by
spandrel's restricted unpickler (tensors and plain containers), never freely.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from easel_contracts.invocations import (
    EXTRAS_RESAMPLERS,
    MAX_SIDE,
    ExtrasSingleImageRequest,
    ExtrasSingleImageResponse,
    Upscaler,
    Upscalers,
)
from PIL import Image

from .errors import BadRequest, NotFound, Unavailable
from .images import decode_image, encode_png

log = logging.getLogger("easel.inference.upscalers")

ESRGAN_DIR = "ESRGAN"
MODEL_SUFFIXES = (".pth", ".safetensors")
RESAMPLERS = {"Lanczos": Image.Resampling.LANCZOS, "Nearest": Image.Resampling.NEAREST}
# a model sees tiles of at most TILE x TILE input pixels, each with TILE_PAD pixels of context
# on every side (cropped from the output), so memory stays bounded and seams do not show
TILE = 192
TILE_PAD = 16

StopCheck = Callable[[str], None]


def model_files(model_dir: Path) -> dict[str, Path]:
    """ESRGAN models under ``ESRGAN/``, by file stem (the first of a stem wins)."""
    root = model_dir / ESRGAN_DIR
    if not root.is_dir():
        return {}
    found: dict[str, Path] = {}
    for path in sorted(root.iterdir()):
        if path.is_file() and path.suffix in MODEL_SUFFIXES:
            found.setdefault(path.stem, path)
    return found


def _load_model(path: Path, device: str) -> Any:
    try:
        from spandrel import ImageModelDescriptor, ModelLoader, UnsupportedModelError
    except ImportError as exc:  # the image installs it; a bare CPU venv may not
        raise Unavailable("ESRGAN upscalers need the spandrel package (and torchvision), "
                          "which this server lacks; use Lanczos or Nearest",
                          field="upscaler_1") from exc
    try:
        descriptor = ModelLoader(device=device).load_from_file(path)
    except UnsupportedModelError as exc:
        raise BadRequest(f"upscaler {path.stem!r}: {path.name} is not a model architecture "
                         "spandrel knows", field="upscaler_1") from exc
    except Exception as exc:  # safetensors, pickle and torch each raise their own errors
        raise BadRequest(f"upscaler {path.stem!r}: {path.name} could not be read "
                         f"({type(exc).__name__})", field="upscaler_1") from exc
    if not isinstance(descriptor, ImageModelDescriptor) or descriptor.input_channels != 3:
        raise BadRequest(f"upscaler {path.stem!r} is not an RGB image-to-image model",
                         field="upscaler_1")
    return descriptor.eval()


class UpscalerSet:
    """The server's upscalers; keeps the last ESRGAN model it loaded."""

    def __init__(self, model_dir: Path, *, device: str, max_pixels: int,
                 max_image_bytes: int) -> None:
        self.model_dir = model_dir
        self.device = device
        self.max_pixels = max_pixels
        self.max_image_bytes = max_image_bytes
        self._lock = threading.Lock()
        self._loaded: tuple[Path, Any] | None = None

    def names(self) -> list[str]:
        return [*EXTRAS_RESAMPLERS, *model_files(self.model_dir)]

    def listing(self) -> Upscalers:
        entries = [Upscaler(name=name, model_name=None, model_path=None, scale=None)
                   for name in EXTRAS_RESAMPLERS]
        for stem, path in model_files(self.model_dir).items():
            entries.append(Upscaler(name=stem, model_name="ESRGAN",
                                    model_path=path.relative_to(self.model_dir).as_posix(),
                                    scale=None))
        return Upscalers(entries)

    def model(self, name: str, *, field: str = "upscaler_1",
              builtin: tuple[str, ...] = EXTRAS_RESAMPLERS) -> Any:
        """The ESRGAN model ``name``, loaded (a 404 naming ``builtin`` and the models, if none
        is called so)."""
        found = model_files(self.model_dir)
        if name not in found:
            raise NotFound(f"upscaler {name!r} not found; available: "
                           f"{', '.join([*builtin, *found])}", field=field)
        with self._lock:
            if self._loaded is None or self._loaded[0] != found[name]:
                self._loaded = None  # the previous one goes before the next loads
                self._loaded = (found[name], _load_model(found[name], self.device))
            return self._loaded[1]

    def upscale(self, image: Image.Image, name: str, size: tuple[int, int],
                stop: StopCheck) -> Image.Image:
        """``image`` resized to ``size`` with the upscaler ``name``: a model runs at its own
        scale (repeated while the image is still smaller), then Lanczos fits the exact size."""
        if name == "None" or image.size == size:
            return image if image.size == size else image.resize(size, Image.Resampling.LANCZOS)
        if name in RESAMPLERS:
            return image.resize(size, RESAMPLERS[name])
        model = self.model(name)
        rgb = image.convert("RGB")
        while rgb.width < size[0] or rgb.height < size[1]:
            if rgb.width * rgb.height > self.max_pixels:
                break
            rgb = run_tiled(model, rgb, stop)
        return rgb if rgb.size == size else rgb.resize(size, Image.Resampling.LANCZOS)

    def extras(self, request: ExtrasSingleImageRequest, stop: StopCheck
               ) -> ExtrasSingleImageResponse:
        if request.upscaler_1 not in self.names():
            raise NotFound(f"upscaler {request.upscaler_1!r} not found; available: "
                           f"{', '.join(self.names())}", field="upscaler_1")
        image = decode_image(request.image, field="image", max_bytes=self.max_image_bytes)
        if image.width * image.height > self.max_pixels:
            raise BadRequest(f"image is {image.width}x{image.height}: more than "
                             f"{self.max_pixels} pixels (EASEL_MAX_PIXELS); send a smaller "
                             "image", field="image")
        size = request.target_size(image.width, image.height)
        if max(size) > MAX_SIDE:
            raise BadRequest(f"the upscaled image would be {size[0]}x{size[1]}: at most "
                             f"{MAX_SIDE} a side; lower upscaling_resize", field="upscaling_resize")
        mode = "RGBA" if image.mode in ("RGBA", "LA", "PA") else "RGB"
        result = self.upscale(image.convert(mode), request.upscaler_1, size, stop)
        if mode == "RGBA" and result.mode != "RGBA":
            result.putalpha(image.getchannel("A").resize(size, Image.Resampling.LANCZOS))
        info = (f"Postprocess upscale to: {size[0]}x{size[1]}, "
                f"Postprocess upscaler: {request.upscaler_1}")
        return ExtrasSingleImageResponse(image=encode_png(result), html_info=f"<p>{info}</p>")


def run_tiled(model: Any, image: Image.Image, stop: StopCheck) -> Image.Image:
    """One pass of ``model`` over ``image``, tile by tile; ``stop`` is asked before each tile."""
    scale = int(model.scale)
    param = next(model.model.parameters())
    array = np.asarray(image, dtype=np.float32) / 255.0
    source = torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0)
    height, width = source.shape[2:]
    out = torch.zeros((1, 3, height * scale, width * scale), dtype=torch.float32)
    rows, cols = math.ceil(height / TILE), math.ceil(width / TILE)
    for row in range(rows):
        for col in range(cols):
            stop(f"at upscale tile {row * cols + col + 1} of {rows * cols}")
            top, left = row * TILE, col * TILE
            bottom, right = min(top + TILE, height), min(left + TILE, width)
            ptop, pleft = max(top - TILE_PAD, 0), max(left - TILE_PAD, 0)
            pbottom, pright = min(bottom + TILE_PAD, height), min(right + TILE_PAD, width)
            tile = source[:, :, ptop:pbottom, pleft:pright].to(param.device, param.dtype)
            with torch.inference_mode():
                upscaled = model(tile).float().cpu()
            y0, x0 = (top - ptop) * scale, (left - pleft) * scale
            y1, x1 = y0 + (bottom - top) * scale, x0 + (right - left) * scale
            out[:, :, top * scale:bottom * scale, left * scale:right * scale] = \
                upscaled[:, :, y0:y1, x0:x1]
    pixels = (out[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
    return Image.fromarray(pixels, "RGB")
