"""Helpers shared by the local-AWS tests (boto3 clients, deploy, waiting, processes)."""

from __future__ import annotations

import io
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import pytest

from local.runtime import LocalAws
from local.settings import StandInSettings

FAKES = Path(__file__).parent / "fakes"
FAKE_SERVE = [sys.executable, str(FAKES / "fake_serve.py")]
FAKE_TRAIN = [sys.executable, str(FAKES / "fake_train.py")]


def fake_settings(**overrides: Any) -> StandInSettings:
    """Short timeouts so failures show quickly; the fake entry points."""
    values: dict[str, Any] = {
        "serve_command": FAKE_SERVE,
        "train_command": FAKE_TRAIN,
        "endpoint_startup_timeout_s": 60.0,
        "invoke_timeout_s": 3.0,
        "checkpoint_sync_interval_s": 0.5,
        "stop_grace_s": 5.0,
    }
    values.update(overrides)
    return StandInSettings(**values)


class Clients:
    """Plain boto3 clients that find the local AWS only through AWS_ENDPOINT_URL_* variables."""

    def __init__(self, aws: LocalAws) -> None:
        self.aws = aws
        self.bucket = aws.names.bucket
        self.sagemaker = boto3.client("sagemaker")
        self.runtime = boto3.client("sagemaker-runtime")
        self.s3 = boto3.client("s3")
        self.dynamodb = boto3.client("dynamodb")
        self.secretsmanager = boto3.client("secretsmanager")

    def s3_uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def keys(self, prefix: str) -> list[str]:
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]


def clients_for(aws: LocalAws, monkeypatch: pytest.MonkeyPatch) -> Clients:
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    for key, value in aws.env.items():
        monkeypatch.setenv(key, value)
    return Clients(aws)


def tar_gz(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


GOOD_MODEL = {"Stable-diffusion/tiny.safetensors": b"weights"}


def unique(prefix: str) -> str:
    """A resource name no other test in this worker uses."""
    unique.counter += 1  # type: ignore[attr-defined]
    return f"{prefix}-{unique.counter}-{int(time.time() * 1000) % 100000}"  # type: ignore[attr-defined]


unique.counter = 0  # type: ignore[attr-defined]


def upload_model(clients: Clients, name: str, files: dict[str, bytes] | None = None) -> str:
    """Put `files` (default: a good model) as models/<name>/model.tar.gz; its S3 URI."""
    key = f"models/{name}/model.tar.gz"
    clients.s3.put_object(Bucket=clients.bucket, Key=key, Body=tar_gz(files or GOOD_MODEL))
    return clients.s3_uri(key)


def create_model_and_config(
    clients: Clients,
    name: str,
    *,
    container: dict[str, Any],
    async_output: str | None = None,
    instance_type: str = "ml.g5.xlarge",
) -> None:
    """A model called `name` with `container`, and a one-variant endpoint config of that name."""
    clients.sagemaker.create_model(
        ModelName=name,
        PrimaryContainer=container,
        ExecutionRoleArn=clients.aws.names.execution_role_arn,
    )
    config: dict[str, Any] = {
        "EndpointConfigName": name,
        "ProductionVariants": [
            {
                "VariantName": "AllTraffic",
                "ModelName": name,
                "InstanceType": instance_type,
                "InitialInstanceCount": 1,
            }
        ],
    }
    if async_output:
        config["AsyncInferenceConfig"] = {"OutputConfig": {"S3OutputPath": async_output}}
    clients.sagemaker.create_endpoint_config(**config)


def wait_while(clients: Clients, name: str, status: str, *, timeout: float = 60,
               interval: float = 0.2) -> dict[str, Any]:
    """Wait until the endpoint leaves `status`; its description."""
    wait_for(
        lambda: clients.sagemaker.describe_endpoint(EndpointName=name)["EndpointStatus"] != status,
        timeout=timeout,
        interval=interval,
    )
    return clients.sagemaker.describe_endpoint(EndpointName=name)


def deploy(
    clients: Clients,
    name: str,
    *,
    files: dict[str, bytes] | None = None,
    environment: dict[str, str] | None = None,
    async_output: str | None = None,
    wait: bool = True,
) -> str:
    """Upload a model.tar.gz, create model + config + endpoint; wait until not Creating."""
    container = {
        "Image": "local/easel-inference:test",
        "ModelDataUrl": upload_model(clients, name, files),
        "Environment": environment or {},
    }
    create_model_and_config(clients, name, container=container, async_output=async_output)
    clients.sagemaker.create_endpoint(EndpointName=name, EndpointConfigName=name)
    if wait:
        wait_while(clients, name, "Creating")
    return name


def wait_for(predicate: Callable[[], bool], *, timeout: float, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


def process_is_running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def start_training_job(
    clients: Clients,
    name: str,
    *,
    concepts: dict[str, bytes] | None,
    steps: int = 3,
    step_seconds: float = 0.1,
    checkpoints: bool = True,
    max_runtime_seconds: int = 3600,
) -> str:
    """Upload a concepts set (None: leave the prefix empty) and start a training job."""
    prefix = f"concepts/tester/{name}/"
    for filename, data in (concepts or {}).items():
        clients.s3.put_object(Bucket=clients.bucket, Key=prefix + filename, Body=data)
    arguments: dict[str, Any] = {
        "TrainingJobName": name,
        "AlgorithmSpecification": {
            "TrainingImage": "local/easel-training:test",
            "TrainingInputMode": "File",
        },
        "RoleArn": clients.aws.names.execution_role_arn,
        "HyperParameters": {
            "mode": "lora",
            "max_train_steps": str(steps),
            "output_name": "sks-dog",
        },
        "InputDataConfig": [
            {
                "ChannelName": "concepts",
                "DataSource": {
                    "S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": clients.s3_uri(prefix)}
                },
            }
        ],
        "OutputDataConfig": {"S3OutputPath": clients.s3_uri("training/")},
        "ResourceConfig": {
            "InstanceType": "ml.g5.xlarge",
            "InstanceCount": 1,
            "VolumeSizeInGB": 30,
        },
        "StoppingCondition": {"MaxRuntimeInSeconds": max_runtime_seconds},
        "Environment": {"FAKE_STEP_SECONDS": str(step_seconds)},
    }
    if checkpoints:
        arguments["CheckpointConfig"] = {"S3Uri": clients.s3_uri(f"training/{name}/checkpoints/")}
    clients.sagemaker.create_training_job(**arguments)
    return name


def job_status(clients: Clients, name: str) -> str:
    return clients.sagemaker.describe_training_job(TrainingJobName=name)["TrainingJobStatus"]
