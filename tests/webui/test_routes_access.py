"""Every route the app registers declares who may call it, and the guard enforces it."""

from __future__ import annotations

import base64
import re

import pytest
from fastapi.routing import APIRoute

from easel_webui.access import Access, check_routes_declared, route_access, undeclared_routes
from easel_webui.app import create_app

from .conftest import ADMIN_PASSWORD, CSRF_RE


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "zz-missing", path)


def _routes(app):
    for route in app.routes:
        for method in sorted(route.methods - {"HEAD"}):
            yield method, route


def test_every_registered_route_declares_access(world):
    routes = list(world.app.routes)
    assert routes and all(isinstance(r, APIRoute) for r in routes)
    assert undeclared_routes(world.app) == []
    for route in routes:
        assert route_access(route) is not None, route.path


def test_a_route_added_without_a_declaration_is_refused():
    app = create_app()

    @app.get("/sneaky")
    def sneaky() -> dict[str, str]:
        return {}

    assert undeclared_routes(app) == ["GET /sneaky"]
    with pytest.raises(RuntimeError, match="/sneaky"):
        check_routes_declared(app)


def _basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def _is_login_redirect(response) -> bool:
    return response.status_code == 303 and response.headers["location"].startswith("/login")


def test_route_by_role_matrix(world):
    world.add_user("alice")
    world.in_service()
    anonymous = world.client()
    anonymous.headers["X-CSRF-Token"] = CSRF_RE.search(anonymous.get("/login").text).group(1)
    clients = {
        "anonymous": anonymous,
        "user": world.signed_in("alice"),
        "admin": world.signed_in("admin"),
    }
    basic = {"anonymous": {}, "user": _basic("alice", "user-password-123"),
             "admin": _basic("admin", ADMIN_PASSWORD)}
    checked = 0
    for method, route in _routes(world.app):
        access, scheme = route_access(route)
        path = _concrete(route.path)
        for role, client in clients.items():
            headers = basic[role] if scheme == "basic" else {}
            if scheme == "basic":
                client = world.client()
            response = client.request(method, path, headers=headers)
            where = f"{method} {route.path} as {role}"
            assert response.status_code < 500, f"{where}: {response.status_code}"
            allowed = (access is Access.PUBLIC or (access is Access.USER and role != "anonymous")
                       or (access is Access.ADMIN and role == "admin"))
            if allowed:
                # /login answers 401 for the (empty) credentials: that is the form, not a guard
                refused = (403,) if route.path == "/login" else (401, 403)
                assert response.status_code not in refused, where
                assert not _is_login_redirect(response) or route.path == "/logout", where
            elif role == "anonymous":
                if scheme == "basic":
                    assert response.status_code == 401, where
                    assert response.headers["www-authenticate"].startswith("Basic")
                else:
                    assert _is_login_redirect(response), where
            else:
                assert response.status_code == 403, where
            checked += 1
            if route.path == "/logout" and role != "anonymous":
                clients[role] = world.signed_in("alice" if role == "user" else "admin")
    assert checked >= 3 * 40


def test_admin_pages_refuse_users_even_with_a_valid_csrf_token(world):
    world.add_user("bob")
    bob = world.signed_in("bob")
    response = bob.post("/users", data={"username": "mallory", "password": "x" * 12,
                                        "role": "admin"})
    assert response.status_code == 403
    assert world.portal.auth.lookup("mallory") is None
