"""Filtering, sorting and paging for the List* operations."""

from __future__ import annotations

import base64
from collections.abc import Callable
from datetime import datetime
from typing import Any

from local.sagemaker.errors import ValidationException

DEFAULT_MAX_RESULTS = 10
MAX_RESULTS_LIMIT = 100


def _epoch(value: Any, field: str) -> float:
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            pass
    raise ValidationException(f"{field} must be a timestamp")


def list_page(
    records: list[dict[str, Any]],
    params: dict[str, Any],
    *,
    name_key: str,
    status_key: str | None,
    summarize: Callable[[dict[str, Any]], dict[str, Any]],
    sort_keys: dict[str, str],
) -> tuple[list[dict[str, Any]], str | None]:
    """Apply NameContains/StatusEquals/time filters, SortBy/SortOrder, MaxResults/NextToken."""
    selected = records
    if params.get("NameContains"):
        needle = params["NameContains"].lower()
        selected = [r for r in selected if needle in r[name_key].lower()]
    if status_key and params.get("StatusEquals"):
        selected = [r for r in selected if r.get(status_key) == params["StatusEquals"]]
    for field, record_key, keep in (
        ("CreationTimeAfter", "CreationTime", lambda v, t: v > t),
        ("CreationTimeBefore", "CreationTime", lambda v, t: v < t),
        ("LastModifiedTimeAfter", "LastModifiedTime", lambda v, t: v > t),
        ("LastModifiedTimeBefore", "LastModifiedTime", lambda v, t: v < t),
    ):
        if params.get(field) is not None:
            limit = _epoch(params[field], field)
            selected = [
                r for r in selected if keep(float(r.get(record_key) or r["CreationTime"]), limit)
            ]

    sort_by = params.get("SortBy", "CreationTime")
    if sort_by not in sort_keys:
        raise ValidationException(f"SortBy must be one of {sorted(sort_keys)}; got {sort_by!r}")
    order = params.get("SortOrder", "Descending")
    if order not in ("Ascending", "Descending"):
        raise ValidationException("SortOrder must be Ascending or Descending")
    key = sort_keys[sort_by]
    selected = sorted(
        selected,
        key=lambda r: (r.get(key) if r.get(key) is not None else "", r[name_key]),
        reverse=order == "Descending",
    )

    max_results = int(params.get("MaxResults") or DEFAULT_MAX_RESULTS)
    if not 1 <= max_results <= MAX_RESULTS_LIMIT:
        raise ValidationException(f"MaxResults must be between 1 and {MAX_RESULTS_LIMIT}")
    start = _decode_token(params.get("NextToken"))
    page = selected[start : start + max_results]
    next_start = start + max_results
    token = _encode_token(next_start) if next_start < len(selected) else None
    return [summarize(r) for r in page], token


def _encode_token(offset: int) -> str:
    return base64.urlsafe_b64encode(f"offset:{offset}".encode()).decode()


def _decode_token(token: str | None) -> int:
    if not token:
        return 0
    try:
        text = base64.urlsafe_b64decode(token.encode()).decode()
        prefix, _, value = text.partition(":")
        if prefix != "offset":
            raise ValueError(text)
        return max(0, int(value))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValidationException("NextToken is not valid") from exc
