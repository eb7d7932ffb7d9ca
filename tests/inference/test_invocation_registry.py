"""The server and the invocation registry (easel_contracts.invocations) agree: every task the
server dispatches is in the registry, every registry task is served, and each answer parses with
its task's response model."""

from __future__ import annotations

import base64
import io

import pytest
from inference_support import invoke, small
from PIL import Image

from easel_contracts.invocations import TASKS, GenerationInfo, GenerationResponse, parse_answer


def _png() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (90, 120, 200)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


PAYLOADS = {"txt2img": small(), "img2img": small(init_images=[_png()], denoising_strength=0.5),
            "extra-single-image": {"image": _png(), "upscaler_1": "Lanczos"}}


def test_the_server_dispatches_exactly_the_registry_tasks(client) -> None:
    assert set(client.app.state.engine.handlers()) == set(TASKS)


@pytest.mark.parametrize("task", list(TASKS))
def test_every_registry_task_is_served_with_its_response_model(client, task: str) -> None:
    response = invoke(client, task, PAYLOADS.get(task))
    assert response.status_code == 200, response.text
    answer = parse_answer(task, response.content)
    assert isinstance(answer, TASKS[task].response)
    if isinstance(answer, GenerationResponse):
        assert GenerationInfo.model_validate_json(answer.info).steps == 2


def test_a_listing_task_refuses_a_payload_it_does_not_take(client) -> None:
    response = invoke(client, "samplers", {"page": 2})
    assert response.status_code == 400
    assert "page" in response.json()["detail"]


def test_a_handler_answering_the_wrong_model_is_a_500_not_a_wrong_shape(client) -> None:
    engine = client.app.state.engine
    original = engine.handlers

    def swapped():
        handlers = original()
        handlers["sd-models"] = handlers["samplers"]
        return handlers

    engine.handlers = swapped
    try:
        response = invoke(client, "sd-models")
    finally:
        engine.handlers = original
    assert response.status_code == 500
    assert "Traceback" not in response.text
