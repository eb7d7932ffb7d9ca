"""One worker process per GPU behind the one ``/invocations``.

On a host with several GPUs, ``serve`` runs a front process (this module) that starts
``EASEL_WORKERS`` worker processes (default: one per visible CUDA device; 1 on the CPU). Each
worker is the ordinary single-process server (``app.create_app``), pinned to its GPU with
``CUDA_VISIBLE_DEVICES`` and listening on a private Unix socket. The front:

- sends each ``/invocations`` body to the ready worker with the fewest requests in flight (an
  idle one first, then the one served longest ago); a worker whose queue is full answers
  ``Busy`` and the next one is tried, so the bound on queued work (``EASEL_MAX_QUEUE`` a
  worker) is kept and a full pool answers 503 with ``Retry-After``;
- answers ``/ping`` 200 while at least one worker serves (the ready and total counts in the
  body, ``easel_contracts.readiness.pool_state``), 503 when none does;
- restarts a worker whose process ended (a request it was running gets a 503 that says so; a
  request it never received is sent once to another worker) and kills one that stopped
  answering, so nothing waits forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from easel_contracts.readiness import (
    SERVING,
    Health,
    Ping,
    QueueState,
    State,
    WorkerHealth,
    ping_status,
    pool_state,
)
from easel_contracts.streaming import STREAM_PATH, ErrorEvent, encode_event
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from .errors import ApiError, Unavailable
from .settings import WORKERS_ENV, Settings

log = logging.getLogger("easel.inference")

WORKER_SOCKET_ENV = "EASEL_WORKER_SOCKET"
"""Set by the front for each worker: the Unix socket it serves on (no TCP port)."""
WORKER_INDEX_ENV = "EASEL_WORKER_INDEX"
WORKER_HEADER = "X-Easel-Worker"
POLL_S = 0.25  # how often the front reads each worker's /health
HEALTH_TIMEOUT_S = 5.0
HUNG_AFTER_S = 60.0  # a live worker that has not answered /health for this long is killed
RESTART_BACKOFF_MAX_S = 30.0
QUICK_EXIT_S = 20.0  # a worker that ends sooner than this after its start backs off before a restart
STOP_GRACE_S = 30.0
ANSWER_SLACK_S = 30.0  # beyond the deadline, how long the front waits for a worker's answer
DISCONNECT_POLL_S = 0.5
PASSED_HEADERS = ("content-type", "retry-after")


def worker_count(settings: Settings, cuda_count: Callable[[], int]) -> int:
    """``EASEL_WORKERS`` if set, else one per visible CUDA device (1 on the CPU)."""
    if settings.workers is not None:
        return settings.workers
    if settings.device == "cpu":
        return 1
    return max(1, cuda_count())


def cuda_device_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def worker_devices(count: int, env: Mapping[str, str], gpus: int) -> list[str | None]:
    """Each worker's ``CUDA_VISIBLE_DEVICES``: the host's visible GPUs in turn (a worker per GPU;
    more workers than GPUs share them round-robin), None on a host without GPUs."""
    visible = [d.strip() for d in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    if not visible:
        visible = [str(i) for i in range(gpus)]
    if not visible:
        return [None] * count
    return [visible[i % len(visible)] for i in range(count)]


class WorkerGone(Exception):
    """The worker's connection closed or failed; ``sent`` says whether it had the request."""

    def __init__(self, message: str, *, sent: bool) -> None:
        super().__init__(message)
        self.sent = sent


class PoolUnavailable(Unavailable):
    def headers(self) -> dict[str, str]:
        return {"Retry-After": "5"}


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


async def _connect(socket: Path, method: str, path: str, body: bytes, *, timeout: float
                   ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection to a worker with the request sent (``Connection: close``)."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(socket)),
                                                timeout=min(timeout, 5.0))
    except (OSError, TimeoutError) as exc:
        raise WorkerGone(f"cannot connect ({type(exc).__name__})", sent=False) from exc
    head = (f"{method} {path} HTTP/1.1\r\nHost: worker\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
    try:
        writer.write(head.encode("ascii") + body)
        await writer.drain()
    except OSError as exc:
        await _close(writer)
        raise WorkerGone(f"connection lost while sending ({type(exc).__name__})",
                         sent=False) from exc
    return reader, writer


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError, RuntimeError):
        await writer.wait_closed()


async def exchange(socket: Path, method: str, path: str, body: bytes = b"",
                   *, timeout: float) -> Answer:
    """One HTTP/1.1 request to a worker over its Unix socket, answered in full."""
    reader, writer = await _connect(socket, method, path, body, timeout=timeout)
    try:
        return await asyncio.wait_for(_read_answer(reader), timeout=timeout)
    except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
        raise WorkerGone(f"connection lost before the answer ({type(exc).__name__})",
                         sent=True) from exc
    finally:
        await _close(writer)


@dataclass
class Stream:
    """A worker's streamed answer, open: its head read, its chunks still to come."""

    worker: Worker
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    headers: dict[str, str]
    closed: bool = False

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as the worker sends it; a worker that ends mid-stream ends it with an
        ``error`` event (``easel_contracts.streaming``)."""
        try:
            async for chunk in _body_chunks(self.reader, self.headers):
                yield chunk
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            log.error("worker %d: stream cut (%s)", self.worker.index, type(exc).__name__)
            yield encode_event(ErrorEvent(
                status=503, error="WorkerStopped",
                detail=(f"worker {self.worker.index} stopped while handling this request; it "
                        "is being restarted: retry the request")))

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.worker.in_flight -= 1
            self.writer.close()  # the worker sees its client leave and stops the work


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    status_line = await reader.readline()
    if not status_line:
        raise asyncio.IncompleteReadError(b"", None)
    status = int(status_line.decode("latin-1").split(" ", 2)[1])
    headers: dict[str, str] = {}
    while True:
        line = await reader.readline()
        if not line:
            raise asyncio.IncompleteReadError(b"", None)
        if line in (b"\r\n", b"\n"):
            return status, headers
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()


async def _body_chunks(reader: asyncio.StreamReader,
                       headers: dict[str, str]) -> AsyncIterator[bytes]:
    if "content-length" in headers:
        yield await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await reader.readline()).split(b";")[0].strip(), 16)
            if size == 0:
                await reader.readline()
                return
            yield await reader.readexactly(size)
            await reader.readexactly(2)
    else:
        while chunk := await reader.read(65536):
            yield chunk


async def _read_answer(reader: asyncio.StreamReader) -> Answer:
    status, headers = await _read_head(reader)
    body = b"".join([chunk async for chunk in _body_chunks(reader, headers)])
    return Answer(status=status, headers=headers, body=body)


Spawn = Callable[[list[str], dict[str, str]], subprocess.Popen[bytes]]


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the worker gets SIGTERM if the front dies, so no worker outlives it."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _spawn(command: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(command, env=env, preexec_fn=_die_with_parent)  # noqa: PLW1509


@dataclass
class Worker:
    index: int
    socket: Path
    devices: str | None
    process: subprocess.Popen[bytes] | None = None
    state: State = "loading"
    detail: str | None = None
    health: Health | None = None
    started_at: float = 0.0
    answered_at: float | None = None  # last /health answer of this process
    restarts: int = 0
    quick_exits: int = 0
    restart_at: float | None = None
    in_flight: int = 0
    last_sent: float = 0.0

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def serving(self) -> bool:
        return self.alive and self.state in SERVING

    def record(self) -> WorkerHealth:
        return WorkerHealth(index=self.index, status=self.state, detail=self.detail,
                            pid=self.process.pid if self.alive and self.process else None,
                            devices=self.devices, restarts=self.restarts,
                            in_flight=self.in_flight)


@dataclass
class Pool:
    """The workers, their supervision and the dispatch of requests to them."""

    settings: Settings
    count: int
    env: Mapping[str, str]
    devices: Sequence[str | None]
    spawn: Spawn = _spawn
    clock: Callable[[], float] = time.monotonic
    workers: list[Worker] = field(default_factory=list)
    _dir: Path | None = None
    _since: float = field(default_factory=time.time)
    _state: State = "loading"
    _watch: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="easel-w"))
        self.workers = [Worker(index=i, socket=self._dir / f"{i}.sock", devices=self.devices[i])
                        for i in range(self.count)]
        for worker in self.workers:
            self._start(worker)
        self._watch = asyncio.get_running_loop().create_task(self._supervise())

    def _start(self, worker: Worker) -> None:
        with contextlib.suppress(FileNotFoundError):
            worker.socket.unlink()
        env = dict(self.env)
        env[WORKERS_ENV] = "1"
        env[WORKER_SOCKET_ENV] = str(worker.socket)
        env[WORKER_INDEX_ENV] = str(worker.index)
        if worker.devices is not None:
            env["CUDA_VISIBLE_DEVICES"] = worker.devices
        worker.process = self.spawn([sys.executable, "-m", "easel_inference.cli"], env)
        worker.state, worker.detail, worker.health = "loading", "starting", None
        worker.started_at, worker.answered_at, worker.restart_at = self.clock(), None, None
        log.info("worker %d started (pid %d, CUDA_VISIBLE_DEVICES=%s)", worker.index,
                 worker.process.pid, worker.devices)

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        live = [w.process for w in self.workers if w.process and w.process.poll() is None]
        for process in live:
            process.terminate()
        ends = self.clock() + STOP_GRACE_S
        for process in live:
            try:
                await asyncio.to_thread(process.wait, max(0.1, ends - self.clock()))
            except subprocess.TimeoutExpired:
                process.kill()
                await asyncio.to_thread(process.wait)
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)

    async def _supervise(self) -> None:
        while True:
            await asyncio.gather(*(self._check(worker) for worker in self.workers))
            self._update_state()
            await asyncio.sleep(POLL_S)

    async def _check(self, worker: Worker) -> None:
        now = self.clock()
        process = worker.process
        if process is None or process.poll() is not None:
            if worker.restart_at is None:
                code = process.returncode if process is not None else None
                quick = now - worker.started_at < QUICK_EXIT_S
                worker.quick_exits = worker.quick_exits + 1 if quick else 0
                delay = min(RESTART_BACKOFF_MAX_S, 2.0 ** worker.quick_exits - 1)
                worker.restart_at = now + delay
                worker.restarts += 1
                worker.state = "loading"
                worker.detail = f"restarting: its process ended (exit code {code})"
                log.error("worker %d ended (exit code %s); restarting in %.0f s", worker.index,
                          code, delay)
            if now >= worker.restart_at:
                self._start(worker)
            return
        try:
            answer = await exchange(worker.socket, "GET", "/health", timeout=HEALTH_TIMEOUT_S)
            health = Health.model_validate_json(answer.body)
        except (WorkerGone, ValidationError, ValueError):
            last = worker.answered_at if worker.answered_at is not None else worker.started_at
            if worker.answered_at is not None and now - last > HUNG_AFTER_S:
                log.error("worker %d has not answered for %.0f s; killing it", worker.index,
                          now - last)
                process.kill()
            return
        worker.answered_at = now
        worker.health = health
        worker.state, worker.detail = health.status, health.detail

    def _update_state(self) -> None:
        state = pool_state([w.state if w.alive else "loading" for w in self.workers])
        if state != self._state:
            self._state, self._since = state, time.time()

    @property
    def ready(self) -> int:
        return sum(worker.serving for worker in self.workers)

    def state(self) -> tuple[State, str | None]:
        states = [w.state if w.alive else "loading" for w in self.workers]
        state = pool_state(states)
        if state in ("ready",):
            return state, None
        notes = [f"worker {w.index}: {w.state}" + (f" ({w.detail})" if w.detail else "")
                 for w in self.workers if not w.serving or w.state == "degraded"]
        return state, f"{self.ready} of {len(self.workers)} workers ready; " + "; ".join(notes)

    def ping(self) -> Ping:
        state, detail = self.state()
        return Ping(status=state, detail=detail, workers=len(self.workers),
                    workers_ready=self.ready)

    def health(self) -> Health:
        state, detail = self.state()
        healths = [w.health for w in self.workers if w.alive and w.health is not None]
        serving = [h for h in healths if h.status in SERVING]
        first = (serving or healths or [None])[0]
        queues = [h.queue for h in healths]
        timed = bool(queues) and all(q.queued_seconds is not None for q in queues)
        queue = QueueState(
            running=sum(q.running for q in queues), waiting=sum(q.waiting for q in queues),
            limit=max(1, sum(q.limit for q in queues)),
            queued_seconds=round(sum(q.queued_seconds or 0.0 for q in queues), 3)
            if timed else None)
        return Health(status=state, detail=detail, since=self._since,
                      model=first.model if first else None,
                      deadline_seconds=self.settings.deadline_seconds, queue=queue,
                      speed=first.speed if first else None,
                      workers=[w.record() for w in self.workers])

    def pick(self, tried: set[int]) -> Worker | None:
        """The serving worker with the fewest requests in flight (the longest unused first)."""
        candidates = [w for w in self.workers if w.serving and w.index not in tried]
        if not candidates:
            # listings are answered while a worker loads: any live one that answers /health
            candidates = [w for w in self.workers if w.alive and w.answered_at is not None
                          and w.index not in tried]
        if not candidates:
            return None
        return min(candidates, key=lambda w: (w.in_flight, w.last_sent))

    async def forward(self, body: bytes) -> Answer:
        """``body`` answered by a worker; raises ``ApiError`` when none can take it."""
        answer = await self._dispatch(body, path="/invocations", stream=False)
        assert isinstance(answer, Answer)
        return answer

    async def open_stream(self, body: bytes) -> Answer | Stream:
        """``body`` sent to a worker's streaming route: its open stream, or its refusal."""
        return await self._dispatch(body, path=STREAM_PATH, stream=True)

    async def _dispatch(self, body: bytes, *, path: str, stream: bool) -> Answer | Stream:
        tried: set[int] = set()
        retried = False
        busy: Answer | None = None
        timeout = self.settings.deadline_seconds + ANSWER_SLACK_S
        while True:
            worker = self.pick(tried)
            if worker is None:
                if busy is not None:
                    return busy
                state, detail = self.state()
                raise PoolUnavailable(detail or f"the server is {state}; retry shortly")
            tried.add(worker.index)
            worker.in_flight += 1
            worker.last_sent = self.clock()
            opened: Stream | None = None
            try:
                if stream:
                    reader, writer = await _connect(worker.socket, "POST", path, body,
                                                    timeout=timeout)
                    try:
                        status, headers = await asyncio.wait_for(_read_head(reader), timeout)
                    except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                        await _close(writer)
                        raise WorkerGone(f"connection lost before the answer "
                                         f"({type(exc).__name__})", sent=True) from exc
                    if status == 200:
                        opened = Stream(worker=worker, reader=reader, writer=writer,
                                        headers=headers)
                        return opened  # in flight until the stream closes
                    try:
                        answer = Answer(status=status, headers=headers, body=b"".join(
                            [chunk async for chunk in _body_chunks(reader, headers)]))
                    finally:
                        await _close(writer)
                else:
                    answer = await exchange(worker.socket, "POST", path, body, timeout=timeout)
            except WorkerGone as exc:
                if not exc.sent and not retried:
                    log.warning("worker %d did not take a request (%s); sending it to another",
                                worker.index, exc)
                    retried = True
                    continue
                log.error("worker %d: %s", worker.index, exc)
                raise PoolUnavailable(
                    f"worker {worker.index} stopped while handling this request ({exc}); it is "
                    "being restarted: retry the request") from exc
            except (TimeoutError, asyncio.IncompleteReadError, OSError) as exc:
                raise PoolUnavailable(
                    f"worker {worker.index} gave no answer within {timeout:g} s; retry the "
                    "request") from exc
            finally:
                if opened is None:
                    worker.in_flight -= 1
            answer.headers[WORKER_HEADER.lower()] = str(worker.index)
            if answer.status == 503 and _is_busy(answer.body):
                busy = answer  # its queue is full: another worker may take it
                continue
            return answer


def _is_busy(body: bytes) -> bool:
    try:
        return json.loads(body).get("error") == "Busy"
    except (ValueError, AttributeError):
        return False


def create_pool_app(settings: Settings, pool: Pool) -> FastAPI:
    """The front: ``/ping``, ``/health`` and ``/invocations`` over the pool's workers."""
    from easel_contracts.bodylimit import BodyLimit

    from .app import EventStream, _too_large, request_body_limit

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool.start()
        try:
            yield
        finally:
            await pool.stop()

    app = FastAPI(title="Easel inference (workers)", lifespan=lifespan, docs_url=None,
                  redoc_url=None)
    app.state.pool = pool

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers())

    @app.get("/ping")
    async def ping() -> JSONResponse:
        body = pool.ping()
        return JSONResponse(body.model_dump(exclude_none=True), status_code=ping_status(body.status))

    @app.get("/health")
    async def health() -> JSONResponse:
        return JSONResponse(pool.health().model_dump(mode="json"))

    @app.post("/invocations")
    async def invocations(request: Request) -> Response:
        body = await request.body()  # bounded while streaming: BodyLimit below
        work = asyncio.ensure_future(pool.forward(body))
        while True:
            done, _ = await asyncio.wait({work}, timeout=DISCONNECT_POLL_S)
            if done:
                break
            if await request.is_disconnected():
                # closing the worker's connection makes it stop the generation between steps
                log.info("client left; closing its worker connection")
                work.cancel()
                with contextlib.suppress(asyncio.CancelledError, ApiError):
                    await work
                return Response(status_code=499)
        return _relayed(work.result())

    @app.post(STREAM_PATH)
    async def invocations_stream(request: Request) -> Response:
        """The streaming route, relayed: the worker's step events as they come."""
        opened = await pool.open_stream(await request.body())
        if isinstance(opened, Answer):
            return _relayed(opened)
        return EventStream(opened.chunks(), on_close=opened.close)

    app.add_middleware(BodyLimit, limit_for=lambda _scope: request_body_limit(settings),
                       body=_too_large)
    return app


def _relayed(answer: Answer) -> Response:
    headers = {name: value for name, value in answer.headers.items()
               if name in PASSED_HEADERS or name == WORKER_HEADER.lower()}
    return Response(answer.body, status_code=answer.status, headers=headers)


def build_pool(settings: Settings, count: int, *, env: Mapping[str, str] | None = None,
               gpus: int | None = None) -> Pool:
    env = dict(os.environ if env is None else env)
    gpus = cuda_device_count() if gpus is None else gpus
    return Pool(settings=settings, count=count, env=env,
                devices=worker_devices(count, env, gpus))


__all__ = ["Pool", "build_pool", "create_pool_app", "worker_count", "worker_devices"]
