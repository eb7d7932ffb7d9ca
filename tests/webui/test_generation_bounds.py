"""Bounded generation queues (issue 15): per portal task, and per user across every task
(leases in the table); a queued job whose synchronous caller was sent away never runs."""

from __future__ import annotations

import base64
import time
from concurrent.futures import ThreadPoolExecutor

from fastapi.testclient import TestClient

from easel_contracts import table as keys
from easel_webui.app import create_app

from .test_generate import _submit


def _api(user="alice", password="user-password-123"):
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def test_a_users_running_generations_are_capped_across_portal_tasks(world_factory):
    world = world_factory(EASEL_GENERATION_JOBS_PER_USER="2")
    world.in_service()
    world.add_user("alice")
    alice = world.signed_in("alice")
    world.runtime.release.clear()
    try:
        assert _submit(alice).status_code == 202
        assert _submit(alice).status_code == 202
        refused = _submit(alice)
        assert refused.status_code == 429
        assert "already have 2 generations" in refused.json()["detail"]
        assert int(refused.headers["Retry-After"]) > 0
        other_task = TestClient(create_app(settings=world.settings,
                                           clients=world.portal.clients),
                                follow_redirects=False)
        elsewhere = other_task.post("/sdapi/v1/txt2img", headers=_api(),
                                    json={"prompt": "x", "steps": 2, "width": 64, "height": 64})
        assert elsewhere.status_code == 429
        # another user is not affected
        world.add_user("bob")
        assert _submit(world.signed_in("bob")).status_code == 202
    finally:
        world.runtime.release.set()


def test_a_finished_job_gives_its_slot_back(world_factory):
    world = world_factory(EASEL_GENERATION_JOBS_PER_USER="1")
    world.in_service()
    world.add_user("alice")
    api = world.client()
    body = {"prompt": "x", "steps": 2, "width": 64, "height": 64}
    assert api.post("/sdapi/v1/txt2img", headers=_api(), json=body).status_code == 200
    assert api.post("/sdapi/v1/txt2img", headers=_api(), json=body).status_code == 200


def test_a_slot_held_by_a_stopped_portal_task_frees_itself(world_factory):
    world = world_factory(EASEL_GENERATION_JOBS_PER_USER="1")
    world.in_service()
    world.add_user("alice")
    # the lease of a task that stopped without releasing it (its heartbeat no longer renews it)
    world.portal.table.put({**keys.generation_slot_key("alice", 0).item(),
                            "job_id": "lost", "expires": time.time() - 1})
    assert _submit(world.signed_in("alice")).status_code == 202


def test_a_full_portal_queue_answers_503_with_retry_after(world_factory):
    world = world_factory(EASEL_GENERATION_QUEUE_PER_TASK="1")
    world.in_service()
    admin = world.signed_in("admin")
    world.runtime.release.clear()
    try:
        assert _submit(admin).status_code == 202
        full = _submit(admin)
        assert full.status_code == 503
        assert "queue is full" in full.json()["detail"]
        assert full.headers["Retry-After"] == "5"
    finally:
        world.runtime.release.set()


def test_a_queued_job_whose_caller_timed_out_never_runs(world_factory):
    world = world_factory(EASEL_SYNC_TIMEOUT_SECONDS="0.3")
    world.in_service()
    world.add_user("alice")
    generation = world.portal.generation
    generation.pool = ThreadPoolExecutor(max_workers=1)  # one worker, busy with a slow job
    world.runtime.release.clear()
    api = world.client()
    body = {"prompt": "x", "steps": 2, "width": 64, "height": 64}
    try:
        first = api.post("/sdapi/v1/txt2img", headers=_api(), json=body)
        assert first.status_code == 504  # it runs: the endpoint is just slow
        calls = len(world.runtime.generations())
        queued = api.post("/sdapi/v1/txt2img", headers=_api(), json=body)
        assert queued.status_code == 503 and "nothing ran" in queued.json()["detail"]
    finally:
        world.runtime.release.set()
    generation.pool.shutdown(wait=True)
    assert len(world.runtime.generations()) == calls  # the queued one never ran
