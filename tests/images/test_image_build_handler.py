"""The image-build handlers (start, report, build-finished signal) against stubbed CodeBuild and
ECR clients and a recorded wait-condition signal."""

from __future__ import annotations

from collections.abc import Iterator

import boto3
import pytest
from botocore.stub import Stubber

from stacks.image_build.handler import handler

PROJECT = "easel-image-webui"
REPOSITORY = "easel-webui"
TAG = "0123456789abcdef0123456789abcdef"
BUILD_ID = f"{PROJECT}:8d1d1f2e-1111-2222-3333-444455556666"
BUILD_ARN = f"arn:aws:codebuild:eu-west-1:123456789012:build/{BUILD_ID}"
DIGEST = "sha256:" + "ab" * 32


@pytest.fixture
def codebuild() -> Iterator[tuple[object, Stubber]]:
    client = boto3.client("codebuild", region_name="eu-west-1")
    with Stubber(client) as stub:
        yield client, stub
        stub.assert_no_pending_responses()


@pytest.fixture
def ecr() -> Iterator[tuple[object, Stubber]]:
    client = boto3.client("ecr", region_name="eu-west-1")
    with Stubber(client) as stub:
        yield client, stub
        stub.assert_no_pending_responses()


def _event(request: str = "Create", kind: str = handler.BUILD_RESOURCE, **extra: object) -> dict:
    event = {
        "RequestType": request,
        "ResourceType": kind,
        "ResourceProperties": {
            "ServiceToken": "arn:aws:lambda:eu-west-1:123456789012:function:x",
            "ProjectName": PROJECT,
            "RepositoryName": REPOSITORY,
            "ImageTag": TAG,
            "ComputeType": "LARGE",
        },
    }
    event.update(extra)
    return event


def _image_missing(stub: Stubber) -> None:
    stub.add_client_error(
        "describe_images",
        service_error_code="ImageNotFoundException",
        expected_params={"repositoryName": REPOSITORY, "imageIds": [{"imageTag": TAG}]},
    )


def _image_present(stub: Stubber) -> None:
    stub.add_response(
        "describe_images",
        {"imageDetails": [{"imageDigest": DIGEST, "imageTags": [TAG, "latest"]}]},
        {"repositoryName": REPOSITORY, "imageIds": [{"imageTag": TAG}]},
    )


def _no_recent_builds(stub: Stubber) -> None:
    stub.add_response(
        "list_builds_for_project",
        {},
        {"projectName": PROJECT, "sortOrder": "DESCENDING"},
    )


def _build(status: str, build_tag: str = TAG, **extra: object) -> dict:
    build = {
        "id": BUILD_ID,
        "arn": BUILD_ARN,
        "projectName": PROJECT,
        "buildStatus": status,
        "currentPhase": "BUILD" if status == "IN_PROGRESS" else "COMPLETED",
        "environment": {
            "type": "LINUX_CONTAINER",
            "image": "aws/codebuild/standard:7.0",
            "computeType": "BUILD_GENERAL1_LARGE",
            "environmentVariables": [{"name": "IMAGE_TAG", "value": build_tag, "type": "PLAINTEXT"}],
        },
    }
    build.update(extra)
    return build


HANDLE_URL = "https://cloudformation-waitcondition-eu-west-1.s3.eu-west-1.amazonaws.com/arn%3Ax?X-Amz-Signature=secret"


class Signals:
    """Records wait-condition signals instead of sending them."""

    def __init__(self) -> None:
        self.sent: list[dict] = []

    def __call__(self, url: str, **signal: object) -> None:
        self.sent.append({"url": url, **signal})


@pytest.fixture
def signals() -> Signals:
    return Signals()


def _project(stub: Stubber, *, tag: str = TAG, url: str = HANDLE_URL) -> None:
    stub.add_response(
        "batch_get_projects",
        {"projects": [{"name": PROJECT, "environment": {
            "type": "LINUX_CONTAINER", "image": "aws/codebuild/standard:7.0",
            "computeType": "BUILD_GENERAL1_LARGE",
            "environmentVariables": [
                {"name": "IMAGE_TAG", "value": tag, "type": "PLAINTEXT"},
                {"name": "WAIT_HANDLE_URL", "value": url, "type": "PLAINTEXT"},
            ]}}]},
        {"names": [PROJECT]},
    )


def _finished(status: str) -> dict:
    return {
        "source": "aws.codebuild",
        "detail-type": "CodeBuild Build State Change",
        "detail": {"build-status": status, "project-name": PROJECT, "build-id": BUILD_ARN},
    }


# --- Custom::EaselImageBuild: start ----------------------------------------------------------------


def test_create_starts_a_build_with_the_tag_and_returns_at_once(codebuild, ecr, signals):
    cb_client, cb_stub = codebuild
    ecr_client, ecr_stub = ecr
    _image_missing(ecr_stub)
    _no_recent_builds(cb_stub)
    cb_stub.add_response(
        "start_build",
        {"build": {"id": BUILD_ID}},
        {
            "projectName": PROJECT,
            "environmentVariablesOverride": [
                {"name": "IMAGE_TAG", "value": TAG, "type": "PLAINTEXT"}
            ],
        },
    )
    result = handler.on_event(_event(), codebuild=cb_client, ecr=ecr_client, send=signals)
    assert result["PhysicalResourceId"] == f"{REPOSITORY}:{TAG}"
    assert result["Data"]["BuildId"] == BUILD_ID
    assert signals.sent == []  # the build's end signals, not the start


def test_present_image_starts_no_build_and_signals_success(codebuild, ecr, signals):
    cb_client, cb_stub = codebuild  # only the project lookup is queued: no build is started
    ecr_client, ecr_stub = ecr
    _image_present(ecr_stub)
    _project(cb_stub)
    result = handler.on_event(_event("Update"), codebuild=cb_client, ecr=ecr_client, send=signals)
    assert result["Data"]["BuildId"] == ""
    (sent,) = signals.sent
    assert sent["url"] == HANDLE_URL
    assert sent["success"] is True
    assert sent["data"] == TAG


def test_running_build_of_the_same_tag_is_reused(codebuild, ecr, signals):
    cb_client, cb_stub = codebuild
    ecr_client, ecr_stub = ecr
    _image_missing(ecr_stub)
    cb_stub.add_response(
        "list_builds_for_project",
        {"ids": [BUILD_ID]},
        {"projectName": PROJECT, "sortOrder": "DESCENDING"},
    )
    cb_stub.add_response(
        "batch_get_builds", {"builds": [_build("IN_PROGRESS")]}, {"ids": [BUILD_ID]}
    )
    result = handler.on_event(_event(), codebuild=cb_client, ecr=ecr_client, send=signals)
    assert result["Data"]["BuildId"] == BUILD_ID  # and no start_build call was queued


def test_refused_start_names_the_concurrent_build_quota(codebuild, ecr):
    cb_client, cb_stub = codebuild
    ecr_client, ecr_stub = ecr
    _image_missing(ecr_stub)
    _no_recent_builds(cb_stub)
    cb_stub.add_client_error(
        "start_build",
        service_error_code="AccountLimitExceededException",
        service_message="Cannot have more than 0 builds in queue for the account",
    )
    with pytest.raises(handler.ImageBuildError) as err:
        handler.on_event(_event(), codebuild=cb_client, ecr=ecr_client)
    message = str(err.value)
    assert "AccountLimitExceededException" in message
    assert "Concurrently running builds for Linux/Large environment" in message
    assert "Service Quotas" in message
    assert "Cannot have more than 0 builds" in message


def test_other_start_errors_name_the_project(codebuild, ecr):
    cb_client, cb_stub = codebuild
    ecr_client, ecr_stub = ecr
    _image_missing(ecr_stub)
    _no_recent_builds(cb_stub)
    cb_stub.add_client_error("start_build", service_error_code="ResourceNotFoundException")
    with pytest.raises(handler.ImageBuildError, match=PROJECT):
        handler.on_event(_event(), codebuild=cb_client, ecr=ecr_client)


@pytest.mark.parametrize("kind", [handler.BUILD_RESOURCE, handler.IMAGE_RESOURCE])
def test_delete_leaves_images_alone(codebuild, ecr, kind):
    cb_client, _ = codebuild
    ecr_client, _ = ecr
    event = _event("Delete", kind, PhysicalResourceId=f"{REPOSITORY}:{TAG}")
    assert handler.on_event(event, codebuild=cb_client, ecr=ecr_client) == {
        "PhysicalResourceId": f"{REPOSITORY}:{TAG}"
    }


def test_missing_property_is_named():
    event = _event()
    del event["ResourceProperties"]["ImageTag"]
    with pytest.raises(handler.ImageBuildError, match="ImageTag"):
        handler.on_event(event, codebuild=object(), ecr=object())


def test_unknown_resource_type_is_named(ecr):
    ecr_client, _ = ecr
    with pytest.raises(handler.ImageBuildError, match="Custom::Other"):
        handler.on_event(_event(kind="Custom::Other"), codebuild=object(), ecr=ecr_client)


# --- Custom::EaselImage: after the wait ------------------------------------------------------------


def test_image_resource_reports_tag_and_digest(ecr):
    ecr_client, ecr_stub = ecr
    _image_present(ecr_stub)
    result = handler.on_event(_event(kind=handler.IMAGE_RESOURCE), ecr=ecr_client)
    assert result["Data"] == {"ImageTag": TAG, "ImageDigest": DIGEST}


def test_image_resource_without_the_image_fails_with_guidance(ecr):
    ecr_client, ecr_stub = ecr
    _image_missing(ecr_stub)
    with pytest.raises(handler.ImageBuildError, match="not in ECR.*deploy again"):
        handler.on_event(_event(kind=handler.IMAGE_RESOURCE), ecr=ecr_client)


# --- on_build_state: the build finished --------------------------------------------------------


def test_succeeded_build_signals_success_to_the_projects_handle(codebuild, signals):
    cb_client, cb_stub = codebuild
    cb_stub.add_response("batch_get_builds", {"builds": [_build("SUCCEEDED")]},
                         {"ids": [BUILD_ARN]})
    _project(cb_stub)
    result = handler.on_build_state(_finished("SUCCEEDED"), codebuild=cb_client, send=signals)
    assert result == {"signalled": True, "success": True}
    (sent,) = signals.sent
    assert sent["url"] == HANDLE_URL and sent["success"] is True and sent["data"] == TAG


@pytest.mark.parametrize("status", ["FAILED", "STOPPED", "TIMED_OUT", "FAULT"])
def test_unsuccessful_build_signals_failure_with_build_id_and_log_link(codebuild, signals, status):
    cb_client, cb_stub = codebuild
    failed = _build(
        status,
        phases=[
            {"phaseType": "PRE_BUILD", "phaseStatus": "SUCCEEDED"},
            {
                "phaseType": "BUILD",
                "phaseStatus": status if status != "FAULT" else "FAILED",
                "contexts": [{"statusCode": "COMMAND_EXECUTION_ERROR",
                              "message": "Error while executing command: docker build"}],
            },
        ],
    )
    cb_stub.add_response("batch_get_builds", {"builds": [failed]}, {"ids": [BUILD_ARN]})
    _project(cb_stub)
    handler.on_build_state(_finished(status), codebuild=cb_client, send=signals)
    (sent,) = signals.sent
    assert sent["success"] is False
    reason = sent["reason"]
    assert status in reason
    assert f"Build id: {BUILD_ID}" in reason
    assert (
        "https://eu-west-1.console.aws.amazon.com/codesuite/codebuild/123456789012/projects/"
        f"{PROJECT}/build/{PROJECT}%3A8d1d1f2e-1111-2222-3333-444455556666/log" in reason
    )
    assert "in phase BUILD: Error while executing command: docker build" in reason


def test_build_of_a_tag_the_project_no_longer_wants_signals_nothing(codebuild, signals):
    cb_client, cb_stub = codebuild
    cb_stub.add_response("batch_get_builds", {"builds": [_build("SUCCEEDED", build_tag="old")]},
                         {"ids": [BUILD_ARN]})
    _project(cb_stub)
    result = handler.on_build_state(_finished("SUCCEEDED"), codebuild=cb_client, send=signals)
    assert result["signalled"] is False
    assert signals.sent == []


def test_unfinished_build_state_is_ignored(signals):
    result = handler.on_build_state(_finished("IN_PROGRESS"), codebuild=object(), send=signals)
    assert result["signalled"] is False
    assert signals.sent == []


# --- the signal itself ------------------------------------------------------------------------


def test_signal_puts_the_wait_condition_body_with_an_empty_content_type(monkeypatch):
    import json
    import urllib.request

    sent = []

    class Response:
        status = 200

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    def fake_urlopen(request, timeout):
        sent.append(request)
        return Response()

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    handler.signal(HANDLE_URL, success=False, unique_id="b1", reason="x" * 5000, data=TAG)
    (request,) = sent
    assert request.get_method() == "PUT"
    assert request.full_url == HANDLE_URL
    # A presigned URL is signed without a content type: the header must be present and empty.
    assert request.get_header("Content-type") == ""
    body = json.loads(request.data)
    assert body["Status"] == "FAILURE" and body["UniqueId"] == "b1" and body["Data"] == TAG
    assert len(body["Reason"]) == handler.MAX_REASON_CHARS


def test_signal_refuses_a_non_https_handle():
    with pytest.raises(handler.ImageBuildError, match="not an https URL"):
        handler.signal("http://example.com/x", success=True, unique_id="b", reason="r")


def test_the_handle_url_is_never_printed(codebuild, signals, capsys):
    cb_client, cb_stub = codebuild
    cb_stub.add_response("batch_get_builds", {"builds": [_build("SUCCEEDED")]},
                         {"ids": [BUILD_ARN]})
    _project(cb_stub)
    handler.on_build_state(_finished("SUCCEEDED"), codebuild=cb_client, send=signals)
    out = capsys.readouterr()
    assert "X-Amz-Signature" not in out.out + out.err


# --- a 90-minute build, end to end on a fake clock ----------------------------------------------


def test_a_90_minute_build_completes_the_first_deploy(codebuild, ecr, signals, monkeypatch):
    """Start at t=0, the build finishes at t=90 min: the start handler answers CloudFormation at
    once (no handler sleeps or polls), the finished build signals the wait, and the wait a
    default deploy uses (three 50-minute builds) is still open at 90 minutes."""
    import time

    from stacks.image_build.waiter import CUSTOM_RESOURCE_MAX_SECONDS, wait_seconds

    clock = {"now": 0.0}

    def no_sleep(seconds: float) -> None:
        raise AssertionError(f"a handler slept {seconds} s")

    monkeypatch.setattr(time, "sleep", no_sleep)
    monkeypatch.setattr(time, "time", lambda: clock["now"])
    cb_client, cb_stub = codebuild
    ecr_client, ecr_stub = ecr
    _image_missing(ecr_stub)
    _no_recent_builds(cb_stub)
    cb_stub.add_response("start_build", {"build": {"id": BUILD_ID}})
    handler.on_event(_event(), codebuild=cb_client, ecr=ecr_client, send=signals)
    build_resource_done_at = clock["now"]
    assert build_resource_done_at < CUSTOM_RESOURCE_MAX_SECONDS
    assert signals.sent == []

    clock["now"] = 90 * 60.0  # the cold CUDA build takes 90 minutes
    cb_stub.add_response("batch_get_builds", {"builds": [_build("SUCCEEDED")]},
                         {"ids": [BUILD_ARN]})
    _project(cb_stub)
    handler.on_build_state(_finished("SUCCEEDED"), codebuild=cb_client, send=signals)
    (sent,) = signals.sent
    assert sent["success"] is True
    assert clock["now"] < wait_seconds(3, 50)  # the wait condition has not timed out

    _image_present(ecr_stub)
    image = handler.on_event(_event(kind=handler.IMAGE_RESOURCE), ecr=ecr_client)
    assert image["Data"]["ImageDigest"] == DIGEST
