"""EventBridge target: apply an endpoint's scaling plan when SageMaker reports it InService.

The portal stores the plan (the `easel_contracts.scaling` contract, as JSON) on the endpoint's
table record when it deploys; this function registers the scalable target, puts the policies and
alarms, and writes the outcome back on the record (`scaling_status`, `scaling_error`), which the
Endpoints page shows. So every endpoint scales, however it is used (pages, /sdapi/v1, scripts).

Runs on Lambda with boto3 only (no pydantic): the plan's requests are applied as stored. The local
SageMaker stand-in calls `apply_event` with the emulator's clients.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

logger = logging.getLogger("easel.scaling")
logger.setLevel(logging.INFO)

# Names from easel_contracts.scaling (this function cannot import it: no pydantic on Lambda).
PLAN_ATTRIBUTE = "scaling_plan"
STATUS_ATTRIBUTE = "scaling_status"
ERROR_ATTRIBUTE = "scaling_error"
APPLIED, FAILED = "applied", "failed"
# The portal's endpoint record: pk `endpoint#<name>`, sk `meta`.
RECORD_SK = "meta"
# EventBridge events spell the status IN_SERVICE; the SageMaker API spells it InService.
IN_SERVICE = ("IN_SERVICE", "InService")
ERROR_LIMIT = 500


@dataclass(frozen=True)
class Table:
    """The portal's table: a DynamoDB client and the table's name."""

    client: Any
    name: str


def record_key(endpoint: str) -> dict[str, dict[str, str]]:
    return {"pk": {"S": f"endpoint#{endpoint}"}, "sk": {"S": RECORD_SK}}


def apply_plan(plan: dict[str, Any], autoscaling: Any, cloudwatch: Any) -> None:
    autoscaling.register_scalable_target(**plan["scalable_target"])
    arns: dict[str, str] = {}
    for policy in plan["policies"]:
        arns[policy["PolicyName"]] = autoscaling.put_scaling_policy(**policy)["PolicyARN"]
    for alarm in plan.get("alarms", []):
        cloudwatch.put_metric_alarm(**alarm["request"], AlarmActions=[arns[alarm["policy_name"]]])


def _describe(error: Exception) -> str:
    if isinstance(error, ClientError):
        detail = error.response.get("Error", {})
        text = f"{detail.get('Code', 'Error')}: {detail.get('Message', '')}"
    else:
        text = str(error)
    return text[:ERROR_LIMIT]


def apply_for_endpoint(endpoint: str, *, table: Table, autoscaling: Any,
                       cloudwatch: Any) -> dict[str, str]:
    """Apply the plan stored on `endpoint`'s record and record the outcome there."""
    item = table.client.get_item(TableName=table.name, Key=record_key(endpoint),
                                 ConsistentRead=True).get("Item")
    stored = (item or {}).get(PLAN_ATTRIBUTE, {}).get("S")
    if not stored:
        logger.info("%s: no scaling plan on record (not deployed by this portal)", endpoint)
        return {"endpoint": endpoint, "result": "no plan"}
    try:
        plan = json.loads(stored)
        apply_plan(plan, autoscaling, cloudwatch)
    except (ClientError, BotoCoreError, KeyError, TypeError, ValueError) as error:
        message = _describe(error)
        logger.warning("%s: scaling not applied: %s", endpoint, message)
        _record(table, endpoint, FAILED, message)
        return {"endpoint": endpoint, "result": FAILED, "error": message}
    logger.info("%s: scaling applied", endpoint)
    _record(table, endpoint, APPLIED, None)
    return {"endpoint": endpoint, "result": APPLIED}


def _record(table: Table, endpoint: str, status: str, error: str | None) -> None:
    names = {"#s": STATUS_ATTRIBUTE, "#e": ERROR_ATTRIBUTE}
    values: dict[str, Any] = {":s": {"S": status}}
    if error is None:
        expression = "SET #s = :s REMOVE #e"
    else:
        expression = "SET #s = :s, #e = :e"
        values[":e"] = {"S": error}
    try:
        table.client.update_item(TableName=table.name, Key=record_key(endpoint),
                                 UpdateExpression=expression,
                                 ConditionExpression="attribute_exists(pk)",
                                 ExpressionAttributeNames=names,
                                 ExpressionAttributeValues=values)
    except ClientError as failure:  # deleted meanwhile: nothing to show the outcome on
        logger.warning("%s: outcome not recorded: %s", endpoint, _describe(failure))


def apply_event(event: dict[str, Any], *, deployment_id: str, table: Table, autoscaling: Any,
                cloudwatch: Any) -> dict[str, str]:
    """Handle one "SageMaker Endpoint State Change" event."""
    detail = event.get("detail") or {}
    endpoint = str(detail.get("EndpointName") or "")
    status = detail.get("EndpointStatus")
    if not endpoint.startswith(f"{deployment_id}-"):
        return {"endpoint": endpoint, "result": "not this deployment's"}
    if status not in IN_SERVICE:
        return {"endpoint": endpoint, "result": f"status {status}"}
    return apply_for_endpoint(endpoint, table=table, autoscaling=autoscaling,
                              cloudwatch=cloudwatch)


def handler(event: dict[str, Any], context: Any) -> dict[str, str]:
    import boto3

    return apply_event(
        event,
        deployment_id=os.environ["DEPLOYMENT_ID"],
        table=Table(boto3.client("dynamodb"), os.environ["TABLE_NAME"]),
        autoscaling=boto3.client("application-autoscaling"),
        cloudwatch=boto3.client("cloudwatch"),
    )
