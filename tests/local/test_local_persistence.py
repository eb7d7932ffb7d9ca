"""The state folder is the truth: a restart brings everything back; clean starts fresh."""

from __future__ import annotations

import json

import pytest
from botocore.exceptions import ClientError
from local_helpers import clients_for, deploy, fake_settings, start_training_job, wait_for

from local.runtime import LocalAws

ODD_KEYS = {
    "models/a/": b"",  # a "folder" marker beside objects inside it
    "models/a/model.tar.gz": b"archive",
    "notes/../x": b"dots",
    "outputs/u1/image 1.png": b"png",
    "clash": b"a file named like a folder",
    "clash/inner.txt": b"a file inside that folder",
}


def test_state_survives_a_restart(tmp_path, monkeypatch):
    with LocalAws(tmp_path, settings=fake_settings()) as aws:
        first_password = aws.admin_password
        clients = clients_for(aws, monkeypatch)
        for key, data in ODD_KEYS.items():
            clients.s3.put_object(
                Bucket=clients.bucket, Key=key, Body=data, Metadata={"owner": "ana"}
            )
        clients.dynamodb.put_item(
            TableName=aws.names.table,
            Item={
                "pk": {"S": "USER#ana"},
                "sk": {"S": "PROFILE"},
                "gsi1pk": {"S": "ROLE#user"},
                "gsi1sk": {"S": "ana"},
                "avatar": {"B": b"\x00\x01"},
            },
        )
        endpoint = deploy(clients, "kept-endpoint")
        job = start_training_job(clients, "kept-job", concepts={"1.png": b"p"}, steps=1)
        wait_for(
            lambda: (
                clients.sagemaker.describe_training_job(TrainingJobName=job)["TrainingJobStatus"]
                == "Completed"
            ),
            timeout=30,
        )

    with LocalAws(tmp_path, settings=fake_settings()) as aws:
        clients = clients_for(aws, monkeypatch)
        assert aws.admin_password is None  # not generated again, so not printed again
        stored_secret = clients.secretsmanager.get_secret_value(SecretId=aws.names.admin_secret)
        assert json.loads(stored_secret["SecretString"]) == {
            "username": "admin", "password": first_password,
        }
        for key, data in ODD_KEYS.items():
            stored = clients.s3.get_object(Bucket=clients.bucket, Key=key)
            assert stored["Body"].read() == data
            assert stored["Metadata"] == {"owner": "ana"}
        item = clients.dynamodb.query(
            TableName=aws.names.table,
            IndexName="gsi1",
            KeyConditionExpression="gsi1pk = :role",
            ExpressionAttributeValues={":role": {"S": "ROLE#user"}},
        )["Items"]
        assert item[0]["avatar"]["B"] == b"\x00\x01"
        assert (
            clients.sagemaker.describe_training_job(TrainingJobName=job)["TrainingJobStatus"]
            == "Completed"
        )
        # The endpoint that was InService is started again and answers.
        clients.sagemaker.get_waiter("endpoint_in_service").wait(
            EndpointName=endpoint, WaiterConfig={"Delay": 0.5, "MaxAttempts": 120}
        )
        reply = clients.runtime.invoke_endpoint(EndpointName=endpoint, Body=b'{"task": "t"}')
        assert json.loads(reply["Body"].read())["model_files"] == [
            "Stable-diffusion/tiny.safetensors"
        ]


def test_deletions_are_kept_across_a_restart(tmp_path, monkeypatch):
    with LocalAws(tmp_path, settings=fake_settings()) as aws:
        clients = clients_for(aws, monkeypatch)
        clients.s3.put_object(Bucket=clients.bucket, Key="gone/x", Body=b"1")
        aws.save()
        clients.s3.delete_object(Bucket=clients.bucket, Key="gone/x")

    with LocalAws(tmp_path, settings=fake_settings()) as aws:
        clients = clients_for(aws, monkeypatch)
        assert clients.keys("gone/") == []


def test_clean_start_forgets_everything(tmp_path, monkeypatch):
    with LocalAws(tmp_path, settings=fake_settings()) as aws:
        clients = clients_for(aws, monkeypatch)
        clients.s3.put_object(Bucket=clients.bucket, Key="models/x", Body=b"1")
        clients.sagemaker.create_model(
            ModelName="forgotten",
            PrimaryContainer={"Image": "x"},
            ExecutionRoleArn=aws.names.execution_role_arn,
        )
        old_password = aws.admin_password
    (tmp_path / "mine.txt").write_text("not local-state")

    with LocalAws(tmp_path, clean=True, settings=fake_settings()) as aws:
        clients = clients_for(aws, monkeypatch)
        assert clients.keys("models/") == []
        with pytest.raises(ClientError):
            clients.sagemaker.describe_model(ModelName="forgotten")
        assert aws.admin_password and aws.admin_password != old_password
    assert (tmp_path / "mine.txt").read_text() == "not local-state"  # only our entries go
