"""Lambda handlers that build the container images with CodeBuild during `cdk deploy`.

A build can outlast what CloudFormation gives a custom resource (one hour), so no handler waits
for one. Per image the stack holds, in order:

1. `Custom::EaselImageBuild` (`on_event`): makes sure a build of the requested tag runs and
   returns at once. If the tag is already in ECR nothing is built and the wait condition is
   signalled here; if a build of the same tag is still running (e.g. from a deploy that rolled
   back) it is reused; otherwise a build is started (CodeBuild queues it when the account's
   concurrent-build quota is in use).
2. An `AWS::CloudFormation::WaitCondition` (up to 12 hours) whose handle URL is the build
   project's `WAIT_HANDLE_URL` variable.
3. `on_build_state`, on CodeBuild's "Build State Change" event for a finished build, signals the
   project's current handle: SUCCESS, or FAILURE with the build id, failed phase and log link (the
   deploy's failure reason). A build of a tag the project no longer wants signals nothing. (The
   buildspec also signals SUCCESS right after its push, with the same UniqueId, so a lost event
   does not leave a successful deploy waiting.)
4. `Custom::EaselImage` (`on_event`), after the wait: reports the image's tag and digest.

Delete does nothing: images stay in the repository (a live SageMaker endpoint may still use an
older tag; the repository itself is emptied and removed with the stack). The handle URL is a
presigned URL: it is read from the project when needed and never logged.
"""

from __future__ import annotations

import json
import os
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

import boto3
from botocore.exceptions import ClientError

BUILD_RESOURCE = "Custom::EaselImageBuild"
IMAGE_RESOURCE = "Custom::EaselImage"

# How many of the project's most recent builds to look at when searching for a running build of
# the same tag.
RECENT_BUILDS_TO_CHECK = 10
# CloudFormation shows at most this much of a signal's reason; longer text is cut.
MAX_REASON_CHARS = 1000
FINISHED_STATUSES = ("SUCCEEDED", "FAILED", "FAULT", "STOPPED", "TIMED_OUT")

_REQUIRED_PROPERTIES = ("ProjectName", "RepositoryName", "ImageTag")

# aws-cdk-lib ComputeType names (what the construct passes) -> the quota's environment name.
_COMPUTE_TYPE_QUOTA_NAMES = {
    "SMALL": "Linux/Small",
    "MEDIUM": "Linux/Medium",
    "LARGE": "Linux/Large",
    "X_LARGE": "Linux/XLarge",
    "X2_LARGE": "Linux/2XLarge",
}


class ImageBuildError(RuntimeError):
    """The image could not be built; the message is shown as the deploy's failure reason."""


def _codebuild_client() -> Any:
    return boto3.client("codebuild")


def _ecr_client() -> Any:
    return boto3.client("ecr")


def _properties(event: dict[str, Any]) -> dict[str, str]:
    props = event.get("ResourceProperties") or {}
    missing = [name for name in _REQUIRED_PROPERTIES if not props.get(name)]
    if missing:
        raise ImageBuildError(f"image build resource is missing properties: {', '.join(missing)}")
    return {key: str(value) for key, value in props.items() if key != "ServiceToken"}


def physical_id(props: dict[str, str]) -> str:
    return f"{props['RepositoryName']}:{props['ImageTag']}"


def find_image_digest(ecr: Any, *, repository: str, tag: str) -> str | None:
    """The digest of `repository:tag`, or None when no image carries that tag."""
    try:
        response = ecr.describe_images(repositoryName=repository, imageIds=[{"imageTag": tag}])
    except ClientError as exc:
        if exc.response["Error"]["Code"] == "ImageNotFoundException":
            return None
        raise ImageBuildError(
            f"could not look up image {repository}:{tag} in ECR: "
            f"{exc.response['Error']['Code']}: {exc.response['Error'].get('Message', '')}"
        ) from None
    details = response.get("imageDetails") or []
    return details[0].get("imageDigest") if details else None


def _variables(environment: dict[str, Any]) -> dict[str, str]:
    return {
        variable.get("name", ""): variable.get("value", "")
        for variable in environment.get("environmentVariables", [])
    }


def _build_tag(build: dict[str, Any]) -> str | None:
    return _variables(build.get("environment", {})).get("IMAGE_TAG")


def find_running_build(codebuild: Any, *, project: str, tag: str) -> str | None:
    """The id of a queued or running build of `project` that produces `tag`, if any."""
    ids = codebuild.list_builds_for_project(projectName=project, sortOrder="DESCENDING").get(
        "ids", []
    )[:RECENT_BUILDS_TO_CHECK]
    if not ids:
        return None
    for build in codebuild.batch_get_builds(ids=ids).get("builds", []):
        if build.get("buildStatus") == "IN_PROGRESS" and _build_tag(build) == tag:
            return build["id"]
    return None


def _quota_message(props: dict[str, str], exc: ClientError) -> str:
    environment = _COMPUTE_TYPE_QUOTA_NAMES.get(props.get("ComputeType", ""), "Linux/<size>")
    return (
        f"CodeBuild refused to start the image build for {props['RepositoryName']} "
        f"(project {props['ProjectName']}): AccountLimitExceededException: "
        f"{exc.response['Error'].get('Message', '')}. The account's CodeBuild quota of "
        f"concurrently running builds is 0 or its build queue is full: in Service Quotas > "
        f"AWS CodeBuild, request 'Concurrently running builds for {environment} environment' of "
        f"at least 1 (3 builds the images side by side), or choose another "
        f"image_build.compute_type in the config, then deploy again."
    )


def start_build(codebuild: Any, props: dict[str, str]) -> str:
    try:
        response = codebuild.start_build(
            projectName=props["ProjectName"],
            environmentVariablesOverride=[
                {"name": "IMAGE_TAG", "value": props["ImageTag"], "type": "PLAINTEXT"},
            ],
        )
    except ClientError as exc:
        code = exc.response["Error"]["Code"]
        if code == "AccountLimitExceededException":
            raise ImageBuildError(_quota_message(props, exc)) from None
        raise ImageBuildError(
            f"CodeBuild could not start the image build for {props['RepositoryName']} "
            f"(project {props['ProjectName']}): {code}: {exc.response['Error'].get('Message', '')}"
        ) from None
    return response["build"]["id"]


def project_wait(codebuild: Any, project: str) -> tuple[str, str]:
    """The project's current (wait handle URL, image tag)."""
    projects = codebuild.batch_get_projects(names=[project]).get("projects", [])
    if not projects:
        raise ImageBuildError(f"CodeBuild project {project} does not exist")
    variables = _variables(projects[0].get("environment", {}))
    return variables.get("WAIT_HANDLE_URL", ""), variables.get("IMAGE_TAG", "")


def signal(url: str, *, success: bool, unique_id: str, reason: str, data: str = "") -> None:
    """Signal a CloudFormation wait condition handle (a presigned S3 URL).

    The body and the empty Content-Type follow "Using wait conditions" in the CloudFormation
    User Guide (https://docs.aws.amazon.com/AWSCloudFormation/latest/UserGuide/
    using-cfn-waitcondition.html).
    """
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme != "https" or not parsed.hostname:
        raise ImageBuildError("the wait condition handle is not an https URL; deploy again")
    body = json.dumps({
        "Status": "SUCCESS" if success else "FAILURE",
        "Reason": reason[:MAX_REASON_CHARS],
        "UniqueId": unique_id,
        "Data": data,
    }).encode()
    request = urllib.request.Request(  # noqa: S310 - https only, checked above
        url, data=body, method="PUT", headers={"Content-Type": ""}
    )
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
        if response.status >= 300:
            raise ImageBuildError(f"signalling the wait condition failed: HTTP {response.status}")


def _start(props: dict[str, str], codebuild: Any, ecr: Any, send: Callable[..., None]
           ) -> dict[str, Any]:
    result: dict[str, Any] = {"PhysicalResourceId": physical_id(props)}
    digest = find_image_digest(ecr, repository=props["RepositoryName"], tag=props["ImageTag"])
    if digest:
        print(f"{physical_id(props)} already exists ({digest}); nothing to build")
        url, _tag = project_wait(codebuild, props["ProjectName"])
        send(url, success=True, unique_id="ecr", data=props["ImageTag"],
             reason=f"{physical_id(props)} is already in ECR")
        return {**result, "Data": {"BuildId": ""}}
    build_id = find_running_build(codebuild, project=props["ProjectName"], tag=props["ImageTag"])
    if build_id:
        print(f"reusing the build of {physical_id(props)} already under way: {build_id}")
    else:
        build_id = start_build(codebuild, props)
        print(f"started build {build_id} for {physical_id(props)}")
    return {**result, "Data": {"BuildId": build_id}}


def _image(props: dict[str, str], ecr: Any) -> dict[str, Any]:
    digest = find_image_digest(ecr, repository=props["RepositoryName"], tag=props["ImageTag"])
    if not digest:
        raise ImageBuildError(
            f"{physical_id(props)} is not in ECR although its build signalled success; "
            f"deploy again to rebuild it"
        )
    return {
        "PhysicalResourceId": physical_id(props),
        "Data": {"ImageTag": props["ImageTag"], "ImageDigest": digest},
    }


def on_event(event: dict[str, Any], context: Any = None, *, codebuild: Any = None,
             ecr: Any = None, send: Callable[..., None] | None = None) -> dict[str, Any]:
    """Provider-framework handler of both custom resource types (returns within seconds)."""
    request = event.get("RequestType")
    if request == "Delete":
        return {"PhysicalResourceId": event.get("PhysicalResourceId", "none")}
    if request not in ("Create", "Update"):
        raise ImageBuildError(f"unknown RequestType {request!r}")
    props = _properties(event)
    ecr = ecr or _ecr_client()
    kind = event.get("ResourceType")
    if kind == IMAGE_RESOURCE:
        return _image(props, ecr)
    if kind == BUILD_RESOURCE:
        return _start(props, codebuild or _codebuild_client(), ecr, send or signal)
    raise ImageBuildError(f"unknown resource type {kind!r}")


def build_console_url(build: dict[str, Any]) -> str:
    """Link to the build's page (with its log) in the CodeBuild console."""
    arn = build.get("arn", "")
    parts = arn.split(":")
    region = parts[3] if len(parts) > 4 else os.environ.get("AWS_REGION", "us-east-1")
    account = parts[4] if len(parts) > 4 else ""
    project = build.get("projectName") or build["id"].split(":", 1)[0]
    build_path = urllib.parse.quote(build["id"], safe="")
    return (
        f"https://{region}.console.aws.amazon.com/codesuite/codebuild/{account}/projects/"
        f"{project}/build/{build_path}/log?region={region}"
    )


def failure_message(build: dict[str, Any], tag: str) -> str:
    status = build.get("buildStatus", "UNKNOWN")
    failed_phase = next(
        (phase for phase in build.get("phases", [])
         if phase.get("phaseStatus") not in (None, "SUCCEEDED")),
        None,
    )
    detail = ""
    if failed_phase:
        contexts = "; ".join(
            c.get("message", "") for c in failed_phase.get("contexts", []) if c.get("message")
        )
        detail = f" in phase {failed_phase.get('phaseType')}"
        if contexts:
            detail += f": {contexts}"
    return (
        f"Image build of tag {tag} {status}{detail}. Build id: {build['id']}. "
        f"Log: {build_console_url(build)}"
    )


def on_build_state(event: dict[str, Any], context: Any = None, *, codebuild: Any = None,
                   send: Callable[..., None] | None = None) -> dict[str, Any]:
    """EventBridge handler: a build finished; signal its project's current wait condition."""
    detail = event.get("detail") or {}
    build_id = detail.get("build-id", "")
    if detail.get("build-status") not in FINISHED_STATUSES or not build_id:
        return {"signalled": False, "why": "not a finished build"}
    codebuild = codebuild or _codebuild_client()
    builds = codebuild.batch_get_builds(ids=[build_id]).get("builds", [])
    if not builds:
        return {"signalled": False, "why": f"CodeBuild does not know build {build_id}"}
    build = builds[0]
    project = build.get("projectName") or detail.get("project-name", "")
    url, wanted = project_wait(codebuild, project)
    tag = _build_tag(build) or ""
    if not url or tag != wanted:
        print(f"build {build_id} made tag {tag}; {project} now waits for {wanted}: no signal")
        return {"signalled": False, "why": "the project waits for another tag"}
    success = build.get("buildStatus") == "SUCCEEDED"
    reason = (f"Image build of tag {tag} succeeded. Build id: {build_id}" if success
              else failure_message(build, tag))
    (send or signal)(url, success=success, unique_id=build_id.rsplit(":", 1)[-1],
                     reason=reason, data=tag)
    print(f"signalled {'SUCCESS' if success else 'FAILURE'} for build {build_id} of {project}")
    return {"signalled": True, "success": success}
