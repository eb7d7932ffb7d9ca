"""Custom-resource handlers that build a container image with CodeBuild during `cdk deploy`.

Provider framework contract (aws-cdk-lib `custom_resources.Provider`):

* `on_event` runs once per Create/Update/Delete. For Create/Update it makes sure an image with the
  requested tag will exist: if the tag is already in ECR nothing is built; if a build of the same
  tag is still running (e.g. a deploy that timed out earlier) it is reused; otherwise a build is
  started. The build id travels to `is_complete` in `Data`.
* `is_complete` is polled until the build finishes. A failed, stopped or timed-out build raises an
  error that names the build id and links to its log, so the deploy's failure message says where
  to look.

Delete does nothing: images stay in the repository (a live SageMaker endpoint may still use an
older tag; the repository itself is emptied and removed with the stack).
"""

from __future__ import annotations

import os
import time
import urllib.parse
from typing import Any

import boto3
from botocore.exceptions import ClientError

# How long `is_complete` keeps waiting for one build. CloudFormation gives a custom resource at
# most one hour (ServiceTimeout <= 3600 s); past this the deploy fails with a message that says the
# build goes on and that the next deploy picks it up instead of starting another.
DEFAULT_MAX_WAIT_SECONDS = 55 * 60

# How many of the project's most recent builds to look at when searching for a running build of
# the same tag.
RECENT_BUILDS_TO_CHECK = 10

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


def _build_tag(build: dict[str, Any]) -> str | None:
    for variable in build.get("environment", {}).get("environmentVariables", []):
        if variable.get("name") == "IMAGE_TAG":
            return variable.get("value")
    return None


def find_running_build(codebuild: Any, *, project: str, tag: str) -> str | None:
    """The id of an in-progress build of `project` that produces `tag`, if any."""
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
        f"concurrently running builds is too low (new accounts can start at 0 or 1): in Service "
        f"Quotas > AWS CodeBuild, request 'Concurrently running builds for {environment} "
        f"environment' of at least 3, or lower image_build.compute_type in the config, then "
        f"deploy again."
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


def on_event(event: dict[str, Any], context: Any = None, *, codebuild: Any = None,
             ecr: Any = None) -> dict[str, Any]:
    request = event.get("RequestType")
    if request == "Delete":
        return {"PhysicalResourceId": event.get("PhysicalResourceId", "none")}
    if request not in ("Create", "Update"):
        raise ImageBuildError(f"unknown RequestType {request!r}")
    props = _properties(event)
    codebuild = codebuild or _codebuild_client()
    ecr = ecr or _ecr_client()
    result = {"PhysicalResourceId": physical_id(props)}
    data = {"ImageTag": props["ImageTag"], "StartedAt": str(int(time.time()))}

    digest = find_image_digest(ecr, repository=props["RepositoryName"], tag=props["ImageTag"])
    if digest:
        print(f"{physical_id(props)} already exists ({digest}); nothing to build")
        data.update(BuildId="", ImageDigest=digest)
        return {**result, "Data": data}

    build_id = find_running_build(codebuild, project=props["ProjectName"], tag=props["ImageTag"])
    if build_id:
        print(f"waiting for the build of {physical_id(props)} already in progress: {build_id}")
    else:
        build_id = start_build(codebuild, props)
        print(f"started build {build_id} for {physical_id(props)}")
    data["BuildId"] = build_id
    return {**result, "Data": data}


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


def _failure_message(build: dict[str, Any], props: dict[str, str]) -> str:
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
    log_link = build.get("logs", {}).get("deepLink")
    message = (
        f"Image build for {props['RepositoryName']}:{props['ImageTag']} {status}{detail}. "
        f"Build id: {build['id']}. Log: {build_console_url(build)}"
    )
    if log_link:
        message += f" (CloudWatch: {log_link})"
    return message


def is_complete(event: dict[str, Any], context: Any = None, *, codebuild: Any = None,
                ecr: Any = None, now: float | None = None,
                max_wait_seconds: int = DEFAULT_MAX_WAIT_SECONDS) -> dict[str, Any]:
    if event.get("RequestType") == "Delete":
        return {"IsComplete": True}
    props = _properties(event)
    data = event.get("Data") or {}
    build_id = data.get("BuildId", "")
    if not build_id:
        return {"IsComplete": True}
    codebuild = codebuild or _codebuild_client()
    builds = codebuild.batch_get_builds(ids=[build_id]).get("builds", [])
    if not builds:
        raise ImageBuildError(
            f"CodeBuild does not know build {build_id} for {physical_id(props)}; deploy again"
        )
    build = builds[0]
    status = build.get("buildStatus")
    if status == "SUCCEEDED":
        ecr = ecr or _ecr_client()
        digest = find_image_digest(ecr, repository=props["RepositoryName"], tag=props["ImageTag"])
        if not digest:
            raise ImageBuildError(
                f"Build {build_id} succeeded but {physical_id(props)} is not in ECR. "
                f"Log: {build_console_url(build)}"
            )
        return {"IsComplete": True, "Data": {"ImageDigest": digest}}
    if status == "IN_PROGRESS":
        started = float(data.get("StartedAt") or 0)
        waited = (now if now is not None else time.time()) - started
        if started and waited > max_wait_seconds:
            raise ImageBuildError(
                f"Build {build_id} of {physical_id(props)} is still running after "
                f"{int(waited // 60)} minutes, longer than CloudFormation waits for one resource. "
                f"It keeps running; deploy again when it finishes (the next deploy reuses it "
                f"instead of starting another). Log: {build_console_url(build)}"
            )
        print(f"build {build_id}: {build.get('currentPhase', 'IN_PROGRESS')}")
        return {"IsComplete": False}
    raise ImageBuildError(_failure_message(build, props))
