"""The cleanup custom resource's handlers: delete only this deployment's tagged resources.

moto holds endpoints, configs and models; training jobs use botocore's Stubber because moto has
no StopTrainingJob.
"""

from __future__ import annotations

import time

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.stub import ANY, Stubber
from moto import mock_aws

from easel_contracts import naming
from easel_webui.sagemaker_requests import MODEL_DOWNLOAD_TIMEOUT_S, STARTUP_HEALTH_TIMEOUT_S
from stacks.cleanup import GIVE_UP, PROVISIONING_ALLOWANCE
from stacks.cleanup_handler import index as cleanup
from tests.stack.sagemaker_fakes import IMAGE, ROLE, make_endpoint

# The longest endpoint create the portal allows: instance start, then its download and start-up
# timeouts (see test_cleanup_construct for the rule on the give-up time).
LONGEST_CREATE_S = (PROVISIONING_ALLOWANCE.to_seconds() + MODEL_DOWNLOAD_TIMEOUT_S
                    + STARTUP_HEALTH_TIMEOUT_S)
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
    c["logs"].create_log_group(logGroupName="/aws/sagemaker/Endpoints/easel-alice-sd15",
                               tags={"easel:deployment": "easel"})
    c["logs"].create_log_group(logGroupName="/aws/sagemaker/Endpoints/someone-else")

    extras = cleanup.Extras(autoscaling=c["autoscaling"], cloudwatch=c["cloudwatch"], logs=c["logs"])
    started = cleanup.on_event(DELETE, None, client=c["sagemaker"], extras=extras)
    assert cleanup.is_complete({**DELETE, **started}, None, client=c["sagemaker"],
                               extras=extras) == {"IsComplete": True}

    targets = {t["ResourceId"] for t in c["autoscaling"].describe_scalable_targets(
        ServiceNamespace="sagemaker")["ScalableTargets"]}
    assert ours not in targets and theirs in targets
    alarms = {a["AlarmName"] for a in c["cloudwatch"].describe_alarms()["MetricAlarms"]}
    assert alarms == {"other-alarm"}
    assert log_groups(c) == {"/aws/sagemaker/Endpoints/someone-else"}


def log_groups(c):
    return {g["logGroupName"] for g in c["logs"].describe_log_groups()["logGroups"]}


def test_endpoint_log_groups_are_deleted_only_after_the_endpoints_are_gone(aws_clients):
    # A deleting endpoint still ships logs, and SageMaker would recreate a deleted group.
    c = aws_clients
    make_endpoint(c["sagemaker"], "easel-alice-sd15", OURS)
    c["logs"].create_log_group(logGroupName="/aws/sagemaker/Endpoints/easel-alice-sd15",
                               tags={"easel:deployment": "easel"})
    extras = cleanup.Extras(autoscaling=c["autoscaling"], cloudwatch=c["cloudwatch"], logs=c["logs"])
    cleanup.on_event(DELETE, None, client=c["sagemaker"], extras=extras)
    assert log_groups(c) == {"/aws/sagemaker/Endpoints/easel-alice-sd15"}


def test_log_groups_of_another_deployment_sharing_the_prefix_are_kept(aws_clients):
    c = aws_clients
    c["logs"].create_log_group(logGroupName="/aws/sagemaker/Endpoints/easel-dev-bob",
                               tags={"easel:deployment": "easel-dev"})
    extras = cleanup.Extras(autoscaling=c["autoscaling"], cloudwatch=c["cloudwatch"], logs=c["logs"])
    cleanup.on_event(DELETE, None, client=c["sagemaker"], extras=extras)
    assert log_groups(c) == {"/aws/sagemaker/Endpoints/easel-dev-bob"}


def training_job(sagemaker, name, deployment):
    sagemaker.create_training_job(
        TrainingJobName=name, RoleArn=ROLE, Tags=[{"Key": "easel:deployment", "Value": deployment}],
        AlgorithmSpecification={"TrainingImage": IMAGE, "TrainingInputMode": "File"},
        OutputDataConfig={"S3OutputPath": "s3://b/training/"},
        ResourceConfig={"InstanceType": "ml.g5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 10},
        StoppingCondition={"MaxRuntimeInSeconds": 600})


def test_only_this_deployments_training_log_streams_are_deleted_never_the_group(aws_clients):
    c = aws_clients
    group = cleanup.TRAINING_LOG_GROUP
    c["logs"].create_log_group(logGroupName=group)
    for job, deployment in (("easel-dog", "easel"), ("easel-dev-cat", "easel-dev")):
        training_job(c["sagemaker"], job, deployment)
        c["logs"].create_log_stream(logGroupName=group, logStreamName=f"{job}/algo-1-1700000000")
    c["logs"].create_log_stream(logGroupName=group, logStreamName="other-job/algo-1-1")
    # moto's jobs never finish: list them as completed, as SageMaker would after a stop.
    sagemaker = CompletedJobs(c["sagemaker"])
    extras = cleanup.Extras(autoscaling=c["autoscaling"], cloudwatch=c["cloudwatch"], logs=c["logs"])
    cleanup.on_event(DELETE, None, client=sagemaker, extras=extras)
    streams = {s["logStreamName"] for s in c["logs"].describe_log_streams(
        logGroupName=group)["logStreams"]}
    assert streams == {"easel-dev-cat/algo-1-1700000000", "other-job/algo-1-1"}
    assert group in log_groups(c)


class CompletedJobs:
    """moto's SageMaker, with every training job listed as Completed."""

    def __init__(self, client):
        self._client = client

    def __getattr__(self, name):
        return getattr(self._client, name)

    def get_paginator(self, operation):
        paginator = self._client.get_paginator(operation)
        if operation != "list_training_jobs":
            return paginator

        class Completed:
            def paginate(self, **kwargs):
                status = kwargs.pop("StatusEquals", None)
                for page in paginator.paginate(**kwargs):
                    jobs = [{**j, "TrainingJobStatus": "Completed"}
                            for j in page["TrainingJobSummaries"]]
                    yield {**page, "TrainingJobSummaries": [
                        j for j in jobs if status in (None, "Completed")]}

        return Completed()


class FakeClock:
    def __init__(self):
        self.now = 1_000_000.0

    def __call__(self):
        return self.now


class CreatingEndpoints(CompletedJobs):
    """moto's SageMaker, with the named endpoints reported as Creating until `ready_at`; SageMaker
    refuses DeleteEndpoint on them until then."""

    def __init__(self, client, clock, creating, ready_at):
        super().__init__(client)
        self.clock, self.creating, self.ready_at = clock, set(creating), ready_at

    def get_paginator(self, operation):
        paginator = self._client.get_paginator(operation)
        if operation != "list_endpoints":
            return paginator
        outer = self

        class Listing:
            def paginate(self, **kwargs):
                for page in paginator.paginate(**kwargs):
                    yield {**page, "Endpoints": [
                        {**e, "EndpointStatus": "Creating"} if outer._creating(e["EndpointName"])
                        else e for e in page["Endpoints"]]}

        return Listing()

    def _creating(self, name):
        return name in self.creating and self.clock() < self.ready_at

    def delete_endpoint(self, EndpointName):
        if self._creating(EndpointName):
            raise ClientError({"Error": {"Code": "ValidationException",
                                         "Message": "Cannot delete in-progress endpoint"}},
                              "DeleteEndpoint")
        return self._client.delete_endpoint(EndpointName=EndpointName)


def test_endpoint_still_creating_is_waited_for_and_deleted_once_it_leaves_creating(
        aws_clients, monkeypatch):
    c = aws_clients
    clock = FakeClock()
    monkeypatch.setattr(cleanup, "_now", clock)
    monkeypatch.setattr(cleanup, "GIVE_UP_SECONDS", GIVE_UP.to_seconds())
    make_endpoint(c["sagemaker"], "easel-big", OURS)
    # A create as long as the portal's model-download plus start-up timeouts allow.
    sagemaker = CreatingEndpoints(c["sagemaker"], clock, ["easel-big"],
                                  ready_at=clock.now + LONGEST_CREATE_S)
    extras = cleanup.Extras(autoscaling=c["autoscaling"], cloudwatch=c["cloudwatch"], logs=c["logs"])
    event = {**DELETE, **cleanup.on_event(DELETE, None, client=sagemaker, extras=extras)}
    while True:
        clock.now += 20  # the Provider's query interval
        done = cleanup.is_complete(event, None, client=sagemaker, extras=extras)
        if done["IsComplete"]:
            break
        if sagemaker._creating("easel-big"):
            assert "easel-big" in names(c["sagemaker"])["endpoints"]
    assert "easel-big" not in names(c["sagemaker"])["endpoints"]
    assert clock.now - 1_000_000.0 < GIVE_UP.to_seconds()


def test_log_groups_are_kept_when_data_is_kept(aws_clients):
    c = aws_clients
    c["logs"].create_log_group(logGroupName="/aws/sagemaker/Endpoints/easel-bob",
                               tags={"easel:deployment": "easel"})
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
