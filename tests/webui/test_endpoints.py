"""Endpoint deploy sends the right SageMaker, scaling and logs requests; list; delete; caps."""

from __future__ import annotations

import html

import boto3
from botocore.stub import Stubber

from easel_contracts import scaling
from stacks.scaling_handler import index as scaler

from .conftest import BUCKET, REGION, TABLE

MODEL = f"s3://{BUCKET}/models/tiny.tar.gz"


def _deploy(client, **fields):
    data = {"name": "demo", "model": MODEL, "instance_type": "ml.g5.xlarge",
            "mode": "realtime", "min_instances": "1", "max_instances": "2",
            "idle_ttl_hours": "3"}
    data.update(fields)
    return client.post("/endpoints", data=data)


def _tags(request):
    return {t["Key"]: t["Value"] for t in request["Tags"]}


def test_deploy_creates_model_config_endpoint_with_tags_and_timeouts(world):
    world.put("models/tiny.tar.gz")
    admin = world.signed_in("admin")
    response = _deploy(admin)
    assert response.status_code == 303
    assert "error" not in response.headers["location"], response.headers["location"]
    (model,) = world.sagemaker.named("create_model")
    (config,) = world.sagemaker.named("create_endpoint_config")
    (endpoint,) = world.sagemaker.named("create_endpoint")
    assert endpoint["EndpointName"] == "easel-demo"
    assert config["EndpointConfigName"] == endpoint["EndpointConfigName"]
    assert model["ModelName"].startswith("easel-demo-")
    assert model["ExecutionRoleArn"] == world.settings.execution_role_arn
    container = model["PrimaryContainer"]
    assert container["ModelDataUrl"] == MODEL
    assert container["Image"] == world.settings.inference_image
    assert container["Environment"]["EASEL_MAX_RESPONSE_BYTES"] == str(6 * 1024 * 1024)
    assert container["Environment"]["EASEL_LORA_S3_URI"] == f"s3://{BUCKET}/loras/"
    # the prefix the execution role may write (easel_contracts.compile_cache)
    assert container["Environment"]["EASEL_COMPILE_CACHE_S3_URI"] == \
        f"s3://{BUCKET}/compile-cache/"
    for request in (model, config, endpoint):
        tags = _tags(request)
        assert tags["easel:deployment"] == "easel"
        assert tags["easel:creator"] == "admin"
    (variant,) = config["ProductionVariants"]
    assert variant["InstanceType"] == "ml.g5.xlarge"
    assert variant["InitialInstanceCount"] == 1
    assert variant["ModelDataDownloadTimeoutInSeconds"] >= 900
    assert variant["ContainerStartupHealthCheckTimeoutInSeconds"] >= 900
    assert "VolumeSizeInGB" not in variant  # ml.g5 has instance storage
    assert "AsyncInferenceConfig" not in config


def test_deploy_creates_the_log_group_with_retention(world):
    world.put("models/tiny.tar.gz")
    _deploy(world.signed_in("admin"))
    logs = boto3.client("logs", region_name=REGION)
    groups = logs.describe_log_groups(logGroupNamePrefix="/aws/sagemaker/Endpoints/easel-demo")
    (group,) = groups["logGroups"]
    assert group["retentionInDays"] == world.settings.log_retention_days
    tags = logs.list_tags_log_group(logGroupName=group["logGroupName"])["tags"]
    assert tags["easel:deployment"] == "easel"


def test_volume_size_only_for_types_without_instance_storage(world):
    world.put("models/tiny.tar.gz")
    admin = world.signed_in("admin")
    _deploy(admin, name="nvme", instance_type="ml.g5.xlarge", volume_size_gb="200")
    _deploy(admin, name="ebs", instance_type="ml.g6.xlarge", volume_size_gb="200")
    configs = {c["EndpointConfigName"].rsplit("-", 1)[0]: c["ProductionVariants"][0]
               for c in world.sagemaker.named("create_endpoint_config")}
    assert "VolumeSizeInGB" not in configs["easel-nvme"]
    assert configs["easel-ebs"]["VolumeSizeInGB"] == 200


def _in_service_event(name):
    """A "SageMaker Endpoint State Change" event as EventBridge delivers it."""
    return {"source": "aws.sagemaker", "detail-type": "SageMaker Endpoint State Change",
            "detail": {"EndpointName": name, "EndpointStatus": "IN_SERVICE"}}


def _run_scaler(world, name="easel-demo", *, autoscaling=None):
    """What the stack's EventBridge rule does when SageMaker reports the endpoint InService."""
    table = scaler.Table(boto3.client("dynamodb", region_name=REGION), TABLE)
    return scaler.apply_event(
        _in_service_event(name), deployment_id="easel", table=table,
        autoscaling=autoscaling or boto3.client("application-autoscaling", region_name=REGION),
        cloudwatch=boto3.client("cloudwatch", region_name=REGION))


def test_viewing_endpoints_never_registers_scaling(world):
    world.put("models/tiny.tar.gz")
    admin = world.signed_in("admin")
    _deploy(admin)
    world.sagemaker.set_status("easel-demo", "InService", instances=1)
    assert "InService" in admin.get("/endpoints").text
    admin.get("/endpoints/status")
    assert world.autoscaling.calls == []
    assert world.cloudwatch.named("put_metric_alarm") == []


def test_deploy_stores_the_scaling_plan_on_the_endpoint_record(world):
    world.put("models/tiny.tar.gz")
    _deploy(world.signed_in("admin"))
    record = world.portal.endpoints.record("easel-demo")
    assert record[scaling.STATUS_ATTRIBUTE] == scaling.PENDING
    plan = scaling.ScalingPlan.from_json(record[scaling.PLAN_ATTRIBUTE])
    target = plan.scalable_target
    assert target["ResourceId"] == "endpoint/easel-demo/variant/AllTraffic"
    assert (target["MinCapacity"], target["MaxCapacity"]) == (1, 2)
    assert target["Tags"] == {"easel:deployment": "easel"}


def test_endpoint_never_viewed_gets_target_tracking_when_in_service(world):
    world.put("models/tiny.tar.gz")
    _deploy(world.signed_in("admin"))  # deployed, then used only through the API or scripts
    assert _run_scaler(world)["result"] == "applied"
    autoscaling = boto3.client("application-autoscaling", region_name=REGION)
    (target,) = autoscaling.describe_scalable_targets(ServiceNamespace="sagemaker")[
        "ScalableTargets"]
    assert target["ResourceId"] == "endpoint/easel-demo/variant/AllTraffic"
    assert (target["MinCapacity"], target["MaxCapacity"]) == (1, 2)
    (policy,) = autoscaling.describe_scaling_policies(ServiceNamespace="sagemaker")[
        "ScalingPolicies"]
    metric = policy["TargetTrackingScalingPolicyConfiguration"]["PredefinedMetricSpecification"]
    assert metric["PredefinedMetricType"] == "SageMakerVariantInvocationsPerInstance"
    assert world.portal.endpoints.record("easel-demo")[scaling.STATUS_ATTRIBUTE] == "applied"


def test_async_endpoint_scales_to_zero_with_step_scaling_on_backlog(world):
    world.put("models/tiny.tar.gz")
    admin = world.signed_in("admin")
    _deploy(admin, mode="async", min_instances="0", max_instances="2")
    (config,) = world.sagemaker.named("create_endpoint_config")
    output = config["AsyncInferenceConfig"]["OutputConfig"]["S3OutputPath"]
    assert output.startswith(f"s3://{BUCKET}/async/out/")
    (model,) = world.sagemaker.named("create_model")
    limit = int(model["PrimaryContainer"]["Environment"]["EASEL_MAX_RESPONSE_BYTES"])
    assert limit > 6 * 1024 * 1024
    _run_scaler(world)
    autoscaling = boto3.client("application-autoscaling", region_name=REGION)
    (target,) = autoscaling.describe_scalable_targets(ServiceNamespace="sagemaker")[
        "ScalableTargets"]
    assert target["MinCapacity"] == 0
    policies = {p["PolicyType"]: p for p in autoscaling.describe_scaling_policies(
        ServiceNamespace="sagemaker")["ScalingPolicies"]}
    step = policies["StepScaling"]
    assert step["StepScalingPolicyConfiguration"]["StepAdjustments"][0]["ScalingAdjustment"] == 1
    alarms = boto3.client("cloudwatch", region_name=REGION).describe_alarms()["MetricAlarms"]
    (alarm,) = [a for a in alarms if a["MetricName"] == "HasBacklogWithoutCapacity"]
    assert alarm["AlarmActions"] == [step["PolicyARN"]]


def test_scaling_failure_shows_on_the_endpoints_page(world):
    world.put("models/tiny.tar.gz")
    admin = world.signed_in("admin")
    _deploy(admin)
    world.sagemaker.set_status("easel-demo", "InService", instances=1)
    refusing = boto3.client("application-autoscaling", region_name=REGION)
    stubber = Stubber(refusing)
    stubber.add_client_error("register_scalable_target", "AccessDeniedException",
                             "not authorized to perform: sagemaker:DescribeEndpointConfig")
    with stubber:
        outcome = _run_scaler(world, autoscaling=refusing)
    assert outcome["result"] == "failed"
    page = html.unescape(admin.get("/endpoints").text)
    assert "Scaling not applied: AccessDeniedException" in page
    status = admin.get("/endpoints/status").json()["endpoints"][0]
    assert status["scaling_status"] == "failed"


def test_endpoint_list_shows_status_failure_and_cost(world):
    world.put("models/tiny.tar.gz")
    admin = world.signed_in("admin")
    _deploy(admin)
    world.sagemaker.set_status("easel-demo", "InService", instances=2)
    data = admin.get("/endpoints/status").json()["endpoints"][0]
    assert data["status"] == "InService" and data["instances"] == 2
    assert data["cost_per_hour"] == round(2 * 1.408, 3)
    world.sagemaker.set_status("easel-demo", "Failed", instances=0,
                               failure="CannotStartContainerError")
    page = admin.get("/endpoints")
    assert "CannotStartContainerError" in page.text


def test_caps_endpoints_per_user_and_instances(world_factory):
    world = world_factory(EASEL_MAX_ENDPOINTS_PER_USER="1", EASEL_MAX_INSTANCES_PER_ENDPOINT="2")
    world.put("models/tiny.tar.gz")
    admin = world.signed_in("admin")
    too_big = _deploy(admin, name="big", max_instances="3")
    assert too_big.status_code == 400 and "at most 2" in html.unescape(too_big.text)
    assert _deploy(admin, name="first").status_code == 303
    second = _deploy(admin, name="second")
    assert second.status_code >= 400 and "limit" in html.unescape(second.text)
    assert [e["EndpointName"] for e in world.sagemaker.named("create_endpoint")] == ["easel-first"]


def test_bad_deploy_inputs_name_the_field_and_create_nothing(world):
    world.put("models/tiny.tar.gz")
    admin = world.signed_in("admin")
    cases = [
        ({"instance_type": "ml.m5.large"}, "instance type"),
        ({"model": "http://example.com/x"}, "model"),
        ({"model": f"s3://{BUCKET}/outputs/admin/x.tar.gz"}, "model"),
        ({"model": "s3://someone-elses-bucket/models/x.tar.gz"}, "data bucket"),
        ({"name": "Bad_Name"}, "name"),
        ({"mode": "realtime", "min_instances": "0"}, "min instances"),
    ]
    for fields, word in cases:
        response = _deploy(admin, **fields)
        assert response.status_code == 400, fields
        error = html.unescape(response.text).split('class="error"', 1)[-1][:400]
        assert word in error, (fields, error)
    assert world.sagemaker.named("create_endpoint") == []


def test_a_refused_deployment_comes_back_with_every_field_as_submitted(world):
    admin = world.signed_in("admin")
    response = _deploy(admin, name="keep-me", model="", model_s3_uri="s3://elsewhere/m.tar.gz",
                       instance_type="ml.g4dn.xlarge", volume_size_gb="80", mode="async",
                       min_instances="0", max_instances="2", idle_ttl_hours="5")
    assert response.status_code == 400
    page = response.text
    for name, value in [("name", "keep-me"), ("model_s3_uri", "s3://elsewhere/m.tar.gz"),
                        ("volume_size_gb", "80"), ("min_instances", "0"),
                        ("max_instances", "2"), ("idle_ttl_hours", "5")]:
        assert f'name="{name}"' in page and f'value="{value}"' in page, name
    assert '<option value="ml.g4dn.xlarge" selected' in page
    assert 'value="async" checked' in page and 'value="realtime" >' in page
    assert world.sagemaker.named("create_endpoint") == []


def test_delete_removes_endpoint_config_model_and_scaling(world):
    world.put("models/tiny.tar.gz")
    admin = world.signed_in("admin")
    _deploy(admin)
    world.sagemaker.set_status("easel-demo", "InService")
    admin.get("/endpoints")
    assert admin.post("/endpoints/easel-demo/delete").status_code == 303
    assert world.sagemaker.named("delete_endpoint") == [{"EndpointName": "easel-demo"}]
    assert len(world.sagemaker.named("delete_endpoint_config")) == 1
    assert len(world.sagemaker.named("delete_model")) == 1
    assert world.autoscaling.named("deregister_scalable_target")
    assert world.portal.table.get("endpoint#easel-demo", "meta") is None


def test_unknown_endpoint_cannot_be_deleted(world):
    admin = world.signed_in("admin")
    response = admin.post("/endpoints/other-stack-endpoint/delete")
    assert "error=" in response.headers["location"]
    assert world.sagemaker.named("delete_endpoint") == []


def test_refused_deployment_leaves_nothing_behind(world):
    from .fakes import client_error

    world.put("models/tiny.tar.gz")

    def refuse(**kwargs):
        raise client_error("ResourceLimitExceeded", "no quota for ml.g5.xlarge", "CreateEndpoint")

    world.sagemaker.create_endpoint = refuse
    admin = world.signed_in("admin")
    response = _deploy(admin)
    assert response.status_code >= 400 and "no quota" in html.unescape(response.text)
    assert len(world.sagemaker.named("delete_model")) == 1
    assert len(world.sagemaker.named("delete_endpoint_config")) == 1
    assert world.portal.table.get("endpoint#easel-demo", "meta") is None
