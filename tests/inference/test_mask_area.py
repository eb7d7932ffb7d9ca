"""Masked area only (A1111's inpaint_full_res): the box arithmetic, and a tiny model's
inpainting of a corner of a larger image."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from inference_support import invoke, small
from PIL import Image

from easel_inference.mask_area import MaskedArea, fit_box, mask_box, masked_area


def _mask(size: tuple[int, int], box: tuple[int, int, int, int]) -> Image.Image:
    mask = Image.new("L", size, 0)
    mask.paste(255, box)
    return mask


def test_mask_box_is_the_painted_bounds_grown_by_the_padding() -> None:
    assert mask_box(_mask((200, 100), (50, 40, 70, 60)), 10) == (40, 30, 80, 70)


def test_mask_box_is_clamped_to_the_image() -> None:
    assert mask_box(_mask((100, 100), (0, 90, 10, 100)), 32) == (0, 58, 42, 100)


def test_mask_box_of_an_unpainted_mask_is_none() -> None:
    assert mask_box(Image.new("L", (64, 64), 0), 32) is None


def test_fit_box_widens_a_tall_box_to_the_requests_aspect_about_its_centre() -> None:
    assert fit_box((90, 40, 110, 120), 64, 64, (400, 400)) == (60, 40, 140, 120)


def test_fit_box_rounds_sides_up_to_a_multiple_of_8() -> None:
    left, top, right, bottom = fit_box((10, 10, 31, 27), 64, 64, (400, 400))
    assert (right - left) % 8 == 0 and (bottom - top) % 8 == 0
    assert right - left == bottom - top == 24


def test_fit_box_shifts_back_inside_the_image_at_an_edge() -> None:
    assert fit_box((0, 0, 16, 64), 128, 64, (300, 300)) == (0, 0, 128, 64)


def test_fit_box_stops_at_the_image_when_the_aspect_cannot_fit() -> None:
    assert fit_box((0, 0, 32, 100), 256, 64, (100, 100)) == (0, 0, 100, 100)


def test_paste_changes_only_the_masked_pixels() -> None:
    original = Image.new("RGB", (120, 80), (10, 20, 30))
    mask = _mask((120, 80), (40, 20, 60, 40))
    area = MaskedArea(original, mask, (32, 16, 72, 48))
    result = np.asarray(area.paste(Image.new("RGB", (64, 64), (250, 0, 0))))
    assert result.shape == (80, 120, 3)
    inside = np.zeros((80, 120), bool)
    inside[20:40, 40:60] = True
    assert (result[inside] == (250, 0, 0)).all()
    assert (result[~inside] == (10, 20, 30)).all()


def test_crop_scales_the_box_to_the_requests_size() -> None:
    image = Image.new("RGB", (300, 200))
    area = masked_area(image, _mask((300, 200), (100, 100, 120, 120)), padding=4, size=(64, 64))
    assert area is not None
    crop, crop_mask = area.crop((64, 64))
    assert crop.size == crop_mask.size == (64, 64)


def _b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture(scope="module")
def corner_inpaint(client):
    """A 160x128 noisy image whose 12x12 mask square near a corner is repainted at 64x64."""
    rng = np.random.default_rng(3)
    original = rng.integers(0, 256, (128, 160, 3), dtype=np.uint8)
    mask = _mask((160, 128), (20, 24, 32, 36))
    response = invoke(client, "img2img", small(
        init_images=[_b64(Image.fromarray(original))], mask=_b64(mask), mask_blur=0,
        denoising_strength=1.0, inpaint_full_res=True, inpaint_full_res_padding=8))
    assert response.status_code == 200, response.text
    body = response.json()
    image = Image.open(io.BytesIO(base64.b64decode(body["images"][0])))
    return original, np.asarray(image.convert("RGB")), json.loads(body["info"])


def test_masked_area_only_answers_at_the_init_images_size(corner_inpaint) -> None:
    _, result, info = corner_inpaint
    assert result.shape == (128, 160, 3)
    assert info["is_using_inpainting_conditioning"] is True


def test_masked_area_only_keeps_every_pixel_outside_the_padded_box(corner_inpaint) -> None:
    original, result, _ = corner_inpaint
    outside = np.ones((128, 160), bool)
    outside[24 - 8:36 + 8, 20 - 8:32 + 8] = False
    assert np.array_equal(result[outside], original[outside])


def test_masked_area_only_repaints_the_masked_square(corner_inpaint) -> None:
    original, result, _ = corner_inpaint
    square = (slice(24, 36), slice(20, 32))
    assert np.abs(result[square].astype(int) - original[square]).mean() > 10
