"""The stand-in's HTTP front: AWS JSON 1.1 for SageMaker, REST-JSON for sagemaker-runtime."""

from __future__ import annotations

import json
import logging
import select
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

from local.sagemaker import eventstream
from local.sagemaker.control import SageMakerControlPlane
from local.sagemaker.errors import AwsError, InternalFailure, RuntimeValidationError
from local.sagemaker.runtime_api import ModelStream, RuntimeService, StreamBroken

log = logging.getLogger(__name__)

JSON_CONTENT_TYPE = "application/x-amz-json-1.1"
TARGET_PREFIX = "SageMaker."
# Never read more than this from a request body, whatever it claims (async bodies are tiny).
_HARD_BODY_LIMIT = 64 * 1024 * 1024


class StandInHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "EaselLocalSageMaker/1"
    server: StandInServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("%s - %s", self.address_string(), format % args)

    # --- plumbing

    def _read_body(self, *, limit: int) -> bytes | None:
        """The request body, or None when it is larger than ``limit`` (connection closes)."""
        length = int(self.headers.get("Content-Length") or 0)
        if length > limit:
            self.close_connection = True
            return None
        return self.rfile.read(length) if length else b""

    def _send(
        self, status: int, body: bytes, *, content_type: str, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("x-amzn-RequestId", self.server.request_id())
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_json(self, status: int, data: dict[str, Any], **kwargs: Any) -> None:
        body = json.dumps(data, default=str).encode()
        self._send(
            status, body, content_type=kwargs.pop("content_type", JSON_CONTENT_TYPE), **kwargs
        )

    def _send_error(self, error: AwsError, *, rest: bool) -> None:
        self._send_json(
            error.status,
            error.body(),
            content_type="application/json" if rest else JSON_CONTENT_TYPE,
            headers={"x-amzn-ErrorType": error.code},
        )

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _client_left(self) -> bool:
        """The client closed its side (a closed stream reads as end-of-file)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def _send_stream(self, stream: ModelStream) -> None:
        """The model's parts as ``PayloadPart`` events, chunked, as SageMaker sends them. A
        client that leaves closes the model's stream too (the model stops its work); a model
        stream that breaks ends with a ``ModelStreamError`` event."""
        try:
            self.send_response(200)
            self.send_header("Content-Type", eventstream.CONTENT_TYPE)
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("x-amzn-RequestId", self.server.request_id())
            self.send_header("x-Amzn-Invoked-Production-Variant", stream.variant)
            self.send_header("X-Amzn-SageMaker-Content-Type", stream.content_type)
            self.end_headers()
            try:
                for part in stream.parts():
                    if self._client_left():
                        raise BrokenPipeError("the client closed the stream")
                    self._chunk(eventstream.payload_part(part))
            except StreamBroken as exc:
                self._chunk(eventstream.stream_exception("ModelStreamError", str(exc),
                                                         error_code="StreamBroken"))
            self._chunk(b"")
        finally:
            stream.close()

    # --- routes

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        if self.path == "/_easel/health":
            self._send_json(200, {"status": "ok"}, content_type="application/json")
        else:
            self._send_error(RuntimeValidationError("Not found.", status=404), rest=True)

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        path = self.path.split("?", 1)[0]
        try:
            if path.startswith("/endpoints/"):
                self._runtime(path)
            else:
                self._control()
        except (BrokenPipeError, ConnectionResetError):
            # the client left (its own timeout, a closed page): nobody to answer
            self.close_connection = True
            log.info("client closed the connection before the answer to %s was sent", path)
        except AwsError as error:
            self._send_error(error, rest=path.startswith("/endpoints/"))
        except Exception:  # noqa: BLE001 - never a traceback to a client
            log.exception("stand-in request %s failed", self.path)
            self._send_error(
                InternalFailure("The local SageMaker stand-in failed; see its log."),
                rest=path.startswith("/endpoints/"),
            )

    def _control(self) -> None:
        target = self.headers.get("X-Amz-Target", "")
        if not target.startswith(TARGET_PREFIX):
            raise AwsError(
                "Missing or unknown X-Amz-Target header.", code="UnknownOperationException"
            )
        body = self._read_body(limit=_HARD_BODY_LIMIT)
        if body is None:
            raise AwsError("Request too large.", code="ValidationException", status=413)
        result = self.server.control.handle(target[len(TARGET_PREFIX) :], body)
        self._send_json(200, result)

    def _runtime(self, path: str) -> None:
        parts = path.strip("/").split("/")
        if len(parts) != 3 or parts[2] not in ("invocations", "async-invocations",
                                                "invocations-response-stream"):
            raise RuntimeValidationError(f"Unknown runtime path {path!r}.", status=404)
        name = unquote(parts[1])
        headers = {key: value for key, value in self.headers.items()}
        runtime = self.server.runtime
        if parts[2] == "invocations":
            body = self._read_body(limit=runtime.max_body_bytes)
            if body is None:
                raise RuntimeValidationError(
                    "The request body exceeds the InvokeEndpoint limit of "
                    f"{runtime.max_body_bytes} bytes. Use InvokeEndpointAsync for larger "
                    "payloads.",
                    status=413,
                )
            response, variant = runtime.invoke(name, body, headers)
            extra = {"x-Amzn-Invoked-Production-Variant": variant, **response.headers}
            self._send(200, response.body, content_type=response.content_type, headers=extra)
        elif parts[2] == "invocations-response-stream":
            body = self._read_body(limit=runtime.max_body_bytes)
            if body is None:
                raise RuntimeValidationError(
                    "The request body exceeds the InvokeEndpointWithResponseStream limit of "
                    f"{runtime.max_body_bytes} bytes.", status=413)
            self._send_stream(runtime.invoke_stream(name, body, headers))
        else:
            self._read_body(limit=_HARD_BODY_LIMIT)
            result = runtime.invoke_async(name, headers)
            self._send_json(
                202,
                {"InferenceId": result["InferenceId"]},
                content_type="application/json",
                headers={
                    "X-Amzn-SageMaker-OutputLocation": result["OutputLocation"],
                    "X-Amzn-SageMaker-FailureLocation": result["FailureLocation"],
                },
            )


class StandInServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, *, control: SageMakerControlPlane, runtime: RuntimeService) -> None:
        super().__init__(("127.0.0.1", 0), StandInHandler)
        self.control = control
        self.runtime = runtime
        self._counter = 0
        self._counter_lock = threading.Lock()

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away (timed out, page closed) is normal: one line, no traceback."""
        error = sys.exc_info()[1]
        if isinstance(error, (BrokenPipeError, ConnectionResetError)):
            log.info("client %s closed the connection before the answer was sent",
                     client_address[0] if client_address else "?")
            return
        super().handle_error(request, client_address)

    def request_id(self) -> str:
        with self._counter_lock:
            self._counter += 1
            return f"local-{self._counter:08d}"
