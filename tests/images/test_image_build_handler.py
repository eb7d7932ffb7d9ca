"""The image-build custom-resource handlers against stubbed CodeBuild and ECR clients."""

from __future__ import annotations

from collections.abc import Iterator

import boto3
import pytest
from botocore.stub import Stubber

from stacks.image_build_handler import handler

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


def _event(request: str = "Create", **extra: object) -> dict:
    event = {
        "RequestType": request,
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


def _build(status: str, **extra: object) -> dict:
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
            "environmentVariables": [{"name": "IMAGE_TAG", "value": TAG, "type": "PLAINTEXT"}],
        },
    }
    build.update(extra)
    return build


def _waiting_event(started_at: float = 1_000.0) -> dict:
    return _event(Data={"BuildId": BUILD_ID, "ImageTag": TAG, "StartedAt": str(int(started_at))})


# --- on_event -----------------------------------------------------------------------------------


def test_create_starts_a_build_with_the_tag(codebuild, ecr):
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
    result = handler.on_event(_event(), codebuild=cb_client, ecr=ecr_client)
    assert result["PhysicalResourceId"] == f"{REPOSITORY}:{TAG}"
    assert result["Data"]["BuildId"] == BUILD_ID
    assert result["Data"]["ImageTag"] == TAG


def test_present_image_starts_no_build(codebuild, ecr):
    cb_client, _ = codebuild  # no responses queued: any CodeBuild call fails the test
    ecr_client, ecr_stub = ecr
    _image_present(ecr_stub)
    result = handler.on_event(_event("Update"), codebuild=cb_client, ecr=ecr_client)
    assert result["Data"]["BuildId"] == ""
    assert result["Data"]["ImageDigest"] == DIGEST
    done = handler.is_complete({**_event("Update"), **result}, codebuild=cb_client)
    assert done["IsComplete"] is True


def test_running_build_of_the_same_tag_is_reused(codebuild, ecr):
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
    result = handler.on_event(_event(), codebuild=cb_client, ecr=ecr_client)
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


def test_delete_leaves_images_alone(codebuild, ecr):
    cb_client, _ = codebuild
    ecr_client, _ = ecr
    event = _event("Delete", PhysicalResourceId=f"{REPOSITORY}:{TAG}")
    assert handler.on_event(event, codebuild=cb_client, ecr=ecr_client) == {
        "PhysicalResourceId": f"{REPOSITORY}:{TAG}"
    }
    assert handler.is_complete(event, codebuild=cb_client)["IsComplete"] is True


def test_missing_property_is_named():
    event = _event()
    del event["ResourceProperties"]["ImageTag"]
    with pytest.raises(handler.ImageBuildError, match="ImageTag"):
        handler.on_event(event, codebuild=object(), ecr=object())


# --- is_complete --------------------------------------------------------------------------------


def test_succeeded_build_is_complete_with_digest(codebuild, ecr):
    cb_client, cb_stub = codebuild
    ecr_client, ecr_stub = ecr
    cb_stub.add_response("batch_get_builds", {"builds": [_build("SUCCEEDED")]}, {"ids": [BUILD_ID]})
    _image_present(ecr_stub)
    result = handler.is_complete(_waiting_event(), codebuild=cb_client, ecr=ecr_client)
    assert result == {"IsComplete": True, "Data": {"ImageDigest": DIGEST}}


def test_in_progress_build_is_not_complete(codebuild):
    cb_client, cb_stub = codebuild
    cb_stub.add_response(
        "batch_get_builds", {"builds": [_build("IN_PROGRESS")]}, {"ids": [BUILD_ID]}
    )
    result = handler.is_complete(_waiting_event(1_000), codebuild=cb_client, now=1_600)
    assert result == {"IsComplete": False}


@pytest.mark.parametrize("status", ["FAILED", "STOPPED", "TIMED_OUT", "FAULT"])
def test_unsuccessful_build_fails_with_build_id_and_log_link(codebuild, status):
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
        logs={"deepLink": "https://console.aws.amazon.com/cloudwatch/home?region=eu-west-1#x"},
    )
    cb_stub.add_response("batch_get_builds", {"builds": [failed]}, {"ids": [BUILD_ID]})
    with pytest.raises(handler.ImageBuildError) as err:
        handler.is_complete(_waiting_event(), codebuild=cb_client)
    message = str(err.value)
    assert status in message
    assert f"Build id: {BUILD_ID}" in message
    assert (
        "https://eu-west-1.console.aws.amazon.com/codesuite/codebuild/123456789012/projects/"
        f"{PROJECT}/build/{PROJECT}%3A8d1d1f2e-1111-2222-3333-444455556666/log" in message
    )
    assert "in phase BUILD: Error while executing command: docker build" in message


def test_succeeded_build_without_the_image_fails(codebuild, ecr):
    cb_client, cb_stub = codebuild
    ecr_client, ecr_stub = ecr
    cb_stub.add_response("batch_get_builds", {"builds": [_build("SUCCEEDED")]}, {"ids": [BUILD_ID]})
    _image_missing(ecr_stub)
    with pytest.raises(handler.ImageBuildError, match="not in ECR"):
        handler.is_complete(_waiting_event(), codebuild=cb_client, ecr=ecr_client)


def test_build_outliving_cloudformation_wait_fails_with_guidance(codebuild):
    cb_client, cb_stub = codebuild
    cb_stub.add_response(
        "batch_get_builds", {"builds": [_build("IN_PROGRESS")]}, {"ids": [BUILD_ID]}
    )
    started = 1_000.0
    with pytest.raises(handler.ImageBuildError) as err:
        handler.is_complete(
            _waiting_event(started),
            codebuild=cb_client,
            now=started + handler.DEFAULT_MAX_WAIT_SECONDS + 60,
        )
    message = str(err.value)
    assert BUILD_ID in message
    assert "deploy again" in message
