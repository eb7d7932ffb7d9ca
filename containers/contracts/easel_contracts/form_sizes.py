"""The image sizes the portal's Generate form offers per model family, which the inference
server warms up before ``/ping`` turns ready (with the fast path, each size is its own compiled
CUDA graph: a size not warmed would pay its compile on a user's request).

Per family: the native square first (the form's default), then a portrait and a landscape size
near the family's training buckets. Every side is a multiple of 64.
"""

from __future__ import annotations

from .families import ModelFamily

Size = tuple[int, int]  # (width, height)

_SD1: tuple[Size, ...] = ((512, 512), (512, 768), (768, 512))
_SD2: tuple[Size, ...] = ((768, 768), (512, 768), (768, 512))
_1024: tuple[Size, ...] = ((1024, 1024), (832, 1216), (1216, 832))

OFFERED_SIZES: dict[ModelFamily, tuple[Size, ...]] = {
    ModelFamily.SD1: _SD1,
    ModelFamily.SD2: _SD2,
    ModelFamily.SDXL: _1024,
    ModelFamily.SDXL_REFINER: _1024,
    ModelFamily.SD35_MEDIUM: _1024,
    ModelFamily.SD35_LARGE: _1024,
    ModelFamily.FLUX_DEV: _1024,
    ModelFamily.FLUX_SCHNELL: _1024,
}


def offered_sizes(family: ModelFamily | str) -> tuple[Size, ...]:
    """The sizes the Generate form offers for ``family``, the native square first."""
    return OFFERED_SIZES[ModelFamily(family)]
