"""`ImageBuild` in a small test stack: three repositories, three images, cdk-nag attached.

Also the rules CloudFormation enforces and the stand-ins do not: a custom resource answers within
one hour, a wait condition waits at most 12 hours, and every call the handlers make is granted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .conftest import ROOT, shared_across_workers

PUSH_ACTIONS = {
    "ecr:PutImage",
    "ecr:UploadLayerPart",
    "ecr:InitiateLayerUpload",
    "ecr:CompleteLayerUpload",
}
NAMES = ("inference", "training", "webui")


@dataclass
class Synth:
    template: dict[str, Any]
    tags: dict[str, str]
    script_tags: dict[str, str]
    repo_ids: dict[str, str]
    project_ids: dict[str, str]
    resource_ids: dict[str, str]
    build_ids: dict[str, str]
    wait_ids: dict[str, str]
    handle_ids: dict[str, str]
    role_ids: dict[str, str]

    def resources(self, type_name: str) -> dict[str, dict[str, Any]]:
        return {k: v for k, v in self.template["Resources"].items() if v["Type"] == type_name}


BUILD_MINUTES = 50


def _containers(base: Path) -> Path:
    for name in NAMES:
        folder = base / "containers" / name
        folder.mkdir(parents=True)
        (folder / "Dockerfile").write_text(
            f"FROM public.ecr.aws/docker/library/busybox:1\n# {name}\n"
        )
    return base / "containers"


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Synth:
    return Synth(**shared_across_workers(tmp_path_factory, "image-build-synth", _synthesize))


def _synthesize(base: Path) -> dict[str, Any]:
    from aws_cdk import App, CfnOutput, Duration, Stack, Validations
    from aws_cdk import aws_codebuild as codebuild
    from aws_cdk import aws_ecr as ecr
    from cdk_nag import AwsSolutionsChecks

    from stacks.image_build import ImageBuild, tags_by_image
    from stacks.image_build.waiter import waiter_of

    # The app's feature flags (cdk.json), so the template matches what `cdk synth` produces.
    context = json.loads((ROOT / "cdk.json").read_text())["context"]
    app = App(outdir=str(base / "cdk.out"), context=context)
    stack = Stack(app, "ImageBuildTest")
    builds, repos = {}, {}
    containers = _containers(base)
    for name in NAMES:
        repos[name] = ecr.Repository(stack, f"{name}Repository")
        builds[name] = ImageBuild(
            stack,
            f"{name}Image",
            repository=repos[name],
            image=name,
            containers_dir=containers,
            compute_type=codebuild.ComputeType.LARGE,
            build_timeout=Duration.minutes(BUILD_MINUTES),
            builds=len(NAMES),
        )
        CfnOutput(stack, f"{name}Uri", value=builds[name].image_uri)
    Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    # With the nag plugin attached, synth raises on any unacknowledged finding.
    template = app.synth().get_stack_by_name("ImageBuildTest").template
    return dict(
        template=template,
        tags={n: b.source_hash_tag for n, b in builds.items()},
        script_tags=tags_by_image(containers),
        repo_ids={n: stack.resolve(r.node.default_child.logical_id) for n, r in repos.items()},
        project_ids={
            n: stack.resolve(b.project.node.default_child.logical_id) for n, b in builds.items()
        },
        resource_ids={
            n: stack.resolve(b.resource.node.default_child.logical_id) for n, b in builds.items()
        },
        build_ids={
            n: stack.resolve(b.build.node.default_child.logical_id) for n, b in builds.items()
        },
        wait_ids={n: stack.resolve(b.wait.logical_id) for n, b in builds.items()},
        handle_ids={n: stack.resolve(b.handle.logical_id) for n, b in builds.items()},
        role_ids={
            role: stack.resolve(getattr(waiter_of(stack), role).node.default_child.logical_id)
            for role in ("role", "signal_role")
        },
    )


def _statements(resource: dict[str, Any]) -> list[dict[str, Any]]:
    return resource["Properties"]["PolicyDocument"]["Statement"]


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _policy_of_role(synth: Synth, role_id: str) -> list[dict[str, Any]]:
    statements = []
    for policy in synth.resources("AWS::IAM::Policy").values():
        if {"Ref": role_id} in policy["Properties"]["Roles"]:
            statements.extend(_statements(policy))
    return statements


def test_one_privileged_x86_project_per_image(synth):
    projects = synth.resources("AWS::CodeBuild::Project")
    assert set(projects) == set(synth.project_ids.values())
    for project in projects.values():
        environment = project["Properties"]["Environment"]
        assert environment["Type"] == "LINUX_CONTAINER"  # x86_64 (ARM is ARM_CONTAINER)
        assert environment["Image"] == "aws/codebuild/standard:7.0"
        assert environment["PrivilegedMode"] is True
        assert environment["ComputeType"] == "BUILD_GENERAL1_LARGE"
        assert project["Properties"]["TimeoutInMinutes"] == 50
        assert project["Properties"]["EncryptionKey"]


def test_projects_carry_the_tested_buildspec(synth):
    from stacks.image_build.buildspec import buildspec

    for project in synth.resources("AWS::CodeBuild::Project").values():
        assert json.loads(project["Properties"]["Source"]["BuildSpec"]) == buildspec()
        assert project["Properties"]["Source"]["Type"] == "S3"


def test_push_rights_only_on_the_kits_repositories(synth):
    repo_arns = [{"Fn::GetAtt": [repo_id, "Arn"]} for repo_id in synth.repo_ids.values()]
    for policy in synth.resources("AWS::IAM::Policy").values():
        for statement in _statements(policy):
            actions = set(_as_list(statement["Action"]))
            assert "ecr:*" not in actions
            if actions & PUSH_ACTIONS:
                for resource in _as_list(statement["Resource"]):
                    assert resource in repo_arns, f"push on {resource}"


def test_each_project_pushes_only_to_its_own_repository(synth):
    projects = synth.resources("AWS::CodeBuild::Project")
    for name, project_id in synth.project_ids.items():
        role_id = projects[project_id]["Properties"]["ServiceRole"]["Fn::GetAtt"][0]
        pushed = [
            resource
            for statement in _policy_of_role(synth, role_id)
            if set(_as_list(statement["Action"])) & PUSH_ACTIONS
            for resource in _as_list(statement["Resource"])
        ]
        assert pushed == [{"Fn::GetAtt": [synth.repo_ids[name], "Arn"]}]


def test_handler_rights_are_scoped_to_the_projects_and_repositories(synth):
    project_arns = [{"Fn::GetAtt": [pid, "Arn"]} for pid in synth.project_ids.values()]
    repo_arns = [{"Fn::GetAtt": [rid, "Arn"]} for rid in synth.repo_ids.values()]
    seen = set()
    for policy in synth.resources("AWS::IAM::Policy").values():
        for statement in _statements(policy):
            for action in _as_list(statement["Action"]):
                if action.startswith("codebuild:") and action in {
                    "codebuild:StartBuild", "codebuild:BatchGetBuilds",
                    "codebuild:ListBuildsForProject", "codebuild:BatchGetProjects",
                }:
                    assert all(r in project_arns for r in _as_list(statement["Resource"]))
                    seen.add(action)
                if action == "ecr:DescribeImages":
                    assert all(r in repo_arns for r in _as_list(statement["Resource"]))
                    seen.add(action)
    assert seen == {
        "codebuild:StartBuild", "codebuild:BatchGetBuilds", "codebuild:ListBuildsForProject",
        "codebuild:BatchGetProjects", "ecr:DescribeImages",
    }


def test_image_uri_references_the_image_resource(synth):
    for name, resource_id in synth.resource_ids.items():
        value = synth.template["Outputs"][f"{name}Uri"]["Value"]
        parts = value["Fn::Join"][1]
        assert {"Fn::GetAtt": [resource_id, "ImageTag"]} in parts
        assert {"Ref": synth.repo_ids[name]} in parts


def test_one_waiter_serves_every_image(synth):
    tokens = {
        json.dumps(synth.template["Resources"][rid]["Properties"]["ServiceToken"])
        for rid in [*synth.resource_ids.values(), *synth.build_ids.values()]
    }
    assert len(tokens) == 1
    assert len(synth.resources("AWS::Events::Rule")) == 1


def test_build_resource_starts_the_build_of_its_own_project(synth):
    for name, build_id in synth.build_ids.items():
        resource = synth.template["Resources"][build_id]
        assert resource["Type"] == "Custom::EaselImageBuild"
        assert synth.project_ids[name] in resource["DependsOn"]
        props = resource["Properties"]
        assert props["ProjectName"] == {"Ref": synth.project_ids[name]}
        assert props["RepositoryName"] == {"Ref": synth.repo_ids[name]}
        assert props["ImageTag"] == synth.tags[name]


def test_wait_follows_the_build_and_the_image_follows_the_wait(synth):
    resources = synth.template["Resources"]
    for name in NAMES:
        wait = resources[synth.wait_ids[name]]
        assert wait["Type"] == "AWS::CloudFormation::WaitCondition"
        assert wait["Properties"]["Handle"] == {"Ref": synth.handle_ids[name]}
        assert wait["Properties"]["Count"] == 1
        assert synth.build_ids[name] in wait["DependsOn"]
        image = resources[synth.resource_ids[name]]
        assert image["Type"] == "Custom::EaselImage"
        assert synth.wait_ids[name] in image["DependsOn"]
        assert image["Properties"]["ImageTag"] == synth.tags[name]


def test_handle_and_wait_are_new_for_each_tag(synth):
    # CloudFormation cannot update a wait condition or reuse a signalled handle.
    for name in NAMES:
        suffix = synth.tags[name][:12]
        assert suffix in synth.wait_ids[name]
        assert suffix in synth.handle_ids[name]


def test_project_knows_its_dockerfile_and_its_wait_handle(synth):
    projects = synth.resources("AWS::CodeBuild::Project")
    for name, project_id in synth.project_ids.items():
        env = {v["Name"]: v["Value"]
               for v in projects[project_id]["Properties"]["Environment"]["EnvironmentVariables"]}
        assert env["DOCKERFILE"] == f"{name}/Dockerfile"
        assert env["IMAGE_TAG"] == synth.tags[name]
        assert env["WAIT_HANDLE_URL"] == {"Ref": synth.handle_ids[name]}


def test_no_custom_resource_waits_longer_than_cloudformations_hour(synth):
    # "Custom resources" / ServiceTimeout (AWS CloudFormation User Guide): CloudFormation waits
    # at most 3600 s for a custom resource. No handler polls a build: no waiter state machine,
    # and every function (the Provider framework's included) ends within Lambda's 15 minutes.
    from stacks.image_build.waiter import CUSTOM_RESOURCE_MAX_SECONDS

    assert not synth.resources("AWS::StepFunctions::StateMachine")
    for resource in synth.template["Resources"].values():
        if resource["Type"].startswith("Custom::"):
            timeout = resource["Properties"].get("ServiceTimeout", CUSTOM_RESOURCE_MAX_SECONDS)
            assert int(timeout) <= CUSTOM_RESOURCE_MAX_SECONDS
    for function in synth.resources("AWS::Lambda::Function").values():
        assert function["Properties"].get("Timeout", 3) <= 900


def test_each_wait_covers_every_build_in_a_row_within_twelve_hours(synth):
    # AWS::CloudFormation::WaitCondition Timeout: at most 43200 seconds (12 hours). On a
    # CodeBuild quota of 1 the three builds run one after another, each up to its timeout.
    projects = synth.resources("AWS::CodeBuild::Project")
    build_seconds = [p["Properties"]["TimeoutInMinutes"] * 60 for p in projects.values()]
    for wait_id in synth.wait_ids.values():
        timeout = int(synth.template["Resources"][wait_id]["Properties"]["Timeout"])
        assert sum(build_seconds) <= timeout <= 43200


def test_a_90_minute_build_is_waited_for(synth):
    # The old waiter gave up after ~55 minutes; a cold CUDA build can take longer.
    for wait_id in synth.wait_ids.values():
        assert int(synth.template["Resources"][wait_id]["Properties"]["Timeout"]) > 90 * 60


def test_queued_builds_may_wait_for_the_others(synth):
    for project in synth.resources("AWS::CodeBuild::Project").values():
        props = project["Properties"]
        assert props["QueuedTimeoutInMinutes"] >= (len(NAMES) - 1) * props["TimeoutInMinutes"]


def test_finished_builds_of_the_kits_projects_reach_the_signaller(synth):
    (rule,) = synth.resources("AWS::Events::Rule").values()
    pattern = rule["Properties"]["EventPattern"]
    assert pattern["source"] == ["aws.codebuild"]
    assert pattern["detail-type"] == ["CodeBuild Build State Change"]
    assert set(pattern["detail"]["build-status"]) == {
        "SUCCEEDED", "FAILED", "FAULT", "STOPPED", "TIMED_OUT"
    }
    assert sorted(map(json.dumps, pattern["detail"]["project-name"])) == sorted(
        json.dumps({"Ref": pid}) for pid in synth.project_ids.values()
    )
    (target,) = rule["Properties"]["Targets"]
    function_id = target["Arn"]["Fn::GetAtt"][0]
    handler = synth.template["Resources"][function_id]["Properties"]["Handler"]
    assert handler == "handler.on_build_state"


def _granted(synth: Synth, role_key: str) -> dict[str, list[Any]]:
    granted: dict[str, list[Any]] = {}
    for statement in _policy_of_role(synth, synth.role_ids[role_key]):
        for action in _as_list(statement["Action"]):
            granted.setdefault(action, []).extend(_as_list(statement["Resource"]))
    return granted


def test_every_call_the_handlers_make_is_granted_on_the_kits_resources(synth):
    from .handler_calls import calls_of_on_build_state, calls_of_on_event

    project_arns = [{"Fn::GetAtt": [pid, "Arn"]} for pid in synth.project_ids.values()]
    repo_arns = [{"Fn::GetAtt": [rid, "Arn"]} for rid in synth.repo_ids.values()]
    for role_key, calls in (("role", calls_of_on_event()),
                            ("signal_role", calls_of_on_build_state())):
        granted = _granted(synth, role_key)
        for action in calls:
            assert action in granted, f"{role_key}: {action} is called but not granted"
            allowed = project_arns if action.startswith("codebuild:") else repo_arns
            assert sorted(map(json.dumps, granted[action])) == sorted(map(json.dumps, allowed))


def test_signaller_may_not_start_builds_or_read_images(synth):
    granted = _granted(synth, "signal_role")
    assert "codebuild:StartBuild" not in granted
    assert not [a for a in granted if a.startswith("ecr:")]


def test_handlers_run_on_current_python(synth):
    handlers = [
        fn for fn in synth.resources("AWS::Lambda::Function").values()
        if fn["Properties"].get("Handler", "").startswith("handler.")
    ]
    assert {fn["Properties"]["Handler"] for fn in handlers} == {
        "handler.on_event", "handler.on_build_state"
    }
    assert {fn["Properties"]["Runtime"] for fn in handlers} == {"python3.14"}


def test_images_local_tags_match_the_construct(synth):
    # scripts/images_local.sh tags with `python -m stacks.image_build tags` (tags_by_image).
    assert synth.script_tags == synth.tags


def test_distinct_sources_get_distinct_tags(synth):
    tags = set(synth.tags.values())
    assert len(tags) == 3
