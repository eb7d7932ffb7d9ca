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


def test_cleanup_handlers_environment_carries_the_contract_tag_key(synth):
    handlers = [f for f in synth.resources("AWS::Lambda::Function").values()
                if f["Properties"].get("Handler") in ("index.on_event", "index.is_complete")]
    assert len(handlers) == 2
    for function in handlers:
        environment = function["Properties"]["Environment"]["Variables"]
        assert environment[naming.DEPLOYMENT_TAG_ENV] == naming.DEPLOYMENT_TAG
