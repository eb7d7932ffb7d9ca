"""Shared fixtures: one tiny random-weight model folder per test session (per xdist worker)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A1111 layout: single-file ``tiny``, diffusers ``tiny-diffusers``, LoRAs and a ControlNet."""
    from easel_inference.builder import build_model_dir

    root = tmp_path_factory.mktemp("model")
    build_model_dir(
        root, name="tiny", with_lora=True, with_controlnet=True, with_vae=True, seed=0
    )
    build_model_dir(root, name="tiny-diffusers", fmt="diffusers", seed=1)
    return root


@pytest.fixture(scope="session")
def client(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """An in-process server (lifespan run) on the tiny model, ready."""
    from fastapi.testclient import TestClient

    from easel_inference.app import create_app
    from easel_inference.settings import Settings

    settings = Settings(
        model_dir=tiny_model_dir,
        lora_cache_dir=tmp_path_factory.mktemp("lora-cache"),
        default_model="tiny",
        pipeline_budget=2,
        # the shared server's tests are not about deadlines: a speed timed while other tests
        # load the CPU must not refuse their requests (test_load_and_faults uses a fake clock)
        deadline_seconds=3600,
    )
    from inference_support import wait_ready

    with TestClient(create_app(settings)) as test_client:
        wait_ready(test_client)
        yield test_client

