"""Generating images on an endpoint: submit, run in the background, poll; store results.

Work longer than a few seconds never holds a browser request (CloudFront ends requests after
60 s): `submit` records a job in the table and runs it on a worker thread; any portal task answers
`job()` from the table. Results land in `outputs/<user>/<day>/<id>.png` with `<id>.json` (the
parameters), and one table record per image feeds the gallery.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError, EventStreamError, ReadTimeoutError
from PIL import Image
from pydantic import BaseModel, ValidationError

from easel_contracts import table as keys
from easel_contracts.invocations import (
    GENERATION_TASKS,
    LISTING_TASKS,
    MAX_SEED,
    ControlNetModels,
    ExtrasSingleImageRequest,
    ExtrasSingleImageResponse,
    GenerationRequest,
    GenerationResponse,
    ListingRequest,
    invocation_body,
    parse_answer,
)
from easel_contracts.s3uri import S3Uri
from easel_contracts.streaming import (
    STREAM_CONTENT_TYPE,
    ErrorEvent,
    EventReader,
    ResultEvent,
    StepEvent,
    StreamError,
)
from easel_contracts.workcap import ASYNC_INVOCATION_TIMEOUT_MAX_S
from easel_contracts.xy_plot import AxisType, FailedCell, XYPlot, failed_cell
from easel_webui.auth import User
from easel_webui.downloads import download_name
from easel_webui.endpoints import Endpoints
from easel_webui.errors import Busy, NotFound, PortalError, UpstreamError, describe_validation
from easel_webui.grids import with_grid, with_plot_grid
from easel_webui.live import JobControl, Stop
from easel_webui.payloads import plot_cells
from easel_webui.storage import Bucket
from easel_webui.store import Table, iso_now, now
from easel_webui.workcap import WorkCap

log = logging.getLogger("easel_webui.generation")
JOB_TTL_SECONDS = 7 * 24 * 3600
ASYNC_WAIT_SECONDS = 30 * 60
# A job records the portal task running it and a heartbeat that task renews (its lease); a
# running job whose heartbeat is older than STALE_HEARTBEAT_SECONDS lost its worker (the task
# stopped or restarted) and is failed by the next portal start's sweep, or when next read.
# Records from before heartbeats: by their start.
HEARTBEAT_SECONDS = 10.0
STALE_HEARTBEAT_SECONDS = 60.0
STALE_AFTER_SECONDS = ASYNC_WAIT_SECONDS + 5 * 60
STALE_REASON = ("The portal task running this job stopped (a restart or scale-in) before the "
                "endpoint answered; nothing was saved. Submit it again.")
NEVER_RAN_REASON = ("The portal task holding this job in its queue stopped (a restart or "
                    "scale-in) before the job started; nothing ran. Submit it again.")
_LARGE_FIELDS = ("init_images", "mask", "image")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# an X/Y plot's values are checked against the endpoint's listings if they come within this long;
# a slower (or failing) listing does not hold the job: its cells are then judged by the server
LISTING_WAIT_SECONDS = 10.0
_PLOT_LISTINGS = {AxisType.SAMPLER: "samplers", AxisType.LORA_WEIGHT: "loras"}


class SyncTimeout(PortalError):
    """A synchronous call ran out of time; the job still waits for the endpoint and can be
    polled. The message says what is true: a real-time job only succeeds if the endpoint answers
    within SageMaker's 60 s limit, otherwise it fails."""

    status_code = 504

    def __init__(self, job_id: str, timeout: float, mode: str = "realtime") -> None:
        limit = ("within 30 minutes" if mode == "async"
                 else "within SageMaker's 60 s real-time limit")
        super().__init__(
            f"The endpoint did not answer within {timeout:g} s. Poll GET /api/v1/jobs/{job_id}: "
            f"it ends 'done' with the images (then also in your gallery) only if the endpoint "
            f"answers {limit}, and 'failed' with the reason if not. For long work use fewer "
            "steps or a smaller size, or an async endpoint / the portal's Generate page."
        )
        self.job_id = job_id
        self.extra = {"job_id": job_id, "poll": f"/api/v1/jobs/{job_id}"}


def _strip_large(payload: dict[str, Any]) -> dict[str, Any]:
    """The parameters worth keeping with an image (no input images)."""
    kept = {k: v for k, v in payload.items() if k not in _LARGE_FIELDS}
    scripts = kept.get("alwayson_scripts")
    if isinstance(scripts, dict):
        cleaned = json.loads(json.dumps(scripts))
        for script in cleaned.values():
            for arg in (script.get("args", []) if isinstance(script, dict) else []):
                if isinstance(arg, dict):
                    for field in ("image", "input_image", "mask"):
                        arg.pop(field, None)
        kept["alwayson_scripts"] = cleaned
    return kept


def _model_error_body(exc: ClientError) -> dict[str, Any]:
    """The model server's error body (``{"error", "detail", "field", ...}``) that SageMaker
    passes on as ``OriginalMessage``; ``{}`` when it is not such a JSON object."""
    try:
        parsed = json.loads(exc.response.get("OriginalMessage") or "")
    except (TypeError, ValueError):
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _model_error_message(exc: ClientError) -> str:
    error = exc.response.get("Error", {})
    original = exc.response.get("OriginalMessage") or error.get("Message", "")
    body = _model_error_body(exc)
    if body:
        original = body.get("detail") or body.get("error") or original
    return str(original)[:1000]


def server_error(status: object, detail: str, *, field: object = None,
                 retry_after: object = None) -> PortalError:
    """The model server's error answer (its HTTP status and body, before or within a response
    stream) as the portal's answer. The server refusing the request (4xx) is the caller's to
    fix: 422 naming the field, with the server's message; a busy server (503) is 503 with its
    ``Retry-After``; work stopped at its deadline (504) or a SageMaker timeout (408) is 504. Only
    a failing or unreachable server is a gateway error (502)."""
    if isinstance(field, str) and field and not detail.startswith(field):
        detail = f"{field}: {detail}"
    if status in (429, 503):
        return PortalError(f"The endpoint is busy: {detail}",
                           status_code=503 if status == 503 else 429,
                           retry_after=retry_after if isinstance(retry_after, int)
                           and retry_after > 0 else 5)
    if status in (408, 504):
        return PortalError(f"The endpoint stopped this request: {detail}", status_code=504)
    if isinstance(status, int) and 400 <= status < 500:
        return PortalError(f"The model server refused this request: {detail}",
                           status_code=422)
    return UpstreamError(f"The model server failed: {detail}")


def model_refusal(exc: ClientError) -> PortalError:
    """A ``ModelError`` as the portal's answer. SageMaker wraps every non-2xx answer of the
    container in a ModelError (HTTP 424) carrying the container's status and body
    (``OriginalStatusCode``, ``OriginalMessage``; see the InvokeEndpoint API reference,
    https://docs.aws.amazon.com/sagemaker/latest/APIReference/API_runtime_InvokeEndpoint.html)."""
    body = _model_error_body(exc)
    return server_error(exc.response.get("OriginalStatusCode"), _model_error_message(exc),
                        field=body.get("field"), retry_after=body.get("retry_after_seconds"))


def _invoke_error(endpoint: str, exc: ClientError) -> PortalError:
    code = exc.response.get("Error", {}).get("Code", "")
    if code == "ModelError":
        return model_refusal(exc)
    if code in ("ValidationError", "ValidationException"):
        return UpstreamError(f"Endpoint {endpoint!r} is not ready: {_model_error_message(exc)}")
    return UpstreamError(f"Endpoint {endpoint!r} failed: {_model_error_message(exc)}")


def _no_stream_route(exc: ClientError) -> bool:
    """The endpoint's server has no /invocations-response-stream (an image from before it):
    its web framework's own 404/405, not one of the server's errors (which name an `error`)."""
    if exc.response.get("Error", {}).get("Code") != "ModelError" or \
            exc.response.get("OriginalStatusCode") not in (404, 405):
        return False
    try:
        body = json.loads(exc.response.get("OriginalMessage") or "{}")
    except ValueError:
        return True
    return not (isinstance(body, dict) and "error" in body)


def _too_slow(endpoint: str) -> UpstreamError:
    return UpstreamError(
        f"Endpoint {endpoint!r} took longer than SageMaker's 60 s real-time limit; "
        "use fewer steps or a smaller size, or deploy an async endpoint.")


def _batch_requests(request: GenerationRequest) -> list[GenerationRequest]:
    """`n_iter` batches as one request each (so one can be skipped), with the seeds one call
    would give them: consecutive from the first (picked here when it is -1)."""
    if request.n_iter == 1:
        return [request]
    first = request.seed if request.seed != -1 else random.randint(0, MAX_SEED)
    return [request.model_copy(update={
        "n_iter": 1, "seed": (first + index * request.batch_size) % (MAX_SEED + 1)})
        for index in range(request.n_iter)]


def _merge_answers(request: GenerationRequest,
                   answers: list[GenerationResponse]) -> GenerationResponse:
    """One answer for the batches made: images in order, the first batch's info with the
    per-image lists of all of them."""
    if len(answers) == 1 and request.n_iter == 1:
        return answers[0]
    try:
        infos = [json.loads(answer.info) for answer in answers]
    except ValueError:
        infos = []
    info: dict[str, Any] = dict(infos[0]) if infos and isinstance(infos[0], dict) else {}
    for field in ("all_prompts", "all_negative_prompts", "all_seeds", "all_subseeds",
                  "infotexts"):
        if field in info:
            info[field] = [value for part in infos for value in part.get(field, [])]
    if "n_iter" in info:
        info["n_iter"] = len(answers)
    parameters = dict(answers[0].parameters) if answers else {}
    parameters.update(n_iter=request.n_iter, seed=request.seed)
    return GenerationResponse(images=[image for answer in answers for image in answer.images],
                              parameters=parameters, info=json.dumps(info))


def _no_images(request: GenerationRequest) -> GenerationResponse:
    return GenerationResponse(images=[], parameters=request.model_dump(
        mode="json", exclude={"init_images", "mask"}), info="{}")


def _with_failed_cells(answer: GenerationResponse,
                       failed: list[FailedCell]) -> GenerationResponse:
    """The answer with ``failed_cells`` in its ``info``, so a client can place the cells made
    (the images skip the failed ones)."""
    try:
        info = json.loads(answer.info)
    except ValueError:
        info = {}
    info = info if isinstance(info, dict) else {}
    info["failed_cells"] = [cell.model_dump() for cell in failed]
    return answer.model_copy(update={"info": json.dumps(info)})


def _image_details(answer: GenerationResponse) -> list[dict[str, Any]]:
    """Per image of ``answer``: ``grid`` for a grid, else its own seed, size and steps (from
    ``info``), for the gallery."""
    try:
        info = json.loads(answer.info)
    except ValueError:
        info = {}
    info = info if isinstance(info, dict) else {}
    first = int(info.get("index_of_first_image") or 0)
    seeds = info.get("all_seeds") or []
    details: list[dict[str, Any]] = []
    for index in range(len(answer.images)):
        if index < first:
            details.append({"grid": True})
            continue
        detail: dict[str, Any] = {}
        if index - first < len(seeds):
            detail["seed"] = int(seeds[index - first])
        for field in ("width", "height", "steps"):
            if isinstance(info.get(field), int):
                detail[field] = info[field]
        details.append(detail)
    return details


def _parse_answer(task: str, raw: bytes) -> BaseModel:
    try:
        return parse_answer(task, raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ())) or "answer"
        raise UpstreamError(
            f"The model server's {task} answer does not match the invocation contract "
            f"({where}: {first.get('msg', 'invalid')}); is the endpoint's image current?"
        ) from None


def _model_name(info: str) -> str:
    """The model the server says it used (`sd_model_name` of the answer's info), for the
    gallery's model filter."""
    try:
        name = json.loads(info).get("sd_model_name")
    except (ValueError, AttributeError):
        return ""
    return str(name)[:256] if name else ""


def _closing_busy() -> Busy:
    return Busy("This portal task is shutting down (a restart or scale-in); retry in a few "
                "seconds.", retry_after=5)


def _generation_answer(answer: BaseModel) -> GenerationResponse:
    if not isinstance(answer, GenerationResponse):
        raise TypeError(f"expected a GenerationResponse, not {type(answer).__name__}")
    return answer


class Generation:
    def __init__(self, *, clients: Any, table: Table, bucket: Bucket, endpoints: Endpoints,
                 workers: int = 8, queue_limit: int = 32, per_user_limit: int = 4) -> None:
        self.clients = clients
        self.table = table
        self.bucket = bucket
        self.endpoints = endpoints
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="easel-gen")
        # the listings a plot is checked against, fetched apart so a slow one can be left behind
        self._lookups = ThreadPoolExecutor(max_workers=2, thread_name_prefix="easel-listing")
        # this portal task, as named on the jobs it runs, and those jobs (id -> what it is, for
        # the heartbeat and for shutdown), with their futures once submitted
        self.task_id = uuid.uuid4().hex
        self._running: dict[str, str] = {}
        self._futures: dict[str, Future[GenerationResponse | None]] = {}
        self._closing = False  # shutting down: no new job starts
        self.queue_limit = queue_limit
        self.per_user_limit = per_user_limit
        self._slots: dict[str, keys.Key] = {}  # job id -> the user slot it holds
        self._calls = 0  # synchronous calls outside the jobs (upscales) under way
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)  # notified as each job ends
        self._beating: threading.Thread | None = None
        self.workcap = WorkCap(self.listing)

    # --- talking to an endpoint

    def invoke(self, endpoint: str, task: str, request: BaseModel) -> BaseModel:
        """One real-time invocation `{"task", "payload"}`; the answer parsed by the task's
        response model."""
        body = invocation_body(task, request)
        try:
            answer = self.clients.runtime.invoke_endpoint(
                EndpointName=endpoint, ContentType="application/json",
                Accept="application/json", Body=body,
            )
        except ClientError as exc:
            raise _invoke_error(endpoint, exc) from None
        except ReadTimeoutError:
            raise _too_slow(endpoint) from None
        return _parse_answer(task, answer["Body"].read())

    def invoke_stream(self, endpoint: str, task: str, request: GenerationRequest,
                      on_step: Callable[[StepEvent], bool]) -> GenerationResponse | None:
        """A generation through the endpoint's response stream: `on_step` hears each step
        event and returns False to stop it (the stream is closed: the endpoint stops at its
        next step; None is returned). An endpoint whose image has no stream route is invoked
        the plain way (no progress)."""
        try:
            answer = self.clients.runtime.invoke_endpoint_with_response_stream(
                EndpointName=endpoint, ContentType="application/json",
                Accept=STREAM_CONTENT_TYPE, Body=invocation_body(task, request))
        except ClientError as exc:
            if _no_stream_route(exc):
                return _generation_answer(self.invoke(endpoint, task, request))
            raise _invoke_error(endpoint, exc) from None
        except ReadTimeoutError:
            raise _too_slow(endpoint) from None
        stream = answer["Body"]
        reader = EventReader()
        try:
            for part in stream:
                for event in reader.feed(part.get("PayloadPart", {}).get("Bytes", b"")):
                    if isinstance(event, StepEvent):
                        if not on_step(event):
                            return None
                    elif isinstance(event, ResultEvent):
                        return event.answer
                    elif isinstance(event, ErrorEvent):  # the status /invocations would give
                        raise server_error(event.status, event.detail, field=event.field)
            reader.close()
        except EventStreamError as exc:
            raise UpstreamError(f"Endpoint {endpoint!r}: the response stream broke "
                                f"({_model_error_message(exc)}); retry.") from None
        except StreamError as exc:
            raise UpstreamError(f"The model server's stream does not match the invocation "
                                f"contract ({exc}); is the endpoint's image current?") from None
        except (ReadTimeoutError, BotoCoreError, OSError):
            raise UpstreamError(f"Endpoint {endpoint!r} stopped sending progress for longer "
                                "than the portal waits; retry with fewer steps or a smaller "
                                "size.") from None
        finally:
            stream.close()
        raise UpstreamError("The model server's stream ended without a result; retry.")

    def listing(self, endpoint: str, task: str, *, checkpoint: str | None = None) -> BaseModel:
        """A listing task's answer (its registry response model); with ``checkpoint`` (read
        by ``samplers`` only), the samplers that checkpoint of the endpoint takes."""
        if task not in LISTING_TASKS:
            raise PortalError(f"task: one of {', '.join(LISTING_TASKS)}")
        try:  # an empty payload without one: what servers from before the field take
            request = ListingRequest(checkpoint=checkpoint) if checkpoint else ListingRequest()
        except ValidationError as exc:
            raise PortalError(describe_validation(list(exc.errors())), status_code=422) \
                from None
        return self.invoke(endpoint, task, request)

    def plot_listings(self, endpoint: str, plot: XYPlot,
                      checkpoint: str | None = None) -> dict[str, list[Any]]:
        """The endpoint's listings a plot's values are checked against (``samplers`` for a
        sampler axis, those of ``checkpoint``, the plotted request's, where it names one;
        ``loras`` for a LoRA weight axis), each only where it answers within
        ``LISTING_WAIT_SECONDS``: an endpoint out of service, slow or failing is not checked
        here (its server refuses a cell it cannot make, and the plot keeps the others)."""
        tasks = [_PLOT_LISTINGS[axis.type] for axis in (plot.x, plot.y)
                 if axis.type in _PLOT_LISTINGS]
        try:
            asked = {task: self._lookups.submit(
                self.listing, endpoint, task,
                checkpoint=checkpoint if task == "samplers" else None) for task in tasks}
        except RuntimeError:  # this task is shutting down: _start answers busy
            return {}
        deadline = time.monotonic() + LISTING_WAIT_SECONDS
        listings: dict[str, list[Any]] = {}
        for task, future in asked.items():
            try:
                listed = future.result(timeout=max(0.0, deadline - time.monotonic()))
            except FutureTimeout:
                future.cancel()  # still queued behind a slow one: not asked at all
                log.info("plot not checked against %s of %s: no answer within %g s", task,
                         endpoint, LISTING_WAIT_SECONDS)
                continue
            except (PortalError, BotoCoreError) as exc:
                log.info("plot not checked against %s of %s: %s", task, endpoint, exc)
                continue
            listings[task] = list(getattr(listed, "root", []))
        return listings

    def controlnet_models(self, endpoint: str) -> ControlNetModels:
        """The endpoint's ControlNets (`{"model_list": [...]}`). An endpoint running an image
        from before this listing task answers with an error, which means none are listed (a
        unit that names no model uses the endpoint's first)."""
        try:
            listed = self.listing(endpoint, "controlnet-models")
        except PortalError:
            return ControlNetModels(model_list=[])
        assert isinstance(listed, ControlNetModels)
        return listed

    def _invoke_async(self, endpoint: str, task: str, request: GenerationRequest,
                      job_id: str) -> GenerationResponse:
        key = f"async/in/{job_id}.json"
        self.bucket.write(key, invocation_body(task, request), content_type="application/json")
        try:
            answer = self.clients.runtime.invoke_endpoint_async(
                EndpointName=endpoint, InputLocation=f"{self.bucket.uri}/{key}",
                ContentType="application/json", Accept="application/json",
                # the endpoint's server was given this as its deadline (workcap, EndpointSpec)
                InvocationTimeoutSeconds=ASYNC_INVOCATION_TIMEOUT_MAX_S,
            )
        except ClientError as exc:
            raise UpstreamError(f"Endpoint {endpoint!r} failed: {_model_error_message(exc)}") \
                from None
        output = answer["OutputLocation"]
        failure = answer.get("FailureLocation")
        deadline = time.monotonic() + ASYNC_WAIT_SECONDS
        while time.monotonic() < deadline:
            for location, failed in ((output, False), (failure, True)):
                if not location:
                    continue
                try:
                    answer_uri = S3Uri.parse(location)
                except ValueError:
                    raise UpstreamError(f"The endpoint answered with a bad location {location!r}.")\
                        from None
                if answer_uri.bucket != self.bucket.name or not self.bucket.exists(answer_uri.key):
                    continue
                raw = self.bucket.read(answer_uri.key, max_bytes=512 * 1024 * 1024)
                if failed:
                    reason = raw[:500].decode(errors="replace")
                    raise UpstreamError(f"The model server failed: {reason}")
                return _generation_answer(_parse_answer(task, raw))
            time.sleep(3)
        raise UpstreamError("The async endpoint gave no answer within 30 minutes.")

    # --- jobs

    def submit(self, *, user: User, endpoint: str, task: str,
               request: GenerationRequest, plot: XYPlot | None = None) -> str:
        """Record a job and start it on a worker thread; the job id to poll. With ``plot``
        (an X/Y plot), one invocation a cell and a labelled grid, under this one job."""
        return self._start(user=user, endpoint=endpoint, task=task, request=request,
                           plot=plot)[0]

    def run_sync(self, *, user: User, endpoint: str, task: str, request: GenerationRequest,
                 timeout: float, plot: XYPlot | None = None) -> GenerationResponse:
        """Run a job and wait at most `timeout` seconds for the model server's answer; a job
        that failed raises its `PortalError` (a refusal by the server keeps its 4xx)."""
        job_id, future = self._start(user=user, endpoint=endpoint, task=task, request=request,
                                     plot=plot)
        try:
            answer = future.result(timeout=timeout)
        except FutureTimeout:
            if future.cancel():
                # it never left the queue and its caller is being told to go away: nobody would
                # collect it, so it does not run
                self._release(job_id)
                self._finish(job_id, {
                    "status": "failed", "finished": now(),
                    "error": "Cancelled: it waited in the portal's queue past the call's time "
                             "limit and never ran."})
                raise Busy(f"The portal's generation queue was too long to start this within "
                           f"{timeout:g} s; nothing ran. Retry shortly.", retry_after=10) \
                    from None
            mode = self.endpoints.record(endpoint).get("mode", "realtime")
            raise SyncTimeout(job_id, timeout, mode) from None
        if answer is None:  # an unexpected failure, recorded with its incident id
            state = self.job(job_id, user=user)
            raise PortalError(state["error"] or "The generation failed.", status_code=500)
        return answer

    def _start(self, *, user: User, endpoint: str, task: str, request: GenerationRequest,
               plot: XYPlot | None = None) -> tuple[str, Future[GenerationResponse | None]]:
        if task not in GENERATION_TASKS:
            raise PortalError(f"task: one of {', '.join(GENERATION_TASKS)}")
        record = self.endpoints.record(endpoint)
        checkpoint = request.override_settings.sd_model_checkpoint  # its samplers, if named
        cells = (plot_cells(request, plot, **self.plot_listings(endpoint, plot, checkpoint))
                 if plot is not None else None)
        if record.get("mode", "realtime") == "realtime":  # an async one has up to an hour
            for invocation in cells or [request]:  # refused before any job: what to lower
                self.workcap.check(endpoint, invocation)
        job_id = uuid.uuid4().hex
        with self._lock:
            if self._closing:
                raise _closing_busy()
            if len(self._running) + self._calls >= self.queue_limit:
                raise Busy("The portal's generation queue is full; retry in a few seconds.",
                           retry_after=5)
            self._running[job_id] = f"{task} on {endpoint} for {user.username}"
        try:
            self._slots[job_id] = self._claim_slot(user.username, job_id)
        except PortalError:
            self._release(job_id)
            raise
        self.table.put({
            **keys.generation_job_key(job_id).item(), "job_id": job_id, "owner": user.username,
            "endpoint": endpoint, "task": task, "status": "running", "created_at": iso_now(),
            "started": now(), "portal_task": self.task_id, "heartbeat": now(),
            **keys.running_generation_index(job_id), keys.TTL: int(now()) + JOB_TTL_SECONDS,
        })
        with self._lock:
            if self._beating is None:
                self._beating = threading.Thread(target=self._heartbeat_loop, daemon=True,
                                                 name="easel-gen-heartbeat")
                self._beating.start()
        self.endpoints.touch(endpoint)
        self.table.update(*keys.user_prefs_key(user.username), {"last_job": job_id},
                          must_exist=False)
        with self._lock:  # a shutdown that began meanwhile has shut the pool
            closing = self._closing
            if not closing:
                future = self.pool.submit(self._run, job_id, user.username, endpoint, task,
                                          request, record.get("mode", "realtime"), plot, cells)
                self._futures[job_id] = future
        if closing:
            self._release(job_id)
            self._finish(job_id, {"status": "failed", "finished": now(),
                                  "error": NEVER_RAN_REASON})
            raise _closing_busy()
        return job_id, future

    def shutdown(self, timeout: float) -> list[str]:
        """This portal task is stopping: start no new job and wait up to ``timeout`` seconds
        for the jobs it runs or holds in its queue, so their images are saved. A job still
        queued then is failed with the reason (it never ran); one still running is logged and
        returned (``"<job id> (<task> on <endpoint> for <user>)"``): it ends when the process
        does, and the next portal start fails it once its heartbeat is stale. Safe to call
        more than once."""
        with self._lock:
            self._closing = True
            self._idle.wait_for(lambda: not self._running, timeout=max(timeout, 0))
            queued = [job_id for job_id, future in self._futures.items() if future.cancel()]
        for job_id in queued:  # a cancelled future never runs _run, which would release it
            self._release(job_id)
            self._finish(job_id, {"status": "failed", "finished": now(),
                                  "error": NEVER_RAN_REASON})
        self.pool.shutdown(wait=False)
        self._lookups.shutdown(wait=False)
        with self._lock:
            left = [f"{job_id} ({label})" for job_id, label in self._running.items()]
        if left:
            log.warning("portal task stopping with %d generation jobs still running after "
                        "%g s (they are failed as stale by the next start): %s",
                        len(left), timeout, ", ".join(left))
        return left

    def _heartbeat_loop(self) -> None:
        while True:
            time.sleep(HEARTBEAT_SECONDS)
            with self._lock:
                if self._closing and not self._running:
                    return
            try:
                self.beat()
            except Exception as exc:  # noqa: BLE001 - the next beat tries again
                log.warning("generation heartbeat failed: %s", exc)

    def beat(self) -> None:
        """Renew the heartbeat of every job this portal task is running."""
        with self._lock:
            running = list(self._running)
        for job_id in running:
            self.table.update(*keys.generation_job_key(job_id), {"heartbeat": now()})
            slot = self._slots.get(job_id)
            if slot is not None:
                self.table.put(self._slot_item(slot, job_id), expect=("job_id", job_id))

    @staticmethod
    def _slot_item(slot: keys.Key, job_id: str, *, held: bool = True) -> dict[str, Any]:
        expires = now() + STALE_HEARTBEAT_SECONDS if held else 0
        return {**slot.item(), "job_id": job_id, "expires": expires}

    def _claim_slot(self, username: str, job_id: str) -> keys.Key:
        """One of the user's `per_user_limit` slots, shared by every portal task (a lease the
        holder's heartbeat renews, so a stopped task's slots free themselves), or 429."""
        for index in range(self.per_user_limit):
            slot = keys.generation_slot_key(username, index)
            if self.table.put(self._slot_item(slot, job_id), unless_live=("expires", now())):
                return slot
        raise PortalError(
            f"You already have {self.per_user_limit} generations waiting or running; wait for "
            "one to finish and retry.", status_code=429, retry_after=10)

    def _release(self, job_id: str) -> None:
        with self._lock:
            self._running.pop(job_id, None)
            self._futures.pop(job_id, None)
            self._idle.notify_all()
        slot = self._slots.pop(job_id, None)
        if slot is not None:
            self.table.put(self._slot_item(slot, job_id, held=False), expect=("job_id", job_id))

    def _finish(self, job_id: str, values: dict[str, Any]) -> None:
        """Record how a job ended; it leaves the index of running jobs."""
        self.table.update(*keys.generation_job_key(job_id), values,
                          remove=(keys.GSI_PK, keys.GSI_SK))

    def recover_stale_jobs(self) -> list[str]:
        """At start-up: fail the running jobs whose portal task stopped (its lease, the heartbeat
        that task renews, expired), with the reason; the ids failed. A job of a live task, this
        one or another, keeps running: each write is conditional on the heartbeat and status
        read, so a task that renews its lease or finishes meanwhile wins."""
        failed = []
        for listed in self.table.iter_index(keys.RUNNING_GENERATION_INDEX,
                                            attributes=(keys.PK, keys.SK)):
            record = self.table.get(listed[keys.PK], listed[keys.SK])
            if record and self._stale(record) \
                    and self._fail_if_stale(record).get("status") == "failed":
                failed.append(str(record["job_id"]))
        if failed:
            log.warning("failed %d generation jobs left running by a stopped portal task",
                        len(failed))
        return failed

    def _stale(self, record: dict[str, Any]) -> bool:
        if record.get("status") != "running":
            return False
        if "heartbeat" in record:
            return now() - float(record["heartbeat"]) > STALE_HEARTBEAT_SECONDS
        return now() - record.get("started", now()) > STALE_AFTER_SECONDS

    def _fail_if_stale(self, record: dict[str, Any]) -> dict[str, Any]:
        """A running job whose portal task stopped is failed, in the table, with the reason (a
        conditional write: a job whose heartbeat moved meanwhile is left alone)."""
        if not self._stale(record):
            return record
        failed = {key: value for key, value in record.items()
                  if key not in (keys.GSI_PK, keys.GSI_SK)}
        failed.update(status="failed", error=STALE_REASON, finished=now())
        expected: dict[str, Any] = {"status": "running"}
        if "heartbeat" in record:
            expected["heartbeat"] = record["heartbeat"]
        if not self.table.put(failed, expect=expected):
            return self.table.get(record[keys.PK], record[keys.SK]) or record
        return failed

    def _run(self, job_id: str, owner: str, endpoint: str, task: str,
             request: GenerationRequest, mode: str, plot: XYPlot | None = None,
             cells: list[GenerationRequest] | None = None) -> GenerationResponse | None:
        try:
            return self._run_job(job_id, owner, endpoint, task, request, mode, plot, cells)
        finally:
            self._release(job_id)

    def _run_job(self, job_id: str, owner: str, endpoint: str, task: str,
                 request: GenerationRequest, mode: str, plot: XYPlot | None = None,
                 cells: list[GenerationRequest] | None = None) -> GenerationResponse | None:
        try:
            stopped: Stop | None = None
            made = cells
            failed: dict[int, PortalError] = {}
            if mode == "async" and cells:
                answer, made, failed = self._run_async_cells(job_id, endpoint, task, request,
                                                             cells)
            elif mode == "async":
                answer = self._invoke_async(endpoint, task, request, job_id)
            else:
                answer, stopped, made, failed = self._run_streamed(job_id, endpoint, task,
                                                                   request, cells)
            if cells and len(failed) == len(cells):  # nothing made: the first reason
                first = failed[0]
                raise PortalError(f"Every cell of the plot failed; the first: {first.message}",
                                  status_code=first.status_code,
                                  retry_after=first.retry_after) from None
            marked = [failed_cell(plot, index, error.message)
                      for index, error in sorted(failed.items())] if plot is not None else []
            if not answer.images and stopped:
                what = "Interrupted" if stopped == "interrupt" else "Skipped"
                self._finish(job_id, {
                    "status": "interrupted", "finished": now(),
                    "error": f"{what} before any image was finished; nothing was saved."})
                return answer
            if marked:
                answer = _with_failed_cells(answer, marked)
            if plot is not None and len(made or []) + len(failed) == len(cells or []):
                # every cell made or failed (a failed one a marked tile); one skipped: no grid
                answer = with_plot_grid(answer, plot, failed=marked)
            elif plot is None and request.batch_size * request.n_iter > 1:
                answer = with_grid(answer)
            images = self.save_outputs(owner=owner, endpoint=endpoint, task=task,
                                       request=request, answer=answer, job_id=job_id,
                                       plot=plot, cells=made if plot is not None else None)
            self._finish(job_id, {
                "status": "done", "image_ids": images, "info": answer.info[:4000],
                "finished": now(), **({"stopped": stopped} if stopped else {}),
                **({"failed_cells": [cell.model_dump() for cell in marked]} if marked else {}),
            })
            self.endpoints.touch(endpoint)
            return answer
        except PortalError as exc:
            self._finish(job_id, {
                "status": "failed", "error": exc.message, "finished": now()})
            raise  # a synchronous caller answers with its status (run_sync)
        except Exception as exc:  # noqa: BLE001 - recorded for the user, logged for the operator
            incident = uuid.uuid4().hex[:12]
            log.error("generation job %s failed (incident %s)", job_id, incident, exc_info=exc)
            self._finish(job_id, {
                "status": "failed", "error": f"Unexpected failure (incident {incident}).",
                "finished": now(),
            })
        return None

    def _run_async_cells(self, job_id: str, endpoint: str, task: str,
                         request: GenerationRequest, cells: list[GenerationRequest],
                         ) -> tuple[GenerationResponse, list[GenerationRequest],
                                    dict[int, PortalError]]:
        """A plot's cells on an async endpoint, one after another; a cell that fails is noted
        (by its index) and the others go on. The answer of those made and their requests."""
        answers: list[GenerationResponse] = []
        made: list[GenerationRequest] = []
        failed: dict[int, PortalError] = {}
        for index, cell in enumerate(cells):
            try:
                answers.append(self._invoke_async(endpoint, task, cell, f"{job_id}-{index}"))
            except PortalError as exc:
                failed[index] = exc
                continue
            made.append(cell)
        return _merge_answers(request, answers) if answers else _no_images(request), made, \
            failed

    def _run_streamed(self, job_id: str, endpoint: str, task: str, request: GenerationRequest,
                      cells: list[GenerationRequest] | None = None,
                      ) -> tuple[GenerationResponse, Stop | None, list[GenerationRequest],
                                 dict[int, PortalError]]:
        """The job's batches (or a plot's ``cells``), each through the response stream with
        live progress; the answer of those finished, whether an interrupt or a skip stopped
        any, the requests that were answered and, of a plot, the cells that failed (by index:
        a plot's cell the server refuses or fails does not stop the others)."""
        parts = cells or _batch_requests(request)
        control = JobControl(self.table, job_id, batches=len(parts))
        answers: list[GenerationResponse] = []
        made: list[GenerationRequest] = []
        failed: dict[int, PortalError] = {}
        for batch, part in enumerate(parts):
            control.next_batch(batch)
            if not control.check():
                if control.stop == "interrupt":
                    break
                continue  # a skip asked for before this batch began skips it
            try:
                answer = self.invoke_stream(endpoint, task, part, control.on_step)
            except PortalError as exc:
                if cells is None:
                    raise
                failed[batch] = exc
                continue
            if answer is not None:
                answers.append(answer)
                made.append(part)
            elif control.stop == "interrupt":
                break
        stopped: Stop | None = ("interrupt" if control.interrupted
                                else "skip" if control.skipped else None)
        if not answers:
            return _no_images(request), stopped, made, failed
        return _merge_answers(request, answers), stopped, made, failed

    def request_stop(self, job_id: str, *, user: User, action: Stop) -> dict[str, Any]:
        """Ask the task running the job (whichever it is) to interrupt or skip: a flag in the
        job's record. Only its owner or an admin may; a finished job is left as it is."""
        record = self.table.get(*keys.generation_job_key(job_id)) if len(job_id) <= 64 else None
        if not record or (record["owner"] != user.username and not user.is_admin):
            raise NotFound("No such generation job.")
        if record.get("status") != "running":
            return {"job_id": job_id, "status": record.get("status"), "stopping": False}
        if self.endpoints.record(record["endpoint"]).get("mode") == "async":
            raise PortalError("This job runs on an asynchronous endpoint, which cannot stop a "
                              "request once queued; it ends on its own.", status_code=409)
        if action == "interrupt":
            self.table.update(*keys.generation_job_key(job_id), {"interrupt_requested": True})
        else:
            self.table.update(*keys.generation_job_key(job_id), {},
                              add={"skip_requested": 1})
        return {"job_id": job_id, "status": "running", "stopping": True}

    def job(self, job_id: str, *, user: User) -> dict[str, Any]:
        record = self.table.get(*keys.generation_job_key(job_id)) if len(job_id) <= 64 else None
        if not record or (record["owner"] != user.username and not user.is_admin):
            raise NotFound("No such generation job.")
        record = self._fail_if_stale(record)
        images = [self.image(image_id, user=user) for image_id in record.get("image_ids", [])]
        status, error = record["status"], record.get("error", "")
        return {
            "job_id": job_id, "status": status, "error": error,
            "endpoint": record["endpoint"], "task": record["task"],
            "elapsed": round((record.get("finished") or now()) - record.get("started", now()), 1),
            "images": images, "info": record.get("info", ""),
            "progress": record.get("progress") if status == "running" else None,
            "interrupted": bool(record.get("interrupt_requested")),
            "stopped": record.get("stopped"),
            "failed_cells": [FailedCell.model_validate(cell).model_dump()
                             for cell in record.get("failed_cells", [])],
        }

    def running_job(self, *, user: User) -> dict[str, Any] | None:
        """The user's latest job while it runs (for /sdapi/v1/progress)."""
        prefs = self.table.get(*keys.user_prefs_key(user.username)) or {}
        job_id = prefs.get("last_job")
        record = self.table.get(*keys.generation_job_key(job_id)) if job_id else None
        if record and self._fail_if_stale(record).get("status") == "running":
            return record
        return None

    def wait(self, job_id: str, *, user: User, timeout: float) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout
        while True:
            state = self.job(job_id, user=user)
            if state["status"] != "running":
                return state
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.2)

    # --- results

    def upscale(self, *, user: User, endpoint: str, request: ExtrasSingleImageRequest,
                source: dict[str, Any] | None = None) -> tuple[ExtrasSingleImageResponse, str]:
        """A1111's extras on ``endpoint`` (one real-time invocation); the upscaled image goes
        to ``user``'s gallery, under the prompt and model of ``source`` (the gallery image it
        was made from, if any). The answer and the new image's id."""
        self.endpoints.record(endpoint)
        with self._one_call(user):
            answer = self.invoke(endpoint, "extra-single-image", request)
        if not isinstance(answer, ExtrasSingleImageResponse):
            raise TypeError(f"expected an ExtrasSingleImageResponse, not {type(answer).__name__}")
        try:
            data = base64.b64decode(answer.image.split(",", 1)[-1], validate=False)
            width, height = Image.open(io.BytesIO(data)).size
        except (binascii.Error, ValueError, OSError):
            raise UpstreamError("The model server returned an image that is not a PNG.") \
                from None
        info = {"width": width, "height": height, "html_info": answer.html_info,
                "sd_model_name": (source or {}).get("model", "")}
        params = {"prompt": (source or {}).get("prompt", ""),
                  **({"source_image_id": source["image_id"]} if source else {})}
        saved = GenerationResponse(images=[answer.image], parameters=params,
                                   info=json.dumps(info))
        self.endpoints.touch(endpoint)
        ids = self.save_outputs(owner=user.username, endpoint=endpoint,
                                task="extra-single-image", request=request, answer=saved,
                                job_id=uuid.uuid4().hex, extra_params=params)
        return answer, ids[0]

    @contextmanager
    def _one_call(self, user: User) -> Iterator[None]:
        """A synchronous endpoint call outside the jobs (an upscale) counts in the portal's
        bounded queue and holds one of the user's slots while it runs, as a job does (the
        slot's lease outlasts SageMaker's 60 s real-time limit, so it needs no heartbeat)."""
        call_id = uuid.uuid4().hex
        with self._lock:
            if len(self._running) + self._calls >= self.queue_limit:
                raise Busy("The portal's generation queue is full; retry in a few seconds.",
                           retry_after=5)
            self._calls += 1
        slot = None
        try:
            slot = self._claim_slot(user.username, call_id)
            yield
        finally:
            if slot is not None:
                self.table.put(self._slot_item(slot, call_id, held=False),
                               expect=("job_id", call_id))
            with self._lock:
                self._calls -= 1

    def save_outputs(self, *, owner: str, endpoint: str, task: str, request: BaseModel,
                     answer: GenerationResponse, job_id: str, plot: XYPlot | None = None,
                     cells: list[GenerationRequest] | None = None,
                     extra_params: dict[str, Any] | None = None) -> list[str]:
        """Each image to the bucket and the gallery. A plot's cells (``cells``: the request of
        each image after a grid) keep their own settings; its grid keeps the plot's.
        ``extra_params`` are kept with every image (an upscale's source prompt and image)."""
        images = answer.images
        if not images:
            raise UpstreamError("The model server returned no images.")
        base = {**_strip_large(request.model_dump(mode="json", exclude_unset=True)),
                **(extra_params or {})}
        day = time.strftime("%Y-%m-%d", time.gmtime())
        model = _model_name(answer.info)
        details = _image_details(answer)
        first = len(images) - len(cells) if cells else 0
        ids = []
        for index, encoded in enumerate(images):
            params = base
            if plot is not None and index < first:
                params = {**base, "xy_plot": plot.model_dump(mode="json")}
            elif cells:
                cell = cells[index - first]
                params = _strip_large(cell.model_dump(mode="json", exclude_unset=True))
                details[index]["steps"] = cell.steps
            try:
                data = base64.b64decode(encoded.split(",", 1)[-1], validate=False)
            except (binascii.Error, ValueError):
                raise UpstreamError("The model server returned an image that is not base64.") \
                    from None
            image_id = uuid.uuid4().hex
            key = f"outputs/{owner}/{day}/{image_id}.png"
            meta_key = f"outputs/{owner}/{day}/{image_id}.json"
            content_type = "image/png" if data.startswith(PNG_MAGIC) else "image/jpeg"
            self.bucket.write(key, data, content_type=content_type)
            document = {"task": task, "endpoint": endpoint, "request": params,
                        "parameters": answer.parameters, "info": answer.info,
                        "index": index, "job_id": job_id, "created_at": iso_now()}
            self.bucket.write(meta_key, json.dumps(document, indent=1).encode(),
                              content_type="application/json")
            created = iso_now()
            self.table.put({
                **keys.image_key(image_id).item(), **keys.image_index(created, image_id),
                "image_id": image_id, "owner": owner,
                "key": key, "params_key": meta_key, "endpoint": endpoint, "task": task,
                "prompt": str(params.get("prompt", ""))[:2000], "model": model,
                "params": json.dumps(params)[:30000], "created_at": created, "job_id": job_id,
                **details[index],
            })
            self.table.put(keys.owner_image_item(owner, created, image_id))
            ids.append(image_id)
        return ids

    def image(self, image_id: str, *, user: User) -> dict[str, Any]:
        record = self.table.get(*keys.image_key(image_id)) if len(image_id) <= 64 else None
        if not record or (record["owner"] != user.username and not user.is_admin):
            raise NotFound("No such image.")
        return self.present(record)

    def present(self, record: dict[str, Any]) -> dict[str, Any]:
        params = json.loads(record.get("params") or "{}")
        return {
            "image_id": record["image_id"], "owner": record["owner"], "prompt": record["prompt"],
            "endpoint": record["endpoint"], "task": record["task"],
            "created_at": record["created_at"], "url": self.bucket.url(record["key"]),
            "download_url": self.bucket.url(record["key"], download_name=download_name(
                prompt=record["prompt"], created_at=record["created_at"], params=params)),
            "params": params,
            "grid": bool(record.get("grid")),
            **{field: int(record[field]) for field in ("seed", "width", "height", "steps")
               if field in record},
        }

    def delete_image(self, image_id: str, *, user: User) -> None:
        record = self.table.get(*keys.image_key(image_id)) if len(image_id) <= 64 else None
        if not record or (record["owner"] != user.username and not user.is_admin):
            raise NotFound("No such image.")
        self.clients.s3.delete_object(Bucket=self.bucket.name, Key=record["key"])
        self.clients.s3.delete_object(Bucket=self.bucket.name, Key=record["params_key"])
        self.table.delete(*keys.image_key(image_id))
        self.table.delete(*keys.owner_image_key(record["owner"], record["created_at"], image_id))
