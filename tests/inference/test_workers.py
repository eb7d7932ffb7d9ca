"""One worker process per GPU: the front's dispatch, /ping over the pool, restarts (2 CPU workers
on the tiny model), and the dispatch rules on fake workers."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from inference_support import invoke, small

from easel_inference import workers as workers_module
from easel_inference.settings import Settings, SettingsError
from easel_inference.workers import (
    WORKER_HEADER,
    Answer,
    Pool,
    PoolUnavailable,
    Worker,
    WorkerGone,
    build_pool,
    create_pool_app,
    worker_count,
    worker_devices,
)


def _wait_for(predicate, *, timeout: float = 240.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


# one pytest-xdist worker runs this module, so its two real worker processes start once
pytestmark = pytest.mark.xdist_group("inference-workers")


@pytest.fixture(scope="module")
def pool_client(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """A front with two CPU worker processes serving the tiny model."""
    env = dict(os.environ, EASEL_MODEL_DIR=str(tiny_model_dir), EASEL_DEFAULT_MODEL="tiny",
               EASEL_DEVICE="cpu", EASEL_DEADLINE_SECONDS="3600", EASEL_WARMUP="0",
               EASEL_LORA_CACHE_DIR=str(tmp_path_factory.mktemp("pool-lora-cache")),
               OMP_NUM_THREADS="1")
    settings = Settings.from_env(env)
    pool = build_pool(settings, 2, env=env, gpus=0)
    with TestClient(create_pool_app(settings, pool)) as client:
        _wait_for(lambda: client.get("/ping").json().get("workers_ready") == 2,
                  what="both workers ready")
        yield client


def _ping(client: TestClient) -> tuple[int, dict]:
    response = client.get("/ping")
    return response.status_code, response.json()


def test_ping_is_200_with_the_ready_and_total_worker_counts(pool_client) -> None:
    status, body = _ping(pool_client)
    assert status == 200
    assert (body["status"], body["workers"], body["workers_ready"]) == ("ready", 2, 2)


def test_both_workers_serve_generations(pool_client) -> None:
    served = set()
    for _ in range(4):
        response = invoke(pool_client, "txt2img", small())
        assert response.status_code == 200, response.text
        assert len(response.json()["images"]) == 1
        served.add(response.headers[WORKER_HEADER])
    assert served == {"0", "1"}


def test_concurrent_generations_run_on_different_workers(pool_client) -> None:
    results: list = [None, None]

    def call(slot: int) -> None:
        results[slot] = invoke(pool_client, "txt2img", small(steps=10))

    threads = [threading.Thread(target=call, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert all(r is not None and r.status_code == 200 for r in results)
    assert {r.headers[WORKER_HEADER] for r in results} == {"0", "1"}


def test_a_streamed_generation_passes_through_the_front(pool_client) -> None:
    from easel_contracts.streaming import STREAM_PATH, parse_event

    response = pool_client.post(STREAM_PATH, json={"task": "txt2img", "payload": small()})
    assert response.status_code == 200, response.text
    events = [parse_event(line) for line in response.content.splitlines() if line.strip()]
    assert [e.event for e in events].count("step") >= 1
    assert events[-1].event == "result" and len(events[-1].answer.images) == 1
    pool: Pool = pool_client.app.state.pool
    assert all(w.in_flight == 0 for w in pool.workers)


def test_a_refused_stream_is_answered_as_the_worker_answers_it(pool_client) -> None:
    from easel_contracts.streaming import STREAM_PATH

    response = pool_client.post(STREAM_PATH, json={"task": "sd-models", "payload": {}})
    assert response.status_code == 400 and response.json()["field"] == "task"


def test_listings_pass_through_the_front(pool_client) -> None:
    response = invoke(pool_client, "sd-models")
    assert response.status_code == 200
    assert "tiny" in {model["model_name"] for model in response.json()}


def test_health_lists_each_worker_with_its_pid(pool_client) -> None:
    health = pool_client.get("/health").json()
    assert [w["index"] for w in health["workers"]] == [0, 1]
    assert all(w["status"] == "ready" and w["pid"] for w in health["workers"])
    assert health["queue"]["limit"] == 2 * Settings().max_queue


def test_a_killed_worker_leaves_ping_200_with_one_of_two_then_comes_back(pool_client) -> None:
    pool: Pool = pool_client.app.state.pool
    victim = pool.workers[0]
    restarts = victim.restarts
    os.kill(victim.process.pid, signal.SIGKILL)
    _wait_for(lambda: _ping(pool_client)[1]["workers_ready"] == 1, what="1 of 2 ready")
    status, body = _ping(pool_client)
    assert status == 200
    assert body["status"] == "degraded" and "1 of 2 workers ready" in body["detail"]
    response = invoke(pool_client, "txt2img", small())  # the other worker serves meanwhile
    assert response.status_code == 200
    _wait_for(lambda: _ping(pool_client)[1]["workers_ready"] == 2, what="the worker back")
    assert victim.restarts == restarts + 1


def test_a_request_on_a_worker_that_dies_gets_a_clear_503(pool_client) -> None:
    pool: Pool = pool_client.app.state.pool
    result: list = []
    thread = threading.Thread(target=lambda: result.append(
        invoke(pool_client, "txt2img", small(steps=150, width=512, height=512))))
    thread.start()
    _wait_for(lambda: any(w.in_flight for w in pool.workers), timeout=30, what="a request sent")
    busy = next(w for w in pool.workers if w.in_flight)
    # the worker has the request once its own queue shows it running
    _wait_for(lambda: busy.health is not None and busy.health.queue.running == 1, timeout=60,
              what="the generation started")
    os.kill(busy.process.pid, signal.SIGKILL)
    thread.join(timeout=60)
    assert result, "the request hung after its worker died"
    response = result[0]
    assert response.status_code == 503
    assert f"worker {busy.index} stopped while handling this request" in response.json()["detail"]
    assert response.headers["Retry-After"]
    _wait_for(lambda: _ping(pool_client)[1]["workers_ready"] == 2, what="the worker back")


def test_with_every_worker_killed_ping_is_503_then_they_come_back(pool_client) -> None:
    pool: Pool = pool_client.app.state.pool
    for worker in pool.workers:
        os.kill(worker.process.pid, signal.SIGKILL)
    _wait_for(lambda: _ping(pool_client)[0] == 503, timeout=30, what="ping 503")
    status, body = _ping(pool_client)
    assert body["workers_ready"] == 0 and body["status"] in ("loading", "warming")
    response = invoke(pool_client, "txt2img", small())
    assert response.status_code == 503
    assert response.headers["Retry-After"]
    _wait_for(lambda: _ping(pool_client)[1]["workers_ready"] == 2, what="both workers back")


# -- the rules, without processes ------------------------------------------------------------

class _LiveProcess:
    pid = 1
    returncode = None

    def poll(self):
        return None


def _fake_pool(count: int = 2) -> Pool:
    pool = Pool(settings=Settings(), count=count, env={}, devices=[None] * count)
    pool.workers = [Worker(index=i, socket=Path(f"/nowhere/{i}.sock"), devices=None,
                           process=_LiveProcess(), state="ready") for i in range(count)]
    return pool


def _run_forward(pool: Pool, monkeypatch, answers: dict[int, object]) -> tuple[object, list[int]]:
    asked: list[int] = []

    async def exchange(socket, method, path, body=b"", *, timeout):
        index = int(Path(socket).stem)
        asked.append(index)
        outcome = answers[index]
        if isinstance(outcome, Exception):
            raise outcome
        return Answer(status=outcome[0], headers={}, body=json.dumps(outcome[1]).encode())

    monkeypatch.setattr(workers_module, "exchange", exchange)
    try:
        return asyncio.run(pool.forward(b"{}")), asked
    except PoolUnavailable as exc:
        return exc, asked


def test_dispatch_prefers_the_idle_worker(monkeypatch) -> None:
    pool = _fake_pool()
    pool.workers[0].in_flight = 1
    answer, asked = _run_forward(pool, monkeypatch, {0: (200, {}), 1: (200, {})})
    assert asked == [1]


def test_a_busy_worker_passes_the_request_to_the_next(monkeypatch) -> None:
    pool = _fake_pool()
    answer, asked = _run_forward(pool, monkeypatch, {0: (503, {"error": "Busy"}), 1: (200, {})})
    assert asked == [0, 1] and answer.status == 200


def test_a_full_pool_answers_the_busy_refusal(monkeypatch) -> None:
    pool = _fake_pool()
    busy = (503, {"error": "Busy", "retry_after_seconds": 3})
    answer, asked = _run_forward(pool, monkeypatch, {0: busy, 1: busy})
    assert sorted(asked) == [0, 1]
    assert answer.status == 503 and json.loads(answer.body)["error"] == "Busy"


def test_a_request_a_worker_never_received_is_sent_once_to_another(monkeypatch) -> None:
    pool = _fake_pool()
    answer, asked = _run_forward(
        pool, monkeypatch, {0: WorkerGone("refused", sent=False), 1: (200, {})})
    assert asked == [0, 1] and answer.status == 200


def test_a_request_lost_with_its_worker_is_503_not_retried(monkeypatch) -> None:
    pool = _fake_pool()
    answer, asked = _run_forward(
        pool, monkeypatch, {0: WorkerGone("closed", sent=True), 1: (200, {})})
    assert asked == [0]
    assert isinstance(answer, PoolUnavailable) and answer.status == 503
    assert "worker 0 stopped while handling this request" in answer.message


def test_no_serving_worker_is_503_with_retry_after(monkeypatch) -> None:
    pool = _fake_pool()
    for worker in pool.workers:
        worker.state = "warming"
        worker.answered_at = None
    answer, asked = _run_forward(pool, monkeypatch, {})
    assert asked == [] and isinstance(answer, PoolUnavailable)
    assert answer.headers()["Retry-After"]


# -- how many workers, on which GPUs ---------------------------------------------------------

def test_workers_default_to_the_cuda_device_count() -> None:
    assert worker_count(Settings(), lambda: 4) == 4


def test_workers_default_to_one_without_a_gpu() -> None:
    assert worker_count(Settings(), lambda: 0) == 1
    assert worker_count(Settings(device="cpu"), lambda: 8) == 1


def test_the_workers_setting_wins() -> None:
    assert worker_count(Settings.from_env({"EASEL_WORKERS": "2"}), lambda: 8) == 2
    assert Settings.from_env({"EASEL_WORKERS": "auto"}).workers is None


@pytest.mark.parametrize("raw", ["0", "65", "two"])
def test_a_bad_workers_setting_is_refused_naming_it(raw) -> None:
    with pytest.raises(SettingsError, match="EASEL_WORKERS"):
        Settings.from_env({"EASEL_WORKERS": raw})


def test_each_worker_is_pinned_to_one_gpu() -> None:
    assert worker_devices(4, {}, 4) == ["0", "1", "2", "3"]


def test_workers_follow_the_hosts_visible_devices() -> None:
    assert worker_devices(2, {"CUDA_VISIBLE_DEVICES": "2,3"}, 2) == ["2", "3"]


def test_cpu_workers_are_not_pinned() -> None:
    assert worker_devices(2, {}, 0) == [None, None]


# -- supervision, on a fake clock ------------------------------------------------------------

class _Process:
    def __init__(self, code=None) -> None:
        self.pid = 42
        self.returncode = code
        self.killed = False

    def poll(self):
        return self.returncode

    def kill(self) -> None:
        self.killed = True
        self.returncode = -9


def _supervised(monkeypatch, now: list[float]) -> tuple[Pool, list[str]]:
    spawned: list[str] = []

    def spawn(command, env):
        spawned.append(env["EASEL_WORKER_INDEX"])
        return _Process()

    pool = Pool(settings=Settings(), count=1, env={}, devices=[None], spawn=spawn,
                clock=lambda: now[0])
    pool.workers = [Worker(index=0, socket=Path("/nowhere/0.sock"), devices=None,
                           process=_Process(), state="ready", started_at=0.0, answered_at=0.0)]

    async def unreachable(*_args, **_kwargs):
        raise WorkerGone("no answer", sent=False)

    monkeypatch.setattr(workers_module, "exchange", unreachable)
    return pool, spawned


def test_a_worker_that_stops_answering_is_killed_then_restarted(monkeypatch) -> None:
    now = [workers_module.HUNG_AFTER_S - 1]
    pool, spawned = _supervised(monkeypatch, now)
    worker = pool.workers[0]
    process = worker.process
    asyncio.run(pool._check(worker))
    assert not process.killed  # not yet past the limit
    now[0] = workers_module.HUNG_AFTER_S + 1
    asyncio.run(pool._check(worker))
    assert process.killed
    now[0] += 100  # a long-lived worker ended: restarted at once
    asyncio.run(pool._check(worker))
    assert spawned == ["0"] and worker.restarts == 1 and worker.state == "loading"


def test_a_worker_that_keeps_ending_at_start_is_restarted_with_a_back_off(monkeypatch) -> None:
    now = [5.0]
    pool, spawned = _supervised(monkeypatch, now)
    worker = pool.workers[0]
    worker.process = _Process(code=1)  # ended 5 s after its start
    asyncio.run(pool._check(worker))
    assert spawned == [] and worker.restart_at == 5.0 + 1.0
    assert "exit code 1" in worker.detail
    now[0] = 6.0
    asyncio.run(pool._check(worker))
    assert spawned == ["0"]


def test_a_worker_on_a_gpu_is_started_with_only_that_gpu_visible() -> None:
    seen: list[dict] = []

    def spawn(command, env):
        seen.append(env)
        return _Process()

    pool = Pool(settings=Settings(), count=2, env={"CUDA_VISIBLE_DEVICES": "0,1"},
                devices=["0", "1"], spawn=spawn)
    worker = Worker(index=1, socket=Path("/nowhere/1.sock"), devices="1")
    pool._start(worker)
    assert seen[0]["CUDA_VISIBLE_DEVICES"] == "1"
    assert seen[0]["EASEL_WORKERS"] == "1" and seen[0]["EASEL_WORKER_SOCKET"].endswith("1.sock")


def test_a_stream_cut_by_its_worker_ends_with_an_error_event() -> None:
    from easel_contracts.streaming import parse_event
    from easel_inference.workers import Stream

    async def run() -> list[bytes]:
        reader = asyncio.StreamReader()
        # one chunk of a chunked body, then the connection ends
        reader.feed_data(b"5\r\nhello\r\n")
        reader.feed_eof()

        class Writer:
            def close(self) -> None:
                pass

        worker = Worker(index=1, socket=Path("/nowhere/1.sock"), devices=None, in_flight=1)
        stream = Stream(worker=worker, reader=reader, writer=Writer(),
                        headers={"transfer-encoding": "chunked"})
        chunks = [chunk async for chunk in stream.chunks()]
        stream.close()
        assert worker.in_flight == 0
        return chunks

    chunks = asyncio.run(run())
    assert chunks[0] == b"hello"
    error = parse_event(chunks[1])
    assert error.event == "error" and error.status == 503
    assert "worker 1 stopped" in error.detail
