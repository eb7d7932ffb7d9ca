"""Generation jobs left running by a stopped portal task are failed at the next start; a live
task's jobs are not (issue 15). Two Portal instances share one moto table, as several Fargate
tasks share the deployment's table."""

from __future__ import annotations

import threading
import time

from easel_contracts import table as keys
from easel_contracts.invocations import Txt2ImgRequest
from easel_webui.generation import STALE_HEARTBEAT_SECONDS, STALE_REASON
from easel_webui.portal import Portal
from easel_webui.store import now


def _running_job(world) -> tuple[str, threading.Event]:
    """A job that portal task A is running: the model server holds it until released."""
    world.add_user("alice")
    world.in_service()
    world.runtime.release.clear()
    user = world.portal.auth.lookup("alice")
    job_id = world.portal.generation.submit(
        user=user, endpoint="easel-demo", task="txt2img",
        request=Txt2ImgRequest(prompt="x", steps=1, width=64, height=64))
    return job_id, world.runtime.release


def _record(world, job_id):
    return world.portal.table.get(*keys.generation_job_key(job_id))


def _ended(world, job_id) -> dict:
    """The job's record once task A has finished it (read raw: no stale check on the way)."""
    for _ in range(100):
        record = _record(world, job_id)
        if record["status"] != "running":
            return record
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} still running")


def _another_task(world) -> Portal:
    return Portal.build(world.settings, world.portal.clients)


def _lease_expired(world, job_id):
    """As if task A had stopped renewing the job's heartbeat long ago."""
    world.portal.table.update(*keys.generation_job_key(job_id),
                              {"heartbeat": now() - STALE_HEARTBEAT_SECONDS - 30})


def test_a_starting_task_leaves_a_live_tasks_job_running(world):
    job_id, release = _running_job(world)
    try:
        _another_task(world)
        assert _record(world, job_id)["status"] == "running"
    finally:
        release.set()
    assert _ended(world, job_id)["status"] == "done"


def test_a_starting_task_fails_a_job_whose_task_stopped(world):
    job_id, release = _running_job(world)
    try:
        _lease_expired(world, job_id)
        _another_task(world)
        record = _record(world, job_id)
        assert record["status"] == "failed"
        assert record["error"] == STALE_REASON
    finally:
        release.set()


def test_the_sweep_reports_the_jobs_it_failed_and_they_leave_the_running_index(world):
    job_id, release = _running_job(world)
    try:
        other = _another_task(world).generation  # started while task A was alive
        _lease_expired(world, job_id)
        assert other.recover_stale_jobs() == [job_id]
        assert world.portal.table.query_index(keys.RUNNING_GENERATION_INDEX) == []
        assert other.recover_stale_jobs() == []
    finally:
        release.set()


def test_a_finished_job_leaves_the_running_index(world):
    job_id, release = _running_job(world)
    assert [r["job_id"] for r in world.portal.table.query_index(
        keys.RUNNING_GENERATION_INDEX)] == [job_id]
    release.set()
    _ended(world, job_id)
    assert world.portal.table.query_index(keys.RUNNING_GENERATION_INDEX) == []


def test_a_lease_renewed_after_the_sweep_read_it_wins(world):
    job_id, release = _running_job(world)
    try:
        _lease_expired(world, job_id)
        seen = _record(world, job_id)  # the sweep of task B reads the expired lease ...
        world.portal.generation.beat()  # ... task A renews it ...
        other = _another_task(world).generation
        assert other._fail_if_stale(seen)["status"] == "running"  # ... B's write is refused
        assert _record(world, job_id)["status"] == "running"
    finally:
        release.set()


def test_a_job_finished_after_the_sweep_read_it_stays_done(world):
    job_id, release = _running_job(world)
    _lease_expired(world, job_id)
    seen = _record(world, job_id)
    release.set()
    _ended(world, job_id)
    other = _another_task(world).generation
    assert other._fail_if_stale(seen)["status"] == "done"
    assert _record(world, job_id)["status"] == "done"


def test_an_interrupted_job_leaves_the_running_index(world):
    world.add_user("alice")
    world.in_service()
    world.runtime.step_delay = 0.05
    alice = world.portal.auth.lookup("alice")
    job_id = world.portal.generation.submit(
        user=alice, endpoint="easel-demo", task="txt2img",
        request=Txt2ImgRequest(prompt="x", steps=150, width=64, height=64))
    for _ in range(100):
        if world.runtime.streams and world.runtime.streams[0].sent >= 1:
            break
        time.sleep(0.05)
    world.portal.generation.request_stop(job_id, user=alice, action="interrupt")
    assert _ended(world, job_id)["status"] == "interrupted"
    assert world.portal.table.query_index(keys.RUNNING_GENERATION_INDEX) == []
