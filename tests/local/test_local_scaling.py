"""Local mode applies an endpoint's scaling plan when the stand-in brings it InService, as the
stack's EventBridge rule and scaler Lambda do on AWS (no page view needed)."""

from __future__ import annotations

import boto3
from local_helpers import deploy, unique, wait_for

from easel_contracts import scaling


def _store_plan(clients, endpoint: str) -> None:
    """What the portal writes on the endpoint's record when it deploys."""
    common = {"ServiceNamespace": "sagemaker", "ResourceId": f"endpoint/{endpoint}/variant/AllTraffic",
              "ScalableDimension": scaling.SCALABLE_DIMENSION}
    plan = scaling.ScalingPlan(
        endpoint_name=endpoint,
        scalable_target={**common, "MinCapacity": 1, "MaxCapacity": 2,
                         "Tags": {"easel:deployment": clients.aws.names.deployment_id}},
        policies=[{**common, "PolicyName": f"{endpoint}-invocations",
                   "PolicyType": "TargetTrackingScaling",
                   "TargetTrackingScalingPolicyConfiguration": {
                       "TargetValue": 10.0,
                       "PredefinedMetricSpecification": {
                           "PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"}}}],
    )
    clients.dynamodb.put_item(TableName=clients.aws.names.table, Item={
        "pk": {"S": f"endpoint#{endpoint}"}, "sk": {"S": "meta"},
        scaling.PLAN_ATTRIBUTE: {"S": plan.to_json()},
        scaling.STATUS_ATTRIBUTE: {"S": scaling.PENDING},
    })


def _status(clients, endpoint: str) -> str:
    item = clients.dynamodb.get_item(
        TableName=clients.aws.names.table,
        Key={"pk": {"S": f"endpoint#{endpoint}"}, "sk": {"S": "meta"}})["Item"]
    return item[scaling.STATUS_ATTRIBUTE]["S"]


def test_endpoint_in_service_gets_the_scaling_plan_of_its_record(clients):
    name = f"{clients.aws.names.deployment_id}-{unique('scaled')}"
    _store_plan(clients, name)

    described = deploy(clients, name)
    assert clients.sagemaker.describe_endpoint(EndpointName=described)["EndpointStatus"] == \
        "InService"
    wait_for(lambda: _status(clients, name) != scaling.PENDING, timeout=30)

    assert _status(clients, name) == scaling.APPLIED
    autoscaling = boto3.client("application-autoscaling")
    targets = autoscaling.describe_scalable_targets(
        ServiceNamespace="sagemaker", ResourceIds=[f"endpoint/{name}/variant/AllTraffic"],
    )["ScalableTargets"]
    assert [(t["MinCapacity"], t["MaxCapacity"]) for t in targets] == [(1, 2)]
