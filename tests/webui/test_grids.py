"""Batch-count grids: a job of several images also answers and saves a near-square grid, first,
as AUTOMATIC1111 does; the gallery shows each image's own seed and marks the grid."""

from __future__ import annotations

import base64
import io
import json

import pytest
from PIL import Image

from easel_contracts.infotext import PNG_TEXT_KEY
from easel_contracts.invocations import GenerationResponse
from easel_webui.grids import grid_shape, image_grid, with_grid

from .fakes import png_b64
from .helpers import poll_job


@pytest.mark.parametrize(("count", "shape"), [
    (2, (1, 2)), (3, (2, 2)), (4, (2, 2)), (6, (2, 3)), (7, (3, 3)), (16, (4, 4)), (1, (1, 1)),
])
def test_the_grid_is_near_square_as_a1111_lays_it_out(count, shape):
    assert grid_shape(count) == shape


def test_the_grid_tiles_the_images_row_by_row():
    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    grid = image_grid([Image.new("RGB", (8, 8), color) for color in colors])
    assert grid.size == (16, 16)
    assert grid.getpixel((4, 4)) == colors[0]
    assert grid.getpixel((12, 4)) == colors[1]
    assert grid.getpixel((4, 12)) == colors[2]
    assert grid.getpixel((12, 12)) == (0, 0, 0)


def _answer(count: int) -> GenerationResponse:
    return GenerationResponse(
        images=[png_b64((index * 40, 0, 0)) for index in range(count)], parameters={},
        info=json.dumps({"all_seeds": list(range(5, 5 + count)),
                         "infotexts": [f"p\nSteps: 2, Seed: {5 + index}, Size: 8x8"
                                       for index in range(count)]}))


def test_with_grid_puts_the_grid_first_and_says_so_in_info():
    answer = with_grid(_answer(4))
    assert len(answer.images) == 5
    grid = Image.open(io.BytesIO(base64.b64decode(answer.images[0])))
    assert grid.size == (16, 16)
    assert grid.info[PNG_TEXT_KEY].endswith("Seed: 5, Size: 8x8")
    info = json.loads(answer.info)
    assert info["index_of_first_image"] == 1
    assert len(info["infotexts"]) == 5


def test_a_single_image_gets_no_grid():
    answer = _answer(1)
    assert with_grid(answer) is answer


def test_a_batch_count_job_saves_the_grid_first_and_each_images_seed(world):
    world.in_service()
    admin = world.signed_in("admin")
    body = {"endpoint": "easel-demo", "task": "txt2img",
            "payload": {"prompt": "a red square", "steps": 2, "width": 64, "height": 64,
                        "batch_size": 2, "n_iter": 2, "seed": 40}}
    state = poll_job(admin, admin.post("/generate", json=body).json()["job_id"])
    assert state["status"] == "done", state
    grid, *images = state["images"]
    assert grid["grid"] is True and len(images) == 4
    assert not any(image["grid"] for image in images)
    page = admin.get("/gallery").text
    assert "· grid" in page


def test_one_image_jobs_save_no_grid(world):
    world.in_service()
    admin = world.signed_in("admin")
    body = {"endpoint": "easel-demo", "task": "txt2img",
            "payload": {"prompt": "a red square", "steps": 2, "width": 64, "height": 64}}
    state = poll_job(admin, admin.post("/generate", json=body).json()["job_id"])
    assert [image["grid"] for image in state["images"]] == [False]


def test_the_gallery_shows_each_images_own_seed_size_and_steps(world):
    world.in_service()
    world.runtime.raw_answers["txt2img"] = GenerationResponse(
        images=[png_b64(), png_b64()], parameters={},
        info=json.dumps({"all_seeds": [77, 78], "width": 64, "height": 72, "steps": 3}),
    ).model_dump()
    admin = world.signed_in("admin")
    body = {"endpoint": "easel-demo", "task": "txt2img",
            "payload": {"prompt": "a red square", "steps": 3, "width": 64, "height": 72,
                        "batch_size": 2}}
    response = admin.post("/generate", json=body)
    assert response.status_code == 202, response.text
    state = poll_job(admin, response.json()["job_id"])
    assert [(image.get("seed"), image.get("steps")) for image in state["images"]] == [
        (None, None), (77, 3), (78, 3)]
    page = admin.get("/gallery").text
    assert "seed 77 · 64x72 · 3 steps" in page and "seed 78" in page
