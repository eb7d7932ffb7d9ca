"""The cleanup custom resource's handlers: delete only this deployment's tagged resources.

moto holds endpoints, configs and models; training jobs use botocore's Stubber because moto has
no StopTrainingJob.
"""

from __future__ import annotations

import time

import boto3
import pytest
from botocore.stub import ANY, Stubber
from moto import mock_aws

from easel_contracts import naming
from stacks.cleanup_handler import index as cleanup
from tests.stack.sagemaker_fakes import make_endpoint

OURS = naming.deployment_tags("easel")
DELETE = {"RequestType": "Delete", "ResourceProperties": {"DeploymentId": "easel"},
          "PhysicalResourceId": "easel-cleanup"}


@pytest.fixture(autouse=True)
def tag_environment(monkeypatch):
    """The tag keys the stack hands the handler (see test_handler_environment_*)."""
    for name, value in naming.handler_tag_environment().items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def sagemaker():
    with mock_aws():
        yield boto3.client("sagemaker", region_name="us-east-1")



def names(client):
    return {
        "endpoints": {e["EndpointName"] for e in client.list_endpoints()["Endpoints"]},
        "configs": {c["EndpointConfigName"] for c in client.list_endpoint_configs()["EndpointConfigs"]},
        "models": {m["ModelName"] for m in client.list_models()["Models"]},
    }


def test_delete_removes_this_deployments_tagged_resources_only(sagemaker):
    make_endpoint(sagemaker, "easel-alice-sd15", OURS)
    make_endpoint(sagemaker, "easel-untagged", [])  # our prefix but not our tag
    make_endpoint(sagemaker, "easel2-other", naming.deployment_tags("easel2"))
    make_endpoint(sagemaker, "someone-else", [{"Key": "team", "Value": "x"}])

    cleanup.on_event(DELETE, None, client=sagemaker)
    left = names(sagemaker)
    for kind in ("endpoints", "configs", "models"):
        assert "easel-alice-sd15" not in left[kind]
        assert {"easel-untagged", "easel2-other", "someone-else"} <= left[kind]
    assert cleanup.is_complete({**DELETE, "Data": {"StartedAt": str(time.time())}}, None,
                               client=sagemaker) == {"IsComplete": True}


def test_create_and_update_touch_nothing(sagemaker):
    make_endpoint(sagemaker, "easel-keep", OURS)
    for request in ("Create", "Update"):
        event = {**DELETE, "RequestType": request}
        assert cleanup.on_event(event, None, client=sagemaker)["PhysicalResourceId"]
        assert cleanup.is_complete(event, None, client=sagemaker) == {"IsComplete": True}
    assert "easel-keep" in names(sagemaker)["endpoints"]


def test_nothing_to_delete_completes_at_once(sagemaker):
    response = cleanup.on_event(DELETE, None, client=sagemaker)
    assert response["PhysicalResourceId"] == "easel-cleanup"
    assert cleanup.is_complete({**DELETE, **response}, None, client=sagemaker)["IsComplete"]


def stubbed(responses):
    client = boto3.client("sagemaker", region_name="us-east-1")
    stub = Stubber(client)
    for method, response, params in responses:
        if isinstance(response, str):
            stub.add_client_error(method, service_error_code=response,
                                  service_message="Could not find resource", expected_params=params)
        else:
            stub.add_response(method, response, params)
    stub.activate()
    return client, stub


def empty_lists(*, jobs_in_progress=(), jobs_stopping=()):
    """Stubbed list calls in sweep order: endpoints, configs, models, jobs (2 statuses)."""
    return [
        ("list_endpoints", {"Endpoints": []}, {"NameContains": "easel"}),
        ("list_endpoint_configs", {"EndpointConfigs": []}, {"NameContains": "easel"}),
        ("list_models", {"Models": []}, {"NameContains": "easel"}),
        ("list_training_jobs", {"TrainingJobSummaries": list(jobs_in_progress)},
         {"NameContains": "easel", "StatusEquals": "InProgress"}),
    ]


def job(name, status):
    return {"TrainingJobName": name, "TrainingJobStatus": status,
            "TrainingJobArn": f"arn:aws:sagemaker:us-east-1:123456789012:training-job/{name}",
            "CreationTime": 0}


def test_in_progress_training_jobs_of_this_deployment_are_stopped():
    ours, theirs = job("easel-bob-lora", "InProgress"), job("easel-foreign", "InProgress")
    calls = empty_lists(jobs_in_progress=[ours, theirs]) + [
        ("list_tags", {"Tags": OURS}, {"ResourceArn": ours["TrainingJobArn"]}),
        ("stop_training_job", {}, {"TrainingJobName": "easel-bob-lora"}),
        ("list_tags", {"Tags": []}, {"ResourceArn": theirs["TrainingJobArn"]}),
        ("list_training_jobs", {"TrainingJobSummaries": []},
         {"NameContains": "easel", "StatusEquals": "Stopping"}),
    ]
    client, stub = stubbed(calls)
    result = cleanup.sweep(client, "easel")
    stub.assert_no_pending_responses()
    assert result.actions == ["stop training job easel-bob-lora"]
    assert result.remaining == ["training job easel-bob-lora (inprogress)"]


def test_is_complete_waits_while_a_job_is_stopping():
    stopping = job("easel-bob-lora", "Stopping")
    calls = empty_lists() + [
        ("list_training_jobs", {"TrainingJobSummaries": [stopping]},
         {"NameContains": "easel", "StatusEquals": "Stopping"}),
        ("list_tags", {"Tags": OURS}, {"ResourceArn": stopping["TrainingJobArn"]}),
    ]
    client, _ = stubbed(calls)
    event = {**DELETE, "Data": {"StartedAt": str(time.time())}}
    assert cleanup.is_complete(event, None, client=client) == {"IsComplete": False}


def test_resources_already_gone_are_tolerated():
    endpoint = {"EndpointName": "easel-gone", "EndpointStatus": "InService", "CreationTime": 0,
                "LastModifiedTime": 0,
                "EndpointArn": "arn:aws:sagemaker:us-east-1:123456789012:endpoint/easel-gone"}
    calls = [
        ("list_endpoints", {"Endpoints": [endpoint]}, {"NameContains": "easel"}),
        ("list_tags", "ValidationException", {"ResourceArn": endpoint["EndpointArn"]}),
        *empty_lists()[1:],
        ("list_training_jobs", {"TrainingJobSummaries": []},
         {"NameContains": "easel", "StatusEquals": "Stopping"}),
    ]
    client, stub = stubbed(calls)
    result = cleanup.sweep(client, "easel")
    stub.assert_no_pending_responses()
    assert result.remaining == []


def test_delete_never_fails_the_stack_even_when_sagemaker_errors():
    client, _ = stubbed([("list_endpoints", "AccessDeniedException", {"NameContains": ANY})])
    response = cleanup.on_event(DELETE, None, client=client)
    assert response["PhysicalResourceId"] == "easel-cleanup"


def test_is_complete_gives_up_after_the_deadline_and_lets_the_delete_proceed(monkeypatch):
    client, _ = stubbed([("list_endpoints", "AccessDeniedException", {"NameContains": ANY})])
    monkeypatch.setattr(cleanup, "GIVE_UP_SECONDS", 10.0)
    event = {**DELETE, "Data": {"StartedAt": str(time.time() - 60)}}
    assert cleanup.is_complete(event, None, client=client) == {"IsComplete": True}


@pytest.fixture
def aws_clients():
    with mock_aws():
        region = {"region_name": "us-east-1"}
        yield {
            "sagemaker": boto3.client("sagemaker", **region),
            "autoscaling": boto3.client("application-autoscaling", **region),
            "cloudwatch": boto3.client("cloudwatch", **region),
            "logs": boto3.client("logs", **region),
        }


def scaling_target(autoscaling, endpoint):
    resource = f"endpoint/{endpoint}/variant/main"
    autoscaling.register_scalable_target(
        ServiceNamespace="sagemaker", ResourceId=resource,
        ScalableDimension="sagemaker:variant:DesiredInstanceCount", MinCapacity=1, MaxCapacity=2,
    )
    return resource


def test_scaling_targets_alarms_and_log_groups_of_the_deployment_are_removed(aws_clients):
    c = aws_clients
    make_endpoint(c["sagemaker"], "easel-alice-sd15", OURS)
    make_endpoint(c["sagemaker"], "someone-else", [])
    ours = scaling_target(c["autoscaling"], "easel-alice-sd15")
    theirs = scaling_target(c["autoscaling"], "someone-else")
    for name in ("easel-alice-sd15-backlog", "other-alarm"):
        c["cloudwatch"].put_metric_alarm(
            AlarmName=name, MetricName="HasBacklogWithoutCapacity", Namespace="AWS/SageMaker",
            Statistic="Average", Period=60, EvaluationPeriods=1, Threshold=1,
            ComparisonOperator="GreaterThanOrEqualToThreshold",
        )
    for group in ("/aws/sagemaker/Endpoints/easel-alice-sd15", "/aws/sagemaker/Endpoints/someone-else"):
        c["logs"].create_log_group(logGroupName=group)

    extras = cleanup.Extras(autoscaling=c["autoscaling"], cloudwatch=c["cloudwatch"], logs=c["logs"])
    cleanup.on_event(DELETE, None, client=c["sagemaker"], extras=extras)

    targets = {t["ResourceId"] for t in c["autoscaling"].describe_scalable_targets(
        ServiceNamespace="sagemaker")["ScalableTargets"]}
    assert ours not in targets and theirs in targets
    alarms = {a["AlarmName"] for a in c["cloudwatch"].describe_alarms()["MetricAlarms"]}
    assert alarms == {"other-alarm"}
    groups = {g["logGroupName"] for g in c["logs"].describe_log_groups()["logGroups"]}
    assert groups == {"/aws/sagemaker/Endpoints/someone-else"}


def test_log_groups_are_kept_when_data_is_kept(aws_clients):
    c = aws_clients
    c["logs"].create_log_group(logGroupName="/aws/sagemaker/Endpoints/easel-bob")
    extras = cleanup.Extras(autoscaling=c["autoscaling"], cloudwatch=c["cloudwatch"], logs=None)
    cleanup.on_event(DELETE, None, client=c["sagemaker"], extras=extras)
    assert c["logs"].describe_log_groups()["logGroups"]


def test_handler_reads_the_tag_key_the_stack_hands_it():
    assert cleanup.DEPLOYMENT_TAG_ENV == naming.DEPLOYMENT_TAG_ENV


def test_another_tag_key_in_the_environment_changes_what_counts_as_ours(sagemaker, monkeypatch):
    monkeypatch.setenv(naming.DEPLOYMENT_TAG_ENV, "someone:else")
    make_endpoint(sagemaker, "easel-alice-sd15", OURS)
    cleanup.sweep(sagemaker, "easel")
    assert "easel-alice-sd15" in names(sagemaker)["endpoints"]
