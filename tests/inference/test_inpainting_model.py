"""A 9-channel inpainting checkpoint (single file, no YAML): detected, warmed up, and serving
txt2img, img2img and masked img2img, as A1111 serves such a model."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
from inference_support import invoke, small, wait_ready
from PIL import Image

from easel_inference.builder import build_model_dir
from easel_inference.loader import load_pipeline


def _png(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _pixels(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB")).astype(float)


@pytest.fixture(scope="module")
def inpainting_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("inpainting-model")
    build_model_dir(root, name="tiny-inpainting", inpainting=True, seed=3)
    return root


@pytest.fixture(scope="module")
def inpainting_client(inpainting_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    from fastapi.testclient import TestClient

    from easel_inference.app import create_app
    from easel_inference.settings import Settings

    settings = Settings(model_dir=inpainting_dir,
                        lora_cache_dir=tmp_path_factory.mktemp("inpainting-cache"))
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        yield client


def test_single_file_inpainting_checkpoint_loads_with_a_9_channel_unet(inpainting_dir) -> None:
    pipe = load_pipeline(inpainting_dir / "Stable-diffusion" / "tiny-inpainting.safetensors")
    assert pipe.unet.config.in_channels == 9


def test_txt2img_on_an_inpainting_checkpoint_uses_inpainting_conditioning(
    inpainting_client,
) -> None:
    first = invoke(inpainting_client, "txt2img", small())
    assert first.status_code == 200, first.text
    info = json.loads(first.json()["info"])
    assert info["is_using_inpainting_conditioning"] is True
    again = invoke(inpainting_client, "txt2img", small()).json()
    assert again["images"] == first.json()["images"]
    assert invoke(inpainting_client, "options").json()["warmed_up"]["model"] == "tiny-inpainting"


def test_img2img_on_an_inpainting_checkpoint_depends_on_the_init_image(inpainting_client) -> None:
    black, white = (np.full((64, 64, 3), value, np.uint8) for value in (0, 255))
    results = [
        invoke(inpainting_client, "img2img",
               small(init_images=[_png(image)], denoising_strength=0.5))
        for image in (black, white)
    ]
    assert [r.status_code for r in results] == [200, 200], results[0].text
    assert json.loads(results[0].json()["info"])["is_using_inpainting_conditioning"] is True
    assert results[0].json()["images"] != results[1].json()["images"]


def test_masked_img2img_on_an_inpainting_checkpoint_keeps_the_unmasked_pixels(
    inpainting_client,
) -> None:
    mask = np.zeros((64, 64, 3), np.uint8)
    mask[16:48, 16:48] = 255
    init = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    body = invoke(inpainting_client, "img2img", small(
        init_images=[_png(init)], mask=_png(mask), denoising_strength=1.0, mask_blur=0)).json()
    pixels = _pixels(body["images"][0])
    outside = mask[..., 0] == 0
    np.testing.assert_array_equal(pixels[outside], init[outside])
    assert np.abs(pixels[~outside] - init[~outside]).mean() > 10


def test_controlnet_on_an_inpainting_checkpoint_is_a_clear_400(inpainting_client) -> None:
    unit = {"module": "canny", "model": "", "image": _png(np.zeros((64, 64, 3), np.uint8))}
    response = invoke(inpainting_client, "txt2img",
                      small(alwayson_scripts={"controlnet": {"args": [unit]}}))
    assert response.status_code == 400
    assert "inpainting checkpoint" in response.json()["detail"]
