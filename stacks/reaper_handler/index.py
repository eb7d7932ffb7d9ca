"""Scheduled Lambda: delete this deployment's endpoints that have been idle past their TTL.

An endpoint is a candidate when it is named `<deployment_id>-…` and tagged
`easel:deployment=<deployment_id>`. Its time-to-live comes from its `easel:idle-ttl-hours` tag
(set by the portal; `0` or `off` disables auto-delete) or `DEFAULT_IDLE_TTL_HOURS`. It is idle
when it has been InService (or Failed) for longer than the TTL and CloudWatch shows no
invocations, and no async backlog, in the last TTL hours. Its scaling targets (with their
policies) and the portal's alarms named after it, the endpoint, its config and its model are
deleted; the portal's list shows it as Deleted on the next refresh.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
from botocore.exceptions import ClientError

logger = logging.getLogger("easel.reaper")
logger.setLevel(logging.INFO)

# Tag keys come from the stack (easel_contracts.naming), which this bundle cannot import.
DEPLOYMENT_TAG_ENV = "EASEL_DEPLOYMENT_TAG"
IDLE_TTL_TAG_ENV = "EASEL_IDLE_TTL_TAG"
REAPABLE_STATUSES = ("InService", "Failed", "OutOfService")


@dataclass(frozen=True)
class Decision:
    endpoint: str
    delete: bool
    reason: str


def _ttl_hours(tags: dict[str, str], default: float) -> float | None:
    ttl_tag = os.environ[IDLE_TTL_TAG_ENV]
    raw = tags.get(ttl_tag)
    if raw is None:
        return default
    if raw.strip().lower() in ("0", "off", "never", ""):
        return None
    try:
        value = float(raw)
    except ValueError:
        logger.warning("ignoring malformed %s tag %r", ttl_tag, raw)
        return default
    return value if value > 0 else None


def _activity(cloudwatch: Any, endpoint: str, variants: list[str], since: datetime,
              now: datetime) -> float:
    """Invocations plus async backlog over the window, summed across variants."""
    queries = []
    for index, variant in enumerate(variants):
        queries.append({
            "Id": f"inv{index}",
            "MetricStat": {
                "Metric": {
                    "Namespace": "AWS/SageMaker",
                    "MetricName": "Invocations",
                    "Dimensions": [{"Name": "EndpointName", "Value": endpoint},
                                   {"Name": "VariantName", "Value": variant}],
                },
                "Period": 300,
                "Stat": "Sum",
            },
        })
    queries.append({
        "Id": "backlog",
        "MetricStat": {
            "Metric": {
                "Namespace": "AWS/SageMaker",
                "MetricName": "ApproximateBacklogSize",
                "Dimensions": [{"Name": "EndpointName", "Value": endpoint}],
            },
            "Period": 300,
            "Stat": "Maximum",
        },
    })
    result = cloudwatch.get_metric_data(MetricDataQueries=queries, StartTime=since, EndTime=now)
    return sum(sum(r.get("Values", [])) for r in result.get("MetricDataResults", []))


def decide(sagemaker: Any, cloudwatch: Any, endpoint: dict[str, Any], *, deployment_id: str,
           default_ttl: float, now: datetime) -> Decision:
    name = endpoint["EndpointName"]
    tags = {t["Key"]: t["Value"]
            for t in sagemaker.list_tags(ResourceArn=endpoint["EndpointArn"]).get("Tags", [])}
    if tags.get(os.environ[DEPLOYMENT_TAG_ENV]) != deployment_id:
        return Decision(name, False, "not this deployment's")
    ttl = _ttl_hours(tags, default_ttl)
    if ttl is None:
        return Decision(name, False, "auto-delete off")
    if endpoint.get("EndpointStatus") not in REAPABLE_STATUSES:
        return Decision(name, False, f"status {endpoint.get('EndpointStatus')}")
    window = timedelta(hours=ttl)
    changed = endpoint.get("LastModifiedTime") or endpoint["CreationTime"]
    if now - changed < window:
        return Decision(name, False, "younger than its idle TTL")
    described = sagemaker.describe_endpoint(EndpointName=name)
    variants = [v["VariantName"] for v in described.get("ProductionVariants", [])]
    if _activity(cloudwatch, name, variants, now - window, now) > 0:
        return Decision(name, False, "used within its idle TTL")
    return Decision(name, True, f"idle for more than {ttl:g} h")


def remove_scaling(autoscaling: Any, cloudwatch: Any, name: str) -> None:
    """Deregister the endpoint's scalable targets (which drops their policies) and delete the
    portal's alarms named after it."""
    prefix = f"endpoint/{name}/variant/"
    for page in autoscaling.get_paginator("describe_scalable_targets").paginate(
        ServiceNamespace="sagemaker"
    ):
        for target in page["ScalableTargets"]:
            if target["ResourceId"].startswith(prefix):
                autoscaling.deregister_scalable_target(
                    ServiceNamespace="sagemaker", ResourceId=target["ResourceId"],
                    ScalableDimension=target["ScalableDimension"],
                )
    alarms = [a["AlarmName"] for page in cloudwatch.get_paginator("describe_alarms")
              .paginate(AlarmNamePrefix=f"{name}-") for a in page["MetricAlarms"]]
    if alarms:
        cloudwatch.delete_alarms(AlarmNames=alarms[:100])


def _try_remove_scaling(autoscaling: Any, cloudwatch: Any, name: str) -> None:
    """Remove the endpoint's scaling and alarms, but never let a failure there keep an idle
    endpoint (and its GPU bill) alive: the endpoint is deleted either way."""
    try:
        remove_scaling(autoscaling, cloudwatch, name)
    except ClientError as error:
        logger.warning("could not remove the scaling or alarms of %s (deleting it anyway): %s",
                       name, error)


def delete_endpoint(sagemaker: Any, name: str) -> None:
    described = sagemaker.describe_endpoint(EndpointName=name)
    config_name = described["EndpointConfigName"]
    models: list[str] = []
    try:
        config = sagemaker.describe_endpoint_config(EndpointConfigName=config_name)
        models = [v["ModelName"] for v in config.get("ProductionVariants", [])]
    except ClientError:
        logger.warning("endpoint config %s already gone", config_name)
    sagemaker.delete_endpoint(EndpointName=name)
    for call, kwargs in [(sagemaker.delete_endpoint_config, {"EndpointConfigName": config_name}),
                         *[(sagemaker.delete_model, {"ModelName": m}) for m in models]]:
        try:
            call(**kwargs)
        except ClientError as error:
            logger.warning("could not delete %s: %s", kwargs, error)


def reap(sagemaker: Any, cloudwatch: Any, *, deployment_id: str, default_ttl: float,
         now: datetime | None = None, autoscaling: Any = None) -> list[Decision]:
    now = now or datetime.now(UTC)
    decisions = []
    paginator = sagemaker.get_paginator("list_endpoints")
    for page in paginator.paginate(NameContains=deployment_id):
        for endpoint in page.get("Endpoints", []):
            if not endpoint["EndpointName"].startswith(f"{deployment_id}-"):
                continue
            try:
                decision = decide(sagemaker, cloudwatch, endpoint, deployment_id=deployment_id,
                                  default_ttl=default_ttl, now=now)
                if decision.delete:
                    if autoscaling is not None:
                        _try_remove_scaling(autoscaling, cloudwatch, decision.endpoint)
                    delete_endpoint(sagemaker, decision.endpoint)
            except ClientError as error:
                decision = Decision(endpoint["EndpointName"], False, f"error: {error}")
            logger.info("%s: %s (%s)", decision.endpoint,
                        "deleted" if decision.delete else "kept", decision.reason)
            decisions.append(decision)
    return decisions


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    decisions = reap(
        boto3.client("sagemaker"),
        boto3.client("cloudwatch"),
        deployment_id=os.environ["DEPLOYMENT_ID"],
        default_ttl=float(os.environ.get("DEFAULT_IDLE_TTL_HOURS", "4")),
        autoscaling=boto3.client("application-autoscaling"),
    )
    return {"deleted": [d.endpoint for d in decisions if d.delete]}
