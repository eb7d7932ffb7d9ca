"""The local S3 holds browser uploads (pre-signed POST) to their policy, as S3 does.

S3's rules: https://docs.aws.amazon.com/AmazonS3/latest/API/sigv4-HTTPPOSTConstructPolicy.html
(every condition must hold; every form field but policy/signature/file/x-ignore-* must be named
by a condition; content-length-range bounds the file).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import requests
from local_helpers import Clients, unique

from local.emulator.post_policy import PolicyError, check_policy


def _presign(clients: Clients, key: str, *, max_bytes: int = 100) -> dict:
    return clients.s3.generate_presigned_post(
        Bucket=clients.bucket, Key=key, Fields={"Content-Type": "image/png"},
        Conditions=[{"Content-Type": "image/png"}, ["content-length-range", 1, max_bytes]],
        ExpiresIn=300)


def _post(post: dict, body: bytes, **changes: str) -> requests.Response:
    fields = dict(post["fields"], **changes)
    return requests.post(post["url"], data=fields, files={"file": ("f", body)}, timeout=30)


def test_an_upload_that_meets_its_policy_is_stored(clients: Clients):
    key = unique("concepts/u/ok") + "/1.png"
    assert _post(_presign(clients, key), b"12345").status_code in (200, 204)
    assert clients.keys(key) == [key]


def test_another_content_type_than_the_policy_says_is_refused(clients: Clients):
    key = unique("concepts/u/type") + "/1.png"
    answer = _post(_presign(clients, key), b"<html>", **{"Content-Type": "text/html"})
    assert answer.status_code == 403
    assert "Policy Condition failed" in answer.text
    assert clients.keys(key) == []


def test_another_key_than_the_policy_says_is_refused(clients: Clients):
    key = unique("concepts/u/key") + "/1.png"
    answer = _post(_presign(clients, key), b"12345", key="models/evil.tar.gz")
    assert answer.status_code == 403
    assert clients.keys("models/evil.tar.gz") == []


@pytest.mark.parametrize(("body", "code"), [(b"x" * 101, "EntityTooLarge"),
                                            (b"", "EntityTooSmall")])
def test_a_file_outside_the_size_range_is_refused(clients: Clients, body: bytes, code: str):
    key = unique("concepts/u/size") + "/1.png"
    answer = _post(_presign(clients, key, max_bytes=100), body)
    assert answer.status_code == 400 and code in answer.text
    assert clients.keys(key) == []


def test_a_field_no_condition_names_is_refused():
    policy = {"expiration": "2999-01-01T00:00:00Z", "conditions": [{"key": "a"}]}
    with pytest.raises(PolicyError, match="Extra input fields: acl"):
        check_policy(policy, {"key": "a", "acl": "public-read"}, bucket="b", size=1)


def test_an_expired_policy_is_refused():
    past = (datetime.now(UTC) - timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    with pytest.raises(PolicyError, match="expired"):
        check_policy({"expiration": past, "conditions": []}, {}, bucket="b", size=1)


def test_starts_with_and_bucket_conditions_hold():
    policy = {"expiration": "2999-01-01T00:00:00Z",
              "conditions": [{"bucket": "b"}, ["starts-with", "$key", "concepts/u/"]]}
    check_policy(policy, {"key": "concepts/u/1.png"}, bucket="b", size=1)
    with pytest.raises(PolicyError):
        check_policy(policy, {"key": "concepts/v/1.png"}, bucket="b", size=1)
    with pytest.raises(PolicyError):
        check_policy(policy, {"key": "concepts/u/1.png"}, bucket="other", size=1)
