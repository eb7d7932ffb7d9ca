"""The cleanup custom resource: Provider with completion polling, scoped permissions."""

from __future__ import annotations

import json

from easel_contracts import naming


def test_cleanup_custom_resource_uses_provider_with_polling(synth):
    _, resource = synth.only("Custom::EaselCleanup")
    assert resource["Properties"]["DeploymentId"] == "easel"
    machines = synth.resources("AWS::StepFunctions::StateMachine")
    assert any(logical_id.startswith("CleanupProvider") for logical_id in machines)


def test_cleanup_runs_before_role_repositories_and_bucket_are_deleted(synth):
    _, resource = synth.only("Custom::EaselCleanup")
    depends = set(resource.get("DependsOn", []))
    role_id, _ = synth.only("AWS::IAM::Role", path_contains="/SageMakerAccess/Role/")
    bucket_id, _ = synth.only("AWS::S3::Bucket", path_contains="/Storage/Data/")
    assert role_id in depends and bucket_id in depends
    repos = set(synth.resources("AWS::ECR::Repository"))
    assert repos <= depends


def test_cleanup_may_delete_only_tagged_resources_of_this_deployment(synth):
    handlers = {
        logical_id: f for logical_id, f in synth.resources("AWS::Lambda::Function").items()
        if f["Properties"].get("Handler") in ("index.on_event", "index.is_complete")
    }
    assert len(handlers) == 2
    # Both handlers run as the construct's one role (it writes only to their log group).
    (role,) = {json.dumps(f["Properties"]["Role"]) for f in handlers.values()}
    deletes = []
    for policy in synth.resources("AWS::IAM::Policy").values():
        if json.loads(role)["Fn::GetAtt"][0] not in json.dumps(policy["Properties"]["Roles"]):
            continue
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
            actions = statement["Action"] if isinstance(statement["Action"], list) else [
                statement["Action"]]
            if any(a.startswith(("sagemaker:Delete", "sagemaker:Stop")) for a in actions):
                deletes.append(statement)
    assert len(deletes) == 1
    for statement in deletes:
        assert statement["Condition"] == {
            "StringEquals": {"aws:ResourceTag/easel:deployment": "easel"}
        }
        assert "*" not in statement["Resource"]


def test_cleanup_outlasts_the_longest_endpoint_create_within_cloudformations_hour():
    # CloudFormation waits at most one hour (ServiceTimeout <= 3600 s) for a custom resource:
    # https://docs.aws.amazon.com/AWSCloudFormation/latest/UserGuide/aws-resource-cloudformation-customresource.html
    # SageMaker cannot delete an endpoint while it is Creating; the portal bounds a create by its
    # model-download and container start-up timeouts (plus the instance start).
    from easel_webui.sagemaker_requests import MODEL_DOWNLOAD_TIMEOUT_S, STARTUP_HEALTH_TIMEOUT_S
    from stacks.cleanup import GIVE_UP, PROVISIONING_ALLOWANCE, QUERY_INTERVAL, TOTAL_TIMEOUT

    longest_create = (PROVISIONING_ALLOWANCE.to_seconds() + MODEL_DOWNLOAD_TIMEOUT_S
                      + STARTUP_HEALTH_TIMEOUT_S)
    assert GIVE_UP.to_seconds() > longest_create + 2 * QUERY_INTERVAL.to_seconds()
    # The handler gives up (and lets the delete proceed) before the Provider would fail it.
    assert TOTAL_TIMEOUT.to_seconds() - GIVE_UP.to_seconds() >= 5 * 60
    assert TOTAL_TIMEOUT.to_seconds() < 3600


def test_cleanup_handlers_give_up_at_the_constructs_time(synth):
    from stacks.cleanup import GIVE_UP

    handlers = [f for f in synth.resources("AWS::Lambda::Function").values()
                if f["Properties"].get("Handler") in ("index.on_event", "index.is_complete")]
    assert {f["Properties"]["Environment"]["Variables"]["GIVE_UP_SECONDS"]
            for f in handlers} == {str(GIVE_UP.to_seconds())}


def test_cleanup_handlers_environment_carries_the_contract_tag_key(synth):
    handlers = [f for f in synth.resources("AWS::Lambda::Function").values()
                if f["Properties"].get("Handler") in ("index.on_event", "index.is_complete")]
    assert len(handlers) == 2
    for function in handlers:
        environment = function["Properties"]["Environment"]["Variables"]
        assert environment[naming.DEPLOYMENT_TAG_ENV] == naming.DEPLOYMENT_TAG
