"""The AWS calls the image-build handlers make, recorded by running them on every path against
clients that answer anything (so a new call in the handler shows up in the IAM test)."""

from __future__ import annotations

import contextlib
import re
from typing import Any

from botocore.exceptions import ClientError

from stacks.image_build.handler import handler

TAG = "0123456789abcdef0123456789abcdef"
BUILD_ID = "p:1"
_PROPS = {"ProjectName": "p", "RepositoryName": "r", "ImageTag": TAG, "ComputeType": "LARGE"}


class Recording:
    """A client whose every operation is recorded as `<service>:<Action>`."""

    def __init__(self, service: str, calls: set[str], answers: dict[str, Any]) -> None:
        self._service, self._calls, self._answers = service, calls, answers

    def __getattr__(self, operation: str):
        def call(**_kwargs: Any) -> Any:
            action = "".join(part.capitalize() for part in operation.split("_"))
            self._calls.add(f"{self._service}:{action}")
            answer = self._answers.get(operation, {})
            if isinstance(answer, Exception):
                raise answer
            return answer

        return call


def _codebuild(calls: set[str], *, running: bool = False) -> Recording:
    build = {
        "id": BUILD_ID, "projectName": "p", "buildStatus": "IN_PROGRESS" if running else "FAILED",
        "environment": {"environmentVariables": [{"name": "IMAGE_TAG", "value": TAG}]},
    }
    project = {"environment": {"environmentVariables": [
        {"name": "IMAGE_TAG", "value": TAG}, {"name": "WAIT_HANDLE_URL", "value": "https://x/y"},
    ]}}
    return Recording("codebuild", calls, {
        "list_builds_for_project": {"ids": [BUILD_ID] if running else []},
        "batch_get_builds": {"builds": [build]},
        "batch_get_projects": {"projects": [project]},
        "start_build": {"build": {"id": BUILD_ID}},
    })


def _ecr(calls: set[str], *, present: bool) -> Recording:
    missing = ClientError({"Error": {"Code": "ImageNotFoundException"}}, "DescribeImages")
    return Recording("ecr", calls, {
        "describe_images": {"imageDetails": [{"imageDigest": "sha256:0"}]} if present else missing,
    })


def _no_signal(*_args: Any, **_kwargs: Any) -> None:
    return None


def calls_of_on_event() -> set[str]:
    calls: set[str] = set()
    for kind in (handler.BUILD_RESOURCE, handler.IMAGE_RESOURCE):
        for present in (True, False):
            for running in (True, False):
                event = {"RequestType": "Create", "ResourceType": kind,
                         "ResourceProperties": _PROPS}
                # e.g. the image resource without an image fails: its calls still count
                with contextlib.suppress(handler.ImageBuildError):
                    handler.on_event(event, codebuild=_codebuild(calls, running=running),
                                     ecr=_ecr(calls, present=present), send=_no_signal)
    assert all(re.fullmatch(r"(codebuild|ecr):[A-Z]\w+", c) for c in calls)
    return calls


def calls_of_on_build_state() -> set[str]:
    calls: set[str] = set()
    event = {"detail": {"build-status": "FAILED", "build-id": BUILD_ID, "project-name": "p"}}
    handler.on_build_state(event, codebuild=_codebuild(calls), send=_no_signal)
    return calls
