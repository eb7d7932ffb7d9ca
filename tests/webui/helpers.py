"""Small waits shared by the portal tests."""

from __future__ import annotations

import time
from typing import Any


def poll_job(client: Any, job_id: str, *, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = client.get(f"/generate/jobs/{job_id}").json()
        if state["status"] != "running":
            return state
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} still running after {timeout} s")
