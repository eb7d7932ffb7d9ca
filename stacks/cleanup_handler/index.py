"""On stack delete, remove what the portal created in SageMaker for this deployment.

Custom-resource handlers for the CDK Provider framework:
- `on_event`: on Delete, starts deleting every endpoint, endpoint config and model tagged with
  this deployment (with the endpoints' auto-scaling targets and policies and the portal's backlog
  alarms) and stops its in-progress training jobs.
- `is_complete`: polled until none of them is left (re-issuing deletes, which are idempotent).
  Once none is left, and unless data is kept (`PURGE_LOGS` false), it also deletes the
  endpoints' log groups and this deployment's training-job log streams (never the shared
  `/aws/sagemaker/TrainingJobs` group): only then, because a stopping job or a deleting endpoint
  still writes logs and would recreate them.

SageMaker refuses to delete an endpoint that is still being created or updated, and a create may
take as long as the model download plus the container start-up timeouts the portal sets. Such an
endpoint is waited for and deleted as soon as it leaves that state; `GIVE_UP_SECONDS` (with the
Provider's total timeout) is sized to outlast the longest create, within CloudFormation's one
hour for a custom resource.

Resources are found by name prefix (`<deployment_id>-`, cheap to list) and confirmed by the
`easel:deployment` tag, so other workloads in the account are never touched. Resources already
gone are fine. The stack delete never fails because of this handler: errors are logged, and after
`GIVE_UP_SECONDS` whatever is left is logged as a leftover (`scripts/leftovers` finds it) and
the delete proceeds.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

import boto3
from botocore.exceptions import ClientError

logger = logging.getLogger("easel.cleanup")
logger.setLevel(logging.INFO)

# The tag key comes from the stack (easel_contracts.naming), which this bundle cannot import.
DEPLOYMENT_TAG_ENV = "EASEL_DEPLOYMENT_TAG"
GIVE_UP_SECONDS = float(os.environ.get("GIVE_UP_SECONDS", "3120"))  # set by stacks/cleanup.py


ENDPOINT_LOG_PREFIX = "/aws/sagemaker/Endpoints/"
TRAINING_LOG_GROUP = "/aws/sagemaker/TrainingJobs"
# SageMaker rejects DeleteEndpoint in these states; the endpoint is deleted once it leaves them.
BUSY_ENDPOINT_STATUSES = ("Creating", "Updating", "SystemUpdating", "RollingBack")


def _now() -> float:
    return time.time()


@dataclass
class Extras:
    """Optional clients for what the portal makes besides SageMaker resources."""

    autoscaling: Any = None
    cloudwatch: Any = None
    logs: Any = None  # only when log groups are to be deleted (data not kept)


@dataclass
class SweepResult:
    """What one pass found: resources still present (being deleted or failing to delete)."""

    remaining: list[str] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)


def _is_gone(error: ClientError) -> bool:
    code = error.response.get("Error", {}).get("Code", "")
    message = error.response.get("Error", {}).get("Message", "")
    if code in ("ResourceNotFound", "ResourceNotFoundException"):
        return True
    return code == "ValidationException" and ("not find" in message or "not exist" in message)


def _ours(client: Any, arn: str, deployment_id: str) -> bool:
    try:
        tags = client.list_tags(ResourceArn=arn).get("Tags", [])
    except ClientError as error:
        if _is_gone(error):
            return False
        raise
    tag_key = os.environ[DEPLOYMENT_TAG_ENV]
    return any(t["Key"] == tag_key and t["Value"] == deployment_id for t in tags)


def _named(items: list[dict[str, Any]], name_key: str, deployment_id: str) -> list[dict]:
    return [item for item in items if item[name_key].startswith(f"{deployment_id}-")]


def _list(client: Any, operation: str, key: str, deployment_id: str, **kwargs: Any) -> list[dict]:
    paginator = client.get_paginator(operation)
    items: list[dict] = []
    for page in paginator.paginate(NameContains=deployment_id, **kwargs):
        items.extend(page.get(key, []))
    return items


def sweep(client: Any, deployment_id: str, *, extras: Extras | None = None) -> SweepResult:
    """Issue one round of deletes/stops; return what is still present afterwards."""
    result = SweepResult()
    extras = extras or Extras()

    def attempt(kind: str, name: str, call: Any, **kwargs: Any) -> None:
        try:
            call(**kwargs)
            result.actions.append(f"{kind} {name}")
        except ClientError as error:
            if _is_gone(error):
                return
            logger.warning("could not %s %s: %s", kind, name, error)
            result.remaining.append(f"{kind} {name}")

    endpoints = _list(client, "list_endpoints", "Endpoints", deployment_id)
    for item in _named(endpoints, "EndpointName", deployment_id):
        name = item["EndpointName"]
        if not _ours(client, item["EndpointArn"], deployment_id):
            continue
        status = item.get("EndpointStatus", "")
        if status == "Deleting":
            result.remaining.append(f"endpoint {name} (deleting)")
            continue
        if status in BUSY_ENDPOINT_STATUSES:
            result.remaining.append(
                f"endpoint {name} ({status.lower()}; deleted once it leaves {status})"
            )
            continue
        if extras.autoscaling is not None:
            for target in _scalable_targets(extras.autoscaling, name):
                attempt("deregister scaling target", target,
                        extras.autoscaling.deregister_scalable_target,
                        ServiceNamespace="sagemaker", ResourceId=target,
                        ScalableDimension="sagemaker:variant:DesiredInstanceCount")
        attempt("delete endpoint", name, client.delete_endpoint, EndpointName=name)
        result.remaining.append(f"endpoint {name}")

    configs = _list(client, "list_endpoint_configs", "EndpointConfigs", deployment_id)
    for item in _named(configs, "EndpointConfigName", deployment_id):
        name = item["EndpointConfigName"]
        if _ours(client, item["EndpointConfigArn"], deployment_id):
            attempt(
                "delete endpoint config", name, client.delete_endpoint_config,
                EndpointConfigName=name,
            )

    models = _list(client, "list_models", "Models", deployment_id)
    for item in _named(models, "ModelName", deployment_id):
        name = item["ModelName"]
        if _ours(client, item["ModelArn"], deployment_id):
            attempt("delete model", name, client.delete_model, ModelName=name)

    for status in ("InProgress", "Stopping"):
        jobs = _list(
            client, "list_training_jobs", "TrainingJobSummaries", deployment_id,
            StatusEquals=status,
        )
        for item in _named(jobs, "TrainingJobName", deployment_id):
            name = item["TrainingJobName"]
            if not _ours(client, item["TrainingJobArn"], deployment_id):
                continue
            if status == "InProgress":
                attempt("stop training job", name, client.stop_training_job, TrainingJobName=name)
            result.remaining.append(f"training job {name} ({status.lower()})")

    if extras.cloudwatch is not None:
        alarms = [a["AlarmName"] for page in extras.cloudwatch.get_paginator("describe_alarms")
                  .paginate(AlarmNamePrefix=f"{deployment_id}-") for a in page["MetricAlarms"]]
        if alarms:
            attempt("delete alarms", ",".join(alarms), extras.cloudwatch.delete_alarms,
                    AlarmNames=alarms[:100])
    if extras.logs is not None and not result.remaining:
        _purge_logs(client, extras.logs, deployment_id, attempt)
    return result


def _purge_logs(client: Any, logs: Any, deployment_id: str, attempt: Any) -> None:
    """Delete the endpoints' log groups tagged with this deployment and the log streams of this
    deployment's training jobs (any status) in SageMaker's shared training log group."""
    prefix = f"{ENDPOINT_LOG_PREFIX}{deployment_id}-"
    for page in logs.get_paginator("describe_log_groups").paginate(logGroupNamePrefix=prefix):
        for group in page["logGroups"]:
            arn = group["arn"].removesuffix(":*")
            try:
                tags = logs.list_tags_for_resource(resourceArn=arn).get("tags", {})
            except ClientError as error:
                if _is_gone(error):
                    continue
                raise
            if tags.get(os.environ[DEPLOYMENT_TAG_ENV]) == deployment_id:
                attempt("delete log group", group["logGroupName"], logs.delete_log_group,
                        logGroupName=group["logGroupName"])
    jobs = _list(client, "list_training_jobs", "TrainingJobSummaries", deployment_id)
    for item in _named(jobs, "TrainingJobName", deployment_id):
        job = item["TrainingJobName"]
        if not _ours(client, item["TrainingJobArn"], deployment_id):
            continue
        try:
            pages = list(logs.get_paginator("describe_log_streams").paginate(
                logGroupName=TRAINING_LOG_GROUP, logStreamNamePrefix=f"{job}/"))
        except ClientError as error:
            if _is_gone(error):
                return  # no training job ever logged in this region
            raise
        for page in pages:
            for stream in page["logStreams"]:
                attempt("delete log stream", stream["logStreamName"], logs.delete_log_stream,
                        logGroupName=TRAINING_LOG_GROUP, logStreamName=stream["logStreamName"])


def _scalable_targets(autoscaling: Any, endpoint: str) -> list[str]:
    targets = []
    for page in autoscaling.get_paginator("describe_scalable_targets").paginate(
        ServiceNamespace="sagemaker"
    ):
        for target in page["ScalableTargets"]:
            if target["ResourceId"].startswith(f"endpoint/{endpoint}/variant/"):
                targets.append(target["ResourceId"])
    return targets


def _client() -> Any:
    return boto3.client("sagemaker")


def _extras() -> Extras:
    purge_logs = os.environ.get("PURGE_LOGS", "false").lower() == "true"
    return Extras(
        autoscaling=boto3.client("application-autoscaling"),
        cloudwatch=boto3.client("cloudwatch"),
        logs=boto3.client("logs") if purge_logs else None,
    )


def _deployment_id(event: dict[str, Any]) -> str:
    return event.get("ResourceProperties", {}).get("DeploymentId") or os.environ["DEPLOYMENT_ID"]


def on_event(
    event: dict[str, Any], context: Any, client: Any = None, extras: Extras | None = None
) -> dict[str, Any]:
    physical_id = event.get("PhysicalResourceId") or f"{_deployment_id(event)}-cleanup"
    response: dict[str, Any] = {"PhysicalResourceId": physical_id}
    if event["RequestType"] != "Delete":
        return response
    response["Data"] = {"StartedAt": str(_now())}
    try:
        result = sweep(client or _client(), _deployment_id(event),
                       extras=extras if client else _extras())
        logger.info("cleanup started: %s", result.actions or "nothing to delete")
    except Exception:  # never fail the stack delete
        logger.exception("cleanup sweep failed; is_complete will retry")
    return response


def is_complete(
    event: dict[str, Any], context: Any, client: Any = None, extras: Extras | None = None
) -> dict[str, Any]:
    if event["RequestType"] != "Delete":
        return {"IsComplete": True}
    started = float(event.get("Data", {}).get("StartedAt") or _now())
    try:
        result = sweep(client or _client(), _deployment_id(event),
                       extras=extras if client else _extras())
    except Exception:
        logger.exception("cleanup sweep failed")
        result = SweepResult(remaining=["(sweep failed)"])
    if not result.remaining:
        logger.info("cleanup complete")
        return {"IsComplete": True}
    if _now() - started > GIVE_UP_SECONDS:
        logger.warning(
            "giving up after %.0f s; leftovers (find them with scripts/leftovers): %s",
            GIVE_UP_SECONDS, result.remaining,
        )
        return {"IsComplete": True}
    logger.info("waiting for: %s", result.remaining)
    return {"IsComplete": False}
