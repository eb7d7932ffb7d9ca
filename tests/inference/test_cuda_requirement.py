"""On SageMaker (EASEL_REQUIRE_CUDA=1) the server never serves on the CPU: a host whose driver cannot
run the image's CUDA build fails /ping with the driver found and needed; locally it stays off."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from easel_contracts.instances import cuda_host_problem
from easel_inference.app import build_engine, create_app
from easel_inference.settings import Settings, SettingsError


def _failed_ping(client: TestClient, engine, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while engine.startup_error is None and time.monotonic() < deadline:
        time.sleep(0.02)
    response = client.get("/ping")
    assert response.status_code == 503
    return response.json()


def _engine(model_dir: Path, tmp_path: Path, **overrides):
    values = {"model_dir": model_dir, "lora_cache_dir": tmp_path / "cache",
              "default_model": "tiny", "warmup": False, **overrides}
    return build_engine(Settings(**values))


def test_an_old_driver_fails_ping_with_the_driver_found_and_needed(tiny_model_dir, tmp_path,
                                                                   caplog):
    engine = _engine(tiny_model_dir, tmp_path, require_cuda=True)
    engine.cuda_probe = lambda: cuda_host_problem(
        driver_version="470.256.02", runtime_cuda="13.0", cuda_available=False)
    with caplog.at_level(logging.ERROR, logger="easel.inference"), \
            TestClient(create_app(engine=engine)) as client:
        body = _failed_ping(client, engine)
        assert body["status"] == "failed"
        assert "driver 470.256.02 found, 580 or newer needed" in body["detail"]
        assert engine.manager.loaded_names() == []  # nothing loaded onto the CPU
    assert "driver 470.256.02 found, 580 or newer needed" in caplog.text


def test_health_reports_the_cuda_failure_as_the_failed_state_with_its_reason(tiny_model_dir,
                                                                              tmp_path):
    engine = _engine(tiny_model_dir, tmp_path, require_cuda=True)
    engine.cuda_probe = lambda: cuda_host_problem(
        driver_version="470.256.02", runtime_cuda="13.0", cuda_available=False)
    with TestClient(create_app(engine=engine)) as client:
        _failed_ping(client, engine)
        health = client.get("/health")
    assert health.status_code == 200  # readable whatever the state
    assert health.json()["status"] == "failed"
    assert "580 or newer needed" in health.json()["detail"]


def test_this_cpu_host_fails_ping_when_cuda_is_required(tiny_model_dir, tmp_path):
    engine = _engine(tiny_model_dir, tmp_path, require_cuda=True)  # the real probe
    with TestClient(create_app(engine=engine)) as client:
        body = _failed_ping(client, engine)
        assert "CUDA is required" in body["detail"]


def test_without_the_requirement_the_cpu_serves(tiny_model_dir, tmp_path):
    engine = _engine(tiny_model_dir, tmp_path)
    with TestClient(create_app(engine=engine)) as client:
        deadline = time.monotonic() + 180
        while not engine.ready and engine.startup_error is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.get("/ping").status_code == 200


def test_the_requirement_comes_from_the_environment():
    assert Settings.from_env({}).require_cuda is False
    assert Settings.from_env({"EASEL_REQUIRE_CUDA": "1"}).require_cuda is True
    with pytest.raises(SettingsError, match="EASEL_DEVICE is cpu but EASEL_REQUIRE_CUDA=1"):
        Settings.from_env({"EASEL_REQUIRE_CUDA": "1", "EASEL_DEVICE": "cpu"})
