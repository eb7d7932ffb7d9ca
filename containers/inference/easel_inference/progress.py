"""Step progress of a streamed generation: step events with an ETA and a cheap preview.

The preview does not run the VAE: a fixed linear map takes the 4 latent channels of SD1.x/2.x/
SDXL to RGB (the well-known "cheap approximation"; colours are close enough to see the picture
form), stretched to the full range and saved as a small JPEG. Latents of other shapes (SD3's 16
channels, FLUX's packed sequence) get no preview, only the step.
"""

from __future__ import annotations

import base64
import io
import logging
import time
from collections.abc import Callable
from typing import Any

import torch
from easel_contracts.streaming import PREVIEW_EVERY_S, PREVIEW_MAX_SIDE, StepEvent, encode_event
from PIL import Image

log = logging.getLogger("easel.inference")
# rows: latent channels 0..3; columns: R, G, B
LATENT_TO_RGB = torch.tensor([
    [0.298, 0.207, 0.208],
    [0.187, 0.286, 0.173],
    [-0.158, 0.189, 0.264],
    [-0.184, -0.271, -0.473],
])
PREVIEW_QUALITY = 70

StepReport = Callable[[int, int, int, int, Any], None]
"""(steps done, steps of the batch, batch, batches, the latents after the step)."""


def latent_preview(latents: Any, *, max_side: int = PREVIEW_MAX_SIDE) -> str | None:
    """The first image of a ``(batch, 4, h, w)`` latent tensor as a base64 JPEG, or None for
    latents of another shape."""
    if not isinstance(latents, torch.Tensor) or latents.ndim != 4 or latents.shape[1] != 4:
        return None
    first = latents[0].detach().float().cpu()
    rgb = torch.einsum("chw,cr->hwr", first, LATENT_TO_RGB)
    low, high = rgb.amin(), rgb.amax()
    scaled = (rgb - low) / (high - low) if high > low else torch.zeros_like(rgb)
    pixels = (scaled * 255).round().clamp(0, 255).to(torch.uint8).numpy()
    image = Image.fromarray(pixels, "RGB")
    scale = max_side / max(image.size)
    if scale < 1:
        image = image.resize((max(1, round(image.width * scale)),
                              max(1, round(image.height * scale))), Image.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=PREVIEW_QUALITY)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


class StepReporter:
    """Turns each step into a ``StepEvent`` line handed to ``send`` (from the worker thread).

    The ETA is the mean time of the steps so far times the steps left in the whole request; a
    preview goes with the first step and then at most every ``preview_every`` seconds."""

    def __init__(self, send: Callable[[bytes], None], *,
                 clock: Callable[[], float] = time.monotonic,
                 preview_every: float = PREVIEW_EVERY_S, previews: bool = True) -> None:
        self._send = send
        self._clock = clock
        self._preview_every = preview_every
        self._previews = previews
        self._first: tuple[float, int] | None = None  # (time, steps done overall) at the 1st
        self._last_preview: float | None = None
        self.events = 0

    def __call__(self, step: int, steps: int, batch: int, batches: int, latents: Any) -> None:
        now = self._clock()
        done = (batch - 1) * steps + step
        left = batches * steps - done
        eta = None
        if self._first is None:
            self._first = (now, done)
        elif done > self._first[1]:
            per_step = (now - self._first[0]) / (done - self._first[1])
            eta = round(per_step * left, 2)
        preview = None
        if self._previews and (self._last_preview is None
                               or now - self._last_preview >= self._preview_every):
            try:
                preview = latent_preview(latents)
            except Exception:  # a preview must never fail the generation it shows
                log.warning("no preview for this step", exc_info=True)
            self._last_preview = now
        event = StepEvent(step=step, steps=steps, batch=batch, batches=batches,
                          eta_seconds=eta, preview=preview)
        self.events += 1
        self._send(encode_event(event))
