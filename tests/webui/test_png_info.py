"""PNG Info: the settings a PNG carries (its `parameters` chunk) read back through A1111's
`POST /sdapi/v1/png-info` and the PNG Info page, sent on to the Generate form; downloads get a
readable name."""

from __future__ import annotations

import base64
import html
import io
import json
import re
from urllib.parse import unquote

from PIL import Image, PngImagePlugin

from easel_contracts.infotext import format_infotext
from easel_inference.images import encode_png

from .conftest import ADMIN_PASSWORD
from .helpers import poll_job

INFOTEXT = (
    "a red fox in snow, <lora:fox:0.6>\n"
    "Negative prompt: blurry\n"
    "Steps: 25, Sampler: Euler a, CFG scale: 6.5, Seed: 991, Size: 512x768, "
    "Model hash: 6ce0161689, Model: dream"
)


def _png(text: str | None = INFOTEXT, **extra: str) -> bytes:
    chunks = PngImagePlugin.PngInfo()
    if text is not None:
        chunks.add_text("parameters", text)
    for key, value in extra.items():
        chunks.add_text(key, value)
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 50, 50)).save(buffer, format="PNG", pnginfo=chunks)
    return buffer.getvalue()


def _basic() -> dict[str, str]:
    token = base64.b64encode(f"admin:{ADMIN_PASSWORD}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def _api(world, image: str):
    return world.client().post("/sdapi/v1/png-info", json={"image": image}, headers=_basic())


def test_the_api_answers_a1111s_shape(world):
    answer = _api(world, base64.b64encode(_png(Software="Easel")).decode())
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert set(body) == {"info", "items", "parameters"}
    assert body["info"] == INFOTEXT
    assert body["items"] == {"Software": "Easel"}
    parameters = body["parameters"]
    assert parameters["Prompt"] == "a red fox in snow, <lora:fox:0.6>"
    assert parameters["Negative prompt"] == "blurry"
    assert (parameters["Steps"], parameters["Seed"], parameters["CFG scale"]) == ("25", "991", "6.5")
    assert (parameters["Size-1"], parameters["Size-2"]) == ("512", "768")
    assert parameters["Model hash"] == "6ce0161689"


def test_the_api_accepts_a_data_url(world):
    encoded = "data:image/png;base64," + base64.b64encode(_png()).decode()
    assert _api(world, encoded).json()["info"] == INFOTEXT


def test_a_png_without_settings_answers_empty_info(world):
    body = _api(world, base64.b64encode(_png(None)).decode()).json()
    assert body == {"info": "", "items": {}, "parameters": {}}


def test_the_inference_servers_png_reads_back_through_the_portal(world):
    text = format_infotext("a castle", "fog", {"Steps": 3, "Seed": 5, "Size": "64x64",
                                               "Model": "tiny"})
    encoded = encode_png(Image.new("RGB", (8, 8)), parameters=text)
    parameters = _api(world, encoded).json()["parameters"]
    assert (parameters["Prompt"], parameters["Negative prompt"]) == ("a castle", "fog")
    assert (parameters["Steps"], parameters["Seed"], parameters["Model"]) == ("3", "5", "tiny")


def test_bad_images_get_a_clear_422(world):
    not_base64 = _api(world, "%%%")
    assert not_base64.status_code == 422 and "base64" in not_base64.json()["detail"]
    not_an_image = _api(world, base64.b64encode(b"plain text").decode())
    assert not_an_image.status_code == 422
    assert not_an_image.json()["detail"].startswith("image: not an image")


def test_the_api_needs_a_user(world):
    answer = world.client().post("/sdapi/v1/png-info", json={"image": "x"})
    assert answer.status_code == 401


def test_the_page_shows_the_settings_and_sends_them_to_txt2img(world):
    admin = world.signed_in("admin")
    page = admin.post("/png-info", files={"file": ("fox.png", _png(), "image/png")})
    assert page.status_code == 200
    text = html.unescape(page.text)
    assert "a red fox in snow, <lora:fox:0.6>" in text and "Euler a" in text
    form = re.search(r'<form method="get" action="/generate" id="send-to-txt2img">(.*?)</form>',
                     page.text, re.S).group(1)
    fields = {name: html.unescape(value) for name, value in
              re.findall(r'name="([^"]+)" value="([^"]*)"', form)}
    assert fields == {"prompt": "a red fox in snow, <lora:fox:0.6>", "negative_prompt": "blurry",
                      "steps": "25", "cfg_scale": "6.5", "seed": "991", "width": "512",
                      "height": "768", "sampler_name": "Euler a", "checkpoint": "dream"}
    generate = admin.get("/generate", params=fields)
    reuse = json.loads(html.unescape(re.search(r"data-reuse='([^']*)'", generate.text).group(1)))
    assert reuse["prompt"] == "a red fox in snow, <lora:fox:0.6>" and reuse["seed"] == "991"
    assert reuse["override_settings"] == {"sd_model_checkpoint": "dream"}
    assert 'id="init-reuse"' not in generate.text  # no gallery image to start from


def test_the_page_says_when_an_image_has_no_settings(world):
    page = world.signed_in("admin").post(
        "/png-info", files={"file": ("plain.png", _png(None), "image/png")})
    assert page.status_code == 200 and "carries no generation settings" in page.text
    assert 'id="send-to-txt2img"' not in page.text


def test_the_page_refuses_an_empty_file_with_what_to_do(world):
    page = world.signed_in("admin").post(
        "/png-info", files={"file": ("empty.png", b"", "image/png")})
    assert page.status_code == 422
    assert "the file is empty; choose a PNG" in html.unescape(page.text)


def test_downloads_get_a_readable_file_name(world):
    world.in_service()
    admin = world.signed_in("admin")
    body = {"endpoint": "easel-demo", "task": "txt2img",
            "payload": {"prompt": "A Red Square! <lora:x:1>", "steps": 2, "width": 64,
                        "height": 64, "seed": 42}}
    state = poll_job(admin, admin.post("/generate", json=body).json()["job_id"])
    disposition = unquote(re.search(r"response-content-disposition=([^&]+)",
                                    state["images"][0]["download_url"]).group(1))
    name = re.search(r'filename="([^"]+)"', disposition).group(1)
    assert re.fullmatch(r"easel-\d{8}-\d{6}-42-a-red-square\.png", name), name
