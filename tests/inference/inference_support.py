"""Helpers shared by the inference tests."""

from __future__ import annotations


def small(**overrides):
    payload = {"prompt": "a lighthouse at dusk", "steps": 2, "width": 64, "height": 64, "seed": 7}
    payload.update(overrides)
    return payload


def invoke(client, task: str, payload: dict | None = None):
    return client.post("/invocations", json={"task": task, "payload": payload or {}})


def wait_ready(client, *, timeout: float = 180.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get("/ping").status_code == 200:
            return
        time.sleep(0.05)
    raise AssertionError(f"server not ready: {client.get('/ping').json()}")
