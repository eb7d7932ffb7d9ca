"""SageMaker contract: /ping readiness, queueing, errors, size limit, the `serve` process."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from inference_support import invoke, small

from easel_inference.app import build_engine, create_app
from easel_inference.loader import load_pipeline
from easel_inference.pipelines import PipelineManager
from easel_inference.settings import Settings, SettingsError


def _settings(model_dir: Path, tmp_path: Path, **overrides) -> Settings:
    values = {"model_dir": model_dir, "lora_cache_dir": tmp_path / "cache", "default_model": "tiny"}
    values.update(overrides)
    return Settings(**values)


def _wait(client: TestClient, status: int = 200, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get("/ping").status_code == status:
            return
        time.sleep(0.05)
    raise AssertionError(f"ping never reached {status}")


def test_ping_is_503_until_the_model_is_loaded_then_200(tiny_model_dir, tmp_path) -> None:
    release = threading.Event()

    def slow_loader(path, **kwargs):
        assert release.wait(60)
        return load_pipeline(path, **kwargs)

    engine = build_engine(_settings(tiny_model_dir, tmp_path))
    engine.manager = PipelineManager(engine.settings, loader=slow_loader)
    with TestClient(create_app(engine=engine)) as client:
        response = client.get("/ping")
        assert response.status_code == 503
        assert response.json()["status"] == "loading"
        early = invoke(client, "txt2img", small())
        assert early.status_code == 503
        release.set()
        _wait(client)
        assert invoke(client, "txt2img", small()).status_code == 200


def test_ping_reports_a_failed_start_without_a_traceback(tmp_path) -> None:
    (tmp_path / "Stable-diffusion").mkdir()
    engine = build_engine(_settings(tmp_path, tmp_path, default_model=None))
    with TestClient(create_app(engine=engine)) as client:
        _wait(client, 503)
        deadline = time.monotonic() + 30
        while engine.startup_error is None and time.monotonic() < deadline:
            time.sleep(0.05)
        body = client.get("/ping").json()
        assert body["status"] == "failed"
        assert "no checkpoints" in body["detail"]
        assert "Traceback" not in body["detail"]


def test_ping_answers_while_a_generation_is_held_mid_way(client) -> None:
    engine = client.app.state.engine
    reached, release = threading.Event(), threading.Event()

    def hold(step: int) -> None:
        reached.set()
        assert release.wait(60)

    engine.step_hook = hold
    try:
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(invoke, client, "txt2img", small())
            assert reached.wait(60), "generation never started"
            assert client.get("/ping").status_code == 200
            assert invoke(client, "samplers").status_code == 200
            assert not pending.done()
            release.set()
            assert pending.result(timeout=60).status_code == 200
    finally:
        engine.step_hook = None
        release.set()


def test_concurrent_requests_are_queued_and_all_answered(client) -> None:
    with ThreadPoolExecutor(max_workers=6) as pool:
        futures = [pool.submit(invoke, client, "txt2img", small(seed=seed)) for seed in range(6)]
        responses = [future.result(timeout=120) for future in futures]
    assert [r.status_code for r in responses] == [200] * 6
    seeds = [json.loads(r.json()["info"])["seed"] for r in responses]
    assert seeds == list(range(6))


def test_simulated_out_of_memory_is_503_and_the_next_request_is_served(client) -> None:
    engine = client.app.state.engine

    def explode(step: int) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    engine.step_hook = explode
    try:
        response = invoke(client, "txt2img", small(prompt="<lora:style-kohya:1> a cat"))
    finally:
        engine.step_hook = None
    assert response.status_code == 503
    assert "out of memory" in response.json()["detail"]
    model = engine.manager.get("tiny")
    assert model.fuser.active == ()
    assert invoke(client, "txt2img", small()).status_code == 200


def test_out_of_memory_while_loading_a_model_is_503_and_serving_goes_on(
    tiny_model_dir, tmp_path
) -> None:
    def loader(path, **kwargs):
        if path.name == "tiny-diffusers":
            raise torch.OutOfMemoryError("CUDA out of memory while loading")
        return load_pipeline(path, **kwargs)

    engine = build_engine(_settings(tiny_model_dir, tmp_path, warmup=False))
    engine.manager = PipelineManager(engine.settings, loader=loader)
    with TestClient(create_app(engine=engine)) as client:
        _wait(client)
        switch = small(override_settings={"sd_model_checkpoint": "tiny-diffusers"})
        response = invoke(client, "txt2img", switch)
        assert response.status_code == 503
        assert "out of memory" in response.json()["detail"]
        assert invoke(client, "txt2img", small()).status_code == 200


def test_unexpected_error_is_500_without_traceback(client) -> None:
    engine = client.app.state.engine

    def boom(step: int) -> None:
        raise RuntimeError("secret internal detail")

    engine.step_hook = boom
    try:
        response = invoke(client, "txt2img", small())
    finally:
        engine.step_hook = None
    assert response.status_code == 500
    assert "secret internal detail" not in response.text
    assert "Traceback" not in response.text


def test_response_over_the_limit_is_413_naming_it(tiny_model_dir, tmp_path) -> None:
    settings = _settings(tiny_model_dir, tmp_path, max_response_bytes=2048, warmup=False)
    with TestClient(create_app(settings)) as client:
        _wait(client)
        response = invoke(client, "txt2img", small())
        assert response.status_code == 413
        detail = response.json()["detail"]
        assert "2048" in detail and "EASEL_MAX_RESPONSE_BYTES" in detail and "async" in detail
        assert invoke(client, "samplers").status_code == 200


def test_oversized_request_body_is_413(tiny_model_dir, tmp_path) -> None:
    settings = _settings(tiny_model_dir, tmp_path, max_image_bytes=1024, warmup=False)
    with TestClient(create_app(settings)) as client:
        response = invoke(client, "txt2img", small(prompt="x" * 2_000_000))
        assert response.status_code == 413
        assert response.json()["field"] == "body"


BAD_INPUTS = [
    ({"task": "txt2img", "payload": small(width=65)}, 400, "width"),
    ({"task": "txt2img", "payload": small(height=8)}, 400, "height"),
    ({"task": "txt2img", "payload": small(steps=0)}, 400, "steps"),
    ({"task": "txt2img", "payload": small(steps=1000)}, 400, "steps"),
    ({"task": "txt2img", "payload": small(cfg_scale="nan")}, 400, "cfg_scale"),
    (b'{"task": "txt2img", "payload": {"cfg_scale": 1e999}}', 400, "cfg_scale"),
    (b'{"task": "txt2img", "payload": {"cfg_scale": NaN}}', 400, "cfg_scale"),
    (b'{"task": "img2img", "payload": {"init_images": ["x"], "denoising_strength": -Infinity}}',
     400, "denoising_strength"),
    ({"task": "txt2img", "payload": small(batch_size=99)}, 400, "batch_size"),
    ({"task": "txt2img", "payload": small(seed=-5)}, 400, "seed"),
    ({"task": "txt2img", "payload": small(width=4096, height=4096)}, 400, "width"),
    ({"task": "txt2img", "payload": small(prompt="<lora:../../etc/passwd:1>")}, 400, "prompt"),
    ({"task": "txt2img", "payload": small(prompt="<lora:style-kohya:abc>")}, 400, "prompt"),
    ({"task": "txt2img", "payload": small(prompt="<lora:missing-one:1>")}, 404, "prompt"),
    (
        {"task": "txt2img", "payload": small(override_settings={"sd_model_checkpoint": "../x"})},
        400,
        "override_settings.sd_model_checkpoint",
    ),
    ({"task": "img2img", "payload": small()}, 400, "init_images"),
    ({"task": "img2img", "payload": small(init_images=["not base64!!"])}, 400, "init_images[0]"),
    ({"task": "img2img", "payload": small(init_images=["aGVsbG8="])}, 400, "init_images[0]"),
    ({"task": "img2img", "payload": small(init_images=[], denoising_strength=0.5)}, 400, "init_images"),
    ({"task": "txt2img", "payload": small(enable_hr=True, hr_upscaler="../Bogus")}, 400, "hr_upscaler"),
    ({"task": "txt2img", "payload": small(enable_hr=True, hr_upscaler="Bogus")}, 404, "hr_upscaler"),
    ({"task": "paint", "payload": {}}, 400, "task"),
    ({"payload": {}}, 400, "task"),
    ({"task": "txt2img", "payload": small(scheduler="Sideways")}, 400, "scheduler"),
    ({"task": "txt2img", "payload": small(sampler_name="DDIM Karras")}, 400, "sampler_name"),
]


@pytest.mark.parametrize(("body", "status", "field"), BAD_INPUTS)
def test_bad_inputs_get_a_clear_status_and_field(client, body, status, field) -> None:
    if isinstance(body, bytes):
        response = client.post("/invocations", content=body)
    else:
        response = client.post("/invocations", json=body)
    assert response.status_code == status, response.text
    payload = response.json()
    assert field in payload.get("field", "") or field in payload["detail"]
    assert "Traceback" not in response.text


def test_body_that_is_not_json_is_400(client) -> None:
    response = client.post("/invocations", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json()["field"] == "body"


def test_settings_reject_bad_environment_values() -> None:
    with pytest.raises(SettingsError, match="SAGEMAKER_BIND_TO_PORT"):
        Settings.from_env({"SAGEMAKER_BIND_TO_PORT": "http"})
    with pytest.raises(SettingsError, match="EASEL_DEVICE"):
        Settings.from_env({"EASEL_DEVICE": "tpu"})
    with pytest.raises(SettingsError, match="EASEL_LORA_S3_URI"):
        Settings.from_env({"EASEL_LORA_S3_URI": "https://bucket/loras"})
    settings = Settings.from_env({"SAGEMAKER_BIND_TO_PORT": "9001", "EASEL_MODEL_DIR": "/m"})
    assert settings.port == 9001 and settings.model_dir == Path("/m")


def test_model_lru_keeps_the_budget(tiny_model_dir, tmp_path) -> None:
    manager = PipelineManager(_settings(tiny_model_dir, tmp_path, pipeline_budget=1))
    manager.get("tiny")
    assert manager.loaded_names() == ["tiny"]
    manager.get("tiny-diffusers")
    assert manager.loaded_names() == ["tiny-diffusers"]
    two = PipelineManager(_settings(tiny_model_dir, tmp_path, pipeline_budget=2))
    first = two.get("tiny")
    two.get("tiny-diffusers")
    assert two.get("tiny") is first
    assert two.loaded_names() == ["tiny-diffusers", "tiny"]


def _die_with_parent() -> None:
    import ctypes
    import signal

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_serve_process_honours_the_port_variable(tiny_model_dir, tmp_path) -> None:
    import httpx

    serve = shutil.which("serve", path=str(Path(sys.executable).parent))
    assert serve, "the serve console script is not installed next to the interpreter"
    port = _free_port()
    env = dict(
        os.environ,
        SAGEMAKER_BIND_TO_PORT=str(port),
        EASEL_HOST="127.0.0.1",
        EASEL_MODEL_DIR=str(tiny_model_dir),
        EASEL_LORA_CACHE_DIR=str(tmp_path / "cache"),
        EASEL_DEVICE="cpu",
        HF_HUB_OFFLINE="1",
    )
    log = (tmp_path / "serve.log").open("wb")
    process = subprocess.Popen(
        [serve], env=env, stdout=log, stderr=subprocess.STDOUT,
        preexec_fn=_die_with_parent,  # noqa: PLW1509 - a killed test run leaves no server behind
    )
    try:
        deadline = time.monotonic() + 300
        status = None
        while time.monotonic() < deadline and process.poll() is None:
            try:
                status = httpx.get(f"http://127.0.0.1:{port}/ping", timeout=2).status_code
            except httpx.TransportError:
                status = None
            if status == 200:
                break
            time.sleep(0.2)
        assert status == 200, (tmp_path / "serve.log").read_text(errors="replace")[-4000:]
        response = httpx.post(
            f"http://127.0.0.1:{port}/invocations",
            json={"task": "txt2img", "payload": small()},
            timeout=60,
        )
        assert response.status_code == 200
        assert len(response.json()["images"]) == 1
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def test_warm_up_runs_at_the_models_native_size_before_ping_is_200(client) -> None:
    model = client.app.state.engine.manager.get("tiny")
    native = model.pipe.unet.config.sample_size * model.pipe.vae_scale_factor
    warmed = invoke(client, "options").json()["warmed_up"]
    assert (warmed["model"], warmed["width"], warmed["height"]) == ("tiny", native, native)
    # the tests run on the CPU, whose warm-up is one step (test_cpu_warmup); a GPU's is two
    assert warmed["steps"] == 1


@pytest.mark.parametrize(
    ("sample_size", "max_pixels", "side"),
    [(64, 2048 * 2048, 512), (96, 2048 * 2048, 768), (128, 2048 * 2048, 1024),
     (128, 512 * 512, 512)],
)
def test_warm_up_size_follows_the_architecture_within_the_pixel_budget(
    sample_size, max_pixels, side
) -> None:
    from types import SimpleNamespace

    from easel_inference.app import warmup_request

    pipe = SimpleNamespace(unet=SimpleNamespace(config=SimpleNamespace(sample_size=sample_size)),
                           vae_scale_factor=8)
    request = warmup_request(pipe, "m", max_pixels=max_pixels)
    assert (request.width, request.height) == (side, side)


def test_chunked_request_body_over_the_limit_is_413(tiny_model_dir, tmp_path) -> None:
    settings = _settings(tiny_model_dir, tmp_path, max_image_bytes=1024, warmup=False)

    def chunks():  # no Content-Length: the size only shows while streaming
        yield b'{"task": "txt2img", "payload": {"prompt": "'
        for _ in range(200):
            yield b"x" * 65536
        yield b'"}}'

    with TestClient(create_app(settings)) as client:
        response = client.post("/invocations", content=chunks(),
                               headers={"Content-Type": "application/json"})
        assert response.status_code == 413
        assert response.json()["field"] == "body"
        assert invoke(client, "samplers").status_code == 200


def test_deeply_nested_json_is_400_not_500(tiny_model_dir, tmp_path) -> None:
    settings = _settings(tiny_model_dir, tmp_path, warmup=False)
    deep = b'{"task": "txt2img", "payload": {"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}"
    with TestClient(create_app(settings)) as client:
        response = client.post("/invocations", content=deep,
                               headers={"Content-Type": "application/json"})
        assert response.status_code == 400
        assert "Traceback" not in response.text


def test_no_worker_thread_outlives_the_app(tiny_model_dir, tmp_path) -> None:
    import threading

    settings = _settings(tiny_model_dir, tmp_path, warmup=False)
    app = create_app(settings)
    with TestClient(app):
        workers = set(app.state.engine.executor._threads)
        assert workers  # the model load started on the worker
    # shut down at once, while the model may still be loading: the worker is gone with the app
    assert not [t for t in workers if t.is_alive()]
    assert threading.active_count() >= 1
