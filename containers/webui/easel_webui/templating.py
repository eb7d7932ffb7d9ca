"""Jinja2 pages: every page gets the user, the CSRF token and a notice line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))


def csrf_for(request: Request) -> str:
    nonce = getattr(request.state, "session_nonce", None)
    if nonce:
        return request.app.state.portal.auth.csrf_token(nonce)
    return getattr(request.state, "login_csrf", "") or request.cookies.get("easel_login_csrf", "")


def render(request: Request, template: str, *, status_code: int = 200,
           **context: Any) -> HTMLResponse:
    base = {
        "user": getattr(request.state, "user", None),
        "csrf_token": csrf_for(request),
        "notice": request.query_params.get("notice", "")[:300],
        "error": context.pop("error", "") or request.query_params.get("error", "")[:300],
        "path": request.url.path,
        # the submitted form on a refused submission, so the page shows it again (nothing lost)
        "form": {},
    }
    base.update(context)
    return TEMPLATES.TemplateResponse(request, template, base, status_code=status_code)


def render_error(request: Request, *, status: int, message: str) -> HTMLResponse:
    try:
        return render(request, "error.html", status_code=status, status=status, message=message)
    except Exception:  # noqa: BLE001 - never fail while reporting a failure
        from html import escape

        return HTMLResponse(f"<h1>{status}</h1><p>{escape(message)}</p>", status_code=status)
