"""Issue 14: event-driven endpoint scaling with the rights AWS checks, tag-scoped Application Auto
Scaling, subnets only in AZs with CloudFront VPC origins, instance-type conditions, CORS, and
Lambda roles that write only their own logs."""

from __future__ import annotations

import json

from stacks.availability_zones import NO_VPC_ORIGINS
from stacks.config import load_config
from tests.stack.test_portal import actions, statements_of


def _resolve_az_id(template, value, region):
    """Evaluate `Fn::Select [i, Fn::FindInMap [map, AWS::Region, key]]` for `region`."""
    index, lookup = value["Fn::Select"]
    mapping, region_ref, key = lookup["Fn::FindInMap"]
    assert region_ref == {"Ref": "AWS::Region"}
    return template["Mappings"][mapping][region][key][index]


def _subnets(synth):
    return synth.resources("AWS::EC2::Subnet").values()


def test_subnets_are_placed_by_az_id_never_by_az_name(synth):
    for subnet in _subnets(synth):
        assert "AvailabilityZone" not in subnet["Properties"]
        assert "AvailabilityZoneId" in subnet["Properties"]


def test_a_us_east_1_deploy_never_uses_use1_az3(synth):
    # CloudFront VPC origins are not offered in use1-az3 (CloudFront Developer Guide, "Restrict
    # access with VPC origins"); a subnet of the ALB there fails the deploy.
    zones = [_resolve_az_id(synth.template, s["Properties"]["AvailabilityZoneId"], "us-east-1")
             for s in _subnets(synth)]
    assert zones and "use1-az3" not in zones
    assert not set(zones) & NO_VPC_ORIGINS
    assert len(set(zones)) == load_config().portal.max_azs  # one zone per AZ, tiers aligned


def _scaler_statements(synth):
    return statements_of(synth, "/Scaling/Role/")


def test_endpoint_in_service_events_of_this_deployment_invoke_the_scaler(synth):
    (rule,) = [r for r in synth.resources("AWS::Events::Rule").values()
               if "/Scaling/" in r["Metadata"]["aws:cdk:path"]]
    pattern = rule["Properties"]["EventPattern"]
    # https://docs.aws.amazon.com/sagemaker/latest/dg/automating-sagemaker-with-eventbridge.html
    assert pattern["source"] == ["aws.sagemaker"]
    assert pattern["detail-type"] == ["SageMaker Endpoint State Change"]
    assert pattern["detail"]["EndpointName"] == [{"prefix": "easel-"}]
    assert "IN_SERVICE" in pattern["detail"]["EndpointStatus"]
    function, _ = synth.only("AWS::Lambda::Function", path_contains="/Scaling/Function/")
    (target,) = rule["Properties"]["Targets"]
    assert target["Arn"] == {"Fn::GetAtt": [function, "Arn"]}


def test_scaler_holds_the_rights_application_auto_scaling_checks_on_the_caller(synth):
    # Application Auto Scaling validates that the caller may describe and rescale the endpoint
    # and create/delete the target-tracking alarms it makes on the caller's behalf (Application
    # Auto Scaling User Guide, identity-based policy examples: permissions required for API
    # actions on target resources). moto does not check this; this test does.
    granted = {a for s in _scaler_statements(synth) for a in actions(s)}
    assert {"sagemaker:DescribeEndpoint", "sagemaker:DescribeEndpointConfig",
            "sagemaker:UpdateEndpointWeightsAndCapacities", "cloudwatch:PutMetricAlarm",
            "cloudwatch:DescribeAlarms", "cloudwatch:DeleteAlarms",
            "application-autoscaling:RegisterScalableTarget",
            "application-autoscaling:PutScalingPolicy", "iam:CreateServiceLinkedRole"} <= granted
    alarms = next(s for s in _scaler_statements(synth)
                  if "cloudwatch:PutMetricAlarm" in actions(s))
    assert any("alarm:TargetTracking-endpoint/easel-*" in json.dumps(r)
               for r in alarms["Resource"])


def test_scaler_reads_and_marks_only_endpoint_records(synth):
    (statement,) = [s for s in _scaler_statements(synth)
                    if any(a.startswith("dynamodb:") for a in actions(s))]
    assert sorted(actions(statement)) == ["dynamodb:GetItem", "dynamodb:UpdateItem"]
    assert statement["Condition"] == {
        "ForAllValues:StringLike": {"dynamodb:LeadingKeys": ["endpoint#*"]}}


def test_application_auto_scaling_changes_are_limited_to_this_deployments_targets(synth):
    changing = []
    for policy in synth.resources("AWS::IAM::Policy").values():
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
            for action in actions(statement):
                if action.startswith("application-autoscaling:") and ":Describe" not in action:
                    changing.append((action, statement))
    assert {a for a, _ in changing} >= {"application-autoscaling:RegisterScalableTarget",
                                        "application-autoscaling:DeregisterScalableTarget"}
    for action, statement in changing:
        assert statement["Resource"] != "*", action
        tags = statement["Condition"]["StringEquals"]
        key = ("aws:RequestTag/easel:deployment" if action.endswith(
            ("RegisterScalableTarget", "TagResource")) else "aws:ResourceTag/easel:deployment")
        assert tags == {key: "easel"}, action


def test_portal_no_longer_registers_scaling(synth):
    granted = {a for s in statements_of(synth, "/Portal/Task/TaskRole/") for a in actions(s)}
    assert "application-autoscaling:RegisterScalableTarget" not in granted
    assert "application-autoscaling:PutScalingPolicy" not in granted
    assert "application-autoscaling:DeregisterScalableTarget" in granted


def _instance_types(statement):
    return statement["Condition"]["ForAllValues:StringEquals"]["sagemaker:InstanceTypes"]


def test_endpoint_configs_and_training_jobs_only_of_allowed_instance_types(synth):
    config = load_config()
    by_action = {a: s for s in statements_of(synth, "/Portal/Task/TaskRole/")
                 for a in actions(s) if a.startswith("sagemaker:Create")}
    for action, allowed in (("sagemaker:CreateEndpointConfig", config.endpoints.instance_types),
                            ("sagemaker:CreateTrainingJob", config.training.instance_types)):
        statement = by_action[action]
        assert _instance_types(statement) == sorted(allowed)
        # Without it, a request naming no instance type passes ForAllValues vacuously (IAM User
        # Guide, "Single-valued vs. multivalued condition keys").
        assert statement["Condition"]["Null"] == {"sagemaker:InstanceTypes": "false"}
        assert statement["Condition"]["StringEquals"] == {
            "aws:RequestTag/easel:deployment": "easel"}


def test_data_bucket_cors_allows_only_the_portal_origin(synth):
    distribution, _ = synth.only("AWS::CloudFront::Distribution")
    bucket, properties = synth.only("AWS::S3::Bucket", path_contains="/Storage/Data/")
    assert "CorsConfiguration" not in properties["Properties"]  # would close a dependency cycle
    _, cors = synth.only("Custom::AWS", path_contains="/Storage/Cors/")
    parts = cors["Properties"]["Create"]["Fn::Join"][1]
    # {"Bucket": <data bucket>, ... "AllowedOrigins": ["https://<distribution domain>"], ...}
    assert {"Ref": bucket} in parts
    origin = parts.index({"Fn::GetAtt": [distribution, "DomainName"]})
    assert parts[origin - 1].endswith('"AllowedOrigins":["https://')
    assert parts[origin + 1].startswith('"],')


def test_stack_functions_write_only_their_own_log_group(synth):
    roles = synth.resources("AWS::IAM::Role")
    for path in ("/Reaper/", "/Cleanup/", "/Scaling/", "/Secrets/", "AWS679f53fac002430cb0da5b7982bd2287"):
        functions = [f for f in synth.resources("AWS::Lambda::Function").values()
                     if path in f["Metadata"]["aws:cdk:path"]]
        assert functions, path
        for function in functions:
            role_id = function["Properties"]["Role"]["Fn::GetAtt"][0]
            managed = json.dumps(roles[role_id]["Properties"].get("ManagedPolicyArns", []))
            assert "AWSLambdaBasicExecutionRole" not in managed, path
            log_group = function["Properties"]["LoggingConfig"]["LogGroup"]
            writes = [s for p in synth.resources("AWS::IAM::Policy").values()
                      if {"Ref": role_id} in p["Properties"]["Roles"]
                      for s in p["Properties"]["PolicyDocument"]["Statement"]
                      if "logs:PutLogEvents" in actions(s)]
            assert writes and all(
                s["Resource"] == {"Fn::GetAtt": [log_group["Ref"], "Arn"]} for s in writes), path
