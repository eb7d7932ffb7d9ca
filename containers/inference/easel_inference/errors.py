"""Client-facing errors: each carries an HTTP status and a message that names the field."""

from __future__ import annotations


class ApiError(Exception):
    status = 500

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def body(self) -> dict[str, object]:
        body: dict[str, object] = {"error": type(self).__name__, "detail": self.message}
        if self.field:
            body["field"] = self.field
        return body

    def headers(self) -> dict[str, str]:
        """Response headers the error adds (e.g. ``Retry-After``)."""
        return {}


class BadRequest(ApiError):
    status = 400


class NotFound(ApiError):
    status = 404


class ResponseTooLarge(ApiError):
    status = 413


class Unavailable(ApiError):
    status = 503


class InternalError(ApiError):
    status = 500
