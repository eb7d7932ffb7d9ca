"""admin_password: `get` prints only the password; `rotate` follows the rotation Lambda's steps.

moto cannot run the rotation Lambda, so `start` is replaced by a stand-in for Secrets Manager and
the Lambda runtime: it runs the stack's real rotation steps (stacks/rotation_handler) against the
moto secret and ships their log lines to the function's CloudWatch log group, which the command
reads like it does on AWS.
"""

from __future__ import annotations

import json
import logging
import time
import uuid

import pytest
from moto.secretsmanager.models import secretsmanager_backends
from script_support import REGION, SECRET

from scripts import admin_password
from scripts.admin_password import parse_step_log
from stacks.rotation_handler import index as rotation

FUNCTION = "easel-admin-rotation"
FUNCTION_ARN = f"arn:aws:lambda:{REGION}:123456789012:function:{FUNCTION}"
OLD = "OldPassw0rdOldPassw0rdOldPassw0r"


@pytest.fixture
def secret(stack):
    client = stack.client("secretsmanager")
    client.create_secret(Name=SECRET,
                         SecretString=json.dumps({"username": "admin", "password": OLD}))
    # What the stack's rotation schedule sets up (moto would try to invoke the Lambda).
    stored = secretsmanager_backends["123456789012"][REGION].secrets[SECRET]
    stored.rotation_requested = True
    stored.rotation_enabled = True
    stored.auto_rotate_after_days = 30
    stored.rotation_lambda_arn = FUNCTION_ARN
    stack.client("logs").create_log_group(logGroupName=f"/aws/lambda/{FUNCTION}")
    return client


class _CloudWatchHandler(logging.Handler):
    """The Lambda runtime's job: every log record becomes a CloudWatch event."""

    def __init__(self, logs):
        super().__init__()
        self.logs = logs
        self.stream = f"stream-{uuid.uuid4().hex[:6]}"
        logs.create_log_stream(logGroupName=f"/aws/lambda/{FUNCTION}", logStreamName=self.stream)

    def put(self, message):
        self.logs.put_log_events(
            logGroupName=f"/aws/lambda/{FUNCTION}", logStreamName=self.stream,
            logEvents=[{"timestamp": int(time.time() * 1000), "message": message}])

    def emit(self, record):
        self.put(f"[{record.levelname}] {record.getMessage()}")


def _fake_start(session):
    def start(client, secret_id):
        token = str(uuid.uuid4())
        handler = _CloudWatchHandler(session.client("logs"))
        rotation.logger.addHandler(handler)
        try:
            for step in admin_password.STEPS:
                try:
                    rotation.STEPS[step](client, secret_id, token)
                except Exception as exc:  # the runtime logs the error and the invocation fails
                    handler.put(f"[ERROR] {type(exc).__name__}: {exc}")
                    break
        finally:
            rotation.logger.removeHandler(handler)
        return token
    return start


def _run(capsys, *argv):
    code = admin_password.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_get_prints_the_password_and_nothing_else(secret, capsys):
    code, out, err = _run(capsys, "get")
    assert code == 0
    assert out == OLD + "\n"
    assert OLD not in err


def test_rotate_reports_the_new_version_and_get_prints_the_new_password(
        secret, stack, capsys, monkeypatch):
    monkeypatch.setattr(admin_password, "start_rotation", _fake_start(stack))
    code, out, err = _run(capsys, "rotate", "--interval", "0", "--quiet")
    assert code == 0, err
    current = secret.get_secret_value(SecretId=SECRET, VersionStage="AWSCURRENT")
    assert current["VersionId"] in out
    new_password = json.loads(current["SecretString"])["password"]
    assert new_password != OLD
    assert new_password not in out + err
    assert _run(capsys, "get")[1].strip() == new_password


def test_failed_rotation_names_the_step_and_keeps_the_old_password(
        secret, stack, capsys, monkeypatch):
    def reject(client, arn, token):
        raise rotation.RotationError("pending password must mix lower case, upper case and digits")

    monkeypatch.setitem(rotation.STEPS, "testSecret", reject)
    monkeypatch.setattr(admin_password, "start_rotation", _fake_start(stack))
    code, out, err = _run(capsys, "rotate", "--interval", "0", "--quiet")
    assert code == 1
    assert "step testSecret failed" in err
    assert "pending password must mix" in err
    assert "unchanged and still works" in err
    assert _run(capsys, "get")[1].strip() == OLD
    stages = secret.describe_secret(SecretId=SECRET)["VersionIdsToStages"]
    assert not any("AWSPENDING" in s and "AWSCURRENT" not in s for s in stages.values()), \
        "the half-made pending version is cleared so the next rotation can start"


def test_rotation_that_never_finishes_times_out_naming_the_waiting_step(
        secret, stack, capsys, monkeypatch):
    monkeypatch.setattr(admin_password, "start_rotation", lambda client, sid: str(uuid.uuid4()))
    code, _, err = _run(capsys, "rotate", "--timeout", "0", "--interval", "0", "--quiet")
    assert code == 1
    assert "createSecret" in err and "unchanged and still works" in err


def test_rotate_refuses_when_rotation_is_not_enabled(secret, capsys):
    secretsmanager_backends["123456789012"][REGION].secrets[SECRET].rotation_enabled = False
    code, _, err = _run(capsys, "rotate", "--quiet")
    assert code == 1 and "rotation is not enabled" in err


def test_wrong_stack_name_is_reported_with_the_region(stack, capsys):
    code, out, err = _run(capsys, "get", "--stack", "missing-stack")
    assert code == 1 and out == ""
    assert "'missing-stack' was not found in region us-east-1" in err


def test_step_log_parsing_finds_completed_steps_and_the_error():
    log = parse_step_log([
        "[INFO] createSecret: pending version created",
        "[INFO] setSecret: nothing to update outside the secret",
        "[ERROR] RotationError: pending value lacks username 'admin'",
    ])
    assert log.completed == ["createSecret", "setSecret"]
    assert log.next_step == "testSecret"
    assert log.error == "RotationError: pending value lacks username 'admin'"


def test_step_log_parsing_reads_lambdas_json_log_format():
    log = parse_step_log([
        json.dumps({"level": "INFO", "message": "createSecret: pending version created"}),
        json.dumps({"level": "ERROR", "errorType": "RotationError",
                    "errorMessage": "pending value is not JSON"}),
    ])
    assert log.completed == ["createSecret"]
    assert log.error == "RotationError: pending value is not JSON"


def test_log_group_comes_from_the_functions_logging_config():
    import boto3
    from botocore.stub import Stubber

    client = boto3.client("lambda", region_name=REGION)
    with Stubber(client) as stubber:
        stubber.add_response("get_function_configuration",
                             {"LoggingConfig": {"LogGroup": "easel-SecretsRotatorLogs1A2B"}},
                             {"FunctionName": FUNCTION})
        assert admin_password.rotation_log_group(client, FUNCTION) == \
            "easel-SecretsRotatorLogs1A2B"
        stubber.add_client_error("get_function_configuration", "ResourceNotFoundException")
        assert admin_password.rotation_log_group(client, FUNCTION) == f"/aws/lambda/{FUNCTION}"


def test_missing_subcommand_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        admin_password.main([])
    assert exit_info.value.code == 2
