"""Endpoints page (admin): deploy, list with live status and cost, delete."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.responses import Response

from easel_webui.access import Access, CurrentUser, PortalDep, Routes
from easel_webui.errors import PortalError
from easel_webui.routes.common import blocking, form_dict, redirect
from easel_webui.templating import render

routes = Routes()


def _endpoints_page(request: Request, portal: Any, *, model: str = "", **refused: Any) -> Response:
    settings = portal.settings
    models = portal.bucket.models()
    portal.bucket.attach_manifests(models)
    portal.endpoints.deploy_choices(models)
    return render(
        request, "endpoints.html", endpoints=portal.endpoints.listing(),
        models=models, instance_types=settings.endpoint_instance_types,
        settings=settings, preset_model=model[:1024], **refused,
    )


@routes.get("/endpoints", access=Access.ADMIN)
def endpoints_page(request: Request, portal: PortalDep, user: CurrentUser,
                   model: str = "") -> Response:
    return _endpoints_page(request, portal, model=model)


@routes.get("/endpoints/status", access=Access.ADMIN)
def endpoints_status(portal: PortalDep, user: CurrentUser) -> dict[str, Any]:
    return {"endpoints": [
        {k: e.get(k) for k in ("endpoint", "status", "failure", "instances", "cost_per_hour",
                               "creator", "mode", "instance_type", "scaling_status",
                               "scaling_error")}
        for e in portal.endpoints.listing()
    ]}


@routes.post("/endpoints", access=Access.ADMIN)
async def deploy(request: Request, portal: PortalDep, user: CurrentUser) -> Response:
    form = await form_dict(request)
    try:
        spec = await blocking(portal.endpoints.spec_from_form, form, creator=user.username)
        name = await blocking(portal.endpoints.deploy, spec)
    except PortalError as exc:
        # the page again, with the error and every field as submitted
        return await blocking(_endpoints_page, request, portal, form=form, error=exc.message,
                              status_code=exc.status_code)
    return redirect("/endpoints", notice=f"Deploying {name}; it takes several minutes.")


@routes.post("/endpoints/{name}/delete", access=Access.ADMIN)
def delete(name: str, portal: PortalDep, user: CurrentUser) -> Response:
    try:
        portal.endpoints.delete(name)
    except PortalError as exc:
        return redirect("/endpoints", error=exc.message)
    return redirect("/endpoints", notice=f"Deleting {name}.")
