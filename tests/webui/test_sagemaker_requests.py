"""The request builders scripts reuse: plain functions over validated specs."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from easel_webui import sagemaker_requests as req

ROLE = "arn:aws:iam::123456789012:role/easel-sagemaker"
NVME = req.InstanceFacts(gpu_memory_gb=24, instance_storage=True, hourly_usd=1.4)
EBS = req.InstanceFacts(gpu_memory_gb=16, instance_storage=False, hourly_usd=3.8)


def _spec(**overrides):
    data = dict(deployment_id="easel", name="sd15", creator="admin", image="img:1",
                execution_role_arn=ROLE, model_s3_uri="s3://bkt/models/m.tar.gz",
                instance_type="ml.g5.xlarge", instance=NVME, created_at=0.0,
                async_s3_uri="s3://bkt/async")
    data.update(overrides)
    return req.EndpointSpec(**data)


def test_names_carry_the_deployment_id_and_a_stamp():
    spec = _spec()
    assert spec.endpoint_name == "easel-sd15"
    assert spec.model_name == "easel-sd15-19700101000000"
    assert req.build_create_endpoint(spec)["EndpointConfigName"] == spec.endpoint_config_name


def test_uncompressed_model_prefix_uses_model_data_source():
    container = req.build_create_model(_spec(model_s3_uri="s3://bkt/models/sdxl/"))[
        "PrimaryContainer"]
    assert "ModelDataUrl" not in container
    assert container["ModelDataSource"]["S3DataSource"] == {
        "S3Uri": "s3://bkt/models/sdxl/", "S3DataType": "S3Prefix", "CompressionType": "None"}


def test_volume_size_refused_for_instance_storage_types():
    with pytest.raises(ValidationError, match="instance storage"):
        _spec(volume_size_gb=100)
    config = req.build_create_endpoint_config(
        _spec(instance=EBS, instance_type="ml.g6.xlarge", volume_size_gb=100))
    assert config["ProductionVariants"][0]["VolumeSizeInGB"] == 100


@pytest.mark.parametrize(("overrides", "message"), [
    ({"name": "Has_Upper"}, "name"),
    ({"min_instances": 0}, "at least 1 instance"),
    ({"min_instances": 3, "max_instances": 2}, "cannot exceed"),
    ({"model_s3_uri": "https://x"}, "s3://"),
    ({"mode": "async", "async_s3_uri": None, "min_instances": 0}, "async_s3_uri"),
])
def test_invalid_specs_name_the_problem(overrides, message):
    with pytest.raises(ValidationError, match=message):
        _spec(**overrides)


@pytest.mark.parametrize("mode", ["realtime", "async"])
def test_every_variant_sets_the_ami_whose_driver_runs_the_images_cuda(mode):
    spec = _spec(mode=mode, min_instances=1, instance_type="ml.g4dn.xlarge")
    (variant,) = req.build_create_endpoint_config(spec)["ProductionVariants"]
    # without it, g4dn/g5/p4d hosts run driver 470 and torch's CUDA 13 build sees no GPU
    assert variant["InferenceAmiVersion"] == "al2023-ami-sagemaker-inference-gpu-4-1"


def test_a_realtime_endpoint_tells_its_container_a_deadline_under_sagemakers_60_s():
    # "A customer's model containers must respond to requests within 60 seconds."
    # https://docs.aws.amazon.com/sagemaker/latest/APIReference/API_runtime_InvokeEndpoint.html
    environment = req.build_create_model(_spec())["PrimaryContainer"]["Environment"]
    assert 30 <= int(environment["EASEL_DEADLINE_SECONDS"]) < 60


def test_an_async_endpoint_tells_its_container_a_deadline_under_its_invocation_timeout():
    # InvokeEndpointAsync's InvocationTimeoutSeconds is 1..3600; the request expires after it.
    # https://docs.aws.amazon.com/sagemaker/latest/APIReference/API_runtime_InvokeEndpointAsync.html
    default = req.build_create_model(_spec(mode="async", min_instances=0))
    assert 60 < int(default["PrimaryContainer"]["Environment"]["EASEL_DEADLINE_SECONDS"]) < 3600
    shorter = req.build_create_model(_spec(mode="async", min_instances=0,
                                           async_invocation_timeout_s=900))
    assert 60 < int(shorter["PrimaryContainer"]["Environment"]["EASEL_DEADLINE_SECONDS"]) < 900
    with pytest.raises(ValidationError, match="3600"):
        _spec(mode="async", min_instances=0, async_invocation_timeout_s=7200)


def test_endpoint_and_training_job_require_cuda_on_sagemaker():
    environment = req.build_create_model(_spec())["PrimaryContainer"]["Environment"]
    assert environment["EASEL_REQUIRE_CUDA"] == "1"
    training = req.build_create_training_job(_training())
    assert training["Environment"] == {"EASEL_REQUIRE_CUDA": "1"}


@pytest.mark.parametrize("instance_type", ["ml.p3.2xlarge", "ml.m5.xlarge", "g5.xlarge"])
def test_types_the_images_cannot_run_on_are_refused(instance_type):
    with pytest.raises(ValidationError, match=instance_type.replace(".", r"\.")):
        _spec(instance_type=instance_type)
    with pytest.raises(ValidationError, match=instance_type.replace(".", r"\.")):
        _training(instance_type=instance_type)


def test_realtime_scaling_plan():
    plan = req.build_scaling(_spec(min_instances=1, max_instances=3))
    assert plan.scalable_target["ScalableDimension"] == "sagemaker:variant:DesiredInstanceCount"
    assert [p["PolicyType"] for p in plan.policies] == ["TargetTrackingScaling"]
    assert plan.alarms == []


def test_scalable_target_carries_the_deployment_tag_for_iam_conditions():
    plan = req.build_scaling(_spec())
    assert plan.scalable_target["Tags"] == {"easel:deployment": "easel"}


def test_async_scaling_plan_scales_to_zero_and_wakes_on_backlog():
    plan = req.build_scaling(_spec(mode="async", min_instances=0, max_instances=2))
    assert plan.scalable_target["MinCapacity"] == 0
    kinds = sorted(p["PolicyType"] for p in plan.policies)
    assert kinds == ["StepScaling", "TargetTrackingScaling"]
    (alarm,) = plan.alarms
    assert alarm.request["MetricName"] == "HasBacklogWithoutCapacity"
    assert alarm.policy_name == "easel-sd15-wake"


def _training(**overrides):
    data = dict(
        deployment_id="easel", name="dog", creator="u", image="t:1", execution_role_arn=ROLE,
        bucket="bkt", concepts_s3_uri="s3://bkt/concepts/u/dog/", model_s3_uri="s3://bkt/models/m/",
        class_s3_uri="s3://bkt/concepts/u/class/", instance_type="ml.g5.2xlarge", instance=NVME,
        spot=False, max_runtime_seconds=3600, hyperparameters={"mode": "lora"})
    data.update(overrides)
    return req.TrainingSpec(**data)


def test_training_job_request():
    spec = _training()
    request = req.build_create_training_job(spec)
    assert request["TrainingJobName"] == "easel-dog"
    assert [c["ChannelName"] for c in request["InputDataConfig"]] == ["concepts", "model", "class"]
    assert "MaxWaitTimeInSeconds" not in request["StoppingCondition"]
    assert request["EnableManagedSpotTraining"] is False
    with pytest.raises(ValidationError, match="hyperparameters"):
        req.TrainingSpec(**{**spec.model_dump(), "hyperparameters": {"steps": 10}})


def test_every_request_is_accepted_by_the_aws_api_models():
    """boto3 validates each request against the service's API model (names, types, shapes)."""
    import boto3
    from moto import mock_aws

    # moto keeps an older list of instance types than SageMaker; g4dn is in both
    spec = _spec(mode="async", min_instances=0, max_instances=2, instance_type="ml.g4dn.xlarge")
    training = req.TrainingSpec(
        deployment_id="easel", name="dog", creator="u", image="t:1", execution_role_arn=ROLE,
        bucket="bkt", concepts_s3_uri="s3://bkt/concepts/u/dog/",
        model_s3_uri="s3://bkt/models/m.tar.gz", instance_type="ml.g4dn.xlarge", instance=NVME,
        spot=True, max_runtime_seconds=3600, hyperparameters={"mode": "lora"})
    with mock_aws():
        sagemaker = boto3.client("sagemaker", region_name="us-east-1")
        sagemaker.create_model(**req.build_create_model(spec))
        sagemaker.create_model(**req.build_create_model(
            _spec(name="folder", model_s3_uri="s3://bkt/models/sdxl/")))
        sagemaker.create_endpoint_config(**req.build_create_endpoint_config(spec))
        sagemaker.create_endpoint(**req.build_create_endpoint(spec))
        sagemaker.create_training_job(**req.build_create_training_job(training))
        logs = boto3.client("logs", region_name="us-east-1")
        group = req.build_log_group(spec)
        logs.create_log_group(logGroupName=group["logGroupName"], tags=group["tags"])
        logs.put_retention_policy(logGroupName=group["logGroupName"],
                                  retentionInDays=group["retentionInDays"])
        autoscaling = boto3.client("application-autoscaling", region_name="us-east-1")
        cloudwatch = boto3.client("cloudwatch", region_name="us-east-1")
        plan = req.build_scaling(spec)
        autoscaling.register_scalable_target(**plan.scalable_target)
        arns = {p["PolicyName"]: autoscaling.put_scaling_policy(**p)["PolicyARN"]
                for p in plan.policies}
        for alarm in plan.alarms:
            cloudwatch.put_metric_alarm(**alarm.request, AlarmActions=[arns[alarm.policy_name]])
        assert sagemaker.describe_endpoint(EndpointName="easel-sd15")["EndpointName"]
        assert len(autoscaling.describe_scaling_policies(
            ServiceNamespace="sagemaker")["ScalingPolicies"]) == 2
        assert cloudwatch.describe_alarms()["MetricAlarms"][0]["MetricName"] == \
            "HasBacklogWithoutCapacity"


def test_an_async_endpoint_takes_one_request_at_once_per_gpu_through_moto():
    """One server worker per GPU: MaxConcurrentInvocationsPerInstance is the type's GPU count."""
    import boto3
    from moto import mock_aws

    four = req.InstanceFacts(gpu_memory_gb=64, gpus=4, instance_storage=True, hourly_usd=4.9)
    spec = _spec(mode="async", min_instances=0, max_instances=2,
                 instance_type="ml.g4dn.12xlarge", instance=four)
    with mock_aws():
        sagemaker = boto3.client("sagemaker", region_name="us-east-1")
        sagemaker.create_model(**req.build_create_model(spec))
        sagemaker.create_endpoint_config(**req.build_create_endpoint_config(spec))
        config = sagemaker.describe_endpoint_config(EndpointConfigName=spec.endpoint_config_name)
    client = config["AsyncInferenceConfig"]["ClientConfig"]
    assert client["MaxConcurrentInvocationsPerInstance"] == 4
    assert config["ProductionVariants"][0]["InstanceType"] == "ml.g4dn.12xlarge"


def test_an_async_endpoint_on_a_one_gpu_type_takes_one_request_at_once():
    spec = _spec(mode="async", min_instances=0, instance_type="ml.g5.xlarge")
    config = req.build_create_endpoint_config(spec)
    assert config["AsyncInferenceConfig"]["ClientConfig"]["MaxConcurrentInvocationsPerInstance"] == 1


def test_the_container_is_told_the_startup_health_check_budget():
    """Its warm-up (every size the form offers) must end before SageMaker's health check does."""
    from easel_contracts.readiness import STARTUP_BUDGET_ENV

    spec = _spec()
    environment = req.build_create_model(spec)["PrimaryContainer"]["Environment"]
    variant = req.build_create_endpoint_config(spec)["ProductionVariants"][0]
    assert int(environment[STARTUP_BUDGET_ENV]) == \
        variant["ContainerStartupHealthCheckTimeoutInSeconds"]


def test_the_container_is_told_where_the_compile_cache_lives():
    from easel_contracts.compile_cache import COMPILE_CACHE_URI_ENV

    spec = _spec(compile_cache_s3_uri="s3://bkt/compile-cache/")
    environment = req.build_create_model(spec)["PrimaryContainer"]["Environment"]
    assert environment[COMPILE_CACHE_URI_ENV] == "s3://bkt/compile-cache/"
