"""Sign-in, sign-out, the home redirect, health, static files and the user's own password."""

from __future__ import annotations

import logging
import secrets
from pathlib import Path

from fastapi import Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response

from easel_webui import __version__
from easel_webui.access import Access, CurrentUser, OptionalUser, PortalDep, Routes
from easel_webui.auth import LOGIN_CSRF_COOKIE, SESSION_COOKIE
from easel_webui.errors import NotFound, PortalError
from easel_webui.routes.common import blocking, form_dict, redirect, safe_next
from easel_webui.settings import SettingsError
from easel_webui.templating import render

log = logging.getLogger("easel_webui")

routes = Routes()
STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
STATIC_FILES = {"app.css": "text/css", "app.js": "text/javascript"}


@routes.get("/health", access=Access.PUBLIC, scheme="none")
def health(request: Request) -> Response:
    """200 when the settings are complete (no AWS call), so a misconfigured task fails its
    load-balancer health check instead of answering every page with an error."""
    try:
        request.app.state.portal.check_settings()
    except SettingsError as exc:
        log.error("portal settings are incomplete: %s", exc)
        return JSONResponse({"status": "misconfigured", "version": __version__}, status_code=503)
    return JSONResponse({"status": "ok", "version": __version__})


@routes.get("/static/{name}", access=Access.PUBLIC, scheme="none")
def static(name: str) -> Response:
    if name not in STATIC_FILES:
        raise NotFound("Not found.")
    return FileResponse(STATIC_DIR / name, media_type=STATIC_FILES[name],
                        headers={"Cache-Control": "public, max-age=300"})


@routes.get("/", access=Access.USER)
def home(user: CurrentUser) -> RedirectResponse:
    return RedirectResponse("/generate", status_code=303)


def _login_page(request: Request, portal: PortalDep, *, error: str = "", status_code: int = 200,
                next_path: str = "/") -> Response:
    token = request.cookies.get(LOGIN_CSRF_COOKIE) or secrets.token_urlsafe(24)
    request.state.login_csrf = token
    response = render(request, "login.html", status_code=status_code, error=error,
                      next=next_path, settings=portal.settings)
    response.set_cookie(LOGIN_CSRF_COOKIE, token, httponly=True, samesite="strict",
                        secure=portal.settings.secure_cookies, max_age=3600)
    return response


@routes.get("/login", access=Access.PUBLIC)
def login_form(request: Request, portal: PortalDep, user: OptionalUser,
               next: str = "/") -> Response:  # noqa: A002 - the query parameter's name
    if user is not None:
        return RedirectResponse(safe_next(next), status_code=303)
    return _login_page(request, portal, next_path=safe_next(next))


@routes.post("/login", access=Access.PUBLIC)
async def login(request: Request, portal: PortalDep) -> Response:
    form = await form_dict(request)
    next_path = safe_next(str(form.get("next") or "/"))
    try:
        user = await blocking(portal.auth.authenticate, str(form.get("username", "")),
                              str(form.get("password", "")))
    except PortalError as exc:
        return _login_page(request, portal, error=exc.message, status_code=exc.status_code,
                           next_path=next_path)
    response = RedirectResponse(next_path, status_code=303)
    response.set_cookie(SESSION_COOKIE, portal.auth.issue_session(user), httponly=True,
                        samesite="lax", secure=portal.settings.secure_cookies,
                        max_age=portal.settings.session_max_age_seconds)
    response.delete_cookie(LOGIN_CSRF_COOKIE)
    return response


@routes.post("/logout", access=Access.USER)
async def logout(request: Request, portal: PortalDep, user: CurrentUser) -> Response:
    nonce = getattr(request.state, "session_nonce", None)
    if nonce:
        await blocking(portal.auth.revoke_session, nonce)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE)
    return response


@routes.get("/account", access=Access.USER)
def account(request: Request, portal: PortalDep, user: CurrentUser) -> Response:
    return render(request, "account.html", settings=portal.settings)


@routes.post("/account/password", access=Access.USER)
async def change_own_password(request: Request, portal: PortalDep, user: CurrentUser) -> Response:
    form = await form_dict(request)
    if user.builtin:
        where = ("is printed by `make local`; `make local CLEAN=1` makes a new one"
                 if portal.settings.local_mode else "lives in Secrets Manager (rotated there)")
        raise PortalError(f"The built-in admin's password {where}; see README.md.")
    try:
        await blocking(portal.auth.authenticate, user.username,
                       str(form.get("current_password", "")))
    except PortalError:
        return redirect("/account", error="Your current password is not right.")
    if form.get("new_password") != form.get("confirm_password"):
        return redirect("/account", error="The new passwords differ.")
    try:
        await blocking(portal.auth.set_password, username=user.username,
                       password=str(form.get("new_password", "")))
    except PortalError as exc:
        return redirect("/account", error=exc.message)
    return redirect("/login", notice="Password changed; sign in again.")
