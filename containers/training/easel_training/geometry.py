"""Where each image lands in the training frame: square crops or aspect-ratio buckets.

A :class:`Placement` says at what size an image is encoded by the VAE (``encode_hw``) and what
window of it is trained on (``target_hw``). With a center crop or bucketing the two are equal;
with a random crop the image is encoded once at "cover" size and a window is cut from its
latents each step (offsets on the 8-pixel latent grid).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from PIL import Image

LATENT_STRIDE = 8
MAX_ASPECT = 2.0


@dataclass(frozen=True)
class Placement:
    encode_hw: tuple[int, int]  # (height, width) of the resized image given to the VAE
    target_hw: tuple[int, int]  # (height, width) of the training window

    @property
    def random_crop(self) -> bool:
        return self.encode_hw != self.target_hw


def _bucket_step(resolution: int) -> int:
    return 64 if resolution >= 256 else LATENT_STRIDE


def make_buckets(resolution: int, *, max_aspect: float = MAX_ASPECT) -> list[tuple[int, int]]:
    """(height, width) buckets of about ``resolution``² pixels, sides on the bucket grid."""
    step = _bucket_step(resolution)
    area = resolution * resolution
    buckets = {(resolution, resolution)}
    width = step
    while width <= resolution * max_aspect:
        height = (area // width) // step * step
        if height >= step and max(width / height, height / width) <= max_aspect:
            buckets.add((height, width))
        width += step
    return sorted(buckets)


def nearest_bucket(width: int, height: int, buckets: list[tuple[int, int]]) -> tuple[int, int]:
    ratio = math.log(width / height)
    return min(buckets, key=lambda hw: (abs(math.log(hw[1] / hw[0]) - ratio), hw))


def cover_size(width: int, height: int, target_hw: tuple[int, int]) -> tuple[int, int]:
    """(height, width) of the smallest resize of the image covering ``target_hw``,
    rounded up to the latent grid."""
    target_h, target_w = target_hw
    scale = max(target_w / width, target_h / height)
    def up(value: float, minimum: int) -> int:
        return max(minimum, math.ceil(value / LATENT_STRIDE - 1e-6) * LATENT_STRIDE)
    return up(height * scale, target_h), up(width * scale, target_w)


def place_image(width: int, height: int, *, resolution: int, bucketing: bool,
                center_crop: bool, buckets: list[tuple[int, int]] | None = None) -> Placement:
    if bucketing:
        target = nearest_bucket(width, height, buckets or make_buckets(resolution))
        return Placement(encode_hw=target, target_hw=target)
    target = (resolution, resolution)
    if center_crop:
        return Placement(encode_hw=target, target_hw=target)
    return Placement(encode_hw=cover_size(width, height, target), target_hw=target)


def _cover_resize(width: int, height: int, size_hw: tuple[int, int]) -> tuple[int, int]:
    target_h, target_w = size_hw
    scale = max(target_w / width, target_h / height)
    return max(target_w, round(width * scale)), max(target_h, round(height * scale))


def center_crop_offset(width: int, height: int, size_hw: tuple[int, int]) -> tuple[int, int]:
    """(top, left) of the window :func:`resize_and_center_crop` cuts, in resized pixels
    (what SDXL's crop conditioning records)."""
    new_w, new_h = _cover_resize(width, height, size_hw)
    return (new_h - size_hw[0]) // 2, (new_w - size_hw[1]) // 2


def resize_and_center_crop(image: Image.Image, size_hw: tuple[int, int]) -> Image.Image:
    """Scale to cover ``size_hw`` (keeping the aspect ratio) and cut out the middle."""
    new_w, new_h = _cover_resize(*image.size, size_hw)
    resized = image.resize((new_w, new_h), Image.Resampling.LANCZOS)
    top, left = center_crop_offset(*image.size, size_hw)
    return resized.crop((left, top, left + size_hw[1], top + size_hw[0]))
