"""Generate page and gallery: submit a generation, poll it, browse and reuse results."""

from __future__ import annotations

import base64
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from easel_contracts import table as keys
from easel_contracts.invocations import (
    EXTRAS_RESAMPLERS,
    HR_UPSCALERS,
    ExtrasSingleImageRequest,
)
from easel_contracts.xy_plot import AXIS_LABELS, MAX_AXIS_VALUES, MAX_CELLS, AxisType
from easel_webui.access import Access, CurrentUser, PortalDep, Routes
from easel_webui.errors import NotFound, PortalError
from easel_webui.gallery import MAX_EXAMINED, parse_query, search
from easel_webui.payloads import parse_plotted
from easel_webui.pnginfo import sent_settings
from easel_webui.routes.common import blocking, form_dict, redirect
from easel_webui.templating import render

routes = Routes()
# the gallery's Upscale offers these at once; app.js adds the endpoint's ESRGAN models
GALLERY_RESAMPLERS = [name for name in EXTRAS_RESAMPLERS if name != "None"]


@routes.get("/generate", access=Access.USER)
def generate_page(request: Request, portal: PortalDep, user: CurrentUser,
                  reuse: str = "") -> Response:
    reused: dict[str, Any] = {}
    if reuse:
        try:
            reused = portal.generation.image(reuse, user=user)
        except NotFound:
            reused = {}
    elif sent := sent_settings(request.query_params):
        reused = {"params": sent}  # "Send to txt2img" from the PNG Info page
    endpoints = [e for e in portal.endpoints.listing() if e["usable"]]
    return render(request, "generate.html", endpoints=endpoints, reused=reused,
                  library_loras=portal.bucket.loras(), hr_upscalers=HR_UPSCALERS,
                  xy_axes=[(axis.value, AXIS_LABELS[axis]) for axis in AxisType],
                  xy_max_values=MAX_AXIS_VALUES, xy_max_cells=MAX_CELLS)


@routes.get("/generate/options", access=Access.USER)
def generate_options(portal: PortalDep, user: CurrentUser, endpoint: str) -> dict[str, Any]:
    """What the endpoint serves: models, LoRAs, samplers, ControlNets (its listing tasks), and
    its model's native size (where it warmed up), the form's default width and height."""
    portal.endpoints.record(endpoint)
    answer: dict[str, Any] = {}
    for task in ("sd-models", "loras", "samplers"):
        answer[task] = portal.generation.listing(endpoint, task).model_dump(mode="json")
    answer["controlnet-models"] = portal.generation.controlnet_models(endpoint).model_dump()
    answer["hr_upscalers"] = [*HR_UPSCALERS, *_model_upscalers(portal, endpoint)]
    options = portal.generation.listing(endpoint, "options")
    warmed = getattr(options, "warmed_up", None)
    answer["native_size"] = (
        {"width": warmed.width, "height": warmed.height} if warmed is not None else None)
    return answer


@routes.get("/generate/samplers", access=Access.USER)
def generate_samplers(portal: PortalDep, user: CurrentUser, endpoint: str,
                      checkpoint: str = "") -> list[dict[str, Any]]:
    """The samplers the form offers for the chosen model: those ``checkpoint`` (a model of the
    endpoint, by name or title) takes; without one (the endpoint's default model), those the
    endpoint's models take together."""
    portal.endpoints.record(endpoint)
    listed = portal.generation.listing(endpoint, "samplers", checkpoint=checkpoint or None)
    return list(listed.model_dump(mode="json"))


def _resolve_images(portal: Any, user: Any, body: dict[str, Any]) -> None:
    """`init_image_id`: reuse a gallery image (the user's own) as the img2img input."""
    image_id = body.pop("init_image_id", None)
    if image_id:
        record = portal.generation.image(str(image_id), user=user)
        key = portal.table.get(*keys.image_key(record["image_id"]))["key"]
        encoded = base64.b64encode(portal.bucket.read(key, max_bytes=12 * 1024**2)).decode()
        body.setdefault("init_images", [encoded])


@routes.post("/generate", access=Access.USER)
async def submit(request: Request, portal: PortalDep, user: CurrentUser) -> Response:
    try:
        body = await request.json()
    except (ValueError, RecursionError):  # not JSON, or nested too deeply to parse
        raise PortalError("body: must be JSON {endpoint, task, payload}") from None
    if not isinstance(body, dict):
        raise PortalError("body: must be a JSON object")
    endpoint = str(body.get("endpoint", ""))
    task = str(body.get("task", "txt2img"))
    payload = body.get("payload")
    if isinstance(payload, dict):
        await blocking(_resolve_images, portal, user, payload)
    checked, plot = parse_plotted(task, payload)
    job_id = await blocking(portal.generation.submit, user=user, endpoint=endpoint, task=task,
                            request=checked, plot=plot)
    return JSONResponse({"job_id": job_id, "poll": f"/generate/jobs/{job_id}"}, status_code=202)


@routes.get("/generate/jobs/{job_id}", access=Access.USER)
def job_status(job_id: str, portal: PortalDep, user: CurrentUser) -> dict[str, Any]:
    return portal.generation.job(job_id, user=user)


@routes.post("/generate/jobs/{job_id}/interrupt", access=Access.USER)
def interrupt_job(job_id: str, portal: PortalDep, user: CurrentUser) -> dict[str, Any]:
    """The page's Interrupt: stop the job (its owner or an admin), keeping finished images."""
    answer: dict[str, Any] = portal.generation.request_stop(job_id, user=user,
                                                            action="interrupt")
    return answer


@routes.post("/generate/jobs/{job_id}/skip", access=Access.USER)
def skip_job(job_id: str, portal: PortalDep, user: CurrentUser) -> dict[str, Any]:
    """The page's Skip: drop the image being made, go on with the next batch."""
    answer: dict[str, Any] = portal.generation.request_stop(job_id, user=user, action="skip")
    return answer


@routes.get("/gallery", access=Access.USER)
def gallery(request: Request, portal: PortalDep, user: CurrentUser) -> Response:
    """The user's images (an admin's: everyone's), newest first, searched by prompt words, model
    and date range, a page at a time."""
    try:
        query, after = parse_query(request.query_params)
        page = search(portal.generation, user=user, query=query, after=after)
    except PortalError as exc:
        return render(request, "gallery.html", images=[], query=request.query_params,
                      page=None, error=exc.message, status_code=exc.status_code)
    return render(request, "gallery.html", images=page.images, page=page,
                  query=request.query_params, page_examined=MAX_EXAMINED,
                  upscalers=GALLERY_RESAMPLERS)


@routes.post("/gallery/{image_id}/delete", access=Access.USER)
def delete_image(image_id: str, portal: PortalDep, user: CurrentUser) -> Response:
    portal.generation.delete_image(image_id, user=user)
    return redirect("/gallery", notice="Image deleted.")




def _upscale_endpoint(portal: Any, record: dict[str, Any]) -> str:
    """The endpoint that made the image, if still in service; else the first in service."""
    usable = portal.endpoints.usable_names()
    if record.get("endpoint") in usable:
        return str(record["endpoint"])
    if not usable:
        raise PortalError("No endpoint is in service to upscale with; ask an admin to deploy "
                          "one.", status_code=503)
    return str(usable[0])


def _upscale_gallery_image(portal: Any, user: Any, image_id: str, form: dict[str, Any]) -> str:
    record = portal.generation.image(image_id, user=user)  # the owner's (or an admin's) only
    stored = portal.table.get(*keys.image_key(record["image_id"]))
    try:
        scale = float(str(form.get("scale", "2")))
    except ValueError:
        raise PortalError("Scale: choose x2 or x4.") from None
    request = parse_extras({
        "image": base64.b64encode(portal.bucket.read(stored["key"],
                                                     max_bytes=12 * 1024**2)).decode(),
        "upscaling_resize": scale, "upscaler_1": str(form.get("upscaler", "Lanczos")),
    })
    _, new_id = portal.generation.upscale(user=user, endpoint=_upscale_endpoint(portal, record),
                                          request=request,
                                          source={**record, "model": stored.get("model", "")})
    return str(new_id)


def parse_extras(payload: dict[str, Any]) -> ExtrasSingleImageRequest:
    try:
        return ExtrasSingleImageRequest.model_validate(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ())) or "request"
        label = {"upscaling_resize": "Scale", "upscaler_1": "Upscaler"}.get(where, where)
        raise PortalError(f"{label}: {first.get('msg', 'invalid').removeprefix('Value error, ')}"
                          ) from None


@routes.post("/gallery/{image_id}/upscale", access=Access.USER)
async def upscale_image(image_id: str, request: Request, portal: PortalDep,
                        user: CurrentUser) -> Response:
    """The gallery's Upscale: the image, upscaled x2 or x4 on an endpoint, saved beside it."""
    form = await form_dict(request)
    try:
        await blocking(_upscale_gallery_image, portal, user, image_id, form)
    except NotFound:
        raise
    except PortalError as exc:
        return redirect("/gallery", error=f"Upscale failed: {exc.message}")
    return redirect("/gallery", notice="Upscaled image added to your gallery.")


@routes.get("/gallery/upscalers", access=Access.USER)
def gallery_upscalers(portal: PortalDep, user: CurrentUser) -> dict[str, Any]:
    """The upscalers the gallery's Upscale offers: the resamplers, and the ESRGAN models of
    the first endpoint in service (none listed if it cannot answer)."""
    usable = portal.endpoints.usable_names()
    return {"upscalers": [*GALLERY_RESAMPLERS,
                          *(_model_upscalers(portal, usable[0]) if usable else [])]}


def _model_upscalers(portal: Any, endpoint: str) -> list[str]:
    """The upscaler models (ESRGAN/) an endpoint serves, by name; none if it cannot answer."""
    try:
        listed = portal.generation.listing(endpoint, "upscalers")
    except PortalError:
        return []
    return [entry.name for entry in getattr(listed, "root", [])
            if entry.name not in EXTRAS_RESAMPLERS]
