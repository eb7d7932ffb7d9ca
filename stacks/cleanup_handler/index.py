"""On stack delete, remove what the portal created in SageMaker for this deployment.

Custom-resource handlers for the CDK Provider framework:
- `on_event`: on Delete, starts deleting every endpoint, endpoint config and model tagged with
  this deployment and stops its in-progress training jobs.
- `is_complete`: polled until none of them is left (re-issuing deletes, which are idempotent).

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

TAG_KEY = "easel:deployment"
GIVE_UP_SECONDS = float(os.environ.get("GIVE_UP_SECONDS", "1500"))


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
    return any(t["Key"] == TAG_KEY and t["Value"] == deployment_id for t in tags)


def _named(items: list[dict[str, Any]], name_key: str, deployment_id: str) -> list[dict]:
    return [item for item in items if item[name_key].startswith(f"{deployment_id}-")]


def _list(client: Any, operation: str, key: str, deployment_id: str, **kwargs: Any) -> list[dict]:
    paginator = client.get_paginator(operation)
    items: list[dict] = []
    for page in paginator.paginate(NameContains=deployment_id, **kwargs):
        items.extend(page.get(key, []))
    return items


def sweep(client: Any, deployment_id: str) -> SweepResult:
    """Issue one round of deletes/stops; return what is still present afterwards."""
    result = SweepResult()

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
        if item.get("EndpointStatus") == "Deleting":
            result.remaining.append(f"endpoint {name} (deleting)")
            continue
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
    return result


def _client() -> Any:
    return boto3.client("sagemaker")


def _deployment_id(event: dict[str, Any]) -> str:
    return event.get("ResourceProperties", {}).get("DeploymentId") or os.environ["DEPLOYMENT_ID"]


def on_event(event: dict[str, Any], context: Any, client: Any = None) -> dict[str, Any]:
    physical_id = event.get("PhysicalResourceId") or f"{_deployment_id(event)}-cleanup"
    response: dict[str, Any] = {"PhysicalResourceId": physical_id}
    if event["RequestType"] != "Delete":
        return response
    response["Data"] = {"StartedAt": str(time.time())}
    try:
        result = sweep(client or _client(), _deployment_id(event))
        logger.info("cleanup started: %s", result.actions or "nothing to delete")
    except Exception:  # never fail the stack delete
        logger.exception("cleanup sweep failed; is_complete will retry")
    return response


def is_complete(event: dict[str, Any], context: Any, client: Any = None) -> dict[str, Any]:
    if event["RequestType"] != "Delete":
        return {"IsComplete": True}
    started = float(event.get("Data", {}).get("StartedAt") or time.time())
    try:
        result = sweep(client or _client(), _deployment_id(event))
    except Exception:
        logger.exception("cleanup sweep failed")
        result = SweepResult(remaining=["(sweep failed)"])
    if not result.remaining:
        logger.info("cleanup complete")
        return {"IsComplete": True}
    if time.time() - started > GIVE_UP_SECONDS:
        logger.warning(
            "giving up after %.0f s; leftovers (find them with scripts/leftovers): %s",
            GIVE_UP_SECONDS, result.remaining,
        )
        return {"IsComplete": True}
    logger.info("waiting for: %s", result.remaining)
    return {"IsComplete": False}
