"""AUTOMATIC1111-compatible API under `/sdapi/v1/` (HTTP Basic auth with a portal user).

Requests go to the caller's chosen endpoint (`POST /sdapi/v1/options` with `easel_endpoint`; by
default the first endpoint in service) and model (`sd_model_checkpoint`). Generations are saved to
the caller's gallery like the portal's. A synchronous call waits at most about 50 s; after that
the answer is 504 with a job id to poll at `/api/v1/jobs/<id>`.
"""

from __future__ import annotations

from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from easel_contracts import table as keys
from easel_contracts.invocations import (
    ControlNetModels,
    ExtrasSingleImageRequest,
    ExtrasSingleImageResponse,
    GenerationRequest,
    GenerationResponse,
    Img2ImgRequest,
    Loras,
    OverrideSettings,
    Samplers,
    Schedulers,
    SdModels,
    Upscalers,
)
from easel_contracts.xy_plot import PlottedTxt2Img, XYPlot
from easel_webui.access import Access, CurrentUser, PortalDep, Routes
from easel_webui.auth import User
from easel_webui.errors import PortalError
from easel_webui.live import Stop, a1111_progress
from easel_webui.pnginfo import (
    PngInfoRequest,
    PngInfoResponse,
    decode_base64_image,
    read_png_info,
)
from easel_webui.routes.common import blocking
from easel_webui.store import iso_now

routes = Routes()
Listed = TypeVar("Listed", bound=BaseModel)
API = {"access": Access.USER, "scheme": "basic"}


def _prefs(portal: Any, user: User) -> dict[str, Any]:
    return portal.table.get(*keys.user_prefs_key(user.username)) or {}


def _save_prefs(portal: Any, user: User, **values: Any) -> None:
    portal.table.update(*keys.user_prefs_key(user.username), {**values, "updated_at": iso_now()},
                        must_exist=False)


def _endpoint_for(portal: Any, user: User) -> str:
    usable = portal.endpoints.usable_names()
    chosen = _prefs(portal, user).get("endpoint")
    if chosen and chosen in usable:
        return chosen
    if chosen and chosen not in usable:
        raise PortalError(
            f"Your chosen endpoint {chosen!r} is not in service; choose another with POST "
            "/sdapi/v1/options {\"easel_endpoint\": ...}.", status_code=503)
    if not usable:
        raise PortalError("No endpoint is in service; ask an admin to deploy one.",
                          status_code=503)
    return usable[0]


async def _json_body(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (ValueError, RecursionError):  # not JSON, or nested too deeply to parse
        raise PortalError("body: must be a JSON object", status_code=422) from None
    if not isinstance(body, dict):
        raise PortalError("body: must be a JSON object", status_code=422)
    return body


def _run_sync(task: str, portal: Any, user: User, request: GenerationRequest,
              plot: XYPlot | None = None) -> GenerationResponse:
    checkpoint = _prefs(portal, user).get("checkpoint")
    if checkpoint and not request.override_settings.sd_model_checkpoint:
        chosen = request.override_settings.model_dump(exclude_unset=True)
        try:
            request.override_settings = OverrideSettings.model_validate(
                {**chosen, "sd_model_checkpoint": checkpoint})
        except ValidationError:
            raise PortalError(
                f"Your chosen checkpoint {checkpoint!r} is not a usable name; choose another "
                "with POST /sdapi/v1/options {\"sd_model_checkpoint\": ...}.",
                status_code=422) from None
    endpoint = _endpoint_for(portal, user)
    answer: GenerationResponse = portal.generation.run_sync(
        user=user, endpoint=endpoint, task=task, request=request,
        timeout=portal.settings.sync_timeout_seconds, plot=plot,
    )
    return answer


@routes.post("/sdapi/v1/txt2img", **API)
async def txt2img(body: PlottedTxt2Img, portal: PortalDep,
                  user: CurrentUser) -> GenerationResponse:
    """A1111's txt2img; Easel's ``xy_plot`` makes an X/Y plot (its grid first, then each cell)."""
    return await blocking(_run_sync, "txt2img", portal, user, body.generation(), body.xy_plot)


@routes.post("/sdapi/v1/img2img", **API)
async def img2img(body: Img2ImgRequest, portal: PortalDep,
                  user: CurrentUser) -> GenerationResponse:
    return await blocking(_run_sync, "img2img", portal, user, body)


def _upscale(portal: Any, user: User,
             request: ExtrasSingleImageRequest) -> ExtrasSingleImageResponse:
    answer, _ = portal.generation.upscale(user=user, endpoint=_endpoint_for(portal, user),
                                          request=request)
    return answer


@routes.post("/sdapi/v1/extra-single-image", **API)
async def extra_single_image(body: ExtrasSingleImageRequest, portal: PortalDep,
                             user: CurrentUser) -> ExtrasSingleImageResponse:
    """A1111's extras upscale, on the caller's endpoint; the result also goes to the caller's
    gallery."""
    return await blocking(_upscale, portal, user, body)


@routes.get("/sdapi/v1/upscalers", **API)
def upscalers(portal: PortalDep, user: CurrentUser) -> Upscalers:
    return _listing(portal, user, "upscalers", Upscalers)


@routes.post("/sdapi/v1/png-info", **API)
def png_info(body: PngInfoRequest, user: CurrentUser) -> PngInfoResponse:
    """A1111's PNG Info: the settings a PNG carries in its `parameters` chunk (read here, in
    the portal: no endpoint is needed)."""
    return read_png_info(decode_base64_image(body.image))


def _listing(portal: Any, user: User, task: str, answer: type[Listed]) -> Listed:
    listed = portal.generation.listing(_endpoint_for(portal, user), task)
    if not isinstance(listed, answer):
        raise TypeError(f"{task} answered a {type(listed).__name__}, not a {answer.__name__}")
    return listed


@routes.get("/sdapi/v1/sd-models", **API)
def sd_models(portal: PortalDep, user: CurrentUser) -> SdModels:
    return _listing(portal, user, "sd-models", SdModels)


@routes.get("/sdapi/v1/samplers", **API)
def samplers(portal: PortalDep, user: CurrentUser) -> Samplers:
    return _listing(portal, user, "samplers", Samplers)


@routes.get("/sdapi/v1/schedulers", **API)
def schedulers(portal: PortalDep, user: CurrentUser) -> Schedulers:
    return _listing(portal, user, "schedulers", Schedulers)


@routes.get("/sdapi/v1/loras", **API)
def loras(portal: PortalDep, user: CurrentUser) -> Loras:
    return _listing(portal, user, "loras", Loras)


@routes.get("/controlnet/model_list", **API)
def controlnet_model_list(portal: PortalDep, user: CurrentUser) -> ControlNetModels:
    """The A1111 ControlNet extension's model list, from the caller's endpoint."""
    listed: ControlNetModels = portal.generation.controlnet_models(_endpoint_for(portal, user))
    return listed


@routes.get("/sdapi/v1/options", **API)
def get_options(portal: PortalDep, user: CurrentUser) -> dict[str, Any]:
    endpoint = _endpoint_for(portal, user)
    options = portal.generation.listing(endpoint, "options").model_dump(mode="json")
    checkpoint = _prefs(portal, user).get("checkpoint")
    if checkpoint:
        options["sd_model_checkpoint"] = checkpoint
    options["easel_endpoint"] = endpoint
    return options


def _model_names(listing: SdModels) -> set[str]:
    return {name for model in listing.root for name in (model.title, model.model_name)}


@routes.post("/sdapi/v1/options", **API)
async def set_options(request: Request, portal: PortalDep, user: CurrentUser) -> None:
    await blocking(_apply_options, portal, user, await _json_body(request))


def _apply_options(portal: Any, user: User, body: dict[str, Any]) -> None:
    unknown = set(body) - {"sd_model_checkpoint", "easel_endpoint"}
    changes: dict[str, Any] = {}
    if "easel_endpoint" in body:
        endpoint = str(body["easel_endpoint"])
        if endpoint not in portal.endpoints.usable_names():
            raise PortalError(f"easel_endpoint: {endpoint!r} is not an endpoint in service",
                              status_code=422)
        changes["endpoint"] = endpoint
    if "sd_model_checkpoint" in body:
        checkpoint = str(body["sd_model_checkpoint"])
        endpoint = changes.get("endpoint") or _endpoint_for(portal, user)
        if checkpoint not in _model_names(portal.generation.listing(endpoint, "sd-models")):
            raise PortalError(
                f"sd_model_checkpoint: {checkpoint!r} is not served by {endpoint}; see "
                "GET /sdapi/v1/sd-models", status_code=422)
        changes["checkpoint"] = checkpoint
    if changes:
        _save_prefs(portal, user, **changes)
    if unknown and not changes:
        raise PortalError("options: only sd_model_checkpoint and easel_endpoint can be set "
                          "here", status_code=422)


@routes.get("/sdapi/v1/progress", **API)
def progress(portal: PortalDep, user: CurrentUser,
             skip_current_image: bool = False) -> dict[str, Any]:
    """A1111's progress of the caller's running job, from the job's table record (written by
    whichever portal task runs it): fraction done, seconds left, step, preview image."""
    return a1111_progress(portal.generation.running_job(user=user),
                          with_image=not skip_current_image)


def _stop_running(portal: Any, user: User, action: Stop) -> dict[str, Any]:
    running = portal.generation.running_job(user=user)
    if running is None:
        return {"job_id": None, "stopping": False}
    answer: dict[str, Any] = portal.generation.request_stop(running["job_id"], user=user,
                                                            action=action)
    return answer


@routes.post("/sdapi/v1/interrupt", **API)
def interrupt(portal: PortalDep, user: CurrentUser) -> dict[str, Any]:
    """Stop the caller's running job; the images finished so far are kept."""
    return _stop_running(portal, user, "interrupt")


@routes.post("/sdapi/v1/skip", **API)
def skip(portal: PortalDep, user: CurrentUser) -> dict[str, Any]:
    """Drop the image the caller's running job is making and go on with its next batch."""
    return _stop_running(portal, user, "skip")


@routes.get("/api/v1/jobs/{job_id}", **API)
def api_job(job_id: str, portal: PortalDep, user: CurrentUser) -> dict[str, Any]:
    return portal.generation.job(job_id, user=user)
