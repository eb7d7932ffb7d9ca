"""The scaler Lambda: applies the plan on an endpoint's record when the endpoint is InService."""

from __future__ import annotations

import boto3
import pytest
from botocore.stub import Stubber
from moto import mock_aws

from easel_contracts import scaling
from easel_contracts import table as table_keys
from stacks.scaling_handler import index as scaler

REGION = "us-east-1"
TABLE = "easel-table"
NAME = "easel-demo"
RESOURCE_ID = f"endpoint/{NAME}/variant/AllTraffic"


@pytest.fixture
def aws():
    with mock_aws():
        dynamodb = boto3.client("dynamodb", region_name=REGION)
        dynamodb.create_table(
            TableName=TABLE, BillingMode="PAY_PER_REQUEST",
            AttributeDefinitions=[{"AttributeName": n, "AttributeType": "S"} for n in ("pk", "sk")],
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"},
                       {"AttributeName": "sk", "KeyType": "RANGE"}])
        yield {
            "table": scaler.Table(dynamodb, TABLE),
            "autoscaling": boto3.client("application-autoscaling", region_name=REGION),
            "cloudwatch": boto3.client("cloudwatch", region_name=REGION),
        }


def _plan() -> scaling.ScalingPlan:
    common = {"ServiceNamespace": "sagemaker", "ResourceId": RESOURCE_ID,
              "ScalableDimension": scaling.SCALABLE_DIMENSION}
    return scaling.ScalingPlan(
        endpoint_name=NAME,
        scalable_target={**common, "MinCapacity": 0, "MaxCapacity": 2},
        policies=[{**common, "PolicyName": f"{NAME}-wake", "PolicyType": "StepScaling",
                   "StepScalingPolicyConfiguration": {
                       "AdjustmentType": "ChangeInCapacity",
                       "StepAdjustments": [{"MetricIntervalLowerBound": 0.0,
                                            "ScalingAdjustment": 1}]}}],
        alarms=[scaling.AlarmRequest(policy_name=f"{NAME}-wake", request={
            "AlarmName": f"{NAME}-backlog-without-capacity", "Namespace": "AWS/SageMaker",
            "MetricName": "HasBacklogWithoutCapacity", "Statistic": "Average", "Period": 60,
            "EvaluationPeriods": 2, "Threshold": 1.0,
            "ComparisonOperator": "GreaterThanOrEqualToThreshold"})],
    )


def _store(aws, plan: scaling.ScalingPlan | None, name: str = NAME) -> None:
    item = {"pk": {"S": f"endpoint#{name}"}, "sk": {"S": "meta"}}
    if plan is not None:
        item[scaling.PLAN_ATTRIBUTE] = {"S": plan.to_json()}
        item[scaling.STATUS_ATTRIBUTE] = {"S": scaling.PENDING}
    aws["table"].client.put_item(TableName=TABLE, Item=item)


def _record(aws, name: str = NAME) -> dict:
    return aws["table"].client.get_item(
        TableName=TABLE, Key=scaler.record_key(name))["Item"]


def _event(name: str = NAME, status: str = "IN_SERVICE") -> dict:
    return {"source": "aws.sagemaker", "detail-type": "SageMaker Endpoint State Change",
            "detail": {"EndpointName": name, "EndpointStatus": status}}


def _handle(aws, event) -> dict:
    return scaler.apply_event(event, deployment_id="easel", **aws)


def _targets(aws) -> list[dict]:
    return aws["autoscaling"].describe_scalable_targets(ServiceNamespace="sagemaker")[
        "ScalableTargets"]


def test_in_service_applies_target_policies_and_alarm_wired_to_the_policy(aws):
    _store(aws, _plan())
    assert _handle(aws, _event())["result"] == scaling.APPLIED
    (target,) = _targets(aws)
    assert (target["ResourceId"], target["MinCapacity"], target["MaxCapacity"]) == (
        RESOURCE_ID, 0, 2)
    (policy,) = aws["autoscaling"].describe_scaling_policies(ServiceNamespace="sagemaker")[
        "ScalingPolicies"]
    (alarm,) = aws["cloudwatch"].describe_alarms(AlarmNamePrefix=NAME)["MetricAlarms"]
    assert alarm["AlarmActions"] == [policy["PolicyARN"]]
    assert _record(aws)[scaling.STATUS_ATTRIBUTE] == {"S": scaling.APPLIED}


def test_the_api_spelling_of_in_service_is_accepted_too(aws):
    _store(aws, _plan())
    assert _handle(aws, _event(status="InService"))["result"] == scaling.APPLIED


def test_other_states_and_other_deployments_are_ignored(aws):
    _store(aws, _plan())
    _store(aws, _plan(), name="other-demo")
    assert _handle(aws, _event(status="CREATING"))["result"] == "status CREATING"
    assert _handle(aws, _event(name="other-demo"))["result"] == "not this deployment's"
    assert _targets(aws) == []


def test_endpoint_without_a_plan_is_left_alone(aws):
    _store(aws, None)
    assert _handle(aws, _event())["result"] == "no plan"
    assert _handle(aws, _event(name="easel-unknown"))["result"] == "no plan"
    assert _targets(aws) == []


def _refused(aws) -> dict:
    """The scaler's run when Application Auto Scaling refuses to register the target."""
    stubber = Stubber(aws["autoscaling"])
    stubber.add_client_error("register_scalable_target", "AccessDeniedException",
                             "not authorized to perform: sagemaker:UpdateEndpointWeightsAndCapacities")
    with stubber:
        return _handle(aws, _event())


def test_a_refused_request_is_recorded_as_the_scaling_error(aws):
    _store(aws, _plan())
    outcome = _refused(aws)
    assert outcome["result"] == scaling.FAILED
    record = _record(aws)
    assert record[scaling.STATUS_ATTRIBUTE] == {"S": scaling.FAILED}
    assert record[scaling.ERROR_ATTRIBUTE]["S"] == outcome["error"]
    assert outcome["error"].startswith("AccessDeniedException: not authorized")


def test_success_after_a_failure_clears_the_error(aws):
    _store(aws, _plan())
    _refused(aws)
    assert scaling.ERROR_ATTRIBUTE in _record(aws)
    _handle(aws, _event())
    assert scaling.ERROR_ATTRIBUTE not in _record(aws)
    assert _record(aws)[scaling.STATUS_ATTRIBUTE] == {"S": scaling.APPLIED}


def test_the_handlers_endpoint_record_key_is_the_table_contracts():
    # The handler is bundled without easel_contracts, so it spells the key itself.
    key = table_keys.endpoint_key("easel-demo")
    assert scaler.record_key("easel-demo") == {
        table_keys.PK: {"S": key.pk}, table_keys.SK: {"S": key.sk}}
