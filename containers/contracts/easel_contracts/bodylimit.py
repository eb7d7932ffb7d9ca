"""Request-body bounds enforced while the body streams in, shared by the portal and the server.

A ``Content-Length`` check alone lets a chunked request through unbounded, and reading the whole
body before checking its size has already spent the memory. ``BodyLimit`` is a plain ASGI
middleware (no dependency): it refuses a declared length over the limit before reading anything,
counts the bytes of a streamed body as they arrive and stops the read at the limit, and answers
413 with a JSON body that says what the limit is. What the application answered after a stopped
read is replaced by that 413, so the client always learns why.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
LimitFor = Callable[[Scope], int]


class BodyTooLarge(Exception):
    """Raised from ``receive`` once a streamed body passes its limit."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"request body larger than {limit} bytes")
        self.limit = limit


def describe(limit: int) -> str:
    if limit >= 1024 * 1024:
        return f"{limit / 1024 ** 2:g} MiB"
    if limit >= 1024:
        return f"{limit / 1024:g} KiB"
    return f"{limit} bytes"


def too_large_body(limit: int, *, error_key: str = "error") -> bytes:
    body = {error_key: "too_large",
            "detail": f"The request body is larger than {describe(limit)}; send less."}
    return json.dumps(body).encode("utf-8")


class BodyLimit:
    """Wrap ``app`` so no HTTP request body larger than ``limit_for(scope)`` bytes is read."""

    def __init__(self, app: ASGIApp, *, limit_for: LimitFor,
                 body: Callable[[int], bytes] = too_large_body) -> None:
        self.app = app
        self.limit_for = limit_for
        self.body = body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope)
        declared = _content_length(scope)
        if declared is not None and (declared < 0 or declared > limit):
            await self._refuse(send, limit)
            return
        seen = 0
        overflowed = False
        response_started = False

        async def limited_receive() -> Message:
            nonlocal seen, overflowed
            if overflowed:
                raise BodyTooLarge(limit)
            message = await receive()
            if message.get("type") == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    overflowed = True
                    raise BodyTooLarge(limit)
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal response_started
            if overflowed:
                return  # the 413 below answers instead
            if message.get("type") == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except BodyTooLarge:
            pass
        except Exception:
            if not overflowed:
                raise
        if overflowed and not response_started:
            await self._refuse(send, limit)

    async def _refuse(self, send: Send, limit: int) -> None:
        body = self.body(limit)
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name.lower() == b"content-length":
            text = value.decode("latin-1").strip()
            return int(text) if text.isdigit() else -1
    return None
