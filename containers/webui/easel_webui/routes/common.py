"""Small helpers shared by the page routes."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from fastapi import Request
from fastapi.responses import RedirectResponse
from starlette.concurrency import run_in_threadpool

# AWS calls block: async handlers run them on the thread pool, never on the event loop.
blocking = run_in_threadpool


async def form_dict(request: Request) -> dict[str, Any]:
    form = await request.form()
    return {key: value for key, value in form.items() if key != "csrf_token"}


def redirect(path: str, *, notice: str = "", error: str = "") -> RedirectResponse:
    if notice:
        path += ("&" if "?" in path else "?") + "notice=" + quote(notice)
    if error:
        path += ("&" if "?" in path else "?") + "error=" + quote(error)
    return RedirectResponse(path, status_code=303)


def safe_next(value: str | None) -> str:
    if value and value.startswith("/") and not value.startswith("//") and "\\" not in value:
        return value
    return "/"
