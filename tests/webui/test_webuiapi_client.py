"""The stock AUTOMATIC1111 API client (webuiapi 0.9.17) against the portal over HTTP: PNG Info,
progress, interrupt and skip."""

from __future__ import annotations

import io
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from PIL import Image, PngImagePlugin

from .conftest import ADMIN_PASSWORD

webuiapi = pytest.importorskip("webuiapi", reason="webuiapi is not installed")
uvicorn = pytest.importorskip("uvicorn")

INFOTEXT = ("a koi pond, <lora:ink:0.5>\nNegative prompt: text\n"
            "Steps: 30, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 5, Seed: 77, "
            "Size: 640x448, Model hash: 0123abcd, Model: pond")


@pytest.fixture
def api(world) -> Iterator[Any]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(world.app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    port = sock.getsockname()[1]
    yield webuiapi.WebUIApi(baseurl=f"http://127.0.0.1:{port}/sdapi/v1", username="admin",
                            password=ADMIN_PASSWORD)
    server.should_exit = True
    thread.join(timeout=10)


def _image_with_settings() -> Image.Image:
    chunks = PngImagePlugin.PngInfo()
    chunks.add_text("parameters", INFOTEXT)
    buffer = io.BytesIO()
    Image.new("RGB", (20, 14), (10, 120, 90)).save(buffer, format="PNG", pnginfo=chunks)
    buffer.seek(0)
    return Image.open(buffer)  # webuiapi sends the image's text chunks along


def test_webuiapi_png_info_reads_the_settings(api):
    result = api.png_info(_image_with_settings())
    assert result.info == INFOTEXT
    assert result.parameters["Prompt"] == "a koi pond, <lora:ink:0.5>"
    assert result.parameters["Negative prompt"] == "text"
    assert result.parameters["Seed"] == "77" and result.parameters["Schedule type"] == "Karras"
    assert (result.parameters["Size-1"], result.parameters["Size-2"]) == ("640", "448")


def _start_admin_job(world, *, steps: int, n_iter: int = 1) -> str:
    world.in_service()
    world.runtime.step_delay = 0.05
    response = world.signed_in("admin").post("/generate", json={
        "endpoint": "easel-demo", "task": "txt2img",
        "payload": {"prompt": "a slow koi", "steps": steps, "width": 64, "height": 64,
                    "n_iter": n_iter}})
    assert response.status_code == 202, response.text
    return response.json()["job_id"]


def _wait(predicate, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


def test_webuiapi_get_progress_then_interrupt(api, world):
    job_id = _start_admin_job(world, steps=150)
    progress = _wait(lambda: (p := api.get_progress())["state"]["sampling_step"] and p)
    assert progress["state"]["job"] == job_id and progress["state"]["sampling_steps"] == 150
    assert 0 < progress["progress"] < 1 and progress["current_image"]
    assert api.interrupt()["stopping"] is True
    _wait(lambda: world.portal.generation.job(job_id, user=_admin(world))["status"]
          != "running")
    assert api.get_progress()["state"]["job"] == ""


def test_webuiapi_skip_goes_on_with_the_next_batch(api, world):
    job_id = _start_admin_job(world, steps=40, n_iter=2)
    _wait(lambda: api.get_progress()["state"]["sampling_step"])
    assert api.skip()["stopping"] is True
    state = _wait(lambda: (s := world.portal.generation.job(job_id, user=_admin(world)))
                  ["status"] != "running" and s)
    assert state["status"] == "done" and len(state["images"]) == 1


def _admin(world):
    return world.portal.auth.authenticate("admin", ADMIN_PASSWORD)


def test_webuiapi_txt2img_sends_hires_fix_and_gets_the_grid_first(api, world):
    import json

    world.in_service()
    result = api.txt2img(prompt="a koi", width=64, height=64, steps=2, batch_size=2,
                         enable_hr=True, hr_upscaler=webuiapi.HiResUpscaler.Lanczos,
                         hr_scale=1.5, denoising_strength=0.4)
    sent = json.loads(world.runtime.generations()[-1]["Body"])["payload"]
    assert (sent["enable_hr"], sent["hr_upscaler"], sent["hr_scale"]) == (True, "Lanczos", 1.5)
    assert len(result.images) == 3  # the grid of the two, first
    assert result.image.size == (16, 8) and result.images[1].size == (8, 8)


def test_webuiapi_extra_single_image_upscales_and_saves_to_the_gallery(api, world):
    world.in_service()
    result = api.extra_single_image(image=Image.new("RGB", (12, 10), (200, 40, 40)),
                                    upscaler_1="Lanczos", upscaling_resize=2)
    assert result.image.size == (24, 20)
    saved = [i for i in world.portal.table.query_index("images")
             if i["task"] == "extra-single-image"]
    assert [i["owner"] for i in saved] == ["admin"]
