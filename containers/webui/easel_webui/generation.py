"""Generating images on an endpoint: submit, run in the background, poll; store results.

Work longer than a few seconds never holds a browser request (CloudFront ends requests after
60 s): `submit` records a job in the table and runs it on a worker thread; any portal task answers
`job()` from the table. Results land in `outputs/<user>/<day>/<id>.png` with `<id>.json` (the
parameters), and one table record per image feeds the gallery.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from botocore.exceptions import ClientError, ReadTimeoutError
from pydantic import BaseModel, ValidationError

from easel_contracts import table as keys
from easel_contracts.invocations import (
    GENERATION_TASKS,
    LISTING_TASKS,
    ControlNetModels,
    GenerationRequest,
    GenerationResponse,
    ListingRequest,
    invocation_body,
    parse_answer,
)
from easel_contracts.s3uri import S3Uri
from easel_webui.auth import User
from easel_webui.downloads import download_name
from easel_webui.endpoints import Endpoints
from easel_webui.errors import NotFound, PortalError, UpstreamError
from easel_webui.storage import Bucket
from easel_webui.store import Table, iso_now, now, owned_records

log = logging.getLogger("easel_webui.generation")
JOB_TTL_SECONDS = 7 * 24 * 3600
ASYNC_WAIT_SECONDS = 30 * 60
# A job still "running" this long after it started lost its worker (the task stopped).
STALE_AFTER_SECONDS = ASYNC_WAIT_SECONDS + 5 * 60
_LARGE_FIELDS = ("init_images", "mask")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class SyncTimeout(PortalError):
    """A synchronous call ran out of time; the job goes on and can be polled."""

    status_code = 504

    def __init__(self, job_id: str, timeout: float) -> None:
        super().__init__(
            f"The endpoint did not answer within {timeout:g} s. The generation goes on: poll "
            f"GET /api/v1/jobs/{job_id} (its images are saved to your gallery), or use an "
            "async endpoint / the portal's Generate page for long work."
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


def _model_error_message(exc: ClientError) -> str:
    error = exc.response.get("Error", {})
    original = exc.response.get("OriginalMessage") or error.get("Message", "")
    try:
        parsed = json.loads(original)
        if isinstance(parsed, dict):
            original = parsed.get("detail") or parsed.get("error") or original
    except (TypeError, ValueError):
        pass
    return str(original)[:1000]


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


def _generation_answer(answer: BaseModel) -> GenerationResponse:
    if not isinstance(answer, GenerationResponse):
        raise TypeError(f"expected a GenerationResponse, not {type(answer).__name__}")
    return answer


class Generation:
    def __init__(self, *, clients: Any, table: Table, bucket: Bucket, endpoints: Endpoints,
                 workers: int = 8) -> None:
        self.clients = clients
        self.table = table
        self.bucket = bucket
        self.endpoints = endpoints
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="easel-gen")

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
            code = exc.response.get("Error", {}).get("Code", "")
            if code == "ModelError":
                raise UpstreamError(f"The model server refused: {_model_error_message(exc)}") \
                    from None
            if code in ("ValidationError", "ValidationException"):
                raise UpstreamError(
                    f"Endpoint {endpoint!r} is not ready: {_model_error_message(exc)}"
                ) from None
            raise UpstreamError(f"Endpoint {endpoint!r} failed: {_model_error_message(exc)}") \
                from None
        except ReadTimeoutError:
            raise UpstreamError(
                f"Endpoint {endpoint!r} took longer than SageMaker's 60 s real-time limit; "
                "use fewer steps or a smaller size, or deploy an async endpoint."
            ) from None
        return _parse_answer(task, answer["Body"].read())

    def listing(self, endpoint: str, task: str) -> BaseModel:
        """A listing task's answer (its registry response model)."""
        if task not in LISTING_TASKS:
            raise PortalError(f"task: one of {', '.join(LISTING_TASKS)}")
        return self.invoke(endpoint, task, ListingRequest())

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
                InvocationTimeoutSeconds=3600,
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
               request: GenerationRequest) -> str:
        """Record a job and start it on a worker thread; the job id to poll."""
        return self._start(user=user, endpoint=endpoint, task=task, request=request)[0]

    def run_sync(self, *, user: User, endpoint: str, task: str, request: GenerationRequest,
                 timeout: float) -> GenerationResponse:
        """Run a job and wait at most `timeout` seconds for the model server's answer."""
        job_id, future = self._start(user=user, endpoint=endpoint, task=task, request=request)
        try:
            answer = future.result(timeout=timeout)
        except FutureTimeout:
            raise SyncTimeout(job_id, timeout) from None
        if answer is None:
            state = self.job(job_id, user=user)
            raise UpstreamError(state["error"] or "The generation failed.")
        return answer

    def _start(self, *, user: User, endpoint: str, task: str, request: GenerationRequest,
               ) -> tuple[str, Future[GenerationResponse | None]]:
        if task not in GENERATION_TASKS:
            raise PortalError(f"task: one of {', '.join(GENERATION_TASKS)}")
        record = self.endpoints.record(endpoint)
        job_id = uuid.uuid4().hex
        self.table.put({
            **keys.generation_job_key(job_id).item(), "job_id": job_id, "owner": user.username,
            "endpoint": endpoint, "task": task, "status": "running", "created_at": iso_now(),
            "started": now(), keys.TTL: int(now()) + JOB_TTL_SECONDS,
        })
        self.endpoints.touch(endpoint)
        self.table.update(*keys.user_prefs_key(user.username), {"last_job": job_id},
                          must_exist=False)
        future = self.pool.submit(self._run, job_id, user.username, endpoint, task, request,
                                  record.get("mode", "realtime"))
        return job_id, future

    def _run(self, job_id: str, owner: str, endpoint: str, task: str,
             request: GenerationRequest, mode: str) -> GenerationResponse | None:
        try:
            if mode == "async":
                answer = self._invoke_async(endpoint, task, request, job_id)
            else:
                answer = _generation_answer(self.invoke(endpoint, task, request))
            images = self.save_outputs(owner=owner, endpoint=endpoint, task=task,
                                       request=request, answer=answer, job_id=job_id)
            self.table.update(*keys.generation_job_key(job_id), {
                "status": "done", "image_ids": images, "info": answer.info[:4000],
                "finished": now(),
            })
            self.endpoints.touch(endpoint)
            return answer
        except PortalError as exc:
            self.table.update(*keys.generation_job_key(job_id), {
                "status": "failed", "error": exc.message, "finished": now()})
            return None
        except Exception as exc:  # noqa: BLE001 - recorded for the user, logged for the operator
            incident = uuid.uuid4().hex[:12]
            log.error("generation job %s failed (incident %s)", job_id, incident, exc_info=exc)
            self.table.update(*keys.generation_job_key(job_id), {
                "status": "failed", "error": f"Unexpected failure (incident {incident}).",
                "finished": now(),
            })
        return None

    def job(self, job_id: str, *, user: User) -> dict[str, Any]:
        record = self.table.get(*keys.generation_job_key(job_id)) if len(job_id) <= 64 else None
        if not record or (record["owner"] != user.username and not user.is_admin):
            raise NotFound("No such generation job.")
        images = [self.image(image_id, user=user) for image_id in record.get("image_ids", [])]
        status, error = record["status"], record.get("error", "")
        if status == "running" and now() - record.get("started", now()) > STALE_AFTER_SECONDS:
            status, error = "failed", "The portal task running this job stopped; submit it again."
        return {
            "job_id": job_id, "status": status, "error": error,
            "endpoint": record["endpoint"], "task": record["task"],
            "elapsed": round((record.get("finished") or now()) - record.get("started", now()), 1),
            "images": images, "info": record.get("info", ""),
        }

    def running_job(self, *, user: User) -> dict[str, Any] | None:
        """The user's latest job while it runs (for /sdapi/v1/progress)."""
        prefs = self.table.get(*keys.user_prefs_key(user.username)) or {}
        job_id = prefs.get("last_job")
        record = self.table.get(*keys.generation_job_key(job_id)) if job_id else None
        if record and record.get("status") == "running":
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

    def save_outputs(self, *, owner: str, endpoint: str, task: str, request: GenerationRequest,
                     answer: GenerationResponse, job_id: str) -> list[str]:
        images = answer.images
        if not images:
            raise UpstreamError("The model server returned no images.")
        params = _strip_large(request.model_dump(mode="json", exclude_unset=True))
        day = time.strftime("%Y-%m-%d", time.gmtime())
        ids = []
        for index, encoded in enumerate(images):
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
                "prompt": str(params.get("prompt", ""))[:2000],
                "params": json.dumps(params)[:30000], "created_at": created, "job_id": job_id,
            })
            self.table.put(keys.owner_image_item(owner, created, image_id))
            ids.append(image_id)
        return ids

    def image(self, image_id: str, *, user: User) -> dict[str, Any]:
        record = self.table.get(*keys.image_key(image_id)) if len(image_id) <= 64 else None
        if not record or (record["owner"] != user.username and not user.is_admin):
            raise NotFound("No such image.")
        return self._present(record)

    def _present(self, record: dict[str, Any]) -> dict[str, Any]:
        params = json.loads(record.get("params") or "{}")
        return {
            "image_id": record["image_id"], "owner": record["owner"], "prompt": record["prompt"],
            "endpoint": record["endpoint"], "task": record["task"],
            "created_at": record["created_at"], "url": self.bucket.url(record["key"]),
            "download_url": self.bucket.url(record["key"], download_name=download_name(
                prompt=record["prompt"], created_at=record["created_at"], params=params)),
            "params": params,
        }

    def gallery(self, *, user: User, limit: int = 60) -> list[dict[str, Any]]:
        """The newest images: everyone's for an admin, else the user's own."""
        if user.is_admin:
            records = self.table.query_index(keys.IMAGES_INDEX, newest_first=True, limit=limit)
        else:
            records = owned_records(self.table, user.username, keys.OWNER_IMAGE, limit=limit)
        return [self._present(r) for r in records]

    def delete_image(self, image_id: str, *, user: User) -> None:
        record = self.table.get(*keys.image_key(image_id)) if len(image_id) <= 64 else None
        if not record or (record["owner"] != user.username and not user.is_admin):
            raise NotFound("No such image.")
        self.clients.s3.delete_object(Bucket=self.bucket.name, Key=record["key"])
        self.clients.s3.delete_object(Bucket=self.bucket.name, Key=record["params_key"])
        self.table.delete(*keys.image_key(image_id))
        self.table.delete(*keys.owner_image_key(record["owner"], record["created_at"], image_id))
