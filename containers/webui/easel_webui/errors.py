"""Errors the portal shows to people, and the handlers that turn every failure into a clean answer.

A client never sees a traceback: expected problems raise `PortalError` (status + a message meant
for the user), validation problems name the field, and anything else is logged with an id and
answered with that id only.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("easel_webui")


class PortalError(Exception):
    """A problem to show the user as is (the message must not contain secrets)."""

    status_code = 400
    retry_after: int | None = None  # seconds, sent as Retry-After when set

    def __init__(self, message: str, *, status_code: int | None = None,
                 retry_after: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status_code is not None:
            self.status_code = status_code
        if retry_after is not None:
            self.retry_after = retry_after


class NotSignedIn(PortalError):
    status_code = 401


class Forbidden(PortalError):
    status_code = 403


class NotFound(PortalError):
    status_code = 404


class Conflict(PortalError):
    status_code = 409


class TooManyAttempts(PortalError):
    status_code = 429


class Busy(PortalError):
    """The portal is at a bound it keeps to protect its memory; the client retries later."""

    status_code = 503
    retry_after = 5


class UpstreamError(PortalError):
    """AWS or the model server refused or failed; the message says what to do."""

    status_code = 502


# machine APIs (HTTP Basic auth, JSON errors): A1111's /sdapi/ and its ControlNet extension's
# /controlnet/, and Easel's /api/
API_PREFIXES = ("/sdapi/", "/api/", "/controlnet/")


def wants_json(request: Request) -> bool:
    path = request.url.path
    if path.startswith(API_PREFIXES) or path == "/health":
        return True
    if request.headers.get("content-type", "").startswith("application/json"):
        return True
    accept = request.headers.get("accept", "")
    return "application/json" in accept and "text/html" not in accept


def _error_response(request: Request, status: int, message: str, **extra: Any) -> Response:
    if wants_json(request):
        body: dict[str, Any] = {"error": _reason(status), "detail": message}
        body.update(extra)
        headers = {"WWW-Authenticate": 'Basic realm="easel"'} if status == 401 and \
            request.url.path.startswith(API_PREFIXES) else None
        return JSONResponse(body, status_code=status, headers=headers)
    if status == 401:
        target = "/login"
        if request.method == "GET":
            target += "?next=" + _safe_next(request.url.path)
        return RedirectResponse(target, status_code=303)
    from easel_webui.templating import render_error  # late: templating imports this module

    return render_error(request, status=status, message=message)


def _safe_next(path: str) -> str:
    from urllib.parse import quote

    return quote(path if path.startswith("/") and not path.startswith("//") else "/", safe="/")


def _reason(status: int) -> str:
    return {
        400: "bad_request",
        401: "unauthorized",
        403: "forbidden",
        404: "not_found",
        405: "method_not_allowed",
        409: "conflict",
        413: "too_large",
        422: "invalid_input",
        429: "too_many_requests",
        502: "upstream_error",
        503: "busy",
        504: "timeout",
    }.get(status, "error")


def describe_validation(errors: list[dict[str, Any]]) -> str:
    """pydantic's errors as one line a person can act on: each problem after its field's name,
    without pydantic's "Value error, " prefix and without naming a field twice (our validators'
    messages often start with the field already)."""
    parts = []
    for error in errors:
        loc = [str(p) for p in error.get("loc", ()) if p not in ("body", "query", "path", "form")]
        message = str(error.get("msg", "invalid"))
        for prefix in ("Value error, ", "Assertion failed, "):
            message = message.removeprefix(prefix)
        field = ".".join(loc)
        if field and not message.startswith(f"{field}:"):
            message = f"{field}: {message}"
        parts.append(message)
    return "; ".join(parts)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(PortalError)
    async def _portal_error(request: Request, exc: PortalError) -> Response:
        response = _error_response(request, exc.status_code, exc.message,
                                   **getattr(exc, "extra", {}))
        if exc.retry_after is not None:
            response.headers["Retry-After"] = str(exc.retry_after)
        return response

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        return _error_response(request, 422, describe_validation(list(exc.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        message = exc.detail if isinstance(exc.detail, str) else _reason(exc.status_code)
        if exc.status_code == 404:
            message = "Not found."
        elif exc.status_code == 405:
            message = "Method not allowed."
        return _error_response(request, exc.status_code, message)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        incident = uuid.uuid4().hex[:12]
        log.error("unexpected error %s on %s %s", incident, request.method, request.url.path,
                  exc_info=exc)
        return _error_response(
            request, 500, f"Something went wrong on our side (incident {incident}).",
        )


