"""Which deployment a command works on: flags, then environment, then config."""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys

import pytest
from script_support import BUCKET

from scripts.cli import ScriptError, UsageError
from scripts.stack import StackOutputs, add_target_arguments, resolve_target


def _args(*argv):
    parser = argparse.ArgumentParser()
    add_target_arguments(parser)
    return parser.parse_args(list(argv))


def test_defaults_come_from_the_config_and_the_environment_region():
    target = resolve_target(_args(), environ={"AWS_DEFAULT_REGION": "eu-west-1"})
    assert (target.stack_name, target.region, target.stage) == ("easel", "eu-west-1", "default")


def test_environment_overrides_config():
    target = resolve_target(_args(), environ={"EASEL_STACK": "team-b", "AWS_REGION": "us-west-2",
                                              "AWS_DEFAULT_REGION": "eu-west-1"})
    assert (target.stack_name, target.region) == ("team-b", "us-west-2")


def test_flags_override_environment():
    target = resolve_target(_args("--stack", "flagged", "--region", "ap-south-1"),
                            environ={"EASEL_STACK": "team-b", "AWS_REGION": "us-west-2"})
    assert (target.stack_name, target.region) == ("flagged", "ap-south-1")


def test_unknown_stage_is_a_usage_error_naming_it():
    with pytest.raises(UsageError, match="nosuchstage"):
        resolve_target(_args("--stage", "nosuchstage"), environ={"AWS_REGION": "us-east-1"})


def test_outputs_are_read_from_the_stack(stack):
    outputs = StackOutputs(resolve_target(_args()))
    assert outputs.require("BucketName") == BUCKET


def test_missing_output_names_the_output_and_the_fix(stack):
    with pytest.raises(ScriptError, match="no output 'PortalUrl'.*make deploy"):
        StackOutputs(resolve_target(_args())).require("PortalUrl")


def test_missing_stack_names_stack_and_region(aws):
    with pytest.raises(ScriptError) as error:
        StackOutputs(resolve_target(_args("--stack", "typo"))).require("BucketName")
    message = str(error.value)
    assert "'typo' was not found in region us-east-1" in message
    assert "--stack" in message and "--region" in message


@pytest.mark.parametrize("name", ["upload_model", "admin_password", "train", "leftovers",
                                  "preflight"])
def test_every_command_has_help_and_rejects_unknown_options(name, capsys):
    module = importlib.import_module(f"scripts.{name}")
    with pytest.raises(SystemExit) as helped:
        module.main(["--help"])
    assert helped.value.code == 0 and "usage:" in capsys.readouterr().out
    with pytest.raises(SystemExit) as refused:
        module.main(["--no-such-option"])
    assert refused.value.code == 2


def test_commands_run_as_modules():
    run = subprocess.run([sys.executable, "-m", "scripts.leftovers", "--help"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "python -m scripts.leftovers" in run.stdout
