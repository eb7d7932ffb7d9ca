"""The portal's check of a generation request, pages and API alike: the invocation contract's
request model (easel_contracts.invocations), so a bad value is answered with its field name
before any GPU time is spent, with the same bounds the model server applies."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from easel_contracts.invocations import (
    GENERATION_TASKS,
    TASKS,
    GenerationRequest,
    Lora,
    Sampler,
    Txt2ImgRequest,
)
from easel_contracts.xy_plot import NotServed, PlotError, PlottedTxt2Img, XYPlot, plot_requests
from easel_webui.errors import PortalError, describe_validation


def parse_request(task: str, payload: Any) -> GenerationRequest:
    if task not in GENERATION_TASKS:
        raise PortalError(f"task: one of {', '.join(GENERATION_TASKS)}")
    if not isinstance(payload, dict):
        raise PortalError("payload: must be a JSON object")
    try:
        request = TASKS[task].request.model_validate(payload)
    except ValidationError as exc:
        raise PortalError(describe_validation(list(exc.errors())), status_code=422) from None
    assert isinstance(request, GenerationRequest)
    return request


def parse_plotted(task: str, payload: Any) -> tuple[GenerationRequest, XYPlot | None]:
    """A generation request and its X/Y plot (``xy_plot``, txt2img only), or None without one."""
    if task == "txt2img" and isinstance(payload, dict):
        try:
            plotted = PlottedTxt2Img.model_validate(payload)
        except ValidationError as exc:
            raise PortalError(describe_validation(list(exc.errors())), status_code=422) from None
        return plotted.generation(), plotted.xy_plot
    if isinstance(payload, dict) and payload.get("xy_plot"):
        raise PortalError("xy_plot: an X/Y plot is made from text only (task txt2img)",
                          status_code=422)
    return parse_request(task, payload), None


def plot_cells(request: GenerationRequest, plot: XYPlot, *,
               samplers: Sequence[Sampler] | None = None,
               loras: Sequence[Lora] | None = None) -> list[GenerationRequest]:
    """The plot's cell requests, or a 422 naming the axis to fix; a value the endpoint does not
    serve (by its ``samplers`` or ``loras`` listing, where given) is a 400 listing what it
    serves."""
    if not isinstance(request, Txt2ImgRequest):
        raise PortalError("xy_plot: an X/Y plot is made from text only (task txt2img)",
                          status_code=422)
    try:
        return list(plot_requests(request, plot, samplers=samplers, loras=loras))
    except NotServed as exc:
        raise PortalError(str(exc), status_code=400) from None
    except PlotError as exc:
        raise PortalError(str(exc), status_code=422) from None
