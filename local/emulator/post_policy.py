"""S3 browser-based uploads (pre-signed POST) held to their policy, as S3 does.

moto stores whatever a pre-signed POST sends, whatever its policy says, so a policy bug (a
missing content-type or size condition, a key prefix that lets a user write elsewhere) would
pass every local test. This WSGI middleware checks a POST upload's policy before moto sees it:

- the policy has not expired;
- every condition holds: exact matches (`{"field": value}` or `["eq", "$field", value]`),
  `["starts-with", "$field", prefix]` and `["content-length-range", min, max]`;
- every form field except `policy`, `x-amz-signature`, `file` and `x-ignore-*` fields is named
  by a condition.

The rules are S3's, from "Creating a POST policy" (Signature Version 4):
https://docs.aws.amazon.com/AmazonS3/latest/API/sigv4-HTTPPOSTConstructPolicy.html
and the error codes from https://docs.aws.amazon.com/AmazonS3/latest/API/ErrorResponses.html
(AccessDenied "Invalid according to Policy", EntityTooLarge, EntityTooSmall). The signature
itself is not checked: the emulator accepts any credentials.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any
from xml.sax.saxutils import escape

# A browser upload larger than this is refused before it is read (the emulator is local).
MAX_POST_BYTES = 256 * 1024 * 1024
_UNCHECKED_FIELDS = frozenset({"policy", "x-amz-signature", "file", "signature",
                               "awsaccesskeyid"})


class PolicyError(Exception):
    def __init__(self, code: str, message: str, status: str = "403 Forbidden") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


def _denied(condition: Any) -> PolicyError:
    return PolicyError(
        "AccessDenied",
        f"Invalid according to Policy: Policy Condition failed: {json.dumps(condition)}")


def check_policy(policy: dict[str, Any], fields: dict[str, str], *, bucket: str, size: int,
                 now: datetime | None = None) -> None:
    """Raise `PolicyError` unless the form `fields` and a file of `size` bytes meet `policy`."""
    now = now or datetime.now(UTC)
    expiration = policy.get("expiration")
    if not isinstance(expiration, str):
        raise PolicyError("InvalidPolicyDocument", "Invalid Policy: Policy missing expiration.",
                          "400 Bad Request")
    try:
        expires = datetime.fromisoformat(expiration.replace("Z", "+00:00"))
    except ValueError:
        raise PolicyError("InvalidPolicyDocument", "Invalid Policy: Invalid 'expiration' value.",
                          "400 Bad Request") from None
    if expires <= now:
        raise PolicyError("AccessDenied", "Invalid according to Policy: Policy expired.")
    values = {name.lower(): value for name, value in fields.items()}
    values["bucket"] = bucket
    covered = {"bucket"}
    for condition in policy.get("conditions", []):
        if isinstance(condition, dict):
            for name, expected in condition.items():
                covered.add(name.lower())
                if values.get(name.lower()) != expected:
                    raise _denied(condition)
        elif isinstance(condition, list) and len(condition) == 3:
            operator = str(condition[0]).lower()
            if operator == "content-length-range":
                low, high = int(condition[1]), int(condition[2])
                if size > high:
                    raise PolicyError("EntityTooLarge",
                                      "Your proposed upload exceeds the maximum allowed size",
                                      "400 Bad Request")
                if size < low:
                    raise PolicyError("EntityTooSmall",
                                      "Your proposed upload is smaller than the minimum "
                                      "allowed size", "400 Bad Request")
                continue
            name = str(condition[1]).lstrip("$").lower()
            covered.add(name)
            actual = values.get(name, "")
            if operator == "eq" and actual != condition[2]:
                raise _denied(condition)
            if operator == "starts-with" and not actual.startswith(str(condition[2])):
                raise _denied(condition)
            if operator not in ("eq", "starts-with"):
                raise PolicyError("InvalidPolicyDocument",
                                  f"Invalid Policy: unknown condition {condition[0]!r}",
                                  "400 Bad Request")
        else:
            raise PolicyError("InvalidPolicyDocument", "Invalid Policy: bad condition.",
                              "400 Bad Request")
    for name in values:
        if name in _UNCHECKED_FIELDS or name.startswith("x-ignore-") or name in covered:
            continue
        raise PolicyError(
            "AccessDenied",
            f"Invalid according to Policy: Extra input fields: {name}",
        )


def _error(start_response: Any, error: PolicyError) -> Iterable[bytes]:
    body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{error.code}</Code>'
            f"<Message>{escape(error.message)}</Message></Error>").encode()
    start_response(error.status, [("Content-Type", "application/xml"),
                                  ("Content-Length", str(len(body)))])
    return [body]


def with_post_policy(app: Any) -> Any:
    """Wrap a WSGI app so browser-based S3 uploads must meet their POST policy."""
    from werkzeug.formparser import parse_form_data

    def wrapped(environ: dict[str, Any], start_response: Any) -> Any:
        content_type = environ.get("CONTENT_TYPE", "")
        if (environ.get("REQUEST_METHOD") != "POST"
                or not content_type.startswith("multipart/form-data")
                or environ.get("HTTP_AUTHORIZATION")):
            return app(environ, start_response)
        length = int(environ.get("CONTENT_LENGTH") or 0)
        if length > MAX_POST_BYTES:
            return _error(start_response, PolicyError(
                "EntityTooLarge", "Your proposed upload exceeds the maximum allowed size",
                "400 Bad Request"))
        body = environ["wsgi.input"].read(length) if length else b""
        probe = dict(environ, **{"wsgi.input": io.BytesIO(body)})
        _, form, files = parse_form_data(probe)
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        encoded = form.get("policy") or form.get("Policy")
        if encoded is None:
            return app(environ, start_response)
        upload = files.get("file")
        size = len(upload.read()) if upload is not None else len(form.get("file", "").encode())
        try:
            policy = json.loads(base64.b64decode(encoded, validate=True))
            if not isinstance(policy, dict):
                raise ValueError("not an object")
        except (binascii.Error, ValueError):
            return _error(start_response, PolicyError(
                "InvalidPolicyDocument", "Invalid Policy: Invalid JSON.", "400 Bad Request"))
        bucket = environ.get("PATH_INFO", "/").lstrip("/").split("/", 1)[0]
        host_bucket = environ.get("HTTP_HOST", "").split(".s3", 1)
        if not bucket and len(host_bucket) == 2:
            bucket = host_bucket[0]
        fields = {name: value for name, value in form.items()}
        try:
            check_policy(policy, fields, bucket=bucket, size=size)
        except PolicyError as error:
            return _error(start_response, error)
        return app(environ, start_response)

    return wrapped
