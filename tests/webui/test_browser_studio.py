"""The studio's issue-18 pages in a real browser: the inpainting mask editor, gallery search and
the training timeline. Reuses test_browser's fixtures (moto server + uvicorn + Debian chromium)."""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import pytest

from .conftest import ADMIN_PASSWORD
from .test_browser import _shot, _sign_in, page, served  # noqa: F401 - fixtures

pytestmark = pytest.mark.slow


def _init_image(tmp_path: Any) -> str:
    from PIL import Image

    path = tmp_path / "init.png"
    Image.new("RGB", (128, 96), (200, 40, 40)).save(path, "PNG")
    return str(path)


def _drag(tab: Any, points: list[tuple[float, float]]) -> None:
    """A stroke over the mask canvas through `points` (fractions of its width and height)."""
    tab.locator("#mask-canvas").scroll_into_view_if_needed()
    box = tab.locator("#mask-canvas").bounding_box()
    xy = [(box["x"] + fx * box["width"], box["y"] + fy * box["height"]) for fx, fy in points]
    tab.mouse.move(*xy[0])
    tab.mouse.down()
    for point in xy[1:]:
        tab.mouse.move(*point, steps=8)
    tab.mouse.up()


def _generated(tab: Any) -> str:
    """Click Generate and wait for the form's status to settle; its text."""
    tab.click("#generate-button")
    tab.wait_for_function("() => /^(Done|Failed)/.test("
                          "document.querySelector('#generate-form .status').textContent)")
    return tab.text_content("#generate-form .status")


def _plotted(tab: Any, x: tuple[str, str], y: tuple[str, str]) -> str:
    """Generate an X/Y plot of a lighthouse with the (type, values) axes; the status text."""
    tab.fill("textarea[name=prompt]", "a lighthouse")
    tab.check("#xy-on")
    tab.select_option("#xy-x-type", x[0])
    tab.fill("#xy-x-values", x[1])
    tab.select_option("#xy-y-type", y[0])
    tab.fill("#xy-y-values", y[1])
    return _generated(tab)


def _submitted_img2img(tab: Any, world: Any) -> dict[str, Any]:
    assert _generated(tab).startswith("Done")
    calls = [json.loads(call["Body"]) for call in world.runtime.generations()]
    return next(c["payload"] for c in calls if c["task"] == "img2img")


def _mask(payload: dict[str, Any]) -> Any:
    from PIL import Image

    return Image.open(io.BytesIO(base64.b64decode(payload["mask"]))).convert("L")


def _open_editor(tab: Any, base: str, tmp_path: Any) -> None:
    _sign_in(tab, base, "admin", ADMIN_PASSWORD)
    tab.wait_for_selector("#checkpoint option:nth-child(2)", state="attached")
    tab.fill("textarea[name=prompt]", "a blue door")
    tab.check("#img2img")
    tab.set_input_files("#init-file", _init_image(tmp_path))
    tab.wait_for_selector("#mask-editor", state="visible")
    tab.wait_for_function("() => document.querySelector('#mask-canvas').width === 128")


def test_painted_stroke_is_sent_as_the_inpainting_mask(served, page, tmp_path):  # noqa: F811
    base, world = served
    world.in_service()
    _open_editor(page, base, tmp_path)
    # a horizontal stroke across the middle, from 20% to 80% of the width
    _drag(page, [(0.2, 0.5), (0.8, 0.5)])
    page.select_option("select[name=inpainting_fill]", "2")
    page.check("input[name=inpaint_full_res]")
    page.fill("input[name=inpaint_full_res_padding]", "48")
    payload = _submitted_img2img(page, world)
    # after the click: a full-page screenshot resizes the viewport and back, and with the X/Y
    # plot section making the form taller the click then landed beside the button
    _shot(page, "11-inpaint-mask")

    mask = _mask(payload)
    assert mask.size == (128, 96)  # the init image's own size
    assert mask.getpixel((64, 48)) == 255  # on the stroke
    assert mask.getpixel((40, 48)) == 255
    assert mask.getpixel((64, 4)) == 0  # far above it
    assert mask.getpixel((2, 48)) == 0  # left of where it started
    assert (payload["inpainting_fill"], payload["inpaint_full_res"],
            payload["inpaint_full_res_padding"]) == (2, True, 48)


def test_invert_and_eraser_change_the_submitted_mask(served, page, tmp_path):  # noqa: F811
    base, world = served
    world.in_service()
    _open_editor(page, base, tmp_path)
    _drag(page, [(0.1, 0.5), (0.9, 0.5)])
    page.check("#mask-erase")
    _drag(page, [(0.5, 0.2), (0.5, 0.8)])  # erase a vertical cut through the stroke
    page.click("#mask-invert")
    mask = _mask(_submitted_img2img(page, world))
    assert mask.getpixel((64, 4)) == 255  # unpainted, inverted: masked
    assert mask.getpixel((30, 48)) == 0  # painted, inverted: kept
    assert mask.getpixel((64, 48)) == 255  # erased, inverted: masked


def test_cleared_mask_sends_a_plain_img2img(served, page, tmp_path):  # noqa: F811
    base, world = served
    world.in_service()
    _open_editor(page, base, tmp_path)
    _drag(page, [(0.2, 0.5), (0.8, 0.5)])
    page.click("#mask-clear")
    payload = _submitted_img2img(page, world)
    assert "mask" not in payload and payload["init_images"]


def test_gallery_search_form_filters_in_the_browser(served, page):  # noqa: F811
    from .test_gallery_search import _image
    from .test_owner_views import _write_all

    base, world = served
    _write_all(world, [
        *_image("fox-jan", "admin", "2026-01-10T10:00:00Z", "a red fox in snow", "tiny"),
        *_image("owl-feb", "admin", "2026-02-10T10:00:00Z", "an owl at night", "tiny"),
        *_image("fox-mar", "admin", "2026-03-10T10:00:00Z", "fox cub, watercolor", "dream"),
    ])
    _sign_in(page, base, "admin", ADMIN_PASSWORD)
    page.click("nav a:has-text('Gallery')")
    assert len(page.locator(".gallery figure").all()) == 3
    page.fill("#gallery-search input[name=q]", "fox")
    page.fill("#gallery-search input[name=since]", "2026-01-01")
    page.fill("#gallery-search input[name=until]", "2026-02-28")
    page.click("#gallery-search button")
    page.wait_for_url("**/gallery?*")
    shown = [f.get_attribute("data-image") for f in page.locator(".gallery figure").all()]
    assert shown == ["fox-jan"]
    assert page.input_value("#gallery-search input[name=q]") == "fox"  # the form keeps it
    _shot(page, "12-gallery-search")


def test_gallery_upscale_button_adds_the_upscaled_image(served, page):  # noqa: F811
    import requests

    base, world = served
    world.in_service()
    made = requests.post(f"{base}/sdapi/v1/txt2img", auth=("admin", ADMIN_PASSWORD), timeout=30,
                         json={"prompt": "a heron at dawn", "steps": 2, "width": 64,
                               "height": 64})
    assert made.status_code == 200, made.text
    _sign_in(page, base, "admin", ADMIN_PASSWORD)
    page.click("nav a:has-text('Gallery')")
    figure = page.locator(".gallery figure").first
    # app.js adds the endpoint's ESRGAN models to the resamplers the page offers
    figure.locator(".upscaler-choice option:has-text('tiny-x4')").wait_for(state="attached")
    figure.locator("select[name=scale]").select_option("4")
    figure.locator(".upscaler-choice").select_option("tiny-x4")
    _shot(page, "15-gallery-upscale")
    figure.locator("button:has-text('Upscale')").click()
    page.wait_for_url("**/gallery?notice=*")
    assert len(page.locator(".gallery figure").all()) == 2
    sent = [json.loads(kwargs["Body"]) for name, kwargs in world.runtime.calls
            if name == "invoke_endpoint"]
    extras = [c["payload"] for c in sent if c["task"] == "extra-single-image"]
    assert [(e["upscaler_1"], e["upscaling_resize"]) for e in extras] == [("tiny-x4", 4.0)]
    upscaled = [i for i in world.portal.table.query_index("images")
                if i["task"] == "extra-single-image"]
    assert [(i["width"], i["height"]) for i in upscaled] == [(32, 32)]


def test_the_xy_plot_form_yields_a_labelled_grid_in_the_gallery(served, page):  # noqa: F811
    import numpy as np
    from PIL import Image

    from easel_contracts import table as keys

    base, world = served
    world.in_service()
    _sign_in(page, base, "admin", ADMIN_PASSWORD)
    page.wait_for_selector("#checkpoint option:nth-child(2)", state="attached")
    assert _plotted(page, ("cfg_scale", "3, 9"), ("sampler", "Euler a, k_euler_a")) \
        .startswith("Done")
    sent = [json.loads(call["Body"])["payload"] for call in world.runtime.generations()]
    assert [(cell["sampler_name"], cell["cfg_scale"]) for cell in sent] == [
        ("Euler a", 3.0), ("Euler a", 9.0), ("k_euler_a", 3.0), ("k_euler_a", 9.0)]
    page.click("nav a:has-text('Gallery')")
    figures = page.locator(".gallery figure").all()
    assert len(figures) == 5
    grid = [f for f in figures if "· grid" in (f.text_content() or "")]
    assert len(grid) == 1
    record = world.portal.table.get(*keys.image_key(grid[0].get_attribute("data-image")))
    picture = np.asarray(Image.open(io.BytesIO(
        world.portal.bucket.read(record["key"], max_bytes=10**7))).convert("L"))
    cells_top = picture.shape[0] - 2 * 8  # the fake endpoint's 8 px images, 2 rows
    assert (picture[:cells_top] < 128).any(), "the column labels are missing"


def test_hires_fix_offers_the_endpoints_esrgan_models(served, page):  # noqa: F811
    base, world = served
    world.in_service()
    _sign_in(page, base, "admin", ADMIN_PASSWORD)
    page.wait_for_selector("#hr-upscaler option:has-text('tiny-x4')", state="attached")
    offered = page.eval_on_selector_all("#hr-upscaler option", "els => els.map(e => e.value)")
    assert offered[0] == "Latent" and "Lanczos" in offered and offered[-1] == "tiny-x4"


def test_the_xy_plot_form_says_which_cells_failed(served, page):  # noqa: F811
    base, world = served
    world.in_service()
    _sign_in(page, base, "admin", ADMIN_PASSWORD)
    page.wait_for_selector("#checkpoint option:nth-child(2)", state="attached")
    # the listing unread from now on: the sampler is not checked up front, the server refuses it
    world.runtime.raw_answers["samplers"] = {"not": "a listing"}
    status = _plotted(page, ("sampler", "Euler a, DPM++ 2M"), ("seed", "1"))
    assert status.startswith("Done") and "1 plot cell(s) failed" in status
    assert "Sampler: DPM++ 2M, Seed: 1: " in status


def test_the_sampler_options_follow_the_chosen_model(served, page, monkeypatch):  # noqa: F811
    from .test_samplers_per_checkpoint import ALL_SAMPLERS, FLUX_SAMPLERS, mixed_endpoint

    base, world = served
    mixed_endpoint(world, monkeypatch)
    _sign_in(page, base, "admin", ADMIN_PASSWORD)
    page.wait_for_selector("#checkpoint option[value='flux.safetensors']", state="attached")
    page.wait_for_selector("#sampler option[value='DPM++ 2M Karras']", state="attached")
    offered = "els => els.map(e => e.value).filter(Boolean)"
    page.select_option("#sampler", "DPM++ 2M Karras")
    page.select_option("#checkpoint", "flux.safetensors")
    page.wait_for_selector("#sampler option[value='DPM++ 2M Karras']", state="detached")
    assert page.eval_on_selector_all("#sampler option", offered) == FLUX_SAMPLERS
    assert page.input_value("#sampler") == ""  # no longer offered: the default
    page.select_option("#sampler", "Euler")
    page.select_option("#checkpoint", "tiny.safetensors")
    page.wait_for_selector("#sampler option[value='DPM++ 2M Karras']", state="attached")
    assert page.eval_on_selector_all("#sampler option", offered) == ALL_SAMPLERS
    assert page.input_value("#sampler") == "Euler"  # still offered: kept
