"""leftovers: lists only this deployment's resources, with hourly costs; deletes on request."""

from __future__ import annotations

import pytest
from script_support import ROLE_ARN

from scripts import leftovers

TAG = "easel:deployment"


def _endpoint(sm, name, deployment, instance_type="ml.g4dn.xlarge"):
    tags = [{"Key": TAG, "Value": deployment}] if deployment else []
    sm.create_model(ModelName=name, ExecutionRoleArn=ROLE_ARN, Tags=tags,
                    PrimaryContainer={"Image": "123456789012.dkr.ecr.us-east-1.amazonaws.com/i:1"})
    sm.create_endpoint_config(EndpointConfigName=name, Tags=tags, ProductionVariants=[{
        "VariantName": "AllTraffic", "ModelName": name, "InstanceType": instance_type,
        "InitialInstanceCount": 1}])
    sm.create_endpoint(EndpointName=name, EndpointConfigName=name, Tags=tags)


@pytest.fixture
def account(aws):
    sm = aws.client("sagemaker")
    _endpoint(sm, "easel-alice-sd", "easel")
    _endpoint(sm, "easel-untagged", None, "ml.p3.2xlarge")  # no price in the config
    _endpoint(sm, "easel-dev-bob", "easel-dev")      # another deployment sharing the prefix
    _endpoint(sm, "someone-else", None)
    for job, tag in (("easel-dog", "easel"), ("easel-dev-cat", "easel-dev")):
        sm.create_training_job(
            TrainingJobName=job, RoleArn=ROLE_ARN, Tags=[{"Key": TAG, "Value": tag}],
            AlgorithmSpecification={"TrainingImage": "i:1", "TrainingInputMode": "File"},
            OutputDataConfig={"S3OutputPath": "s3://b/training/"},
            ResourceConfig={"InstanceType": "ml.p3.2xlarge", "InstanceCount": 1,
                            "VolumeSizeInGB": 10},
            StoppingCondition={"MaxRuntimeInSeconds": 600})
    s3 = aws.client("s3")
    for name, tag in (("easel-storagedatabucket-abc", "easel"), ("easel-dev-data", "easel-dev"),
                      ("unrelated-bucket", None)):
        s3.create_bucket(Bucket=name)
        if tag:
            s3.put_bucket_tagging(Bucket=name,
                                  Tagging={"TagSet": [{"Key": TAG, "Value": tag}]})
    ecr = aws.client("ecr")
    ecr.create_repository(repositoryName="easel-registriesinference-xyz",
                          tags=[{"Key": TAG, "Value": "easel"}])
    ecr.create_repository(repositoryName="other-repo")
    logs = aws.client("logs")
    logs.create_log_group(logGroupName="/aws/sagemaker/Endpoints/easel-alice-sd")
    logs.create_log_group(logGroupName="/aws/sagemaker/Endpoints/easel-dev-bob",
                          tags={TAG: "easel-dev"})
    logs.create_log_group(logGroupName="/aws/lambda/unrelated")
    return aws


def _run(capsys, *argv):
    code = leftovers.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_listing_includes_only_this_deployments_resources(account, capsys):
    code, out, err = _run(capsys)
    assert code == 0, err
    for name in ("easel-alice-sd", "easel-untagged", "easel-dog", "easel-storagedatabucket-abc",
                 "easel-registriesinference-xyz", "/aws/sagemaker/Endpoints/easel-alice-sd"):
        assert name in out
    for name in ("easel-dev-bob", "easel-dev-cat", "someone-else", "easel-dev-data", "unrelated-bucket",
                 "other-repo", "/aws/lambda/unrelated"):
        assert name not in out


@pytest.fixture
def kept(account):
    """What a destroy keeps or lets escape besides SageMaker resources: the table, scaling,
    alarms, Lambda's own log groups and the training jobs' log streams."""
    dynamodb = account.client("dynamodb")
    for name, tag in (("easel-StateTable962DE04C-ABC", "easel"),
                      ("easel-dev-StateTable-XYZ", "easel-dev"), ("other-table", None)):
        dynamodb.create_table(
            TableName=name, BillingMode="PAY_PER_REQUEST",
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
            Tags=[{"Key": TAG, "Value": tag}] if tag else [])
    scaling = account.client("application-autoscaling")
    for endpoint in ("easel-alice-sd", "easel-dev-bob"):
        scaling.register_scalable_target(
            ServiceNamespace="sagemaker", ResourceId=f"endpoint/{endpoint}/variant/AllTraffic",
            ScalableDimension="sagemaker:variant:DesiredInstanceCount", MinCapacity=0,
            MaxCapacity=1)
    cloudwatch = account.client("cloudwatch")
    for alarm, tag in (("easel-alice-sd-backlog", "easel"), ("easel-dev-bob-backlog", "easel-dev")):
        cloudwatch.put_metric_alarm(
            AlarmName=alarm, MetricName="HasBacklogWithoutCapacity", Namespace="AWS/SageMaker",
            Statistic="Average", Period=60, EvaluationPeriods=1, Threshold=1,
            ComparisonOperator="GreaterThanOrEqualToThreshold", Tags=[{"Key": TAG, "Value": tag}])
    logs = account.client("logs")
    logs.create_log_group(logGroupName="/aws/lambda/easel-CustomS3AutoDeleteObjectsCustomRes-1A")
    logs.create_log_group(logGroupName=leftovers.TRAINING_LOG_GROUP)
    for stream in ("easel-dog/algo-1-1700000000", "easel-dev-cat/algo-1-1700000000"):
        logs.create_log_stream(logGroupName=leftovers.TRAINING_LOG_GROUP, logStreamName=stream)
    return account


def test_listing_shows_kept_tables_scaling_alarms_lambda_logs_and_training_log_streams(
        kept, capsys):
    code, out, err = _run(capsys)
    assert code == 0, err
    for kind, name in (("table", "easel-StateTable962DE04C-ABC"),
                       ("scaling-target", "endpoint/easel-alice-sd/variant/AllTraffic"),
                       ("alarm", "easel-alice-sd-backlog"),
                       ("log-group", "/aws/lambda/easel-CustomS3AutoDeleteObjectsCustomRes-1A"),
                       ("log-stream", "/aws/sagemaker/TrainingJobs:easel-dog/algo-1-1700000000")):
        assert any(line.startswith(kind) and name in line for line in out.splitlines()), name
    for name in ("easel-dev-StateTable-XYZ", "other-table", "endpoint/easel-dev-bob/",
                 "easel-dev-bob-backlog", "easel-dev-cat/"):
        assert name not in out
    # the shared training log group is SageMaker's, not the deployment's
    assert not any(line.startswith("log-group") and leftovers.TRAINING_LOG_GROUP in line
                   for line in out.splitlines())


def test_running_endpoints_are_priced_from_the_config_with_its_source(account, capsys):
    _, out, _ = _run(capsys)
    alice = next(line for line in out.splitlines() if line.startswith("endpoint ")
                 and "easel-alice-sd" in line)
    assert "1 x ml.g4dn.xlarge" in alice and "0.736" in alice
    untagged = next(line for line in out.splitlines() if "easel-untagged" in line
                    and line.startswith("endpoint "))
    assert untagged.rstrip().endswith("?")
    assert "about $0.74/hour plus types without a price in the config" in out
    assert "prices: Prices: on-demand SageMaker hosting/training" in out
    assert "checked 2026-11" in out


def test_delete_removes_this_deployments_sagemaker_resources_only(account, capsys):
    code, _, err = _run(capsys, "--delete", "--yes")
    assert code == 0, err
    sm = account.client("sagemaker")
    endpoints = {e["EndpointName"] for e in sm.list_endpoints()["Endpoints"]}
    assert endpoints == {"easel-dev-bob", "someone-else"}
    models = {m["ModelName"] for m in sm.list_models()["Models"]}
    assert models == {"easel-dev-bob", "someone-else"}
    assert "easel-storagedatabucket-abc" in {
        b["Name"] for b in account.client("s3").list_buckets()["Buckets"]}


def test_delete_without_a_terminal_or_yes_asks_for_confirmation(account, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin.isatty", lambda: False, raising=False)
    code, _, err = _run(capsys, "--delete")
    assert code == 2 and "--yes" in err
    assert len(account.client("sagemaker").list_endpoints()["Endpoints"]) == 4


def test_empty_account_says_nothing_is_left(aws, capsys):
    code, out, _ = _run(capsys)
    assert code == 0 and "nothing left for deployment 'easel'" in out
