"""A stopping portal waits for its generation jobs; the test worlds wait for theirs too."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from .conftest import finish_worlds
from .helpers import poll_job


def _submit(client, prompt="a red square"):
    response = client.post("/generate", json={
        "endpoint": "easel-demo", "task": "txt2img",
        "payload": {"prompt": prompt, "steps": 2, "width": 64, "height": 64}})
    assert response.status_code == 202, response.text
    return response.json()["job_id"]


def _release_later(world, seconds=0.5):
    """The slow fake endpoint answers after ``seconds``."""
    timer = threading.Timer(seconds, world.runtime.release.set)
    timer.start()
    return timer


def test_the_world_teardown_waits_for_a_job_still_running(world):
    world.in_service()
    admin = world.signed_in("admin")
    world.runtime.release.clear()
    job_id = _submit(admin)
    _release_later(world)
    finish_worlds(world)
    assert admin.get(f"/generate/jobs/{job_id}").json()["status"] == "done"
    assert len(world.keys("outputs/admin/")) == 2  # the image and its parameters


def test_the_world_teardown_fails_naming_a_job_still_running_after_its_timeout(world):
    world.in_service()
    admin = world.signed_in("admin")
    world.runtime.release.clear()
    try:
        job_id = _submit(admin)
        with pytest.raises(pytest.fail.Exception, match=f"{job_id} \\(txt2img on easel-demo"):
            finish_worlds(world, timeout=0.2)
    finally:
        world.runtime.release.set()  # the fixture's own teardown then waits for it


def test_shutdown_with_no_job_running_returns_at_once(world):
    world.in_service()
    admin = world.signed_in("admin")
    assert poll_job(admin, _submit(admin))["status"] == "done"  # one job, ended
    started = time.monotonic()
    assert world.portal.close(timeout=30) == []
    assert time.monotonic() - started < 1


def test_a_generation_submitted_during_shutdown_is_refused_with_retry_after(world):
    world.in_service()
    admin = world.signed_in("admin")
    world.portal.close(timeout=1)
    response = admin.post("/generate", json={
        "endpoint": "easel-demo", "task": "txt2img",
        "payload": {"prompt": "x", "steps": 2, "width": 64, "height": 64}})
    assert response.status_code == 503
    assert "shutting down" in response.json()["detail"]
    assert response.headers["Retry-After"] == "5"


def test_a_job_still_queued_at_shutdown_is_failed_with_the_reason(world):
    world.in_service()
    admin = world.signed_in("admin")
    generation = world.portal.generation
    generation.pool = ThreadPoolExecutor(max_workers=1)  # one worker, busy with a slow job
    world.runtime.release.clear()
    try:
        running = _submit(admin, "first")
        queued = _submit(admin, "second")
        left = generation.shutdown(timeout=0.3)
        assert [job.split()[0] for job in left] == [running]
        state = admin.get(f"/generate/jobs/{queued}").json()
        assert state["status"] == "failed" and "nothing ran" in state["error"]
    finally:
        world.runtime.release.set()
    assert poll_job(admin, running)["status"] == "done"


def test_the_app_shutdown_waits_for_running_jobs(world):
    world.in_service()
    with world.client():  # leaving it runs the app's shutdown, as uvicorn's stop does
        admin = world.signed_in("admin")
        world.runtime.release.clear()
        job_id = _submit(admin)
        _release_later(world)
    assert admin.get(f"/generate/jobs/{job_id}").json()["status"] == "done"
