"""Hires fix in txt2img: a first pass, an upscale (latent or Lanczos), an img2img pass at the
hires size; the infotext records the hires settings as A1111 writes them."""

from __future__ import annotations

import base64
import io
import json

import pytest
from inference_support import invoke, small
from PIL import Image

from easel_contracts.infotext import parse_infotext
from easel_contracts.streaming import STREAM_PATH, EventReader, ResultEvent


def _size(b64: str) -> tuple[int, int]:
    return Image.open(io.BytesIO(base64.b64decode(b64))).size


def _png() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (255, 255, 255)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _hires(**overrides):
    return small(enable_hr=True, hr_scale=2, denoising_strength=0.5, **overrides)


@pytest.mark.parametrize("upscaler", ["Latent", "Latent (nearest)", "Lanczos"])
def test_hires_fix_answers_images_at_the_upscaled_size(client, upscaler) -> None:
    response = invoke(client, "txt2img", _hires(hr_upscaler=upscaler, batch_size=2))
    assert response.status_code == 200, response.text
    images = response.json()["images"]
    assert [_size(image) for image in images] == [(128, 128), (128, 128)]


def test_hires_resize_sets_the_size_and_keeps_the_aspect_for_a_missing_side(client) -> None:
    body = invoke(client, "txt2img", _hires(width=128, height=64, hr_resize_x=192)).json()
    assert _size(body["images"][0]) == (192, 96)


def test_hires_fix_is_deterministic_and_differs_from_the_plain_image_upscaled(client) -> None:
    first = invoke(client, "txt2img", _hires()).json()["images"][0]
    again = invoke(client, "txt2img", _hires()).json()["images"][0]
    other_upscaler = invoke(client, "txt2img", _hires(hr_upscaler="Lanczos")).json()["images"][0]
    assert first == again
    assert first != other_upscaler


def test_hires_infotext_records_the_settings_as_a1111_writes_them(client) -> None:
    body = invoke(client, "txt2img",
                  _hires(hr_upscaler="Lanczos", hr_second_pass_steps=3)).json()
    info = json.loads(body["info"])
    parsed = parse_infotext(info["infotexts"][0])
    assert parsed["Size"] == "64x64"  # the first pass's size, as A1111 writes it
    assert parsed["Denoising strength"] == "0.5"
    assert parsed["Hires upscale"] == "2"
    assert parsed["Hires steps"] == "3"
    assert parsed["Hires upscaler"] == "Lanczos"
    assert "Hires resize" not in parsed
    assert info["denoising_strength"] == 0.5


def test_hires_resize_is_written_instead_of_the_scale(client) -> None:
    body = invoke(client, "txt2img", _hires(hr_resize_x=96, hr_resize_y=128)).json()
    parsed = parse_infotext(json.loads(body["info"])["infotexts"][0])
    assert parsed["Hires resize"] == "96x128"
    assert "Hires upscale" not in parsed


def test_without_hires_the_infotext_has_no_hires_or_denoising_settings(client) -> None:
    body = invoke(client, "txt2img", small()).json()
    parsed = parse_infotext(json.loads(body["info"])["infotexts"][0])
    assert not any(key.startswith("Hires") for key in parsed)
    assert "Denoising strength" not in parsed


def test_hires_steps_stream_after_the_first_pass_steps(client) -> None:
    response = client.post(STREAM_PATH, json={"task": "txt2img",
                                              "payload": _hires(hr_second_pass_steps=4)})
    assert response.status_code == 200, response.text
    reader = EventReader()
    *steps, last = reader.feed(response.content)
    # 2 first-pass steps, then int(4 x 0.5) = 2 of the second pass, counted on
    assert [(event.step, event.steps) for event in steps] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert isinstance(last, ResultEvent)
    assert _size(last.answer.images[0]) == (128, 128)


def test_hires_fix_with_controlnet_is_refused_with_the_field(client) -> None:
    controlnet = {"controlnet": {"args": [{"module": "canny", "model": "tiny-canny",
                                        "image": _png()}]}}
    response = invoke(client, "txt2img", _hires(alwayson_scripts=controlnet))
    assert response.status_code == 400
    assert "enable_hr" in response.text


def test_an_unknown_hires_upscaler_names_the_ones_there_are(client) -> None:
    response = invoke(client, "txt2img", _hires(hr_upscaler="4x-Nonexistent"))
    assert response.status_code == 404
    assert "hr_upscaler" in response.text and "Lanczos" in response.text
