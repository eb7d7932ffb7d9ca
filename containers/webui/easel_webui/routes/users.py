"""Users page (admin): add, reset password, change role, delete."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.responses import Response

from easel_webui.access import Access, CurrentUser, PortalDep, Routes
from easel_webui.errors import PortalError
from easel_webui.routes.common import blocking, form_dict, redirect
from easel_webui.templating import render

routes = Routes()


def _users_page(request: Request, portal: Any, **refused: Any) -> Response:
    return render(request, "users.html", users=portal.auth.list_users(), **refused)


@routes.get("/users", access=Access.ADMIN)
def users_page(request: Request, portal: PortalDep, user: CurrentUser) -> Response:
    return _users_page(request, portal)


@routes.post("/users", access=Access.ADMIN)
async def add_user(request: Request, portal: PortalDep, user: CurrentUser) -> Response:
    form = await form_dict(request)
    try:
        await blocking(portal.auth.create_user, username=str(form.get("username", "")),
                                password=str(form.get("password", "")),
                                role=str(form.get("role", "user")), by=user.username)
    except PortalError as exc:
        # the page again with the name and role as typed; a password is never sent back
        kept = {key: form.get(key, "") for key in ("username", "role")}
        return await blocking(_users_page, request, portal, form=kept, error=exc.message,
                              status_code=exc.status_code)
    return redirect("/users", notice=f"User {form.get('username', '').strip().lower()} added.")


@routes.post("/users/{username}/password", access=Access.ADMIN)
async def reset_password(request: Request, username: str, portal: PortalDep,
                         user: CurrentUser) -> Response:
    form = await form_dict(request)
    try:
        await blocking(portal.auth.set_password, username=username,
                       password=str(form.get("password", "")))
    except PortalError as exc:
        return redirect("/users", error=exc.message)
    return redirect("/users", notice=f"Password of {username} reset; their sessions ended.")


@routes.post("/users/{username}/role", access=Access.ADMIN)
async def change_role(request: Request, username: str, portal: PortalDep,
                      user: CurrentUser) -> Response:
    form = await form_dict(request)
    try:
        await blocking(portal.auth.set_role, username=username, role=str(form.get("role", "")))
    except PortalError as exc:
        return redirect("/users", error=exc.message)
    return redirect("/users", notice=f"Role of {username} changed; their sessions ended.")


@routes.post("/users/{username}/delete", access=Access.ADMIN)
def delete_user(username: str, portal: PortalDep, user: CurrentUser) -> Response:
    if username == user.username:
        return redirect("/users", error="You cannot delete yourself.")
    try:
        portal.auth.delete_user(username=username)
    except PortalError as exc:
        return redirect("/users", error=exc.message)
    return redirect("/users", notice=f"User {username} deleted.")
