"""The idle-endpoint reaper: deletes only idle endpoints of this deployment past their TTL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import boto3
import pytest
from botocore.stub import Stubber
from moto import mock_aws

from easel_contracts import naming
from stacks.reaper_handler import index as reaper
from tests.stack.sagemaker_fakes import make_endpoint

LATER = datetime.now(UTC) + timedelta(hours=10)  # every endpoint created now is 10 h old then


@pytest.fixture(autouse=True)
def tag_environment(monkeypatch):
    """The tag keys the stack hands the handler (see test_handler_environment_*)."""
    for name, value in naming.handler_tag_environment().items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def clients():
    with mock_aws():
        yield (boto3.client("sagemaker", region_name="us-east-1"),
               boto3.client("cloudwatch", region_name="us-east-1"))


@pytest.fixture
def autoscaling(clients):
    return boto3.client("application-autoscaling", region_name="us-east-1")



def tags(ttl=None, deployment="easel"):
    result = [{"Key": naming.DEPLOYMENT_TAG, "Value": deployment}]
    if ttl is not None:
        result.append({"Key": naming.IDLE_TTL_TAG, "Value": ttl})
    return result


def invoked(cloudwatch, name, when):
    cloudwatch.put_metric_data(Namespace="AWS/SageMaker", MetricData=[{
        "MetricName": "Invocations", "Value": 3, "Timestamp": when,
        "Dimensions": [{"Name": "EndpointName", "Value": name},
                       {"Name": "VariantName", "Value": "main"}],
    }])


def endpoints(sagemaker):
    return {e["EndpointName"] for e in sagemaker.list_endpoints()["Endpoints"]}


def run(clients, now=LATER, default_ttl=4.0):
    return {d.endpoint: d for d in reaper.reap(*clients, deployment_id="easel",
                                               default_ttl=default_ttl, now=now)}


def test_idle_endpoint_past_ttl_is_deleted_with_its_config_and_model(clients):
    sagemaker, _ = clients
    make_endpoint(sagemaker, "easel-idle", tags())
    decisions = run(clients)
    assert decisions["easel-idle"].delete
    assert "easel-idle" not in endpoints(sagemaker)
    assert not sagemaker.list_endpoint_configs()["EndpointConfigs"]
    assert not sagemaker.list_models()["Models"]


def test_busy_endpoint_is_spared(clients):
    sagemaker, cloudwatch = clients
    make_endpoint(sagemaker, "easel-busy", tags())
    invoked(cloudwatch, "easel-busy", LATER - timedelta(hours=1))  # inside the 4 h window
    decisions = run(clients)
    assert not decisions["easel-busy"].delete
    assert decisions["easel-busy"].reason == "used within its idle TTL"
    assert "easel-busy" in endpoints(sagemaker)


def test_young_endpoint_is_spared(clients):
    sagemaker, _ = clients
    make_endpoint(sagemaker, "easel-new", tags())
    decisions = run(clients, now=datetime.now(UTC) + timedelta(hours=1))
    assert not decisions["easel-new"].delete
    assert "easel-new" in endpoints(sagemaker)


def test_ttl_tag_overrides_default_and_off_disables(clients):
    sagemaker, _ = clients
    make_endpoint(sagemaker, "easel-long", tags(ttl="24"))
    make_endpoint(sagemaker, "easel-pinned", tags(ttl="off"))
    make_endpoint(sagemaker, "easel-short", tags(ttl="2"))
    decisions = run(clients)
    assert not decisions["easel-long"].delete
    assert decisions["easel-pinned"].reason == "auto-delete off"
    assert decisions["easel-short"].delete
    assert endpoints(sagemaker) == {"easel-long", "easel-pinned"}


def test_other_deployments_and_untagged_endpoints_are_never_touched(clients):
    sagemaker, _ = clients
    make_endpoint(sagemaker, "easel-foreign", tags(deployment="other"))
    make_endpoint(sagemaker, "someone-else", [])
    run(clients)
    assert endpoints(sagemaker) == {"easel-foreign", "someone-else"}


def test_reaped_endpoint_loses_its_scaling_target_and_alarms(clients, autoscaling):
    sagemaker, cloudwatch = clients
    for name in ("easel-idle", "easel-busy"):
        make_endpoint(sagemaker, name, tags())
        autoscaling.register_scalable_target(
            ServiceNamespace="sagemaker", ResourceId=f"endpoint/{name}/variant/main",
            ScalableDimension="sagemaker:variant:DesiredInstanceCount", MinCapacity=1,
            MaxCapacity=2,
        )
        cloudwatch.put_metric_alarm(
            AlarmName=f"{name}-backlog-without-capacity", MetricName="HasBacklogWithoutCapacity",
            Namespace="AWS/SageMaker", Statistic="Average", Period=60, EvaluationPeriods=1,
            Threshold=1, ComparisonOperator="GreaterThanOrEqualToThreshold",
        )
    invoked(cloudwatch, "easel-busy", LATER - timedelta(hours=1))
    reaper.reap(sagemaker, cloudwatch, deployment_id="easel", default_ttl=4.0, now=LATER,
                autoscaling=autoscaling)
    targets = {t["ResourceId"] for t in autoscaling.describe_scalable_targets(
        ServiceNamespace="sagemaker")["ScalableTargets"]}
    assert targets == {"endpoint/easel-busy/variant/main"}
    alarms = {a["AlarmName"] for a in cloudwatch.describe_alarms()["MetricAlarms"]}
    assert alarms == {"easel-busy-backlog-without-capacity"}


def test_idle_endpoint_is_deleted_even_when_removing_its_scaling_fails(clients, autoscaling):
    sagemaker, cloudwatch = clients
    make_endpoint(sagemaker, "easel-idle", tags())
    stub = Stubber(autoscaling)
    stub.add_client_error("describe_scalable_targets", service_error_code="AccessDeniedException",
                          service_message="not authorized")
    with stub:
        decisions = reaper.reap(sagemaker, cloudwatch, deployment_id="easel", default_ttl=4.0,
                                now=LATER, autoscaling=autoscaling)
    assert [d.endpoint for d in decisions if d.delete] == ["easel-idle"]
    assert "easel-idle" not in endpoints(sagemaker)


def test_handler_reads_the_tag_keys_the_stack_hands_it():
    assert reaper.DEPLOYMENT_TAG_ENV == naming.DEPLOYMENT_TAG_ENV
    assert reaper.IDLE_TTL_TAG_ENV == naming.IDLE_TTL_TAG_ENV


def test_handler_environment_carries_the_contract_tag_keys(synth):
    (function,) = [f for f in synth.resources("AWS::Lambda::Function").values()
                   if "/Reaper/" in f["Metadata"]["aws:cdk:path"]]
    environment = function["Properties"]["Environment"]["Variables"]
    assert environment[naming.DEPLOYMENT_TAG_ENV] == naming.DEPLOYMENT_TAG
    assert environment[naming.IDLE_TTL_TAG_ENV] == naming.IDLE_TTL_TAG
