"""Under load and faults: deadlines, the work cap, the bounded queue, readiness and /health.

Deadlines and the speed timed at warm-up read the engine's clock; these tests give it a fake one
that advances a fixed time at every denoising step, so every estimate and every deadline is exact
and nothing here depends on how fast the test machine is.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from inference_fakes import FakeClock
from inference_support import invoke, small, wait_ready

from easel_inference import app as app_module
from easel_inference.admission import Job
from easel_inference.app import LISTING_THREADS, build_engine, create_app
from easel_inference.settings import Settings, SettingsError

STEP_SECONDS = 0.25  # fake seconds a 64x64 step takes (the tiny model's native size)
DEADLINE = 10


class Steps:
    """The step hook: counts steps, advances the fake clock; can hold a step or jump the clock."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.count = 0
        self.jump: dict[int, float] = {}  # step count -> extra fake seconds
        self.gate: threading.Event | None = None
        self.reached = threading.Event()

    def __call__(self, step: int) -> None:
        self.count += 1
        if self.gate is not None:
            self.reached.set()
            assert self.gate.wait(60)
        self.clock.advance(STEP_SECONDS + self.jump.pop(self.count, 0.0))


def _settings(model_dir: Path, tmp_path: Path, **overrides) -> Settings:
    values = {"model_dir": model_dir, "lora_cache_dir": tmp_path / "cache",
              "default_model": "tiny", "deadline_seconds": DEADLINE, **overrides}
    return Settings(**values)


@pytest.fixture
def timed(tiny_model_dir, tmp_path):
    """A server on a fake clock: (client, engine, steps), warmed up and ready."""
    clock = FakeClock()
    steps = Steps(clock)
    engine = build_engine(_settings(tiny_model_dir, tmp_path))
    engine.clock, engine.step_hook = clock, steps
    with TestClient(create_app(engine=engine)) as client:
        wait_ready(client)
        steps.count = 0
        yield client, engine, steps


def test_speed_is_timed_at_warm_up_on_the_servers_own_clock(timed) -> None:
    client, _engine, _steps = timed
    speed = invoke(client, "options").json()["speed"]
    assert (speed["width"], speed["height"]) == (64, 64)
    assert speed["seconds_per_pixel_step"] * 64 * 64 == pytest.approx(STEP_SECONDS)
    assert client.get("/health").json()["speed"] == speed


def test_a_request_that_cannot_finish_by_its_deadline_is_refused_before_any_step(timed) -> None:
    client, _engine, steps = timed
    response = invoke(client, "txt2img", small(steps=60))  # 60 x 0.25 = 15 s > 10 s
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "TooMuchWork"
    assert body["largest"]["steps"] == 40
    assert "lower steps to 40" in body["detail"]
    assert steps.count == 0


def test_a_request_that_fits_its_deadline_is_served(timed) -> None:
    client, _engine, steps = timed
    assert invoke(client, "txt2img", small(steps=20)).status_code == 200
    assert steps.count == 20


def test_the_old_form_default_on_the_demo_model_is_refused_up_front_not_run(
        tiny_model_dir, tmp_path, monkeypatch) -> None:
    """On the CPU demo model a step's cost grows with the square of the pixels (attention), so
    512x512 at 20 steps took over 10 minutes and blocked the endpoint; the speed is timed at two
    sizes, so that request is refused at once with the size that fits."""
    clock, size = FakeClock(), {}
    real = app_module.generate

    def sized(request, **kwargs):
        size["pixels"] = request.width * request.height
        return real(request, **kwargs)

    def quadratic_device(step: int) -> None:
        clock.advance(0.1 * (size["pixels"] / (64 * 64)) ** 2)  # 0.1 s a 64x64 step

    monkeypatch.setattr(app_module, "generate", sized)
    engine = build_engine(_settings(tiny_model_dir, tmp_path, deadline_seconds=55))
    engine.clock, engine.step_hook = clock, quadratic_device
    with TestClient(create_app(engine=engine)) as client:
        wait_ready(client)
        refused = invoke(client, "txt2img", small(width=512, height=512, steps=20))
        native = invoke(client, "txt2img", small(steps=20))
    assert refused.status_code == 400
    assert "width x height to 144x144" in refused.json()["detail"]
    assert native.status_code == 200


def test_work_past_its_deadline_stops_between_steps_and_the_next_request_is_served(timed) -> None:
    client, _engine, steps = timed
    steps.jump[3] = 20.0  # the device stalls at the third step
    response = invoke(client, "txt2img", small(steps=20))
    assert response.status_code == 504
    assert "after step 3 of 20" in response.json()["detail"]
    assert steps.count == 3
    assert invoke(client, "txt2img", small(steps=4)).status_code == 200


def test_a_request_whose_deadline_passed_in_the_queue_never_starts(timed) -> None:
    client, _engine, steps = timed
    steps.gate = threading.Event()
    with ThreadPoolExecutor(max_workers=2) as pool:
        first = pool.submit(invoke, client, "txt2img", small(steps=8))
        assert steps.reached.wait(60)
        second = pool.submit(invoke, client, "txt2img", small(steps=8))
        _wait_for(lambda: client.get("/health").json()["queue"]["waiting"] == 1)
        steps.clock.advance(DEADLINE + 1)
        steps.gate.set()
        assert first.result(60).status_code == 504
        late = second.result(60)
    assert late.status_code == 504
    assert "before it started" in late.json()["detail"]
    assert steps.count == 1  # the first request's held step; the second ran none


def test_a_request_that_fits_alone_but_not_behind_the_queue_is_503_with_retry_after(
        timed) -> None:
    client, _engine, steps = timed
    steps.gate = threading.Event()
    with ThreadPoolExecutor(max_workers=1) as pool:
        running = pool.submit(invoke, client, "txt2img", small(steps=20))  # 5 s
        assert steps.reached.wait(60)
        busy = invoke(client, "txt2img", small(steps=24))  # 6 s more: 11 s > 10 s
        steps.gate.set()
        assert running.result(60).status_code == 200
    assert busy.status_code == 503
    assert busy.json()["error"] == "Busy"
    assert busy.headers["Retry-After"] == "1"


def test_a_full_queue_is_503_with_retry_after_and_serving_goes_on(tiny_model_dir,
                                                                   tmp_path) -> None:
    engine = build_engine(_settings(tiny_model_dir, tmp_path, max_queue=1, warmup=False))
    gate, reached = threading.Event(), threading.Event()

    def hold(step: int) -> None:
        reached.set()
        assert gate.wait(60)

    with TestClient(create_app(engine=engine)) as client, ThreadPoolExecutor(1) as pool:
        wait_ready(client)
        engine.step_hook = hold
        running = pool.submit(invoke, client, "txt2img", small())
        assert reached.wait(60)
        refused = invoke(client, "txt2img", small())
        gate.set()
        assert running.result(60).status_code == 200
        engine.step_hook = None
        assert invoke(client, "txt2img", small()).status_code == 200
    assert refused.status_code == 503
    assert "EASEL_MAX_QUEUE" in refused.json()["detail"]
    assert int(refused.headers["Retry-After"]) >= 1


def test_health_and_ping_answer_while_the_worker_and_the_listing_pool_are_full(client) -> None:
    engine = client.app.state.engine
    gate, reached = threading.Event(), threading.Event()
    listing = engine.library.listing

    def hold(step: int) -> None:
        reached.set()
        assert gate.wait(60)

    def slow_listing():
        assert gate.wait(60)
        return listing()

    engine.step_hook = hold
    engine.library.listing = slow_listing
    blocked = LISTING_THREADS + 2
    try:
        with ThreadPoolExecutor(max_workers=blocked + 1) as pool:
            generation = pool.submit(invoke, client, "txt2img", small())
            assert reached.wait(60)
            listings = [pool.submit(invoke, client, "loras") for _ in range(blocked)]
            time.sleep(0.5)
            started = time.monotonic()
            health = client.get("/health")
            ping = client.get("/ping")
            waited = time.monotonic() - started
            assert not any(future.done() for future in listings)
            gate.set()
            assert generation.result(60).status_code == 200
            assert all(future.result(60).status_code == 200 for future in listings)
    finally:
        engine.step_hook = None
        engine.library.listing = listing
        gate.set()
    assert health.status_code == 200 and ping.status_code == 200
    assert health.json()["status"] == "ready"
    assert health.json()["queue"]["running"] == 1
    assert waited < 10


def test_ping_and_health_say_warming_while_the_warm_up_runs(tiny_model_dir, tmp_path) -> None:
    engine = build_engine(_settings(tiny_model_dir, tmp_path))
    gate, reached = threading.Event(), threading.Event()

    def hold(step: int) -> None:
        reached.set()
        assert gate.wait(60)

    engine.step_hook = hold
    with TestClient(create_app(engine=engine)) as client:
        try:
            assert reached.wait(120)
            ping, health = client.get("/ping"), client.get("/health")
        finally:
            gate.set()
        wait_ready(client)
        ready = client.get("/health").json()
    assert ping.status_code == 503 and ping.json()["status"] == "warming"
    assert health.status_code == 200 and health.json()["status"] == "warming"
    assert ready["status"] == "ready" and ready["deadline_seconds"] == DEADLINE


def test_out_of_memory_degrades_the_server_until_a_request_is_served(client) -> None:
    engine = client.app.state.engine

    def explode(step: int) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    engine.step_hook = explode
    try:
        assert invoke(client, "txt2img", small()).status_code == 503
    finally:
        engine.step_hook = None
    degraded = client.get("/health").json()
    assert degraded["status"] == "degraded" and "out of memory" in degraded["detail"]
    assert client.get("/ping").status_code == 200  # still serving
    assert invoke(client, "txt2img", small()).status_code == 200
    assert client.get("/health").json()["status"] == "ready"


def test_listings_name_files_under_the_model_folder_not_server_paths(client,
                                                                     tiny_model_dir) -> None:
    models = {m["model_name"]: m for m in invoke(client, "sd-models").json()}
    assert models["tiny"]["filename"] == "Stable-diffusion/tiny.safetensors"
    assert models["tiny"]["config"] == "Stable-diffusion/tiny.yaml"
    assert models["tiny-diffusers"]["filename"] == "Stable-diffusion/tiny-diffusers"
    vaes = invoke(client, "sd-vae").json()
    assert [v["filename"] for v in vaes] == ["VAE/tiny-vae.safetensors"]
    loras = {entry["name"]: entry["path"] for entry in invoke(client, "loras").json()}
    assert loras["style-kohya"] == "Lora/style-kohya.safetensors"
    for task in ("sd-models", "sd-vae", "loras", "options"):
        assert str(tiny_model_dir) not in invoke(client, task).text


def test_a_client_that_leaves_stops_its_generation(monkeypatch) -> None:
    monkeypatch.setattr(app_module, "DISCONNECT_POLL_S", 0.01)
    job = Job(arrived=0.0, deadline_s=DEADLINE, clock=lambda: 0.0)

    class Gone:
        async def is_disconnected(self) -> bool:
            return True

    def worker() -> str:
        deadline = time.monotonic() + 10
        while job.reason is None and time.monotonic() < deadline:
            time.sleep(0.01)
        return job.reason or "never told"

    async def run() -> str:
        work = asyncio.get_running_loop().run_in_executor(None, worker)
        return await app_module._answer_or_cancel(work, Gone(), job)

    assert asyncio.run(run()) == "the client closed the connection"


def test_settings_read_the_deadline_and_the_queue_bound() -> None:
    settings = Settings.from_env({"EASEL_DEADLINE_SECONDS": "3595", "EASEL_MAX_QUEUE": "3"})
    assert (settings.deadline_seconds, settings.max_queue) == (3595, 3)
    assert Settings.from_env({}).deadline_seconds < 60  # a real-time endpoint's, by default
    with pytest.raises(SettingsError, match="EASEL_DEADLINE_SECONDS must be between"):
        Settings.from_env({"EASEL_DEADLINE_SECONDS": "0"})


def _wait_for(condition, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError("condition never held")
