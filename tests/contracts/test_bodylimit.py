"""BodyLimit: request bodies are bounded while they stream, declared or chunked."""

import asyncio
import json

from easel_contracts.bodylimit import BodyLimit


def _run(app, *, headers=(), chunks=(b"",)):
    """Drive ``app`` with one HTTP request; returns (status, body, chunks pulled)."""
    pulled = 0
    queue = list(chunks)

    async def receive():
        nonlocal pulled
        pulled += 1
        body = queue.pop(0) if queue else b""
        return {"type": "http.request", "body": body, "more_body": bool(queue)}

    sent = []

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "path": "/x", "headers": list(headers)}
    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], body, pulled


async def echo_length(scope, receive, send):
    """Reads the whole body, then answers 200 with its length."""
    total = 0
    while True:
        message = await receive()
        total += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": str(total).encode()})


async def swallow_errors(scope, receive, send):
    """Like a framework that turns a failed body read into its own 400."""
    try:
        while (await receive()).get("more_body"):
            pass
    except Exception:
        await send({"type": "http.response.start", "status": 400, "headers": []})
        await send({"type": "http.response.body", "body": b"parse error"})
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def limited(app, limit=1000):
    return BodyLimit(app, limit_for=lambda scope: limit)


def test_body_under_the_limit_reaches_the_app():
    status, body, _ = _run(limited(echo_length), chunks=[b"a" * 600, b"b" * 400])
    assert (status, body) == (200, b"1000")


def test_declared_length_over_the_limit_is_refused_before_reading():
    status, body, pulled = _run(limited(echo_length),
                                headers=[(b"content-length", b"1001")], chunks=[b"a" * 1001])
    assert status == 413
    assert pulled == 0
    assert "too_large" in body.decode()


def test_chunked_body_stops_being_read_at_the_limit():
    chunks = [b"x" * 300] * 100  # 30 kB streamed with no Content-Length
    status, body, pulled = _run(limited(echo_length), chunks=chunks)
    assert status == 413
    assert pulled == 4  # 1200 bytes > 1000: nothing after the chunk that crossed the limit
    assert json.loads(body)["error"] == "too_large"


def test_app_answer_after_a_stopped_read_is_replaced_by_413():
    status, body, _ = _run(limited(swallow_errors), chunks=[b"x" * 800, b"x" * 800, b"x"])
    assert status == 413
    assert b"parse error" not in body


def test_malformed_content_length_is_refused():
    status, _, pulled = _run(limited(echo_length), headers=[(b"content-length", b"12abc")])
    assert (status, pulled) == (413, 0)


def test_limit_can_depend_on_the_path():
    app = BodyLimit(echo_length, limit_for=lambda scope: 5000 if scope["path"] == "/x" else 10)
    assert _run(app, chunks=[b"a" * 4000])[0] == 200


def test_custom_error_body_is_sent():
    app = BodyLimit(echo_length, limit_for=lambda scope: 10, body=lambda limit: b'{"mine": 1}')
    assert _run(app, chunks=[b"a" * 11])[1] == b'{"mine": 1}'
