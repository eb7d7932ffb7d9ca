"""The deployed stack's image builds fit CloudFormation's limits on a first deploy.

AWS enforces what the stand-ins do not: a custom resource answers within one hour
(AWS::CloudFormation::CustomResource ServiceTimeout, 1..3600 s) and a wait condition waits at most
43200 s ("AWS::CloudFormation::WaitCondition", Timeout), AWS CloudFormation User Guide.
"""

from __future__ import annotations

import pytest

from stacks.config import ConfigError, load_config


def test_each_image_waits_for_every_configured_build_in_a_row(synth):
    config = load_config("default")
    waits = synth.resources("AWS::CloudFormation::WaitCondition")
    projects = synth.resources("AWS::CodeBuild::Project")
    assert len(waits) == len(projects) == 3
    for project in projects.values():
        assert project["Properties"]["TimeoutInMinutes"] == config.image_build.timeout_minutes
    in_a_row = len(projects) * config.image_build.timeout_minutes * 60
    for wait in waits.values():
        assert in_a_row <= int(wait["Properties"]["Timeout"]) <= 43200


def test_no_custom_resource_waits_past_an_hour_and_no_image_waiter_polls(synth):
    for resource in synth.template["Resources"].values():
        if resource["Type"].startswith("Custom::"):
            assert int(resource["Properties"].get("ServiceTimeout", 3600)) <= 3600
    for logical_id in synth.resources("AWS::StepFunctions::StateMachine"):
        assert "ImageBuild" not in logical_id


def test_a_build_timeout_too_long_for_the_wait_is_a_config_error(tmp_path):
    from stacks.app import build_app

    config = load_config("default")
    too_long = config.model_copy(
        update={"image_build": config.image_build.model_copy(update={"timeout_minutes": 300})}
    )
    with pytest.raises(ConfigError, match=r"image_build.timeout_minutes 300: .* at most 235"):
        build_app(config=too_long, outdir=tmp_path, nag=False)
