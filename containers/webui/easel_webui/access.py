"""The route registry: every route declares who may call it, and the guard enforces it.

Use `routes = Routes()` then `@routes.get("/path", access=Access.USER)`; the route gets a guard
dependency for that access level, and `check_routes_declared(app)` (run when the app is built, and
by the tests) refuses any route registered another way.

- `Access.PUBLIC`: anyone (unsafe methods still need a CSRF token).
- `Access.USER`: any signed-in user; `Access.ADMIN`: users with the admin role.
- `scheme="session"`: the signed session cookie, with a CSRF token on unsafe methods (form field
  `csrf_token` or header `X-CSRF-Token`). `scheme="basic"`: HTTP Basic auth (the A1111 API); no
  cookies are read, so there is nothing to forge. `scheme="none"` (public, safe methods only):
  nobody is identified at all (health check, static files).
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Callable
from enum import StrEnum
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Request
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool

from easel_webui.auth import LOGIN_CSRF_COOKIE, SESSION_COOKIE, User
from easel_webui.errors import Forbidden, NotSignedIn, PortalError

Scheme = Literal["session", "basic", "none"]
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
ACCESS_ATTRIBUTE = "x-easel-access"


class Access(StrEnum):
    PUBLIC = "public"
    USER = "user"
    ADMIN = "admin"


def get_portal(request: Request) -> Any:
    return request.app.state.portal


async def _submitted_csrf(request: Request) -> str | None:
    header = request.headers.get("x-csrf-token")
    if header:
        return header
    content_type = request.headers.get("content-type", "")
    if content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
        form = await request.form()
        value = form.get("csrf_token")
        return value if isinstance(value, str) else None
    return None


def _session_guard(access: Access) -> Callable[..., Any]:
    async def guard(request: Request) -> None:
        portal = get_portal(request)
        cookie = request.cookies.get(SESSION_COOKIE)
        # No cookie, no AWS call: public pages (and /health) answer without the table.
        session = await run_in_threadpool(portal.auth.read_session, cookie) if cookie else None
        request.state.user = session[0] if session else None
        request.state.session_nonce = session[1] if session else None
        if access is not Access.PUBLIC and session is None:
            raise NotSignedIn("Sign in first.")
        if request.method not in SAFE_METHODS:
            token = await _submitted_csrf(request)
            if session is not None:
                valid = await run_in_threadpool(portal.auth.check_csrf, session[1], token)
            else:
                cookie = request.cookies.get(LOGIN_CSRF_COOKIE) or ""
                valid = bool(cookie) and bool(token) and hmac.compare_digest(cookie, token or "")
            if not valid:
                raise Forbidden(
                    "The form's security token is missing or stale; reload the page and retry."
                )
        if access is Access.ADMIN and not request.state.user.is_admin:
            raise Forbidden("Only administrators may do this.")

    return guard


def client_address(request: Request) -> str:
    """The caller's address, for sign-in throttling.

    Behind CloudFront and the ALB (`forwarded_hops` = 2) X-Forwarded-For reads
    `<whatever the client sent>, <viewer address>, <CloudFront's address>`: CloudFront appends
    the viewer's address to any header the client sent, and the ALB appends the address it got
    the request from (CloudFront's). So the entry `forwarded_hops` from the right is the one a
    proxy we run wrote; everything left of it is the client's to forge. See "X-Forwarded-For" in
    https://docs.aws.amazon.com/AmazonCloudFront/latest/DeveloperGuide/adding-cloudfront-headers.html
    and https://docs.aws.amazon.com/elasticloadbalancing/latest/application/x-forwarded-headers.html
    Without that many entries (local mode: no proxy) it is the peer address of the connection.
    """
    hops = get_portal(request).settings.forwarded_hops
    entries = [entry.strip() for entry in
               request.headers.get("x-forwarded-for", "").split(",") if entry.strip()]
    if hops and len(entries) >= hops:
        return entries[-hops][:64]
    return request.client.host if request.client else "unknown"


def _basic_guard(access: Access) -> Callable[..., Any]:
    def guard(request: Request) -> None:
        request.state.session_nonce = None
        header = request.headers.get("authorization", "")
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic" or not encoded:
            if access is Access.PUBLIC:
                request.state.user = None
                return
            raise NotSignedIn("HTTP Basic authentication required (portal user and password).")
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise NotSignedIn("Malformed HTTP Basic credentials.") from None
        username, sep, password = decoded.partition(":")
        if not sep:
            raise NotSignedIn("Malformed HTTP Basic credentials.")
        try:
            user = get_portal(request).auth.authenticate_basic(username, password,
                                                             client_address(request))
        except PortalError as exc:
            if exc.status_code in (429, 503):  # throttled or busy: not a wrong password
                raise
            raise NotSignedIn(exc.message) from None
        request.state.user = user
        if access is Access.ADMIN and not user.is_admin:
            raise Forbidden("Only administrators may do this.")

    return guard


def _anonymous_guard(access: Access) -> Callable[..., Any]:
    def guard(request: Request) -> None:
        request.state.user = None
        request.state.session_nonce = None

    return guard


_GUARDS: dict[str, Callable[[Access], Callable[..., Any]]] = {
    "session": _session_guard, "basic": _basic_guard, "none": _anonymous_guard,
}


class Routes:
    """Route declarations that each say who may call them; `install(app)` registers them."""

    def __init__(self) -> None:
        self.declared: list[tuple[str, str, Callable[..., Any], Access, Scheme, dict[str, Any]]]
        self.declared = []

    def route(self, method: str, path: str, *, access: Access, scheme: Scheme = "session",
              **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        if not isinstance(access, Access):
            raise TypeError("access must be an Access value")
        if scheme == "none" and (access is not Access.PUBLIC or method not in SAFE_METHODS):
            raise ValueError("scheme 'none' is only for public GET routes")

        def decorator(func: Callable[..., Any]) -> Callable[..., Any]:
            self.declared.append((method, path, func, access, scheme, kwargs))
            return func

        return decorator

    def get(self, path: str, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        return self.route("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        return self.route("POST", path, **kwargs)

    def install(self, app: FastAPI) -> None:
        for method, path, func, access, scheme, kwargs in self.declared:
            guard = _GUARDS[scheme](access)
            app.add_api_route(
                path, func, methods=[method], dependencies=[Depends(guard)],
                include_in_schema=scheme == "basic",
                openapi_extra={ACCESS_ATTRIBUTE: {"access": access.value, "scheme": scheme}},
                **kwargs,
            )


def route_access(route: Any) -> tuple[Access, Scheme] | None:
    """The declared (access, scheme) of an app route, or None when undeclared."""
    declared = (getattr(route, "openapi_extra", None) or {}).get(ACCESS_ATTRIBUTE)
    if not declared:
        return None
    return Access(declared["access"]), declared["scheme"]


def undeclared_routes(app: FastAPI) -> list[str]:
    """Routes that did not come through `Routes` (so nobody said who may call them)."""
    missing = []
    for route in app.routes:
        if route_access(route) is None:
            methods = ",".join(sorted(getattr(route, "methods", None) or ["*"]))
            missing.append(f"{methods} {getattr(route, 'path', route)}")
    return missing


def check_routes_declared(app: FastAPI) -> None:
    missing = undeclared_routes(app)
    if missing:
        raise RuntimeError("routes without an access declaration: " + ", ".join(missing))


def current_user(request: Request) -> User:
    user = getattr(request.state, "user", None)
    if user is None:
        raise NotSignedIn("Sign in first.")
    return user


def optional_user(request: Request) -> User | None:
    return getattr(request.state, "user", None)


CurrentUser = Annotated[User, Depends(current_user)]
OptionalUser = Annotated[User | None, Depends(optional_user)]
PortalDep = Annotated[Any, Depends(get_portal)]
__all__ = ["APIRoute", "Access", "CurrentUser", "OptionalUser", "PortalDep", "Routes"]
