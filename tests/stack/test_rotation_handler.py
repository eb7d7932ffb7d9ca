"""The admin-password rotation Lambda, step by step against moto (moto cannot invoke Lambdas)."""

from __future__ import annotations

import json
import uuid

import boto3
import pytest
from moto import mock_aws

from stacks.rotation_handler import index as rotation


@pytest.fixture
def client():
    with mock_aws():
        yield boto3.client("secretsmanager", region_name="us-east-1")


@pytest.fixture
def secret_arn(client):
    value = json.dumps({"username": "admin", "password": "Initial0Password0Value0Abcdefghij"})
    return client.create_secret(Name="easel-admin", SecretString=value)["ARN"]


def current(client, arn):
    # Ask for AWSCURRENT explicitly (moto keeps returning the first version otherwise).
    value = client.get_secret_value(SecretId=arn, VersionStage="AWSCURRENT")
    return json.loads(value["SecretString"])


def rotate(client, arn, token):
    for step in (rotation.create_secret, rotation.set_secret, rotation.test_secret,
                 rotation.finish_secret):
        step(client, arn, token)


def test_rotation_moves_current_to_a_new_valid_password(client, secret_arn):
    before = current(client, secret_arn)["password"]
    rotate(client, secret_arn, str(uuid.uuid4()))
    after = current(client, secret_arn)
    assert after["username"] == "admin"
    assert after["password"] != before
    rotation.check_password_shape(json.dumps(after))


def test_each_step_is_idempotent_on_retry(client, secret_arn):
    token = str(uuid.uuid4())
    rotation.create_secret(client, secret_arn, token)
    pending = client.get_secret_value(SecretId=secret_arn, VersionId=token)["SecretString"]
    rotation.create_secret(client, secret_arn, token)  # retried: keeps the same pending value
    assert client.get_secret_value(SecretId=secret_arn, VersionId=token)["SecretString"] == pending
    rotation.test_secret(client, secret_arn, token)
    rotation.test_secret(client, secret_arn, token)
    rotation.finish_secret(client, secret_arn, token)
    rotation.finish_secret(client, secret_arn, token)  # retried: already AWSCURRENT
    assert current(client, secret_arn)["password"] == json.loads(pending)["password"]
    stages = client.describe_secret(SecretId=secret_arn)["VersionIdsToStages"]
    assert "AWSCURRENT" in stages[token]


def test_old_password_stays_current_until_finish(client, secret_arn):
    before = current(client, secret_arn)["password"]
    token = str(uuid.uuid4())
    rotation.create_secret(client, secret_arn, token)
    rotation.test_secret(client, secret_arn, token)
    assert current(client, secret_arn)["password"] == before


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("not json", "not JSON"),
        (json.dumps({"username": "root", "password": "A" * 32}), "username 'admin'"),
        (json.dumps({"username": "admin", "password": "Ab1" * 3}), "32 characters"),
        (json.dumps({"username": "admin", "password": "Ab1!" * 8}), "letters and digits"),
        (json.dumps({"username": "admin", "password": "a1" * 16}), "mix"),
    ],
)
def test_test_secret_rejects_a_badly_shaped_pending_value(client, secret_arn, value, message):
    token = str(uuid.uuid4())
    client.put_secret_value(
        SecretId=secret_arn, ClientRequestToken=token, SecretString=value,
        VersionStages=["AWSPENDING"],
    )
    with pytest.raises(rotation.RotationError, match=message):
        rotation.test_secret(client, secret_arn, token)


def test_handler_refuses_a_secret_without_rotation_enabled(client, secret_arn):
    event = {"SecretId": secret_arn, "ClientRequestToken": str(uuid.uuid4()),
             "Step": "createSecret"}
    with pytest.raises(rotation.RotationError, match="not enabled"):
        rotation.handler(event, None, client=client)


def test_handler_refuses_an_unknown_step(client, secret_arn):
    event = {"SecretId": secret_arn, "ClientRequestToken": "t", "Step": "dropSecret"}
    with pytest.raises(rotation.RotationError, match="unknown rotation step"):
        rotation.handler(event, None, client=client)


def test_rotation_never_logs_a_password(client, secret_arn, caplog):
    caplog.set_level("DEBUG", logger="easel.rotation")
    before = current(client, secret_arn)["password"]
    rotate(client, secret_arn, str(uuid.uuid4()))
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name == "easel.rotation")
    assert "AWSCURRENT moved" in ours
    assert before not in ours
    assert current(client, secret_arn)["password"] not in ours
