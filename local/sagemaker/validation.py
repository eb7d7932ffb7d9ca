"""Check requests against botocore's own service models (types, required members, names)."""

from __future__ import annotations

import json
import re
from functools import cache
from typing import Any

import botocore.session
from botocore.model import OperationModel, ServiceModel, Shape
from botocore.parsers import create_parser
from botocore.validate import ParamValidator

from local.sagemaker.errors import ValidationException


@cache
def service_model(service: str) -> ServiceModel:
    return botocore.session.get_session().get_service_model(service)


def operation_model(service: str, operation: str) -> OperationModel:
    return service_model(service).operation_model(operation)


def validate_json_request(operation: OperationModel, body: bytes) -> dict[str, Any]:
    """Parse and validate an AWS JSON request body; returns the plain JSON parameters."""
    try:
        params = json.loads(body or b"{}")
    except ValueError as exc:
        raise ValidationException(f"The request body is not valid JSON: {exc}") from exc
    if not isinstance(params, dict):
        raise ValidationException("The request body must be a JSON object.")
    shape = operation.input_shape
    if shape is None:
        return params
    # The JSON parser turns wire values (epoch timestamps, ...) into the Python types the
    # validator expects; unknown members are kept aside to be reported as such.
    known = {k: v for k, v in params.items() if k in shape.members}
    parser = create_parser(operation.metadata["protocol"])
    typed = parser.parse(
        {"body": json.dumps(known).encode(), "headers": {}, "status_code": 200}, shape
    )
    typed.pop("ResponseMetadata", None)
    for unknown in set(params) - set(shape.members):
        typed[unknown] = params[unknown]
    report = ParamValidator().validate(typed, shape)
    problems = report.generate_report() if report.has_errors() else ""
    pattern_problems = _pattern_problems(params, shape)
    if problems or pattern_problems:
        text = "\n".join(filter(None, [problems, *pattern_problems]))
        raise ValidationException(text)
    return params


def _pattern_problems(params: dict[str, Any], shape: Shape) -> list[str]:
    """Top-level string members that break their model's ``pattern`` or ``max`` length."""
    problems = []
    for name, member in shape.members.items():
        value = params.get(name)
        if not isinstance(value, str) or member.type_name != "string":
            continue
        maximum = member.metadata.get("max")
        if maximum is not None and len(value) > maximum:
            problems.append(
                f"Value at '{name}' failed to satisfy constraint: "
                f"Member must have length less than or equal to {maximum}"
            )
        pattern = member.metadata.get("pattern")
        if pattern and name.endswith("Name"):
            try:
                matched = re.fullmatch(pattern, value) is not None
            except re.error:
                continue
            if not matched:
                problems.append(
                    f"Value '{value}' at '{name}' failed to satisfy constraint: "
                    f"Member must satisfy regular expression pattern: {pattern}"
                )
    return problems


def filter_to_shape(data: dict[str, Any], shape: Shape | None) -> dict[str, Any]:
    """Only the top-level members the output shape declares (internal fields stay inside)."""
    if shape is None:
        return {}
    return {k: v for k, v in data.items() if k in shape.members and v is not None}
