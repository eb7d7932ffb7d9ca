"""The stand-in running the project's real `serve` and `train` entry points on a tiny model.

These need the inference and training packages installed in this environment (their console
scripts beside the interpreter); each test says so when it skips.
"""

from __future__ import annotations

import base64
import fcntl
import io
import json
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from local_helpers import (
    Clients,
    clients_for,
    create_model_and_config,
    unique,
    wait_for,
    wait_while,
)

from local.runtime import LocalAws
from local.settings import StandInSettings, console_script

pytestmark = pytest.mark.slow  # each test starts a real torch process (15-40 s on 2 CPUs)

SERVE_MISSING = console_script("serve") is None
TRAIN_MISSING = console_script("train") is None
requires_serve = pytest.mark.skipif(
    SERVE_MISSING,
    reason="the inference server's `serve` entry point is not installed "
    "(pip install -e containers/inference)",
)
requires_train = pytest.mark.skipif(
    TRAIN_MISSING,
    reason="the training job's `train` entry point is not installed "
    "(pip install -e containers/training)",
)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random-weight model, built once for all test workers of this run."""
    builder = pytest.importorskip(
        "easel_inference.builder", reason="easel_inference (containers/inference) not installed"
    )
    shared = tmp_path_factory.getbasetemp().parent  # common to the xdist workers of one run
    model_dir = shared / "local-tiny-model"
    with (shared / "local-tiny-model.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (shared / "local-tiny-model.done").exists():
            shutil.rmtree(model_dir, ignore_errors=True)
            builder.build_model_dir(model_dir, arch="sd15", size="tiny", name="tiny")
            (shared / "local-tiny-model.done").touch()
    return model_dir


@pytest.fixture(scope="session")
def real_aws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalAws]:
    """A local AWS running the installed `serve` and `train` console scripts on the CPU."""
    settings = StandInSettings(
        device="cpu", endpoint_startup_timeout_s=180, checkpoint_sync_interval_s=1
    )
    with LocalAws(tmp_path_factory.mktemp("real-aws"), settings=settings) as aws:
        yield aws


@pytest.fixture
def real(real_aws: LocalAws, monkeypatch: pytest.MonkeyPatch) -> Clients:
    return clients_for(real_aws, monkeypatch)


def upload_model_prefix(clients: Clients, model_dir: Path, prefix: str) -> str:
    for path in sorted(model_dir.rglob("*")):
        if path.is_file():
            key = f"{prefix}{path.relative_to(model_dir).as_posix()}"
            clients.s3.put_object(Bucket=clients.bucket, Key=key, Body=path.read_bytes())
    return clients.s3_uri(prefix)


def png_bytes(seed: int, size: int = 64) -> bytes:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), (40 * seed % 255, 120, 200))
    ImageDraw.Draw(image).ellipse((8, 8, 40 + seed, 40 + seed), fill=(250, 200, 10))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def training_arguments(
    clients: Clients, name: str, *, concepts_uri: str, model_uri: str, steps: int
) -> dict:
    return {
        "TrainingJobName": name,
        "AlgorithmSpecification": {"TrainingImage": "easel-training", "TrainingInputMode": "File"},
        "RoleArn": clients.aws.names.execution_role_arn,
        "HyperParameters": {
            "mode": "lora",
            "checkpoint": "tiny",
            "instance_prompt": "a photo of sks dog",
            "max_train_steps": str(steps),
            "resolution": "64",
            "validation_steps": "0",
            "checkpointing_steps": "1",
            "output_name": "sks-dog",
            "save_precision": "fp32",
        },
        "InputDataConfig": [
            {
                "ChannelName": "concepts",
                "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": concepts_uri}},
            },
            {
                "ChannelName": "model",
                "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": model_uri}},
            },
        ],
        "OutputDataConfig": {"S3OutputPath": clients.s3_uri("training/")},
        "ResourceConfig": {
            "InstanceType": "ml.g5.xlarge",
            "InstanceCount": 1,
            "VolumeSizeInGB": 30,
        },
        "StoppingCondition": {"MaxRuntimeInSeconds": 900},
        "CheckpointConfig": {"S3Uri": clients.s3_uri(f"training/{name}/checkpoints/")},
    }


def finished(clients: Clients, name: str, *, timeout: float = 240) -> dict:
    wait_for(
        lambda: (
            clients.sagemaker.describe_training_job(TrainingJobName=name)["TrainingJobStatus"]
            not in ("InProgress", "Stopping")
        ),
        timeout=timeout,
        interval=0.5,
    )
    return clients.sagemaker.describe_training_job(TrainingJobName=name)


@requires_serve
def test_real_endpoint_from_tiny_model_tar_gz_answers_txt2img_with_a_png(real, tiny_model_dir):
    from PIL import Image

    name = unique("real-ep")
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz") as tar:
        for path in sorted(tiny_model_dir.rglob("*")):
            tar.add(path, arcname=path.relative_to(tiny_model_dir).as_posix(), recursive=False)
    real.s3.put_object(
        Bucket=real.bucket, Key=f"models/{name}/model.tar.gz", Body=archive.getvalue()
    )
    create_model_and_config(real, name, container={
        "Image": "easel-inference",
        "ModelDataUrl": real.s3_uri(f"models/{name}/model.tar.gz"),
    })
    real.sagemaker.create_endpoint(EndpointName=name, EndpointConfigName=name)
    described = wait_while(real, name, "Creating", timeout=200, interval=0.5)
    assert described["EndpointStatus"] == "InService", described.get("FailureReason")

    response = real.runtime.invoke_endpoint(
        EndpointName=name,
        ContentType="application/json",
        Body=json.dumps(
            {
                "task": "txt2img",
                "payload": {
                    "prompt": "a red fox",
                    "steps": 1,
                    "width": 64,
                    "height": 64,
                    "seed": 1,
                },
            }
        ),
    )

    images = json.loads(response["Body"].read())["images"]
    image = Image.open(io.BytesIO(base64.b64decode(images[0])))
    image.load()
    assert (image.format, image.size) == ("PNG", (64, 64))
    real.sagemaker.delete_endpoint(EndpointName=name)


@requires_train
def test_real_training_job_completes_with_model_tar_gz_and_checkpoints(real, tiny_model_dir):
    name = unique("real-train")
    for index in range(2):
        real.s3.put_object(
            Bucket=real.bucket, Key=f"concepts/u/{name}/{index}.png", Body=png_bytes(index)
        )
    model_uri = upload_model_prefix(real, tiny_model_dir, f"models/{name}/")

    real.sagemaker.create_training_job(
        **training_arguments(
            real,
            name,
            concepts_uri=real.s3_uri(f"concepts/u/{name}/"),
            model_uri=model_uri,
            steps=2,
        )
    )
    job = finished(real, name)

    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    body = real.s3.get_object(Bucket=real.bucket, Key=f"training/{name}/output/model.tar.gz")[
        "Body"
    ].read()
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        assert "Lora/sks-dog.safetensors" in tar.getnames()
    progress = json.loads(
        real.s3.get_object(Bucket=real.bucket, Key=f"training/{name}/checkpoints/progress.json")[
            "Body"
        ].read()
    )
    assert progress["status"] == "completed"
    assert progress["step"] == 2
