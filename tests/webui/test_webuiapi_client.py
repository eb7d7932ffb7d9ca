"""The stock AUTOMATIC1111 API client (webuiapi 0.9.17) against the portal over HTTP: PNG Info."""

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
