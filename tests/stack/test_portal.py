"""The portal construct: HTTPS through CloudFront to an internal ALB, tasks reachable only from
the ALB, a task role scoped to the kit's resources, the idle-endpoint reaper."""

from __future__ import annotations

import json

import pytest

from stacks.config import load_config
from tests.stack.conftest import synthesize


def statements_of(synth, path_part):
    found = []
    for policy in synth.resources("AWS::IAM::Policy").values():
        if path_part in policy["Metadata"]["aws:cdk:path"]:
            found += policy["Properties"]["PolicyDocument"]["Statement"]
    return found


def actions(statement):
    value = statement["Action"]
    return value if isinstance(value, list) else [value]


def test_cloudfront_serves_https_only_from_a_vpc_origin(synth):
    _, distribution = synth.only("AWS::CloudFront::Distribution")
    config = distribution["Properties"]["DistributionConfig"]
    behavior = config["DefaultCacheBehavior"]
    assert behavior["ViewerProtocolPolicy"] == "redirect-to-https"
    (origin,) = config["Origins"]
    assert "VpcOriginConfig" in origin
    assert synth.resources("AWS::CloudFront::VpcOrigin")


def test_load_balancer_is_internal_and_only_reachable_from_the_vpc(synth):
    _, alb = synth.only("AWS::ElasticLoadBalancingV2::LoadBalancer")
    assert alb["Properties"]["Scheme"] == "internal"
    attributes = {a["Key"]: a["Value"] for a in alb["Properties"]["LoadBalancerAttributes"]}
    assert attributes["routing.http.drop_invalid_header_fields.enabled"] == "true"
    # Environment-agnostic: the regional log-delivery principal is unknown (acknowledged ELB2).
    assert "access_logs.s3.enabled" not in attributes
    _, group = synth.only("AWS::EC2::SecurityGroup", path_contains="/Portal/AlbSecurityGroup/")
    (ingress,) = group["Properties"]["SecurityGroupIngress"]
    assert ingress["CidrIp"] != "0.0.0.0/0" and "Fn::GetAtt" in ingress["CidrIp"]
    assert ingress["FromPort"] == ingress["ToPort"] == 80


def test_tasks_accept_traffic_only_from_the_load_balancer(synth):
    service_sg, _ = synth.only("AWS::EC2::SecurityGroup", path_contains="/Portal/ServiceSecurityGroup/")
    alb_sg, _ = synth.only("AWS::EC2::SecurityGroup", path_contains="/Portal/AlbSecurityGroup/")
    rules = [r["Properties"] for r in synth.resources("AWS::EC2::SecurityGroupIngress").values()
             if r["Properties"]["GroupId"] == {"Fn::GetAtt": [service_sg, "GroupId"]}]
    assert rules and all(
        r["SourceSecurityGroupId"] == {"Fn::GetAtt": [alb_sg, "GroupId"]} for r in rules
    )


def test_portal_may_pass_only_the_execution_role_only_to_sagemaker(synth):
    exec_role, _ = synth.only("AWS::IAM::Role", path_contains="/SageMakerAccess/Role/")
    passes = [s for s in statements_of(synth, "/Portal/Task/TaskRole/")
              if "iam:PassRole" in actions(s)]
    assert len(passes) == 1
    assert passes[0]["Resource"] == {"Fn::GetAtt": [exec_role, "Arn"]}
    assert passes[0]["Condition"] == {
        "StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}}


def test_portal_creates_sagemaker_resources_only_with_the_deployment_tag(synth):
    creates = [s for s in statements_of(synth, "/Portal/Task/TaskRole/")
               if any(a.startswith("sagemaker:Create") for a in actions(s))]
    assert creates
    for statement in creates:
        assert statement["Condition"]["StringEquals"] == {
            "aws:RequestTag/easel:deployment": "easel"}


def test_portal_cannot_write_training_output(synth):
    for statement in statements_of(synth, "/Portal/Task/TaskRole/"):
        if any(a.startswith(("s3:Put", "s3:Delete")) for a in actions(statement)):
            assert "/training/" not in json.dumps(statement["Resource"])


def test_portal_container_uses_the_built_webui_tag(synth):
    _, task = synth.only("AWS::ECS::TaskDefinition")
    (container,) = task["Properties"]["ContainerDefinitions"]
    image = json.dumps(container["Image"])
    assert "ImageTag" in image and "WebuiImage" in image
    env = {e["Name"]: e["Value"] for e in container["Environment"]}
    assert {"EASEL_BUCKET", "EASEL_TABLE", "EASEL_ADMIN_SECRET", "EASEL_SESSION_SECRET",
            "EASEL_EXECUTION_ROLE_ARN", "EASEL_INFERENCE_IMAGE", "EASEL_TRAINING_IMAGE",
            "EASEL_PORTAL_CONFIG"} <= set(env)
    assert "InferenceImage" in json.dumps(env["EASEL_INFERENCE_IMAGE"])
    settings = json.loads(env["EASEL_PORTAL_CONFIG"])
    assert settings["endpoints"]["instance_types"]["ml.g5.xlarge"]["gpu_memory_gb"] == 24


def test_default_network_uses_one_nat_and_private_tasks(synth):
    assert len(synth.resources("AWS::EC2::NatGateway")) == 1
    _, service = synth.only("AWS::ECS::Service")
    network = service["Properties"]["NetworkConfiguration"]["AwsvpcConfiguration"]
    assert network["AssignPublicIp"] == "DISABLED"
    assert synth.resources("AWS::EC2::FlowLog")


@pytest.fixture(scope="module")
def no_nat(tmp_path_factory):
    """No NAT, pinned to a region (which also turns on ALB access logs); cdk-nag attached."""
    base = load_config()
    config = base.model_copy(update={
        "region": "eu-west-1",
        "portal": base.portal.model_copy(update={"nat_gateways": 0}),
    })
    return synthesize(tmp_path_factory.mktemp("no-nat"), config=config)


def test_no_nat_option_puts_tasks_in_public_subnets_locked_to_the_alb(no_nat):
    assert no_nat.nag_error is None, no_nat.nag_error
    assert not no_nat.resources("AWS::EC2::NatGateway")
    _, service = no_nat.only("AWS::ECS::Service")
    network = service["Properties"]["NetworkConfiguration"]["AwsvpcConfiguration"]
    assert network["AssignPublicIp"] == "ENABLED"


def test_region_pinned_stack_logs_alb_access_to_the_log_bucket(no_nat):
    _, alb = no_nat.only("AWS::ElasticLoadBalancingV2::LoadBalancer")
    attributes = {a["Key"]: a["Value"] for a in alb["Properties"]["LoadBalancerAttributes"]}
    assert attributes["access_logs.s3.enabled"] == "true"
    log_bucket, _ = no_nat.only("AWS::S3::Bucket", path_contains="/Storage/AccessLogs/")
    assert attributes["access_logs.s3.bucket"] == {"Ref": log_bucket}


def test_reaper_runs_on_a_schedule(synth):
    rules = [r for r in synth.resources("AWS::Events::Rule").values()
             if "/Reaper/" in r["Metadata"]["aws:cdk:path"]]
    assert len(rules) == 1
    assert rules[0]["Properties"]["ScheduleExpression"] == "rate(15 minutes)"


def test_portal_url_is_an_output(synth):
    url = synth.template["Outputs"]["PortalUrl"]["Value"]
    assert "https://" in json.dumps(url)


# The portal's memory at rest and serving pages (measured ~100 MB idle; image uploads and
# listings on top): what the task keeps free besides the argon2 checks running at once.
PORTAL_HEADROOM_MIB = 512


def test_the_task_is_sized_for_its_concurrent_password_checks(synth):
    """Each argon2 check holds password_hash_memory_kib for its run and at most
    password_hash_concurrency run at once per task (easel_webui.hashing): the task's memory must
    hold all of them beside the portal itself, or a burst of sign-ins takes the task down."""
    from easel_webui.settings import ENV_FIELDS, Settings

    _, task = synth.only("AWS::ECS::TaskDefinition")
    (container,) = task["Properties"]["ContainerDefinitions"]
    env = {e["Name"]: e["Value"] for e in container["Environment"]}
    fields = Settings.model_fields

    def setting(name: str) -> int:
        variable = next((v for v, f in ENV_FIELDS.items() if f == name), None)
        return int(env.get(variable, fields[name].default))

    hashing_mib = setting("password_hash_concurrency") * setting("password_hash_memory_kib") // 1024
    task_mib = int(task["Properties"]["Memory"])
    assert task_mib >= PORTAL_HEADROOM_MIB + hashing_mib, (task_mib, hashing_mib)


def test_a_stopping_portal_task_has_time_to_save_its_running_jobs(synth):
    """On SIGTERM the portal answers its open requests (sync calls wait up to
    sync_timeout_seconds), then waits shutdown_wait_seconds for its generation jobs; ECS kills
    the container stopTimeout seconds after SIGTERM, at most 120 s on Fargate (default 30 s):
    https://docs.aws.amazon.com/AmazonECS/latest/APIReference/API_ContainerDefinition.html"""
    from easel_webui.settings import ENV_FIELDS, Settings

    _, task = synth.only("AWS::ECS::TaskDefinition")
    (container,) = task["Properties"]["ContainerDefinitions"]
    env = {e["Name"]: e["Value"] for e in container["Environment"]}

    def setting(name: str) -> float:
        variable = next(v for v, f in ENV_FIELDS.items() if f == name)
        return float(env.get(variable, Settings.model_fields[name].default))

    stop_timeout = container.get("StopTimeout", 30)
    assert stop_timeout <= 120
    assert stop_timeout >= setting("sync_timeout_seconds") + setting("shutdown_wait_seconds")
