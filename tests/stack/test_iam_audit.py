"""IAM call audit: each principal's real code runs against moto with the call recorder on, and
every call it makes must be allowed by that principal's policies in the synthesized template
(conditions evaluated; service-side checks included). See tests/stack/iam_audit.py."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime, timedelta

import boto3
import pytest
from moto import mock_aws

from easel_contracts import scaling
from easel_contracts import table as table_keys
from easel_contracts.concept_uploads import MIN_CONCEPT_IMAGES
from stacks.cleanup_handler import index as cleanup
from stacks.reaper_handler import index as reaper
from stacks.rotation_handler import index as rotation
from stacks.scaling_handler import index as scaler
from tests.stack import iam_audit
from tests.stack.iam_audit import ACCOUNT, REGION, Call, Policies, Recorder, Right, audit
from tests.stack.sagemaker_fakes import IMAGE, ROLE, make_endpoint
from tests.stack.test_cleanup_handler import CompletedJobs

OURS = [{"Key": "easel:deployment", "Value": "easel"}]
ALARM = {"MetricName": "HasBacklogWithoutCapacity", "Namespace": "AWS/SageMaker",
         "Statistic": "Average", "Period": 60, "EvaluationPeriods": 1, "Threshold": 1,
         "ComparisonOperator": "GreaterThanOrEqualToThreshold"}


def function_of(template, function_path: str) -> dict:
    """The Lambda function whose CDK path contains `function_path`."""
    found = [v for v in template["Resources"].values() if v["Type"] == "AWS::Lambda::Function"
             and function_path in v.get("Metadata", {}).get("aws:cdk:path", "")]
    assert len(found) == 1, (function_path, len(found))
    return found[0]


def use_environment(monkeypatch, template, function_path: str) -> None:
    """Run the handler with its function's literal environment variables from the template."""
    variables = function_of(template, function_path)["Properties"]["Environment"]["Variables"]
    for name, value in variables.items():
        if isinstance(value, str):
            monkeypatch.setenv(name, value)


def role_of(template, function_path: str) -> str:
    """Logical id of the IAM role of the Lambda function whose CDK path contains
    `function_path` (the function's Role property names it)."""
    role = function_of(template, function_path)["Properties"]["Role"]
    assert "Fn::GetAtt" in role, f"{function_path}: the role is not the stack's own: {role}"
    return role["Fn::GetAtt"][0]


@pytest.fixture
def aws(monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    with mock_aws():
        yield


def check(template, recorder: Recorder, principal_roles: dict[str, list[str]],
          names: dict[str, str] | None = None,
          tagged: dict[str, dict[str, str]] | None = None) -> None:
    """Every call of each principal is allowed to each of its roles. Resources' tags: those the
    recorded calls created, `tagged` (by ARN), else the kit's naming rule."""
    assert recorder.calls, "the scenario made no AWS call"
    tags = iam_audit.deployment_tags(
        "easel", {**iam_audit.created_tags(recorder.calls), **(tagged or {})})
    failures = []
    for principal, roles in principal_roles.items():
        calls = [c for c in recorder.calls if c.principal == principal]
        assert calls, f"no call recorded for {principal}"
        for role in roles:
            policies = {principal: Policies.of_role(template, role, names or {})}
            failures += [f"{role}: {finding}" for finding in audit(calls, policies, tags)]
    assert not failures, "calls the template does not allow:\n" + "\n".join(failures)


def ours(resource_id: str) -> dict[str, dict[str, str]]:
    """The scalable target of `resource_id` carries this deployment's tag."""
    return {iam_audit.scalable_target_arn(resource_id): {iam_audit.DEPLOYMENT_TAG: "easel"}}


# --- the evaluator itself ------------------------------------------------------------------

TEMPLATE = {"Resources": {
    "Role": {"Type": "AWS::IAM::Role", "Properties": {}},
    "Bucket": {"Type": "AWS::S3::Bucket"},
    "Policy": {"Type": "AWS::IAM::Policy", "Properties": {"Roles": [{"Ref": "Role"}],
               "PolicyDocument": {"Statement": [
        {"Effect": "Allow", "Action": "s3:ListBucket",
         "Resource": {"Fn::GetAtt": ["Bucket", "Arn"]}},
        {"Effect": "Allow", "Action": "s3:GetObject*",
         "Resource": {"Fn::Join": ["", [{"Fn::GetAtt": ["Bucket", "Arn"]}, "/models/*"]]}},
        {"Effect": "Allow", "Action": "sagemaker:CreateModel",
         "Resource": {"Fn::Join": ["", ["arn:", {"Ref": "AWS::Partition"}, ":sagemaker:",
                                         {"Ref": "AWS::Region"}, ":", {"Ref": "AWS::AccountId"},
                                         ":model/easel-*"]]},
         "Condition": {"StringEquals": {"aws:RequestTag/easel:deployment": "easel"}}},
        {"Effect": "Allow", "Action": "sagemaker:AddTags", "Resource": "*"},
        {"Effect": "Allow", "Action": "iam:PassRole", "Resource": ROLE,
         "Condition": {"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}}},
        {"Effect": "Allow", "Action": "dynamodb:Query",
         "Resource": [{"Fn::Join": ["", [{"Fn::GetAtt": ["Table", "Arn"]}, "/index/*"]]}]},
        {"Effect": "Deny", "Action": "s3:*", "Resource": "*",
         "Condition": {"Bool": {"aws:SecureTransport": "false"}}},
    ]}}},
}}
NAMES = {"Bucket.Arn": "arn:aws:s3:::data", "Table.Arn": f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/t"}


def findings(*calls):
    policies = {"p": Policies.of_role(TEMPLATE, "Role", NAMES)}
    return audit(list(calls), policies, iam_audit.deployment_tags("easel"))


def test_list_objects_v2_needs_list_bucket_on_the_bucket_and_head_object_needs_get_object():
    assert not findings(Call("p", "s3", "ListObjectsV2", {"Bucket": "data", "Prefix": "x/"}),
                        Call("p", "s3", "HeadObject", {"Bucket": "data", "Key": "models/a"}))
    [finding] = findings(Call("p", "s3", "HeadObject", {"Bucket": "data", "Key": "outputs/a"}))
    assert finding.right == Right("s3:GetObject", "arn:aws:s3:::data/outputs/a")


def test_a_query_on_the_gsi_needs_the_index_resource():
    assert not findings(Call("p", "dynamodb", "Query", {"TableName": "t", "IndexName": "gsi1"}))
    [finding] = findings(Call("p", "dynamodb", "Query", {"TableName": "t"}))
    assert finding.right.resource.endswith(":table/t")


def test_request_tag_condition_and_passed_role_are_evaluated():
    create = {"ModelName": "easel-m", "ExecutionRoleArn": ROLE, "Tags": OURS,
              "PrimaryContainer": {"Image": IMAGE}}
    assert not findings(Call("p", "sagemaker", "CreateModel", create))
    untagged = findings(Call("p", "sagemaker", "CreateModel", {**create, "Tags": []}))
    assert [f.right.action for f in untagged] == ["sagemaker:CreateModel"]
    other_role = findings(Call("p", "sagemaker", "CreateModel",
                               {**create, "ExecutionRoleArn": ROLE + "-admin"}))
    assert [f.right.action for f in other_role] == ["iam:PassRole"]


CONDITIONED = {"Resources": {
    "Role": {"Type": "AWS::IAM::Role", "Properties": {}},
    "Policy": {"Type": "AWS::IAM::Policy", "Properties": {"Roles": [{"Ref": "Role"}],
               "PolicyDocument": {"Statement": [
        {"Effect": "Allow", "Action": "sagemaker:DeleteEndpoint", "Resource": "*",
         "Condition": {"StringEquals": {"aws:ResourceTag/easel:deployment": "easel"}}},
        {"Effect": "Allow", "Action": ["sagemaker:CreateEndpointConfig", "sagemaker:AddTags"],
         "Resource": "*",
         "Condition": {"ForAllValues:StringEquals": {"sagemaker:InstanceTypes": [
             "ml.g5.xlarge", "ml.g5.2xlarge"]}}},
        {"Effect": "Allow", "Action": "sagemaker:CreateModel", "Resource": "*",
         "Condition": {"Null": {"aws:RequestTag/easel:deployment": "false"}}},
    ]}}},
}}


def conditioned(call):
    policies = {"p": Policies.of_role(CONDITIONED, "Role", {})}
    return audit([call], policies, iam_audit.deployment_tags("easel"))


def test_resource_tag_condition_allows_only_the_deployments_resources():
    assert not conditioned(Call("p", "sagemaker", "DeleteEndpoint", {"EndpointName": "easel-a"}))
    assert conditioned(Call("p", "sagemaker", "DeleteEndpoint", {"EndpointName": "other-a"}))


def test_instance_types_condition_checks_every_variant():
    def config(*types):
        return Call("p", "sagemaker", "CreateEndpointConfig", {
            "EndpointConfigName": "easel-c",
            "ProductionVariants": [{"InstanceType": t} for t in types]})

    assert not conditioned(config("ml.g5.xlarge", "ml.g5.2xlarge"))
    [finding, *_] = conditioned(config("ml.g5.xlarge", "ml.p5.48xlarge"))
    assert finding.right.action == "sagemaker:CreateEndpointConfig"


def test_null_condition_requires_the_tag():
    model = {"ModelName": "m", "PrimaryContainer": {"Image": IMAGE}}
    # (AddTags passes the ForAllValues statement: a key the request lacks satisfies it, as in IAM.)
    assert not conditioned(Call("p", "sagemaker", "CreateModel", {**model, "Tags": OURS}))
    untagged = conditioned(Call("p", "sagemaker", "CreateModel", model))
    assert [f.right.action for f in untagged] == ["sagemaker:CreateModel"]


def test_an_unmapped_operation_fails_the_audit():
    [finding] = findings(Call("p", "sagemaker", "CreateHub", {"HubName": "h"}))
    assert "unmapped operation" in finding.problem


def test_scaling_registration_needs_the_rights_autoscaling_checks_for_the_caller():
    actions = {r.action for r in iam_audit.required_rights(Call(
        "p", "application-autoscaling", "RegisterScalableTarget",
        {"ServiceNamespace": "sagemaker", "ResourceId": "endpoint/easel-a/variant/main",
         "ScalableDimension": iam_audit.SCALING_DIMENSION}))}
    assert {"sagemaker:DescribeEndpoint", "sagemaker:DescribeEndpointConfig",
            "sagemaker:UpdateEndpointWeightsAndCapacities",
            "cloudwatch:DescribeAlarms"} <= actions


TARGETS = "arn:aws:application-autoscaling:us-east-1:123456789012:scalable-target/*"
SCALING = {"Resources": {
    "Role": {"Type": "AWS::IAM::Role", "Properties": {}},
    "Policy": {"Type": "AWS::IAM::Policy", "Properties": {"Roles": [{"Ref": "Role"}],
               "PolicyDocument": {"Statement": [
        {"Effect": "Allow", "Action": ["application-autoscaling:RegisterScalableTarget",
                                       "application-autoscaling:TagResource"],
         "Resource": TARGETS,
         "Condition": {"StringEquals": {"aws:RequestTag/easel:deployment": "easel"}}},
        {"Effect": "Allow", "Action": "application-autoscaling:DeregisterScalableTarget",
         "Resource": TARGETS,
         "Condition": {"StringEquals": {"aws:ResourceTag/easel:deployment": "easel"}}},
        {"Effect": "Allow", "Action": ["sagemaker:*", "cloudwatch:*", "iam:*"], "Resource": "*"},
    ]}}},
}}
RESOURCE_ID = "endpoint/easel-a/variant/AllTraffic"


def scaling_findings(operation, tagged=None, **params):
    call = Call("p", "application-autoscaling", operation, {
        "ServiceNamespace": "sagemaker", "ResourceId": RESOURCE_ID,
        "ScalableDimension": iam_audit.SCALING_DIMENSION, **params})
    policies = {"p": Policies.of_role(SCALING, "Role", {})}
    return audit([call], policies, iam_audit.deployment_tags("easel", tagged))


def test_deregistering_needs_the_scalable_targets_deployment_tag():
    assert not scaling_findings("DeregisterScalableTarget", ours(RESOURCE_ID))
    [untagged] = scaling_findings("DeregisterScalableTarget")
    assert untagged.right.action == "application-autoscaling:DeregisterScalableTarget"
    other = {iam_audit.scalable_target_arn(RESOURCE_ID): {iam_audit.DEPLOYMENT_TAG: "other"}}
    assert scaling_findings("DeregisterScalableTarget", other)


def test_registering_needs_the_deployment_tag_in_the_request():
    assert not scaling_findings("RegisterScalableTarget", Tags={iam_audit.DEPLOYMENT_TAG: "easel"})
    [untagged] = scaling_findings("RegisterScalableTarget")
    assert untagged.right.action == "application-autoscaling:RegisterScalableTarget"


def test_a_registration_with_tags_tags_its_target_for_later_calls():
    register = Call("p", "application-autoscaling", "RegisterScalableTarget", {
        "ServiceNamespace": "sagemaker", "ResourceId": RESOURCE_ID,
        "Tags": {iam_audit.DEPLOYMENT_TAG: "easel"}})
    assert iam_audit.created_tags([register]) == ours(RESOURCE_ID)


# --- the principals --------------------------------------------------------------------------

def test_cleanup_calls_are_allowed_to_both_cleanup_functions(synth, aws, monkeypatch):
    use_environment(monkeypatch, synth.template, "/Cleanup/OnEvent/")
    monkeypatch.setenv("PURGE_LOGS", "true")
    recorder = Recorder()
    with recorder.recording("cleanup"):
        sagemaker = boto3.client("sagemaker")
        make_endpoint(sagemaker, "easel-alice-sd15", OURS)
        sagemaker.create_training_job(
            TrainingJobName="easel-dog", RoleArn=ROLE, Tags=OURS,
            AlgorithmSpecification={"TrainingImage": IMAGE, "TrainingInputMode": "File"},
            OutputDataConfig={"S3OutputPath": "s3://b/training/"},
            ResourceConfig={"InstanceType": "ml.g5.xlarge", "InstanceCount": 1,
                            "VolumeSizeInGB": 10},
            StoppingCondition={"MaxRuntimeInSeconds": 600})
        autoscaling = boto3.client("application-autoscaling")
        autoscaling.register_scalable_target(
            ServiceNamespace="sagemaker", ResourceId="endpoint/easel-alice-sd15/variant/main",
            ScalableDimension=iam_audit.SCALING_DIMENSION, MinCapacity=1, MaxCapacity=2,
            Tags={iam_audit.DEPLOYMENT_TAG: "easel"})
        cloudwatch = boto3.client("cloudwatch")
        cloudwatch.put_metric_alarm(AlarmName="easel-alice-sd15-backlog", **ALARM)
        logs = boto3.client("logs")
        logs.create_log_group(logGroupName="/aws/sagemaker/Endpoints/easel-alice-sd15",
                              tags={"easel:deployment": "easel"})
        logs.create_log_group(logGroupName=cleanup.TRAINING_LOG_GROUP)
        logs.create_log_stream(logGroupName=cleanup.TRAINING_LOG_GROUP,
                               logStreamName="easel-dog/algo-1-1700000000")
        setup = len(recorder.calls)
        extras = cleanup.Extras(autoscaling=autoscaling, cloudwatch=cloudwatch, logs=logs)
        event = {"RequestType": "Delete", "ResourceProperties": {"DeploymentId": "easel"},
                 "PhysicalResourceId": "easel-cleanup"}
        client = CompletedJobs(sagemaker)
        event.update(cleanup.on_event(event, None, client=client, extras=extras))
        assert cleanup.is_complete(event, None, client=client, extras=extras)["IsComplete"]
    setup_tags = iam_audit.created_tags(recorder.calls[:setup])
    assert setup_tags, "the fixture's scalable target carries the deployment tag"
    del recorder.calls[:setup]  # the fixture's own calls are not the handler's
    operations = {c.operation for c in recorder.calls}
    assert {"DeleteEndpoint", "DeregisterScalableTarget", "DeleteAlarms", "DeleteLogGroup",
            "DeleteLogStream"} <= operations
    check(synth.template, recorder, {"cleanup": [
        role_of(synth.template, "/Cleanup/OnEvent/"),
        role_of(synth.template, "/Cleanup/IsComplete/"),
    ]}, tagged=setup_tags)


def test_reaper_calls_are_allowed_to_the_reaper(synth, aws, monkeypatch):
    use_environment(monkeypatch, synth.template, "/Reaper/Function/")
    recorder = Recorder()
    sagemaker = boto3.client("sagemaker")
    make_endpoint(sagemaker, "easel-idle", OURS)
    autoscaling = boto3.client("application-autoscaling")
    autoscaling.register_scalable_target(
        ServiceNamespace="sagemaker", ResourceId="endpoint/easel-idle/variant/main",
        ScalableDimension=iam_audit.SCALING_DIMENSION, MinCapacity=1, MaxCapacity=2,
        Tags={iam_audit.DEPLOYMENT_TAG: "easel"})
    boto3.client("cloudwatch").put_metric_alarm(AlarmName="easel-idle-backlog", **ALARM)
    with recorder.recording("reaper"):
        decisions = reaper.reap(boto3.client("sagemaker"), boto3.client("cloudwatch"),
                                deployment_id="easel", default_ttl=4.0,
                                now=datetime.now(UTC) + timedelta(hours=10),
                                autoscaling=boto3.client("application-autoscaling"))
    assert [d.endpoint for d in decisions if d.delete] == ["easel-idle"]
    check(synth.template, recorder,
          {"reaper": [role_of(synth.template, "/Reaper/Function/")]},
          tagged=ours("endpoint/easel-idle/variant/main"))


def test_rotation_calls_are_allowed_to_the_rotator_on_the_admin_secret(synth, aws):
    secrets = boto3.client("secretsmanager")
    value = json.dumps({"username": "admin", "password": "Initial0Password0Value0Abcdefghij"})
    arn = secrets.create_secret(Name="easel-admin", SecretString=value)["ARN"]
    token = str(uuid.uuid4())
    recorder = Recorder()
    with recorder.recording("rotation"):
        client = boto3.client("secretsmanager")
        for step in ("createSecret", "setSecret", "testSecret", "finishSecret"):
            rotation.STEPS[step](client, arn, token)
    admin = next(k for k, v in synth.template["Resources"].items()
                 if v["Type"] == "AWS::SecretsManager::Secret"
                 and "/Secrets/AdminPassword/Resource" in v["Metadata"]["aws:cdk:path"])
    check(synth.template, recorder,
          {"rotation": [role_of(synth.template, "/Secrets/Rotator/")]},
          names={admin: arn})


def portal_names(template) -> dict[str, str]:
    """Physical names of the stack's resources as the portal tests name them."""
    from tests.webui.conftest import ADMIN_SECRET, BUCKET, ROLE_ARN, SESSION_SECRET, TABLE

    def logical(type_name: str, path: str) -> str:
        return next(k for k, v in template["Resources"].items() if v["Type"] == type_name
                    and path in v.get("Metadata", {}).get("aws:cdk:path", ""))

    bucket = logical("AWS::S3::Bucket", "/Storage/Data/")
    table = logical("AWS::DynamoDB::Table", "/State/Table/")
    role = logical("AWS::IAM::Role", "/SageMakerAccess/Role/")
    return {
        bucket: BUCKET, f"{bucket}.Arn": f"arn:aws:s3:::{BUCKET}",
        table: TABLE, f"{table}.Arn": f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{TABLE}",
        logical("AWS::SecretsManager::Secret", "/Secrets/AdminPassword/"):
            iam_audit._secret(ADMIN_SECRET),
        logical("AWS::SecretsManager::Secret", "/Secrets/SessionKey/"):
            iam_audit._secret(SESSION_SECRET),
        f"{role}.Arn": ROLE_ARN,
    }


def portal_role(template) -> str:
    [role] = [k for k, v in template["Resources"].items() if v["Type"] == "AWS::IAM::Role"
              and "/Portal/Task/TaskRole/" in v.get("Metadata", {}).get("aws:cdk:path", "")]
    return role


def planned_target_tags(dynamodb, endpoint: str) -> dict[str, dict[str, str]]:
    """Tags, by ARN, of the scalable target the scaler registers from `endpoint`'s stored plan."""
    from tests.webui.conftest import TABLE

    key = table_keys.endpoint_key(endpoint)
    item = dynamodb.get_item(TableName=TABLE, Key={table_keys.PK: {"S": key.pk},
                                                   table_keys.SK: {"S": key.sk}})["Item"]
    target = scaling.ScalingPlan.from_json(item[scaling.PLAN_ATTRIBUTE]["S"]).scalable_target
    return {iam_audit.scalable_target_arn(target["ResourceId"]): target["Tags"]}


def test_portal_calls_are_allowed_to_the_portal_task_role(synth, aws):
    from tests.webui.conftest import BUCKET, create_resources, make_world
    from tests.webui.fakes import png_b64
    from tests.webui.helpers import poll_job
    from tests.webui.test_training_checkpoint_publish import lora_bytes

    create_resources()
    s3 = boto3.client("s3")
    s3.put_object(Bucket=BUCKET, Key="models/tiny.tar.gz", Body=b"x")
    photos = [f"{index}.png" for index in range(MIN_CONCEPT_IMAGES)]
    sagemaker_s3 = boto3.client("s3")  # the async endpoint's own writes are not the portal's
    browser_s3 = boto3.client("s3")  # the browser's pre-signed POSTs are not the portal's calls
    dynamodb = boto3.client("dynamodb")  # the test's own reads
    recorder = Recorder()
    with recorder.recording("portal"):
        world = make_world()
        world.runtime.s3 = sagemaker_s3
        world.add_user("alice")
        admin = world.signed_in("admin")
        alice = world.signed_in("alice")
        # concept photos: presign, the browser's POSTs into staging, then the portal's verify
        presigned = alice.post("/models/concepts/presign", json={
            "set": "dogs", "files": [{"name": name} for name in photos]})
        assert presigned.status_code == 200, presigned.text
        recorder.presigned_posts("portal", BUCKET,
                                 [upload["key"] for upload in presigned.json()["uploads"]])
        for upload in presigned.json()["uploads"]:
            browser_s3.put_object(Bucket=BUCKET, Key=upload["key"],
                                  Body=base64.b64decode(png_b64()))
        verified = alice.post(presigned.json()["verify"], json={"set": "dogs", "names": photos})
        assert verified.json()["stored"] == photos, verified.text
        deployed = admin.post("/endpoints", data={
            "name": "demo", "model": f"s3://{BUCKET}/models/tiny.tar.gz",
            "instance_type": "ml.g5.xlarge", "mode": "realtime", "min_instances": "1",
            "max_instances": "2", "idle_ttl_hours": "3"})
        assert deployed.status_code == 303 and "error" not in deployed.headers["location"]
        target_tags = planned_target_tags(dynamodb, "easel-demo")  # before in_service rewrites it
        world.in_service("easel-demo")
        job = alice.post("/generate", json={"endpoint": "easel-demo", "task": "txt2img",
                                            "payload": {"prompt": "a red square", "steps": 2,
                                                        "width": 64, "height": 64}})
        assert poll_job(alice, job.json()["job_id"])["status"] == "done"
        world.in_service("easel-queue", mode="async")
        queued = admin.post("/generate", json={"endpoint": "easel-queue", "task": "txt2img",
                                               "payload": {"prompt": "a red square", "steps": 2,
                                                           "width": 64, "height": 64}})
        assert poll_job(admin, queued.json()["job_id"])["status"] == "done"
        trained = alice.post("/training", data={
            "name": "dog-v1", "model_s3_uri": f"s3://{BUCKET}/models/tiny.tar.gz",
            "instance_prompt": "a photo of sks dog", "mode": "lora", "max_train_steps": "10",
            "learning_rate": "1e-4", "rank": "4", "instance_type": "ml.g5.2xlarge",
            "concept_set": "dogs"})
        assert trained.status_code == 303, trained.text
        job_page = trained.headers["location"].split("?")[0]
        assert job_page.startswith("/training/easel-"), job_page
        for page in ("/", "/models", "/training", "/gallery", job_page, f"{job_page}/status"):
            assert alice.get(page).status_code in (200, 303), page
        assert admin.get("/endpoints").status_code == 200
        assert alice.post(f"{job_page}/stop").status_code == 303
        # the stopped job's last checkpoint LoRA into the library
        job_name = job_page.rsplit("/", 1)[1]
        world.sagemaker.jobs[job_name]["TrainingJobStatus"] = "Stopped"
        for name, body in (("state.json", b"{}"), ("lora.safetensors", lora_bytes())):
            s3.put_object(Bucket=BUCKET, Key=f"training/{job_name}/checkpoints/checkpoint-5/{name}",
                          Body=body)
        published = alice.post(f"{job_page}/publish-checkpoint")
        assert published.status_code == 303, published.text
        assert admin.post("/endpoints/easel-demo/delete").status_code == 303
    for fake, service in ((world.sagemaker, "sagemaker"), (world.runtime, "sagemaker-runtime"),
                          (world.autoscaling, "application-autoscaling"),
                          (world.cloudwatch, "cloudwatch")):
        recorder.add_fake_calls("portal", service, fake.calls)
    operations = {c.operation for c in recorder.calls}
    assert {"CreateModel", "CreateEndpoint", "InvokeEndpointWithResponseStream",
            "InvokeEndpointAsync",
            "CreateTrainingJob", "StopTrainingJob", "DeleteEndpoint", "DeregisterScalableTarget",
            "ListObjectsV2", "GetSecretValue", "Query"} <= operations, operations
    check(synth.template, recorder, {"portal": [portal_role(synth.template)]},
          names=portal_names(synth.template), tagged=target_tags)


def test_a_streamed_invocation_needs_invoke_endpoint_which_the_portal_has(synth):
    """AWS authorizes InvokeEndpointWithResponseStream as sagemaker:InvokeEndpoint (API
    Reference, API_runtime_InvokeEndpointWithResponseStream); the portal's live progress uses
    it, so the portal role's InvokeEndpoint grant must cover the portal's endpoints."""
    call = Call("portal", "sagemaker-runtime", "InvokeEndpointWithResponseStream",
                {"EndpointName": "easel-demo"})
    (right,) = iam_audit.required_rights(call)
    assert right.action == "sagemaker:InvokeEndpoint"
    assert audit([call], {"portal": Policies.of_role(synth.template, portal_role(synth.template),
                                                     portal_names(synth.template))},
                 iam_audit.deployment_tags("easel")) == []


@pytest.mark.parametrize("operation", ["RegisterScalableTarget", "PutScalingPolicy"])
def test_the_portal_cannot_apply_scaling_itself(synth, operation):
    """Scaling is applied by the scaler Lambda only; the portal may only remove it."""
    resource_id = "endpoint/easel-demo/variant/AllTraffic"
    params = {"ServiceNamespace": "sagemaker", "ResourceId": resource_id,
              "ScalableDimension": iam_audit.SCALING_DIMENSION,
              "Tags": {iam_audit.DEPLOYMENT_TAG: "easel"}, "PolicyName": "easel-demo-p",
              "PolicyType": "TargetTrackingScaling"}
    [finding, *_] = audit([Call("portal", "application-autoscaling", operation, params)],
                          {"portal": Policies.of_role(synth.template, portal_role(synth.template),
                                                      portal_names(synth.template))},
                          iam_audit.deployment_tags("easel", ours(resource_id)))
    assert finding.right.action == f"application-autoscaling:{operation}"


def test_scaler_calls_are_allowed_to_the_scaler_function(synth, aws):
    from tests.webui.conftest import BUCKET, TABLE, create_resources, make_world

    create_resources()
    boto3.client("s3").put_object(Bucket=BUCKET, Key="models/tiny.tar.gz", Body=b"x")
    world = make_world()
    admin = world.signed_in("admin")
    for name, mode, least in (("demo", "realtime", "1"), ("queue", "async", "0")):
        deployed = admin.post("/endpoints", data={
            "name": name, "model": f"s3://{BUCKET}/models/tiny.tar.gz",
            "instance_type": "ml.g5.xlarge", "mode": mode, "min_instances": least,
            "max_instances": "2", "idle_ttl_hours": "3"})
        assert deployed.status_code == 303 and "error" not in deployed.headers["location"]
    recorder = Recorder()
    with recorder.recording("scaler"):
        for name in ("easel-demo", "easel-queue"):
            outcome = scaler.apply_event(
                {"detail": {"EndpointName": name, "EndpointStatus": "IN_SERVICE"}},
                deployment_id="easel", table=scaler.Table(boto3.client("dynamodb"), TABLE),
                autoscaling=boto3.client("application-autoscaling"),
                cloudwatch=boto3.client("cloudwatch"))
            assert outcome["result"] == scaler.APPLIED, outcome
    policy_types = {c.params.get("PolicyType") for c in recorder.calls
                    if c.operation == "PutScalingPolicy"}
    assert {"TargetTrackingScaling", "StepScaling"} <= policy_types
    assert {"GetItem", "UpdateItem", "RegisterScalableTarget", "PutMetricAlarm"} <= {
        c.operation for c in recorder.calls}
    check(synth.template, recorder, {"scaler": [role_of(synth.template, "/Scaling/Function/")]},
          names=portal_names(synth.template))


IMAGE_PROJECT, IMAGE_REPOSITORY, IMAGE_TAG = "easel-webui-build-abc", "easel-webui-xyz", "0123abcd"
IMAGE_BUILD = f"{IMAGE_PROJECT}:8d1d1f2e-1111-2222-3333-444455556666"
IMAGE_PROPS = {"ProjectName": IMAGE_PROJECT, "RepositoryName": IMAGE_REPOSITORY,
               "ImageTag": IMAGE_TAG, "ComputeType": "LARGE"}
ENVIRONMENT = {"type": "LINUX_CONTAINER", "image": "aws/codebuild/standard:7.0",
               "computeType": "BUILD_GENERAL1_LARGE"}
WAITING = {"projects": [{"name": IMAGE_PROJECT, "environment": {**ENVIRONMENT, "environmentVariables": [
    {"name": "WAIT_HANDLE_URL", "value": "https://wait.example/handle"},
    {"name": "IMAGE_TAG", "value": IMAGE_TAG}]}}]}
BUILT = {"builds": [{"id": IMAGE_BUILD, "buildStatus": "SUCCEEDED", "projectName": IMAGE_PROJECT,
                     "environment": {**ENVIRONMENT, "environmentVariables": [
                         {"name": "IMAGE_TAG", "value": IMAGE_TAG}]}}]}


def image_build_names(template) -> dict[str, str]:
    resources = template["Resources"]

    def logical(type_name: str, path: str) -> str:
        return next(k for k, v in resources.items() if v["Type"] == type_name
                    and path in v.get("Metadata", {}).get("aws:cdk:path", ""))

    return {
        f"{logical('AWS::CodeBuild::Project', '/WebuiImage/Project/')}.Arn":
            f"arn:aws:codebuild:{REGION}:{ACCOUNT}:project/{IMAGE_PROJECT}",
        f"{logical('AWS::ECR::Repository', '/Registries/Webui/')}.Arn":
            f"arn:aws:ecr:{REGION}:{ACCOUNT}:repository/{IMAGE_REPOSITORY}",
    }


def test_image_build_start_and_image_calls_are_allowed_to_the_start_function(synth):
    from botocore.stub import Stubber

    from stacks.image_build.handler import handler as image_build

    signals = []
    recorder = Recorder()
    with recorder.recording("start"):
        codebuild = boto3.client("codebuild", region_name=REGION)
        ecr = boto3.client("ecr", region_name=REGION)
        with Stubber(codebuild) as builds, Stubber(ecr) as images:
            # A tag not in ECR yet: look for a running build of it, then start one.
            images.add_client_error("describe_images", service_error_code="ImageNotFoundException")
            builds.add_response("list_builds_for_project", {"ids": [IMAGE_BUILD]})
            builds.add_response("batch_get_builds", {"builds": [{
                "id": IMAGE_BUILD, "buildStatus": "FAILED", "projectName": IMAGE_PROJECT}]})
            builds.add_response("start_build", {"build": {"id": IMAGE_BUILD}})
            started = image_build.on_event({"RequestType": "Create", "ResourceProperties":
                                            IMAGE_PROPS, "ResourceType": image_build.BUILD_RESOURCE},
                                           codebuild=codebuild, ecr=ecr)
            # A tag already in ECR: signal the wait condition at once.
            digest = {"imageDetails": [{"imageDigest": "sha256:" + "ab" * 32,
                                        "imageTags": [IMAGE_TAG]}]}
            images.add_response("describe_images", digest)
            builds.add_response("batch_get_projects", WAITING)
            image_build.on_event({"RequestType": "Update", "ResourceProperties": IMAGE_PROPS,
                                  "ResourceType": image_build.BUILD_RESOURCE},
                                 codebuild=codebuild, ecr=ecr,
                                 send=lambda url, **kw: signals.append(kw))
            # After the wait: the image's digest.
            images.add_response("describe_images", digest)
            image = image_build.on_event({"RequestType": "Create", "ResourceProperties":
                                          IMAGE_PROPS, "ResourceType": image_build.IMAGE_RESOURCE},
                                         codebuild=codebuild, ecr=ecr)
    assert started["Data"]["BuildId"] == IMAGE_BUILD and signals and image["Data"]["ImageDigest"]
    assert {"DescribeImages", "ListBuildsForProject", "BatchGetBuilds", "StartBuild",
            "BatchGetProjects"} <= {c.operation for c in recorder.calls}
    check(synth.template, recorder,
          {"start": [role_of(synth.template, "/EaselImageBuildWaiter/StartBuild/")]},
          names=image_build_names(synth.template))


def test_image_build_state_calls_are_allowed_to_the_signaller(synth):
    from botocore.stub import Stubber

    from stacks.image_build.handler import handler as image_build

    signals = []
    recorder = Recorder()
    with recorder.recording("signaller"):
        codebuild = boto3.client("codebuild", region_name=REGION)
        with Stubber(codebuild) as builds:
            builds.add_response("batch_get_builds", BUILT)
            builds.add_response("batch_get_projects", WAITING)
            outcome = image_build.on_build_state(
                {"detail": {"build-id": IMAGE_BUILD, "build-status": "SUCCEEDED",
                            "project-name": IMAGE_PROJECT}},
                codebuild=codebuild, send=lambda url, **kw: signals.append(kw))
    assert outcome["signalled"] and signals[0]["success"]
    check(synth.template, recorder,
          {"signaller": [role_of(synth.template, "/EaselImageBuildWaiter/SignalBuild/")]},
          names=image_build_names(synth.template))


def execution_role(template) -> str:
    [role] = [k for k, v in template["Resources"].items() if v["Type"] == "AWS::IAM::Role"
              and "/SageMakerAccess/Role/" in v.get("Metadata", {}).get("aws:cdk:path", "")]
    return role


class _Artifacts:
    """torch.compiler's cache artifacts, faked: the audit is about the S3 calls."""

    def __init__(self, produced: bytes | None) -> None:
        self.produced = produced

    def save(self) -> bytes | None:
        return self.produced

    def load(self, data: bytes) -> None:
        pass


def test_endpoint_compile_cache_calls_are_allowed_to_the_execution_role(synth, aws):
    """The inference server's compile cache (first instance saves, later ones load) under the
    execution role: its reads and writes of compile-cache/ are granted."""
    from easel_contracts.compile_cache import COMPILE_CACHE_PREFIX, CompileCacheKey
    from easel_contracts.s3uri import S3Uri
    from easel_inference.compile_cache import CompileCache
    from tests.webui.conftest import BUCKET

    boto3.client("s3").create_bucket(Bucket=BUCKET)
    prefix = S3Uri.parse(f"s3://{BUCKET}/{COMPILE_CACHE_PREFIX}")
    key = CompileCacheKey(gpu="NVIDIA A10G", torch="2.13.0", diffusers="0.42.1",
                          model_hash="0123456789abcdef")
    recorder = Recorder()
    with recorder.recording("endpoint"):
        first = CompileCache(prefix=prefix, key=key, artifacts=_Artifacts(b"kernels"))
        assert first.load() is False
        assert first.save() is True
        assert CompileCache(prefix=prefix, key=key, artifacts=_Artifacts(None)).load() is True
    assert {c.operation for c in recorder.calls} == {"GetObject", "PutObject"}
    check(synth.template, recorder, {"endpoint": [execution_role(synth.template)]},
          names=portal_names(synth.template))


def test_the_execution_role_writes_no_model_or_lora(synth):
    """The compile-cache grant adds only its own prefix: models/ and loras/ stay read-only."""
    from tests.webui.conftest import BUCKET

    role = execution_role(synth.template)
    policies = {"endpoint": Policies.of_role(synth.template, role, portal_names(synth.template))}
    calls = [Call("endpoint", "s3", "PutObject", {"Bucket": BUCKET, "Key": f"{prefix}x"})
             for prefix in ("models/", "loras/", "outputs/u/")]
    findings = audit(calls, policies, iam_audit.deployment_tags("easel", {}))
    assert len(findings) == len(calls)
