"""The portal's check of a generation request, pages and API alike: the invocation contract's
request model (easel_contracts.invocations), so a bad value is answered with its field name
before any GPU time is spent, with the same bounds the model server applies."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from easel_contracts.invocations import GENERATION_TASKS, TASKS, GenerationRequest
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
