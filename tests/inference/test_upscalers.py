"""Extras (A1111 ``/sdapi/v1/extra-single-image``) and ``/sdapi/v1/upscalers`` on the server:
Lanczos / Nearest, and random-weight ESRGAN (RRDBNet) models from ``ESRGAN/`` loaded through
spandrel, on the CPU."""

from __future__ import annotations

import base64
import io
import json
import shutil
from pathlib import Path

import pytest
from esrgan_support import write_rrdbnet
from inference_support import invoke, small
from PIL import Image

from easel_contracts.invocations import ExtrasSingleImageRequest, Upscalers


def _png(size=(64, 48), color=(90, 120, 200), mode="RGB") -> str:
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _image(answer: dict) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(answer["image"])))


@pytest.fixture(scope="module")
def esrgan(client, tiny_model_dir: Path):
    """x2 (.safetensors) and x4 (.pth) RRDBNets in the shared server's ESRGAN/ folder."""
    folder = tiny_model_dir / "ESRGAN"
    write_rrdbnet(folder / "tiny-x2.safetensors", scale=2, seed=1)
    write_rrdbnet(folder / "tiny-x4.pth", scale=4, seed=2)
    (folder / "not-a-model.safetensors").write_bytes(b"\x00" * 32)
    yield client
    shutil.rmtree(folder)


@pytest.mark.parametrize(("name", "scale"), [("tiny-x2", 2), ("tiny-x4", 4)])
def test_an_esrgan_model_upscales_by_the_factor_asked(esrgan, name: str, scale: int) -> None:
    response = invoke(esrgan, "extra-single-image",
                      {"image": _png(), "upscaler_1": name, "upscaling_resize": scale})
    assert response.status_code == 200, response.text
    assert _image(response.json()).size == (64 * scale, 48 * scale)
    assert name in response.json()["html_info"]


def test_an_x4_model_asked_for_x2_gives_twice_the_size(esrgan) -> None:
    response = invoke(esrgan, "extra-single-image",
                      {"image": _png(), "upscaler_1": "tiny-x4", "upscaling_resize": 2})
    assert response.status_code == 200, response.text
    assert _image(response.json()).size == (128, 96)


def test_resize_mode_1_gives_the_exact_size_asked(esrgan) -> None:
    response = invoke(esrgan, "extra-single-image", {
        "image": _png(), "upscaler_1": "tiny-x2", "resize_mode": 1,
        "upscaling_resize_w": 100, "upscaling_resize_h": 90})
    assert response.status_code == 200, response.text
    assert _image(response.json()).size == (100, 90)


def test_the_upscalers_listing_names_the_resamplers_and_each_model_by_stem(esrgan) -> None:
    response = invoke(esrgan, "upscalers")
    assert response.status_code == 200, response.text
    listed = {entry.name: entry for entry in Upscalers.model_validate(response.json()).root}
    assert {"None", "Lanczos", "Nearest", "tiny-x2", "tiny-x4"} <= set(listed)
    assert listed["tiny-x4"].model_path == "ESRGAN/tiny-x4.pth"


def test_an_unknown_upscaler_is_a_404_that_lists_the_names_available(esrgan) -> None:
    response = invoke(esrgan, "extra-single-image", {"image": _png(), "upscaler_1": "x9000"})
    assert response.status_code == 404
    body = response.json()
    assert body["field"] == "upscaler_1"
    assert "Lanczos" in body["detail"] and "tiny-x2" in body["detail"]


def test_a_file_that_is_no_model_is_a_400_naming_it(esrgan) -> None:
    response = invoke(esrgan, "extra-single-image",
                      {"image": _png(), "upscaler_1": "not-a-model"})
    assert response.status_code == 400
    assert "not-a-model" in response.json()["detail"]
    assert "Traceback" not in response.text


def test_an_image_over_the_pixel_limit_is_refused(client) -> None:
    response = invoke(client, "extra-single-image",
                      {"image": _png((2100, 2100)), "upscaler_1": "Lanczos"})
    assert response.status_code == 400
    assert "EASEL_MAX_PIXELS" in response.json()["detail"]


def test_an_answer_over_the_side_limit_is_refused(client) -> None:
    response = invoke(client, "extra-single-image",
                      {"image": _png((1100, 64)), "upscaler_1": "Lanczos",
                       "upscaling_resize": 4})
    assert response.status_code == 400
    assert response.json()["field"] == "upscaling_resize"


def test_nearest_keeps_the_source_colours_only(client) -> None:
    source = Image.new("RGB", (8, 8), (255, 0, 0))
    source.paste((0, 0, 255), (0, 0, 4, 8))
    buffer = io.BytesIO()
    source.save(buffer, format="PNG")
    response = invoke(client, "extra-single-image", {
        "image": base64.b64encode(buffer.getvalue()).decode(), "upscaler_1": "Nearest",
        "upscaling_resize": 3})
    assert response.status_code == 200, response.text
    image = _image(response.json()).convert("RGB")
    assert image.size == (24, 24)
    assert {color for _, color in image.getcolors()} == {(255, 0, 0), (0, 0, 255)}


def test_lanczos_keeps_an_alpha_channel(client) -> None:
    response = invoke(client, "extra-single-image", {
        "image": _png(color=(1, 2, 3, 128), mode="RGBA"), "upscaler_1": "Lanczos"})
    assert response.status_code == 200, response.text
    assert _image(response.json()).mode == "RGBA"


def test_the_deadline_is_checked_before_each_tile(tmp_path: Path) -> None:
    from easel_inference.admission import Stopped
    from easel_inference.upscalers import TILE, UpscalerSet

    write_rrdbnet(tmp_path / "ESRGAN" / "x2.safetensors", scale=2)
    upscalers = UpscalerSet(tmp_path, device="cpu", max_pixels=4096 * 4096,
                            max_image_bytes=1 << 24)
    asked: list[str] = []

    def stop(where: str) -> None:
        asked.append(where)
        if len(asked) == 2:
            raise Stopped(f"stopped {where}: deadline")

    request = ExtrasSingleImageRequest(image=_png((TILE * 2 + 1, TILE)), upscaler_1="x2")
    with pytest.raises(Stopped, match="tile 2 of 3"):
        upscalers.extras(request, stop)
    assert len(asked) == 2


def test_an_esrgan_model_serves_as_the_hires_fix_upscaler(esrgan, monkeypatch) -> None:
    upscalers = esrgan.app.state.engine.manager.upscalers
    ran: list[tuple[str, tuple[int, int]]] = []
    original = upscalers.upscale

    def recorded(image, name, size, stop):
        ran.append((name, size))
        return original(image, name, size, stop)

    monkeypatch.setattr(upscalers, "upscale", recorded)
    response = invoke(esrgan, "txt2img", small(enable_hr=True, hr_scale=2, batch_size=2,
                                                denoising_strength=0.5, hr_upscaler="tiny-x2"))
    assert response.status_code == 200, response.text
    assert ran == [("tiny-x2", (128, 128))] * 2  # each first-pass image, through the model
    assert _image({"image": response.json()["images"][0]}).size == (128, 128)
    assert "Hires upscaler: tiny-x2" in json.loads(response.json()["info"])["infotexts"][0]


def test_a_missing_hires_model_is_a_404_before_any_step(esrgan) -> None:
    response = invoke(esrgan, "txt2img", small(enable_hr=True, hr_upscaler="tiny-x3"))
    assert response.status_code == 404
    assert response.json()["field"] == "hr_upscaler"
    assert "Latent" in response.json()["detail"] and "tiny-x2" in response.json()["detail"]
