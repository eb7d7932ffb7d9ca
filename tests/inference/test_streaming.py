"""POST /invocations-response-stream (SageMaker's InvokeEndpointWithResponseStream): step events
with previews, then the result; closing the stream stops the work at the next step."""

from __future__ import annotations

import base64
import http.client
import io
import json
import socket
import threading
import time
from pathlib import Path

import pytest
import torch
import uvicorn
from inference_support import small
from PIL import Image

from easel_contracts.invocations import GenerationResponse
from easel_contracts.streaming import (
    STREAM_CONTENT_TYPE,
    STREAM_PATH,
    ErrorEvent,
    EventReader,
    ResultEvent,
    StepEvent,
)
from easel_inference.app import build_engine, create_app
from easel_inference.progress import StepReporter, latent_preview
from easel_inference.settings import Settings


def _stream(client, task: str, payload: dict):
    return client.post(STREAM_PATH, json={"task": task, "payload": payload})


def _events(body: bytes) -> list:
    reader = EventReader()
    events = reader.feed(body)
    reader.close()
    return events


def test_a_streamed_generation_sends_one_event_per_step_then_its_result(client) -> None:
    response = _stream(client, "txt2img", small(steps=3, n_iter=2, seed=11))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith(STREAM_CONTENT_TYPE)
    *steps, last = _events(response.content)
    assert all(isinstance(event, StepEvent) for event in steps)
    assert [(e.batch, e.step, e.steps, e.batches) for e in steps] == [
        (1, 1, 3, 2), (1, 2, 3, 2), (1, 3, 3, 2), (2, 1, 3, 2), (2, 2, 3, 2), (2, 3, 3, 2)]
    assert steps[-1].fraction == 1.0
    assert isinstance(last, ResultEvent)
    assert len(last.answer.images) == 2
    assert json.loads(last.answer.info)["all_seeds"] == [11, 12]


def test_the_streamed_result_equals_the_plain_invocations_answer(client) -> None:
    plain = client.post("/invocations", json={"task": "txt2img", "payload": small(seed=5)})
    *_, last = _events(_stream(client, "txt2img", small(seed=5)).content)
    assert isinstance(last, ResultEvent)
    assert last.answer.images == GenerationResponse.model_validate(plain.json()).images


def test_the_first_step_carries_a_preview_of_the_latents(client) -> None:
    first, *_ = _events(_stream(client, "txt2img", small(width=128, height=64)).content)
    assert isinstance(first, StepEvent) and first.preview
    image = Image.open(io.BytesIO(base64.b64decode(first.preview)))
    assert image.format == "JPEG"
    width, height = image.size  # the latents' size: the image's over the VAE's scale
    assert width == 2 * height and width < 128


def test_a_listing_task_is_refused_on_the_stream_with_the_field(client) -> None:
    response = _stream(client, "samplers", {})
    assert response.status_code == 400
    assert response.json()["field"] == "task"


def test_a_failure_after_the_work_started_ends_the_stream_with_an_error_event(client) -> None:
    engine = client.app.state.engine

    def explode(step: int) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory")

    engine.step_hook = explode
    try:
        events = _events(_stream(client, "txt2img", small()).content)
    finally:
        engine.step_hook = None
    last = events[-1]
    assert isinstance(last, ErrorEvent)
    assert last.status == 503 and "out of memory" in last.detail


def test_latent_preview_maps_four_channels_and_skips_other_shapes() -> None:
    latents = torch.randn(2, 4, 64, 96)
    image = Image.open(io.BytesIO(base64.b64decode(latent_preview(latents, max_side=48))))
    assert image.size == (48, 32)
    assert latent_preview(torch.randn(1, 16, 8, 8)) is None  # SD3's 16 channels
    assert latent_preview(torch.randn(1, 64, 16)) is None  # FLUX's packed latents


def test_reporter_estimates_the_time_left_from_the_steps_so_far() -> None:
    now = [0.0]
    sent: list[bytes] = []
    reporter = StepReporter(sent.append, clock=lambda: now[0], previews=False)
    for step in (1, 2, 3):
        reporter(step, 4, 1, 2, None)
        now[0] += 2.0
    events = [StepEvent.model_validate_json(line) for line in sent]
    assert events[0].eta_seconds is None
    assert events[2].eta_seconds == pytest.approx(2.0 * 5)  # 2 s a step, 5 of 8 steps left


def test_previews_are_sent_at_most_once_a_second() -> None:
    now = [0.0]
    sent: list[bytes] = []
    reporter = StepReporter(sent.append, clock=lambda: now[0])
    for step in range(1, 6):
        reporter(step, 5, 1, 1, torch.randn(1, 4, 8, 8))
        now[0] += 0.4
    previews = [StepEvent.model_validate_json(line).preview is not None for line in sent]
    assert previews == [True, False, False, True, False]


# --- a real HTTP server: the client really goes away


def _ping(port: int) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", "/ping")
        return connection.getresponse().status
    except OSError:
        return 0
    finally:
        connection.close()


@pytest.fixture
def served(tiny_model_dir: Path, tmp_path: Path):
    """The server on a free 127.0.0.1 port under uvicorn, ready: (port, engine)."""
    settings = Settings(model_dir=tiny_model_dir, lora_cache_dir=tmp_path / "cache",
                        default_model="tiny", warmup=False, deadline_seconds=3600)
    engine = build_engine(settings)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(engine=engine), host="127.0.0.1",
                                           port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()

    deadline = time.monotonic() + 180
    while _ping(port) != 200:
        assert time.monotonic() < deadline, "the server never became ready"
        time.sleep(0.1)
    yield port, engine
    server.should_exit = True
    thread.join(timeout=30)


def test_closing_the_stream_stops_the_work_within_a_step(served) -> None:
    port, engine = served
    done_steps: list[int] = []

    def slow(step: int) -> None:
        done_steps.append(step)
        time.sleep(0.2)

    engine.step_hook = slow
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    body = json.dumps({"task": "txt2img", "payload": small(steps=60)})
    connection.request("POST", STREAM_PATH, body=body,
                       headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    assert response.status == 200
    assert response.getheader("Transfer-Encoding") == "chunked"
    first = json.loads(response.readline())
    assert first["event"] == "step"
    connection.sock.shutdown(socket.SHUT_RDWR)
    connection.close()
    closed_at = len(done_steps)
    deadline = time.monotonic() + 30
    while engine.admission.jobs and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not engine.admission.jobs, "the generation went on after its client left"
    assert len(done_steps) <= closed_at + 2
    assert len(done_steps) < 60


def test_a_preview_that_fails_leaves_the_step_event_without_one(monkeypatch) -> None:
    from easel_inference import progress

    def broken(latents, **kwargs):
        raise ValueError("cannot draw")

    monkeypatch.setattr(progress, "latent_preview", broken)
    sent: list[bytes] = []
    StepReporter(sent.append)(1, 2, 1, 1, torch.randn(1, 4, 8, 8))
    (event,) = [StepEvent.model_validate_json(line) for line in sent]
    assert event.step == 1 and event.preview is None
