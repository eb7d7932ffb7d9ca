"""Live progress, interrupt and skip: the job's invoking task writes progress to the table and
reads the flags back, so any portal task (another Portal on the same table) answers and acts."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest

from easel_contracts.invocations import GenerationResponse, Txt2ImgRequest
from easel_contracts.streaming import StepEvent
from easel_webui.generation import _merge_answers
from easel_webui.live import JobControl, a1111_progress

from .fakes import client_error
from .helpers import poll_job


def _basic(user: str = "alice", password: str = "user-password-123") -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def _until(predicate, *, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


@pytest.fixture
def two_tasks(world_factory):
    """Two portal tasks on one table: `runner` runs alice's jobs, `other` only answers."""
    runner, other = world_factory(), world_factory()
    runner.in_service()
    runner.runtime.step_delay = 0.05
    runner.add_user("alice")
    runner.add_user("bob")
    return runner, other


def _start(world, *, steps: int = 150, n_iter: int = 1, user: str = "alice") -> str:
    client = world.signed_in(user)
    response = client.post("/generate", json={
        "endpoint": "easel-demo", "task": "txt2img",
        "payload": {"prompt": "a slow lighthouse", "steps": steps, "width": 64, "height": 64,
                    "n_iter": n_iter, "seed": 40}})
    assert response.status_code == 202, response.text
    return response.json()["job_id"]


def _progress(world, user: str = "alice") -> dict[str, Any]:
    return world.client().get("/sdapi/v1/progress", headers=_basic(user)).json()


def test_another_portal_task_answers_progress_with_step_and_preview(two_tasks):
    runner, other = two_tasks
    job_id = _start(runner)
    seen = _until(lambda: (p := _progress(other))["state"]["sampling_step"] >= 2 and p)
    assert seen["state"]["job"] == job_id
    assert seen["state"]["sampling_steps"] == 150
    assert 0 < seen["progress"] < 1 and seen["eta_relative"] > 0
    assert base64.b64decode(seen["current_image"]).startswith(b"\x89PNG")
    later = _until(lambda: (p := _progress(other))["progress"] > seen["progress"] and p)
    assert later["state"]["sampling_step"] > seen["state"]["sampling_step"]
    other.client().post("/sdapi/v1/interrupt", headers=_basic())
    poll_job(runner.signed_in("alice"), job_id)


def test_interrupt_from_another_task_closes_the_stream_and_stops_the_job(two_tasks):
    runner, other = two_tasks
    job_id = _start(runner)
    _until(lambda: _progress(other)["state"]["sampling_step"] >= 1)
    answer = other.client().post("/sdapi/v1/interrupt", headers=_basic())
    assert answer.status_code == 200 and answer.json()["stopping"] is True
    state = poll_job(runner.signed_in("alice"), job_id)
    assert state["status"] == "interrupted"
    assert "nothing was saved" in state["error"]
    (stream,) = runner.runtime.streams
    assert stream.closed and stream.sent < 150
    assert _progress(other)["state"]["job"] == ""  # nothing runs any more


def test_another_user_cannot_interrupt_the_job(two_tasks):
    runner, other = two_tasks
    job_id = _start(runner, steps=40)
    bob = other.signed_in("bob")
    assert bob.post(f"/generate/jobs/{job_id}/interrupt").status_code == 404
    assert bob.post(f"/generate/jobs/{job_id}/skip").status_code == 404
    # bob's own API call finds no running job of his: nothing to stop
    assert other.client().post("/sdapi/v1/interrupt", headers=_basic("bob")).json() == {
        "job_id": None, "stopping": False}
    state = poll_job(runner.signed_in("alice"), job_id)
    assert state["status"] == "done" and len(state["images"]) == 1
    assert runner.runtime.streams[0].sent == 40


def test_an_admin_may_interrupt_anyones_job(two_tasks):
    runner, other = two_tasks
    job_id = _start(runner)
    _until(lambda: _progress(other)["state"]["sampling_step"] >= 1)
    admin = other.signed_in("admin")
    assert admin.post(f"/generate/jobs/{job_id}/interrupt").json()["stopping"] is True
    assert poll_job(runner.signed_in("alice"), job_id)["status"] == "interrupted"


def test_interrupt_keeps_the_batches_already_finished(two_tasks):
    runner, other = two_tasks
    job_id = _start(runner, steps=30, n_iter=3)
    _until(lambda: _progress(other)["state"]["job_no"] == 1)  # the second batch runs
    other.signed_in("alice").post(f"/generate/jobs/{job_id}/interrupt")
    state = poll_job(runner.signed_in("alice"), job_id)
    assert state["status"] == "done" and len(state["images"]) == 1
    assert len(runner.runtime.streams) == 2  # the third batch never started


def test_skip_drops_the_current_image_and_goes_on_with_the_next_batch(two_tasks):
    runner, other = two_tasks
    job_id = _start(runner, steps=30, n_iter=3)
    _until(lambda: _progress(other)["state"]["sampling_step"] >= 1)
    assert other.client().post("/sdapi/v1/skip", headers=_basic()).json()["stopping"] is True
    state = poll_job(runner.signed_in("alice"), job_id, timeout=20)
    assert state["status"] == "done" and len(state["images"]) == 2
    first, *rest = runner.runtime.streams
    assert first.closed and first.sent < 30
    assert [stream.sent for stream in rest] == [30, 30]
    seeds = [stream.request.request().seed for stream in runner.runtime.streams]
    assert seeds == [40, 41, 42]  # the batches keep the seeds one call would give them


def test_a_finished_job_is_not_stopped(two_tasks):
    runner, _ = two_tasks
    job_id = _start(runner, steps=2)
    alice = runner.signed_in("alice")
    assert poll_job(alice, job_id)["status"] == "done"
    assert alice.post(f"/generate/jobs/{job_id}/interrupt").json()["stopping"] is False


def test_the_page_poll_carries_the_jobs_progress(two_tasks):
    runner, _ = two_tasks
    job_id = _start(runner)
    alice = runner.signed_in("alice")
    state = _until(lambda: (s := alice.get(f"/generate/jobs/{job_id}").json())["progress"] and s)
    assert state["progress"]["steps"] == 150 and state["progress"]["preview"]
    alice.post(f"/generate/jobs/{job_id}/interrupt")
    assert poll_job(alice, job_id)["progress"] is None


def test_idle_progress_is_a1111s_zero_shape(world):
    world.add_user("alice")
    body = world.client().get("/sdapi/v1/progress", headers=_basic()).json()
    assert body["progress"] == 0.0 and body["current_image"] is None
    assert set(body["state"]) >= {"job", "sampling_step", "sampling_steps", "interrupted",
                                  "skipped", "job_count"}


def test_progress_can_leave_out_the_image():
    record = {"job_id": "j", "endpoint": "e", "created_at": "t",
              "progress": {"step": 3, "steps": 10, "batch": 1, "batches": 1,
                           "fraction": 0.3, "eta": 7.0, "preview": "abc"}}
    assert a1111_progress(record)["current_image"] == "abc"
    assert a1111_progress(record, with_image=False)["current_image"] is None


class _Table:
    def __init__(self) -> None:
        self.writes: list[dict[str, Any]] = []
        self.flags: dict[str, Any] = {}

    def update(self, pk: str, sk: str, values: dict[str, Any], **_: Any) -> dict[str, Any]:
        self.writes.append(values)
        return dict(self.flags)

    def get(self, pk: str, sk: str) -> dict[str, Any]:
        return dict(self.flags)


def test_progress_is_written_at_most_twice_a_second():
    now = [0.0]
    table = _Table()
    control = JobControl(table, "job", batches=1, clock=lambda: now[0])
    for step in range(1, 41):  # 40 steps, 0.1 s apart: 4 seconds
        assert control.on_step(StepEvent(step=step, steps=40))
        now[0] += 0.1
    assert 7 <= len(table.writes) <= 9
    assert table.writes[0]["progress"]["step"] == 1


def test_a_flag_set_between_writes_is_acted_on_at_the_next_write():
    now = [0.0]
    table = _Table()
    control = JobControl(table, "job", batches=2, clock=lambda: now[0])
    assert control.on_step(StepEvent(step=1, steps=10))
    table.flags = {"skip_requested": 1}
    now[0] += 0.1
    assert control.on_step(StepEvent(step=2, steps=10))  # throttled: not read yet
    now[0] += 0.5
    assert not control.on_step(StepEvent(step=3, steps=10))
    assert control.stop == "skip" and table.writes[-1] == {"skips_done": 1}


def test_the_eta_covers_the_batches_still_to_come():
    control = JobControl(_Table(), "job", batches=3)
    progress = control.progress(StepEvent(step=5, steps=10, eta_seconds=5.0), 0.0)
    assert progress["eta"] == pytest.approx(25.0)  # 1 s a step: 5 here + 20 to come
    assert progress["fraction"] == pytest.approx(0.5 / 3, abs=1e-3)




def test_a_preview_too_large_for_the_record_is_left_out():
    control = JobControl(_Table(), "job", batches=1)
    small = control.progress(StepEvent(step=1, steps=2, preview="a" * 1000), 0.0)
    large = control.progress(StepEvent(step=1, steps=2, preview="a" * 200_000), 0.0)
    assert small["preview"] == "a" * 1000 and large["preview"] is None


def test_the_batches_answers_merge_into_one_with_every_images_seed():
    request = Txt2ImgRequest(prompt="x", n_iter=2, seed=7)
    answers = [GenerationResponse(images=[image], parameters={"n_iter": 1, "seed": seed},
                                  info=json.dumps({"seed": seed, "all_seeds": [seed],
                                                   "infotexts": [f"Seed: {seed}"],
                                                   "n_iter": 1}))
               for image, seed in (("aQ==", 7), ("ag==", 8))]
    merged = _merge_answers(request, answers)
    info = json.loads(merged.info)
    assert merged.images == ["aQ==", "ag=="]
    assert info["all_seeds"] == [7, 8] and info["seed"] == 7 and info["n_iter"] == 2
    assert info["infotexts"] == ["Seed: 7", "Seed: 8"]
    assert merged.parameters["n_iter"] == 2 and merged.parameters["seed"] == 7


def test_an_endpoint_without_the_stream_route_is_invoked_the_plain_way(world, monkeypatch):
    world.in_service()
    world.add_user("alice")

    def old_image(**kwargs):
        raise client_error("ModelError", "no route", "InvokeEndpointWithResponseStream",
                           OriginalStatusCode=404, OriginalMessage='{"detail": "Not Found"}')

    monkeypatch.setattr(world.runtime, "invoke_endpoint_with_response_stream", old_image)
    job_id = _start(world, steps=2)
    state = poll_job(world.signed_in("alice"), job_id)
    assert state["status"] == "done" and len(state["images"]) == 1
    assert len(world.runtime.named("invoke_endpoint")) == 1


def test_a_servers_own_not_found_is_not_taken_for_a_missing_route(world, monkeypatch):
    world.in_service()
    world.add_user("alice")

    def refused(**kwargs):
        raise client_error("ModelError", "x", "InvokeEndpointWithResponseStream",
                           OriginalStatusCode=404, OriginalMessage=json.dumps(
                               {"error": "NotFound", "detail": "checkpoint 'nope' not found"}))

    monkeypatch.setattr(world.runtime, "invoke_endpoint_with_response_stream", refused)
    state = poll_job(world.signed_in("alice"), _start(world, steps=2))
    assert state["status"] == "failed" and "checkpoint 'nope' not found" in state["error"]
    assert world.runtime.named("invoke_endpoint") == []


def test_a_waiting_txt2img_call_answers_the_images_finished_before_an_interrupt(two_tasks):
    from concurrent.futures import ThreadPoolExecutor

    runner, other = two_tasks
    body = {"prompt": "two slow koi", "steps": 30, "width": 64, "height": 64, "n_iter": 2,
            "seed": 3}
    with ThreadPoolExecutor(max_workers=1) as pool:
        waiting = pool.submit(runner.client().post, "/sdapi/v1/txt2img", json=body,
                              headers=_basic())
        _until(lambda: _progress(other)["state"]["job_no"] == 1)
        other.client().post("/sdapi/v1/interrupt", headers=_basic())
        answer = waiting.result(timeout=30)
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["images"]) == 1
    assert answer.json()["parameters"]["n_iter"] == 2  # the request as asked
