"""The SageMaker-runtime operations: InvokeEndpoint, InvokeEndpointWithResponseStream and
InvokeEndpointAsync."""

from __future__ import annotations

import http.client
import json
import logging
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from local.sagemaker import s3io
from local.sagemaker.arns import ArnFactory
from local.sagemaker.endpoints import EndpointManager, ServingProcess
from local.sagemaker.errors import AwsError, ModelError, RuntimeValidationError
from local.sagemaker.records import RecordStore
from local.settings import StandInSettings

log = logging.getLogger(__name__)

_FORWARDED_HEADERS = {
    "X-Amzn-SageMaker-Custom-Attributes",
    "X-Amzn-SageMaker-Inference-Id",
    "X-Amzn-SageMaker-Target-Model",
}


@dataclass
class ModelResponse:
    status: int
    body: bytes
    content_type: str
    headers: dict[str, str] = field(default_factory=dict)


class StreamBroken(Exception):
    """The model's stream ended before its last chunk (the server died or closed)."""


@dataclass
class ModelStream:
    """An open response stream from an inference server: its parts as they arrive."""

    variant: str
    content_type: str
    connection: http.client.HTTPConnection
    response: http.client.HTTPResponse

    def parts(self) -> Iterator[bytes]:
        """The body's bytes as the server sends them; ``StreamBroken`` when it stops early."""
        while True:
            try:
                part = self.response.read1(64 * 1024)
            except (OSError, http.client.HTTPException, ValueError) as exc:
                raise StreamBroken(f"the model's stream broke: {type(exc).__name__}") from exc
            if not part:
                return
            yield part

    def close(self) -> None:
        """Leave: the server sees its client close the stream."""
        self.connection.close()


class RuntimeService:
    """Forwards invocations to the endpoints' inference-server processes."""

    def __init__(
        self,
        *,
        records: RecordStore,
        endpoints: EndpointManager,
        s3: Any,
        settings: StandInSettings,
        arns: ArnFactory,
        cloudwatch: Any | None = None,
    ) -> None:
        self._records = records
        self._endpoints = endpoints
        self._s3 = s3
        self._cloudwatch = cloudwatch
        self._settings = settings
        self._arns = arns
        self._pools: dict[str, ThreadPoolExecutor] = {}
        self._lock = threading.Lock()

    @property
    def max_body_bytes(self) -> int:
        return self._settings.max_invoke_body_bytes

    # --- shared

    def _serving(self, name: str) -> tuple[dict[str, Any], ServingProcess]:
        record = self._records.get("endpoint", name)
        if record is None:
            raise RuntimeValidationError(
                f"Endpoint {name} of account {self._arns.account_id} not found."
            )
        serving = self._endpoints.serving(name)
        if serving is None and self._endpoints.is_restarting(name):
            # SageMaker's InvokeEndpoint answers ServiceUnavailable (503) while no healthy
            # instance can take the call.
            raise AwsError(
                f"Endpoint {name}: its inference server stopped and is being replaced; "
                "try again in a moment.", code="ServiceUnavailable", status=503)
        if serving is None or record.get("EndpointStatus") not in ("InService", "Updating"):
            raise RuntimeValidationError(
                f"Endpoint {name} of account {self._arns.account_id} is in status "
                f"{record.get('EndpointStatus')}; it can be invoked once it is InService."
            )
        return record, serving

    def _call_model(
        self,
        serving: ServingProcess,
        body: bytes,
        *,
        headers: dict[str, str],
        timeout: float,
        endpoint_name: str,
    ) -> ModelResponse:
        connection = http.client.HTTPConnection("127.0.0.1", serving.port, timeout=timeout)
        try:
            connection.request("POST", "/invocations", body=body, headers=headers)
            response = connection.getresponse()
            data = response.read()
        except TimeoutError as exc:
            raise ModelError(
                original_status=408,
                original_message="Your invocation timed out while waiting for a response from "
                f"container primary (limit {timeout:g} seconds).",
                log_stream_arn=self._arns.log_stream_arn(endpoint_name),
            ) from exc
        except OSError as exc:
            raise ModelError(
                original_status=502,
                original_message=f"The inference server did not answer: {exc}",
                log_stream_arn=self._arns.log_stream_arn(endpoint_name),
            ) from exc
        finally:
            connection.close()
        return ModelResponse(
            status=response.status,
            body=data,
            content_type=response.getheader("Content-Type", "application/octet-stream"),
            headers={
                k: v
                for k, v in response.getheaders()
                if k.lower() == "x-amzn-sagemaker-custom-attributes"
            },
        )

    def _count_invocation(self, name: str, variant: str) -> None:
        """Publish the Invocations metric like SageMaker (idle reapers and scaling read it)."""
        if self._cloudwatch is None:
            return
        try:
            self._cloudwatch.put_metric_data(
                Namespace="AWS/SageMaker",
                MetricData=[
                    {
                        "MetricName": "Invocations",
                        "Dimensions": [
                            {"Name": "EndpointName", "Value": name},
                            {"Name": "VariantName", "Value": variant},
                        ],
                        "Value": 1.0,
                        "Unit": "None",
                    }
                ],
            )
        except Exception:  # noqa: BLE001 - a metric must never fail an invocation
            log.warning("could not publish the Invocations metric of %s", name, exc_info=True)

    # --- InvokeEndpoint

    def invoke(
        self, name: str, body: bytes, request_headers: dict[str, str]
    ) -> tuple[ModelResponse, str]:
        """Forward one real-time request; the response and the variant that answered."""
        if len(body) > self._settings.max_invoke_body_bytes:
            raise RuntimeValidationError(
                f"The request body is {len(body)} bytes; the limit for InvokeEndpoint is "
                f"{self._settings.max_invoke_body_bytes} bytes. Use InvokeEndpointAsync for "
                "larger payloads."
            )
        _, serving = self._serving(name)
        self._count_invocation(name, serving.variant_name)
        headers = _model_headers(request_headers, accept_from="Accept")
        response = self._call_model(
            serving,
            body,
            headers=headers,
            timeout=self._settings.invoke_timeout_s,
            endpoint_name=name,
        )
        if not 200 <= response.status < 300:
            raise ModelError(
                original_status=response.status,
                original_message=response.body.decode("utf-8", errors="replace")[:4000],
                log_stream_arn=self._arns.log_stream_arn(name),
            )
        if len(response.body) > self._settings.max_invoke_body_bytes:
            raise ModelError(
                original_status=413,
                original_message=f"The response is {len(response.body)} bytes; the limit for "
                f"InvokeEndpoint is {self._settings.max_invoke_body_bytes} bytes.",
                log_stream_arn=self._arns.log_stream_arn(name),
            )
        return response, serving.variant_name

    # --- InvokeEndpointWithResponseStream

    def invoke_stream(
        self, name: str, body: bytes, request_headers: dict[str, str]
    ) -> ModelStream:
        """Open the model's response stream (``POST /invocations-response-stream`` on the
        container). An error status from the model before it streams is a ``ModelError``, as
        for InvokeEndpoint; the caller reads the parts and closes the stream."""
        if len(body) > self._settings.max_invoke_body_bytes:
            raise RuntimeValidationError(
                f"The request body is {len(body)} bytes; the limit for "
                f"InvokeEndpointWithResponseStream is {self._settings.max_invoke_body_bytes} "
                "bytes.")
        _, serving = self._serving(name)
        self._count_invocation(name, serving.variant_name)
        headers = _model_headers(request_headers, accept_from="X-Amzn-SageMaker-Accept")
        # the first byte and each later part must come within the invocation timeout
        connection = http.client.HTTPConnection(
            "127.0.0.1", serving.port, timeout=self._settings.invoke_timeout_s)
        try:
            connection.request("POST", "/invocations-response-stream", body=body,
                               headers=headers)
            response = connection.getresponse()
            if not 200 <= response.status < 300:
                message = response.read().decode("utf-8", errors="replace")[:4000]
                raise ModelError(original_status=response.status, original_message=message,
                                 log_stream_arn=self._arns.log_stream_arn(name))
        except TimeoutError as exc:
            connection.close()
            raise ModelError(
                original_status=408,
                original_message="Your invocation timed out while waiting for a response from "
                f"container primary (limit {self._settings.invoke_timeout_s:g} seconds).",
                log_stream_arn=self._arns.log_stream_arn(name),
            ) from exc
        except OSError as exc:
            connection.close()
            raise ModelError(
                original_status=502,
                original_message=f"The inference server did not answer: {exc}",
                log_stream_arn=self._arns.log_stream_arn(name),
            ) from exc
        except BaseException:
            connection.close()
            raise
        return ModelStream(
            variant=serving.variant_name,
            content_type=response.getheader("Content-Type", "application/octet-stream"),
            connection=connection, response=response)

    # --- InvokeEndpointAsync

    def invoke_async(self, name: str, request_headers: dict[str, str]) -> dict[str, str]:
        """Queue a request whose input is in S3; returns the id and the output locations."""
        record, _ = self._serving(name)
        config = ((record.get("_deployed") or {}).get("config")) or {}
        async_config = config.get("AsyncInferenceConfig")
        if not async_config:
            raise RuntimeValidationError(
                f"Endpoint {name} is not configured for asynchronous inference "
                "(its endpoint config has no AsyncInferenceConfig)."
            )
        input_location = request_headers.get("X-Amzn-SageMaker-InputLocation")
        if not input_location:
            raise RuntimeValidationError("InputLocation is required.")
        try:
            s3io.parse_s3_uri(input_location, field="InputLocation")
        except s3io.S3DataError as exc:
            raise RuntimeValidationError(str(exc)) from exc
        output = async_config.get("OutputConfig") or {}
        inference_id = request_headers.get("X-Amzn-SageMaker-Inference-Id") or str(uuid.uuid4())
        output_base = output.get("S3OutputPath") or output["S3FailurePath"]
        extension = request_headers.get("X-Amzn-SageMaker-S3OutputPathExtension") or ""
        filename = request_headers.get("X-Amzn-SageMaker-Filename") or f"{uuid.uuid4()}.out"
        output_location = s3io.join_s3(output_base, extension, filename)
        failure_base = output.get("S3FailurePath") or output_base
        failure_location = s3io.join_s3(
            failure_base, extension, filename.removesuffix(".out") + "-error.out"
        )
        timeout = float(
            request_headers.get("X-Amzn-SageMaker-InvocationTimeoutSeconds")
            or self._settings.async_invoke_timeout_s
        )
        headers = {
            "Content-Type": request_headers.get("X-Amzn-SageMaker-Content-Type")
            or "application/json",
            "Accept": request_headers.get("X-Amzn-SageMaker-Accept") or "*/*",
            "X-Amzn-SageMaker-Inference-Id": inference_id,
        }
        if request_headers.get("X-Amzn-SageMaker-Custom-Attributes"):
            headers["X-Amzn-SageMaker-Custom-Attributes"] = request_headers[
                "X-Amzn-SageMaker-Custom-Attributes"
            ]
        workers = int(
            (async_config.get("ClientConfig") or {}).get("MaxConcurrentInvocationsPerInstance") or 1
        )
        with self._lock:
            pool = self._pools.get(name)
            if pool is None:
                pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"async-{name}")
                self._pools[name] = pool
        pool.submit(
            self._run_async,
            name,
            input_location,
            output_location,
            failure_location,
            headers,
            timeout,
        )
        return {
            "InferenceId": inference_id,
            "OutputLocation": output_location,
            "FailureLocation": failure_location,
        }

    def _run_async(
        self,
        name: str,
        input_location: str,
        output_location: str,
        failure_location: str,
        headers: dict[str, str],
        timeout: float,
    ) -> None:
        try:
            bucket, key = s3io.parse_s3_uri(input_location, field="InputLocation")
            try:
                body = self._s3.get_object(Bucket=bucket, Key=key)["Body"].read()
            except Exception as exc:  # noqa: BLE001 - reported in the failure file
                raise _AsyncFailure(
                    400, f"Could not read the input {input_location}: {exc}"
                ) from exc
            try:
                _, serving = self._serving(name)
            except RuntimeValidationError as exc:
                raise _AsyncFailure(503, exc.message) from exc
            self._count_invocation(name, serving.variant_name)
            try:
                response = self._call_model(
                    serving, body, headers=headers, timeout=timeout, endpoint_name=name
                )
            except ModelError as exc:
                raise _AsyncFailure(exc.original_status, exc.original_message) from exc
            if not 200 <= response.status < 300:
                raise _AsyncFailure(
                    response.status, response.body.decode("utf-8", errors="replace")[:4000]
                )
            out_bucket, out_key = s3io.parse_s3_uri(output_location, field="S3OutputPath")
            self._s3.put_object(
                Bucket=out_bucket,
                Key=out_key,
                Body=response.body,
                ContentType=response.content_type,
            )
        except _AsyncFailure as failure:
            self._write_failure(failure_location, failure.status, failure.message)
        except Exception as exc:  # noqa: BLE001 - a background task must record, not raise
            log.exception("async invocation on %s failed", name)
            self._write_failure(failure_location, 500, f"Internal error: {exc}")

    def _write_failure(self, failure_location: str, status: int, message: str) -> None:
        try:
            bucket, key = s3io.parse_s3_uri(failure_location, field="S3FailurePath")
            body = json.dumps({"OriginalStatusCode": status, "OriginalMessage": message})
            self._s3.put_object(
                Bucket=bucket, Key=key, Body=body.encode(), ContentType="application/json"
            )
        except Exception:  # noqa: BLE001
            log.exception("could not write the async failure to %s", failure_location)

    def cancel_queued(self) -> None:
        """Drop async requests that have not started (running ones finish or fail)."""
        with self._lock:
            pools = list(self._pools.values())
        for pool in pools:
            pool.shutdown(wait=False, cancel_futures=True)

    def shutdown(self) -> None:
        """Wait for the async requests in flight (call after the endpoints are stopped)."""
        with self._lock:
            pools = list(self._pools.values())
            self._pools.clear()
        for pool in pools:
            pool.shutdown(wait=True, cancel_futures=True)


class _AsyncFailure(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _model_headers(request_headers: dict[str, str], *, accept_from: str) -> dict[str, str]:
    """The headers the model container gets: the caller's content type, its accepted type (read
    from ``accept_from``: InvokeEndpoint's ``Accept``, the stream's
    ``X-Amzn-SageMaker-Accept``) and the SageMaker headers passed on as they are."""
    headers = {
        "Content-Type": request_headers.get("Content-Type") or "application/json",
        "Accept": request_headers.get(accept_from) or "*/*",
    }
    for header in _FORWARDED_HEADERS:
        if request_headers.get(header):
            headers[header] = request_headers[header]
    return headers
