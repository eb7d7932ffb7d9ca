"""X/Y plot at the portal: the labelled grid, and a plot job's cells run as invocations under one
job with the grid saved first (moto + the fake endpoint)."""

from __future__ import annotations

import base64
import io
import json
import time

import numpy as np
from PIL import Image

from easel_contracts import table as keys
from easel_contracts.xy_plot import XYPlot
from easel_webui.grids import labelled_grid

from .helpers import poll_job
from .test_sdapi import _auth, _setup

PLOT = {"x": {"type": "cfg_scale", "values": "3, 9"},
        "y": {"type": "steps", "values": "2, 4, 6"}}


def _cells(count: int, size: int = 32) -> list[Image.Image]:
    return [Image.new("RGB", (size, size), (40 * index, 200, 0)) for index in range(count)]


def test_the_labelled_grid_places_cells_after_the_label_margins() -> None:
    grid = labelled_grid(_cells(6), columns=2, x_labels=["CFG scale: 3", "CFG scale: 9"],
                         y_labels=["Steps: 2", "Steps: 4", "Steps: 6"])
    width, height = grid.size
    left, top = width - 2 * 32, height - 3 * 32
    assert left > 0 and top > 0
    assert grid.getpixel((left + 16, top + 16)) == (0, 200, 0)
    assert grid.getpixel((left + 32 + 16, top + 2 * 32 + 16)) == (200, 200, 0)


def test_the_labelled_grid_draws_text_in_both_margins() -> None:
    grid = np.asarray(labelled_grid(_cells(2), columns=2, x_labels=["Seed: 1", "Seed: 2"],
                                    y_labels=["Sampler: Euler a"]))
    top = grid.shape[0] - 32
    left = grid.shape[1] - 64
    assert (grid[:top, left:] < 128).any(), "no column label drawn"
    assert (grid[top:, :left] < 128).any(), "no row label drawn"


def test_a_failed_tile_writes_its_reason_where_it_fits() -> None:
    from easel_webui.grids import FAILED_BACKGROUND, FAILED_COLOUR, failed_tile

    pixels = np.asarray(failed_tile((256, 256), "unknown sampler_name 'DPM++ 2M'"))
    assert tuple(pixels[-1, -1]) == FAILED_BACKGROUND
    assert (pixels == FAILED_COLOUR).all(axis=-1).sum() > 50, "no reason written"


def _submit(client, endpoint_name="easel-demo", **payload):
    body = {"endpoint": endpoint_name, "task": "txt2img",
            "payload": {"prompt": "a red square", "width": 64, "height": 64, "seed": 9,
                        **payload}}
    return client.post("/generate", json=body)


def test_a_plot_invokes_each_cell_with_its_values_row_by_row(world):
    world.in_service()
    admin = world.signed_in("admin")
    response = _submit(admin, xy_plot=PLOT)
    assert response.status_code == 202, response.text
    state = poll_job(admin, response.json()["job_id"])
    assert state["status"] == "done", state
    sent = [json.loads(call["Body"])["payload"] for call in world.runtime.generations()]
    assert [(cell["steps"], cell["cfg_scale"]) for cell in sent] == [
        (2, 3.0), (2, 9.0), (4, 3.0), (4, 9.0), (6, 3.0), (6, 9.0)]
    assert {cell["seed"] for cell in sent} == {9}
    assert all("xy_plot" not in cell for cell in sent)


def test_a_plot_saves_its_labelled_grid_first_then_each_cell_with_its_settings(world):
    world.in_service()
    admin = world.signed_in("admin")
    state = poll_job(admin, _submit(admin, xy_plot=PLOT).json()["job_id"])
    grid, *cells = state["images"]
    assert grid["grid"] is True and XYPlot.model_validate(grid["params"]["xy_plot"]).rows == 3
    assert [(cell["steps"], cell["params"]["cfg_scale"]) for cell in cells] == [
        (2, 3.0), (2, 9.0), (4, 3.0), (4, 9.0), (6, 3.0), (6, 9.0)]
    key = world.portal.table.get(*keys.image_key(grid["image_id"]))["key"]
    picture = Image.open(io.BytesIO(world.portal.bucket.read(key, max_bytes=10**7)))
    assert picture.width > 2 * 8 and picture.height > 3 * 8  # the fake's 8 px cells + labels


def test_a_bad_axis_value_is_refused_before_any_invocation(world):
    world.in_service()
    admin = world.signed_in("admin")
    response = _submit(admin, xy_plot={"x": {"type": "steps", "values": "10, many"},
                                       "y": {"type": "seed", "values": "1"}})
    assert response.status_code == 422
    assert "Steps value 'many' is not a whole number" in response.json()["detail"]
    assert world.runtime.generations() == []


def test_a_value_past_the_bounds_names_the_axis(world):
    world.in_service()
    admin = world.signed_in("admin")
    response = _submit(admin, xy_plot={"x": {"type": "cfg_scale", "values": "7, 99"},
                                       "y": {"type": "seed", "values": "1"}})
    assert response.status_code == 422
    assert response.json()["detail"].startswith("xy_plot.x: CFG scale: 99 is out of bounds")


def test_a_lora_weight_axis_needs_a_lora_tag(world):
    world.in_service()
    admin = world.signed_in("admin")
    response = _submit(admin, xy_plot={"x": {"type": "lora_weight", "values": "0.2, 0.8"},
                                       "y": {"type": "seed", "values": "1, 2"}})
    assert response.status_code == 422
    assert "<lora:name:weight> tag in the prompt" in response.json()["detail"]


def test_a_plot_of_img2img_is_refused(world):
    world.in_service()
    admin = world.signed_in("admin")
    body = {"endpoint": "easel-demo", "task": "img2img",
            "payload": {"prompt": "p", "init_images": ["aGk="], "xy_plot": PLOT}}
    response = admin.post("/generate", json=body)
    assert response.status_code == 422
    assert "from text only" in response.json()["detail"]


def test_the_api_answers_a_plot_with_the_grid_first(world):
    client = _setup(world)
    response = client.post("/sdapi/v1/txt2img", headers=_auth(), json={
        "prompt": "a cat <lora:style:1>", "steps": 2, "width": 64, "height": 64,
        "xy_plot": {"x": {"type": "lora_weight", "values": [0.5, 1]},
                    "y": {"type": "seed", "values": [1, 2]}}})
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["images"]) == 5
    assert json.loads(body["info"])["index_of_first_image"] == 1
    grid = Image.open(io.BytesIO(base64.b64decode(body["images"][0])))
    assert grid.width > 16
    prompts = [json.loads(call["Body"])["payload"]["prompt"]
               for call in world.runtime.generations()]
    assert prompts == ["a cat <lora:style:0.5>", "a cat <lora:style:1>"] * 2


def test_the_api_refuses_a1111s_script_form_saying_what_to_send(world):
    client = _setup(world)
    response = client.post("/sdapi/v1/txt2img", headers=_auth(), json={
        "prompt": "p", "script_name": "x/y/z plot", "script_args": [4, "3,7"]})
    assert response.status_code == 422
    assert "send xy_plot" in response.json()["detail"]
    assert world.runtime.generations() == []


def test_each_cell_is_held_to_the_work_cap_before_any_invocation(world):
    from .test_sdapi import _measured_options

    client = _setup(world)
    _measured_options(world)  # 1e-4 s a pixel-step: 64x64 x 150 steps is past the 55 s deadline
    response = client.post("/sdapi/v1/txt2img", headers=_auth(), json={
        "prompt": "p", "width": 64, "height": 64,
        "xy_plot": {"x": {"type": "steps", "values": "10, 150"},
                    "y": {"type": "seed", "values": "1"}}})
    assert response.status_code == 422
    assert "more than its 55 s deadline" in response.json()["detail"]
    assert world.runtime.generations() == []


def test_a_plot_is_one_job_owning_its_grid_and_every_cell(world):
    world.in_service()
    admin = world.signed_in("admin")
    job_id = _submit(admin, xy_plot=PLOT).json()["job_id"]
    state = poll_job(admin, job_id)
    assert state["status"] == "done"
    jobs = {image["image_id"]: world.portal.table.get(*keys.image_key(image["image_id"]))
            ["job_id"] for image in state["images"]}
    assert set(jobs.values()) == {job_id} and len(jobs) == 7


def test_a_skipped_cell_leaves_the_plot_without_a_grid_and_the_others_with_their_settings(
        world_factory):
    world = world_factory()
    world.in_service()
    world.runtime.step_delay = 0.05
    world.add_user("alice")
    alice = world.signed_in("alice")
    job_id = _submit(alice, xy_plot={"x": {"type": "steps", "values": "30, 2, 3"},
                                     "y": {"type": "seed", "values": "5"}}).json()["job_id"]
    deadline = time.monotonic() + 10
    while not world.runtime.streams or world.runtime.streams[0].sent < 1:
        assert time.monotonic() < deadline, "the first cell never started"
        time.sleep(0.05)
    assert alice.post(f"/generate/jobs/{job_id}/skip").json()["stopping"] is True
    state = poll_job(alice, job_id, timeout=20)
    assert state["status"] == "done"
    assert [(image["grid"], image["steps"]) for image in state["images"]] == [
        (False, 2), (False, 3)]


# --- checked against what the endpoint serves, before any invocation


def test_a_sampler_the_endpoint_lacks_is_refused_before_any_invocation(world):
    world.in_service()
    admin = world.signed_in("admin")
    response = _submit(admin, xy_plot={"x": {"type": "sampler",
                                              "values": "Euler a, DPM++ 2M Karras"},
                                       "y": {"type": "seed", "values": "1, 2"}})
    assert response.status_code == 400
    assert response.json()["detail"] == ("xy_plot.x: Sampler 'DPM++ 2M Karras' is not served by "
                                         "this endpoint; it serves: Euler a")
    assert world.runtime.generations() == []


def test_a_lora_the_endpoint_lacks_in_a_lora_weight_plot_is_refused_before_any_invocation(world):
    world.in_service()
    admin = world.signed_in("admin")
    response = _submit(admin, prompt="a cat <lora:missing:1>",
                       xy_plot={"x": {"type": "seed", "values": "1"},
                                "y": {"type": "lora_weight", "values": "0.5, 1"}})
    assert response.status_code == 400
    detail = response.json()["detail"]
    assert detail.startswith("xy_plot.y: LoRA 'missing'") and detail.endswith("it serves: style")
    assert world.runtime.generations() == []


def test_a_listing_that_cannot_be_read_does_not_hold_the_plot(world):
    world.in_service()
    world.runtime.raw_answers["samplers"] = {"not": "a listing"}
    admin = world.signed_in("admin")
    response = _submit(admin, xy_plot={"x": {"type": "sampler", "values": "Euler a, k_euler_a"},
                                       "y": {"type": "seed", "values": "1"}})
    assert response.status_code == 202, response.text
    assert poll_job(admin, response.json()["job_id"])["status"] == "done"
    assert len(world.runtime.generations()) == 2


def test_a_listing_slower_than_the_wait_does_not_hold_the_plot(world, monkeypatch):
    from easel_webui import generation

    monkeypatch.setattr(generation, "LISTING_WAIT_SECONDS", 0.2)
    world.in_service()
    answer = world.runtime.invoke_endpoint

    def slow_listing(**kwargs):
        if json.loads(kwargs["Body"])["task"] == "samplers":
            time.sleep(2)
        return answer(**kwargs)

    monkeypatch.setattr(world.runtime, "invoke_endpoint", slow_listing)
    admin = world.signed_in("admin")
    started = time.monotonic()
    response = _submit(admin, xy_plot={"x": {"type": "sampler", "values": "Euler a"},
                                       "y": {"type": "seed", "values": "1"}})
    assert response.status_code == 202, response.text
    assert time.monotonic() - started < 1.5
    assert poll_job(admin, response.json()["job_id"])["status"] == "done"


# --- a cell that fails keeps the others

# the samplers listing unread, so the server's refusal of "DPM++ 2M" comes mid-job
MIXED = {"x": {"type": "sampler", "values": "Euler a, DPM++ 2M"},
         "y": {"type": "seed", "values": "1, 2"}}


def _unchecked(world):
    world.in_service()
    world.runtime.raw_answers["samplers"] = {"not": "a listing"}


def test_a_failing_cell_keeps_the_others_and_the_job_says_which_failed(world):
    _unchecked(world)
    admin = world.signed_in("admin")
    state = poll_job(admin, _submit(admin, xy_plot=MIXED).json()["job_id"])
    assert state["status"] == "done", state
    grid, *cells = state["images"]
    assert grid["grid"] is True
    assert [(cell["params"]["seed"], cell["params"]["sampler_name"]) for cell in cells] == [
        (1, "Euler a"), (2, "Euler a")]
    assert [(cell["index"], cell["x"], cell["y"]) for cell in state["failed_cells"]] == [
        (1, "Sampler: DPM++ 2M", "Seed: 1"), (3, "Sampler: DPM++ 2M", "Seed: 2")]
    assert "unknown sampler_name 'DPM++ 2M'" in state["failed_cells"][0]["error"]
    assert len(world.runtime.generations()) == 4


def test_a_failing_cell_is_a_marked_tile_in_the_grid(world):
    from easel_webui.grids import FAILED_BACKGROUND

    _unchecked(world)
    admin = world.signed_in("admin")
    state = poll_job(admin, _submit(admin, xy_plot=MIXED).json()["job_id"])
    key = world.portal.table.get(*keys.image_key(state["images"][0]["image_id"]))["key"]
    grid = Image.open(io.BytesIO(world.portal.bucket.read(key, max_bytes=10**7))).convert("RGB")
    left, top = grid.width - 2 * 8, grid.height - 2 * 8  # the fake's 8 px cells, 2 x 2
    assert grid.getpixel((left + 4, top + 4)) == (200, 30, 30)  # made
    assert grid.getpixel((left + 8 + 4, top + 4)) == FAILED_BACKGROUND  # failed
    assert grid.getpixel((left + 8 + 4, top + 8 + 4)) == FAILED_BACKGROUND


def test_a_failing_cell_on_an_async_endpoint_keeps_the_others(world):
    world.in_service("easel-queue", mode="async")
    world.runtime.s3 = world.s3
    world.runtime.raw_answers["samplers"] = {"not": "a listing"}
    admin = world.signed_in("admin")
    state = poll_job(admin, _submit(admin, xy_plot=MIXED, endpoint_name="easel-queue")
                     .json()["job_id"])
    assert state["status"] == "done", state
    assert [image["grid"] for image in state["images"]] == [True, False, False]
    assert [cell["index"] for cell in state["failed_cells"]] == [1, 3]


def test_a_plot_whose_every_cell_fails_is_a_failed_job_with_the_first_reason(world):
    _unchecked(world)
    admin = world.signed_in("admin")
    state = poll_job(admin, _submit(admin, xy_plot={
        "x": {"type": "sampler", "values": "DPM++ 2M, DDIM"},
        "y": {"type": "seed", "values": "1"}}).json()["job_id"])
    assert state["status"] == "failed"
    assert state["error"].startswith("Every cell of the plot failed; the first: ")
    assert "unknown sampler_name 'DPM++ 2M'" in state["error"]
    assert state["images"] == []


def test_the_api_answer_of_a_plot_with_a_failed_cell_names_it_in_info(world):
    client = _setup(world)
    world.runtime.raw_answers["samplers"] = {"not": "a listing"}
    response = client.post("/sdapi/v1/txt2img", headers=_auth(), json={
        "prompt": "p", "steps": 2, "width": 64, "height": 64, "xy_plot": MIXED})
    assert response.status_code == 200, response.text
    body = response.json()
    info = json.loads(body["info"])
    assert len(body["images"]) == 3  # the grid, then the two cells made
    assert [cell["index"] for cell in info["failed_cells"]] == [1, 3]


def test_an_interrupt_still_stops_a_plot_with_a_failed_cell(world):
    _unchecked(world)
    world.runtime.step_delay = 0.05
    admin = world.signed_in("admin")
    job_id = _submit(admin, steps=20, xy_plot={
        "x": {"type": "sampler", "values": "DPM++ 2M, Euler a, Euler a"},
        "y": {"type": "seed", "values": "1, 2"}}).json()["job_id"]
    deadline = time.monotonic() + 10
    while len(world.runtime.streams) < 2 or world.runtime.streams[1].sent < 1:
        assert time.monotonic() < deadline, "the second cell never started"
        time.sleep(0.05)
    assert admin.post(f"/generate/jobs/{job_id}/interrupt").json()["stopping"] is True
    state = poll_job(admin, job_id, timeout=20)
    assert state["status"] == "interrupted"
    assert len(world.runtime.generations()) == 2  # no cell after the interrupt ran


def test_a_sampler_plot_submitted_during_shutdown_is_refused_as_busy(world):
    world.in_service()
    admin = world.signed_in("admin")
    world.portal.close(timeout=1)
    response = _submit(admin, xy_plot={"x": {"type": "sampler", "values": "Euler a"},
                                       "y": {"type": "seed", "values": "1"}})
    assert response.status_code == 503
    assert "shutting down" in response.json()["detail"]
