"""Inpainting of the masked area only (A1111's ``inpaint_full_res``): the arithmetic of the box
that is cut out, repainted at the request's size and pasted back. Pure PIL, no model."""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

Box = tuple[int, int, int, int]
"""left, top, right, bottom (right and bottom excluded), as PIL's ``crop`` takes it."""

MULTIPLE = 8


def mask_box(mask: Image.Image, padding: int) -> Box | None:
    """The bounding box of the mask's painted (non-zero) pixels grown by ``padding`` on every
    side and clamped to the image; None when nothing is painted."""
    box = mask.convert("L").point(lambda value: 255 if value else 0).getbbox()
    if box is None:
        return None
    left, top, right, bottom = box
    return (max(0, left - padding), max(0, top - padding),
            min(mask.width, right + padding), min(mask.height, bottom + padding))


def _grow(low: int, high: int, size: int, limit: int) -> tuple[int, int]:
    """[low, high) grown to ``size`` (at most ``limit``) about its centre, shifted back inside
    [0, limit) where it would leave it."""
    size = min(size, limit)
    extra = size - (high - low)
    if extra <= 0:
        return low, high
    low -= extra // 2
    low = max(0, min(low, limit - size))
    return low, low + size


def fit_box(box: Box, width: int, height: int, image_size: tuple[int, int]) -> Box:
    """``box`` grown (never shrunk) towards the aspect of ``width`` x ``height``, with sides
    rounded up to a multiple of 8, all within the image: the repainted crop is then scaled to
    the request's size with as little distortion as the image allows."""
    image_w, image_h = image_size
    left, top, right, bottom = box
    box_w, box_h = right - left, bottom - top
    if box_w * height < box_h * width:  # too narrow for the request's aspect: widen
        box_w = -(-box_h * width // height)
    else:  # too flat: heighten
        box_h = -(-box_w * height // width)
    box_w = -(-box_w // MULTIPLE) * MULTIPLE
    box_h = -(-box_h // MULTIPLE) * MULTIPLE
    left, right = _grow(left, right, box_w, image_w)
    top, bottom = _grow(top, bottom, box_h, image_h)
    return left, top, right, bottom


@dataclass(frozen=True)
class MaskedArea:
    """The original image and its (blurred) mask at the image's own size, and the box of it
    that the pipeline repaints at the request's size."""

    image: Image.Image
    mask: Image.Image
    box: Box

    def crop(self, size: tuple[int, int]) -> tuple[Image.Image, Image.Image]:
        """The box's image and mask, scaled to ``size`` (the pipeline's input)."""
        return (self.image.crop(self.box).resize(size, Image.LANCZOS),
                self.mask.crop(self.box).resize(size, Image.LANCZOS))

    def paste(self, repainted: Image.Image) -> Image.Image:
        """``repainted`` scaled back into the box of the original and blended in through the
        mask: where the mask is 0 (all of the image outside the box, too) the original's
        pixels stay exactly as they were."""
        left, top, right, bottom = self.box
        canvas = self.image.copy()
        canvas.paste(repainted.convert("RGB").resize((right - left, bottom - top),
                                                     Image.LANCZOS), (left, top))
        return Image.composite(canvas, self.image, self.mask)


def masked_area(image: Image.Image, mask: Image.Image, *, padding: int,
                size: tuple[int, int]) -> MaskedArea | None:
    """The masked area of ``image`` to repaint at ``size`` (A1111's *masked area only*), or
    None when the mask has nothing painted. ``mask`` is at the image's size already."""
    box = mask_box(mask, padding)
    if box is None:
        return None
    return MaskedArea(image.convert("RGB"), mask.convert("L"), fit_box(box, *size, image.size))
