"""`ImageBuild` in a small test stack: three repositories, three images, cdk-nag attached."""

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

    def resources(self, type_name: str) -> dict[str, dict[str, Any]]:
        return {k: v for k, v in self.template["Resources"].items() if v["Type"] == type_name}


def _context(folder: Path, marker: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "Dockerfile").write_text(f"FROM public.ecr.aws/docker/library/busybox:1\n# {marker}\n")
    return folder


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Synth:
    return Synth(**shared_across_workers(tmp_path_factory, "image-build-synth", _synthesize))


def _synthesize(base: Path) -> dict[str, Any]:
    from aws_cdk import App, CfnOutput, Duration, Stack, Validations
    from aws_cdk import aws_codebuild as codebuild
    from aws_cdk import aws_ecr as ecr
    from cdk_nag import AwsSolutionsChecks

    from stacks.image_build import ImageBuild, tags_by_image

    # The app's feature flags (cdk.json), so the template matches what `cdk synth` produces.
    context = json.loads((ROOT / "cdk.json").read_text())["context"]
    app = App(outdir=str(base / "cdk.out"), context=context)
    stack = Stack(app, "ImageBuildTest")
    builds, repos = {}, {}
    for name in NAMES:
        repos[name] = ecr.Repository(stack, f"{name}Repository")
        builds[name] = ImageBuild(
            stack,
            f"{name}Image",
            repository=repos[name],
            source_dir=_context(base / "containers" / name, name),
            compute_type=codebuild.ComputeType.LARGE,
            build_timeout=Duration.minutes(50),
        )
        CfnOutput(stack, f"{name}Uri", value=builds[name].image_uri)
    Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    # With the nag plugin attached, synth raises on any unacknowledged finding.
    template = app.synth().get_stack_by_name("ImageBuildTest").template
    return dict(
        template=template,
        tags={n: b.source_hash_tag for n, b in builds.items()},
        script_tags=tags_by_image(base / "containers"),
        repo_ids={n: stack.resolve(r.node.default_child.logical_id) for n, r in repos.items()},
        project_ids={
            n: stack.resolve(b.project.node.default_child.logical_id) for n, b in builds.items()
        },
        resource_ids={
            n: stack.resolve(b.resource.node.default_child.logical_id) for n, b in builds.items()
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
    from stacks.image_build import buildspec

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
                    "codebuild:ListBuildsForProject",
                }:
                    assert all(r in project_arns for r in _as_list(statement["Resource"]))
                    seen.add(action)
                if action == "ecr:DescribeImages":
                    assert all(r in repo_arns for r in _as_list(statement["Resource"]))
                    seen.add(action)
    assert seen == {
        "codebuild:StartBuild", "codebuild:BatchGetBuilds", "codebuild:ListBuildsForProject",
        "ecr:DescribeImages",
    }


def test_wait_resource_depends_on_its_build_project(synth):
    for name, resource_id in synth.resource_ids.items():
        resource = synth.template["Resources"][resource_id]
        assert resource["Type"] == "Custom::EaselImageBuild"
        assert synth.project_ids[name] in resource["DependsOn"]
        props = resource["Properties"]
        assert props["ProjectName"] == {"Ref": synth.project_ids[name]}
        assert props["RepositoryName"] == {"Ref": synth.repo_ids[name]}
        assert props["ImageTag"] == synth.tags[name]


def test_image_uri_references_the_wait_resource(synth):
    for name, resource_id in synth.resource_ids.items():
        value = synth.template["Outputs"][f"{name}Uri"]["Value"]
        parts = value["Fn::Join"][1]
        assert {"Fn::GetAtt": [resource_id, "ImageTag"]} in parts
        assert {"Ref": synth.repo_ids[name]} in parts


def test_one_waiter_serves_every_image(synth):
    assert len(synth.resources("AWS::StepFunctions::StateMachine")) == 1
    tokens = {
        json.dumps(synth.template["Resources"][rid]["Properties"]["ServiceToken"])
        for rid in synth.resource_ids.values()
    }
    assert len(tokens) == 1


def test_waiter_polls_every_30_seconds_for_up_to_an_hour(synth):
    (machine,) = synth.resources("AWS::StepFunctions::StateMachine").values()
    definition = json.dumps(machine["Properties"]["DefinitionString"])
    assert '\\"IntervalSeconds\\":30' in definition
    assert '\\"MaxAttempts\\":120' in definition


def test_handlers_run_on_current_python(synth):
    handlers = [
        fn for fn in synth.resources("AWS::Lambda::Function").values()
        if fn["Properties"].get("Handler", "").startswith("handler.")
    ]
    assert {fn["Properties"]["Handler"] for fn in handlers} == {
        "handler.on_event", "handler.is_complete"
    }
    assert {fn["Properties"]["Runtime"] for fn in handlers} == {"python3.14"}


def test_images_local_tags_match_the_construct(synth):
    # scripts/images_local.sh tags with `python -m stacks.image_build tags` (tags_by_image).
    assert synth.script_tags == synth.tags


def test_distinct_sources_get_distinct_tags(synth):
    tags = set(synth.tags.values())
    assert len(tags) == 3
