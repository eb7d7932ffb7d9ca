"""Training jobs: SageMaker layout, checkpoint sync, results, failures and stops."""

from __future__ import annotations

import io
import json
import tarfile

import pytest
from botocore.exceptions import ClientError
from local_helpers import job_status, start_training_job, unique, wait_for

from easel_contracts.progress import parse_progress

CONCEPTS = {"1.png": b"png-bytes", "1.txt": b"a photo of sks dog", "2.jpg": b"jpg-bytes"}


def wait_until_done(clients, name: str, *, timeout: float = 40) -> dict:
    wait_for(lambda: job_status(clients, name) not in ("InProgress", "Stopping"), timeout=timeout)
    return clients.sagemaker.describe_training_job(TrainingJobName=name)


def test_training_job_completes_with_model_tar_gz_and_synced_checkpoints(clients):
    name = start_training_job(clients, unique("train"), concepts=CONCEPTS, steps=3)

    job = wait_until_done(clients, name)

    assert job["TrainingJobStatus"] == "Completed"
    assert job["SecondaryStatus"] == "Completed"
    artifact = job["ModelArtifacts"]["S3ModelArtifacts"]
    assert artifact == clients.s3_uri(f"training/{name}/output/model.tar.gz")
    body = clients.s3.get_object(Bucket=clients.bucket, Key=f"training/{name}/output/model.tar.gz")[
        "Body"
    ].read()
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        assert "Lora/sks-dog.safetensors" in tar.getnames()
    synced = clients.keys(f"training/{name}/checkpoints/")
    assert {f"training/{name}/checkpoints/step-{i}.ckpt" for i in (1, 2, 3)} <= set(synced)
    progress = parse_progress(
        clients.s3.get_object(
            Bucket=clients.bucket, Key=f"training/{name}/checkpoints/progress.json"
        )["Body"].read()
    )
    assert progress.status == "completed"
    transitions = [t["Status"] for t in job["SecondaryStatusTransitions"]]
    assert transitions == ["Starting", "Downloading", "Training", "Uploading", "Completed"]
    assert job["TrainingEndTime"] >= job["TrainingStartTime"] >= job["CreationTime"]


def test_training_job_gets_the_sagemaker_layout(clients, fake_aws):
    name = start_training_job(clients, unique("layout"), concepts=CONCEPTS, steps=1)
    wait_until_done(clients, name)

    opt_ml = fake_aws.state_dir / "sagemaker" / "training-jobs" / name / "opt_ml"
    config = opt_ml / "input" / "config"
    hyperparameters = json.loads((config / "hyperparameters.json").read_text())
    assert hyperparameters["max_train_steps"] == "1"
    assert (
        json.loads((config / "inputdataconfig.json").read_text())["concepts"]["TrainingInputMode"]
        == "File"
    )
    assert json.loads((config / "resourceconfig.json").read_text())["hosts"] == ["algo-1"]
    channel = opt_ml / "input" / "data" / "concepts"
    assert sorted(p.name for p in channel.iterdir()) == ["1.png", "1.txt", "2.jpg"]


def test_bad_concepts_fail_with_the_trainers_own_reason(clients):
    name = start_training_job(clients, unique("bad"), concepts={"notes.txt": b"no images"})

    job = wait_until_done(clients, name)

    assert job["TrainingJobStatus"] == "Failed"
    assert job["FailureReason"].startswith("The concepts channel has no images")


def test_failure_reason_is_what_sagemaker_keeps_of_the_failure_file(tmp_path):
    # SageMaker shows the first 1024 characters of /opt/ml/output/failure as FailureReason:
    # https://docs.aws.amazon.com/sagemaker/latest/dg/your-algorithms-training-signal-success-failure.html
    from local.sagemaker.training import TrainingManager

    manager = TrainingManager(records=None, s3=None, settings=None, work_root=tmp_path,
                              log_root=tmp_path / "logs")
    failure = manager.opt_ml("job") / "output" / "failure"
    failure.parent.mkdir(parents=True)
    failure.write_text("\n  out of memory: " + "x" * 3000)
    reason = manager._failure_reason("job", exit_code=1)
    assert reason.startswith("out of memory: ") and len(reason) == 1024


def test_empty_concepts_prefix_fails_before_training(clients):
    name = start_training_job(clients, unique("empty"), concepts=None)

    job = wait_until_done(clients, name)

    assert job["TrainingJobStatus"] == "Failed"
    assert "No S3 objects found" in job["FailureReason"]
    assert "TrainingStartTime" not in job


def test_stop_training_job_ends_stopped_with_a_checkpoint(clients, fake_aws):
    name = start_training_job(
        clients, unique("stop"), concepts=CONCEPTS, steps=500, step_seconds=0.2
    )
    wait_for(
        lambda: any(k.endswith("step-2.ckpt") for k in clients.keys(f"training/{name}/")),
        timeout=30,
    )
    pid = int(
        (fake_aws.state_dir / "sagemaker" / "training-jobs" / name / "opt_ml" / "pid").read_text()
    )

    clients.sagemaker.stop_training_job(TrainingJobName=name)
    job = wait_until_done(clients, name)

    assert job["TrainingJobStatus"] == "Stopped"
    assert job["SecondaryStatus"] == "Stopped"
    assert "FailureReason" not in job
    synced = clients.keys(f"training/{name}/checkpoints/")
    assert any("/stopped-" in key for key in synced)
    progress = parse_progress(
        clients.s3.get_object(
            Bucket=clients.bucket, Key=f"training/{name}/checkpoints/progress.json"
        )["Body"].read()
    )
    assert progress.status == "stopped"
    from local_helpers import process_is_running

    assert not process_is_running(pid)


def test_stopping_a_finished_job_is_refused(clients):
    name = start_training_job(clients, unique("done"), concepts=CONCEPTS, steps=1)
    wait_until_done(clients, name)

    with pytest.raises(ClientError) as raised:
        clients.sagemaker.stop_training_job(TrainingJobName=name)

    assert raised.value.response["Error"]["Code"] == "ValidationException"


def test_training_job_names_are_unique(clients):
    name = start_training_job(clients, unique("twice"), concepts=CONCEPTS, steps=1)

    with pytest.raises(ClientError) as raised:
        start_training_job(clients, name, concepts=CONCEPTS, steps=1)

    assert raised.value.response["Error"]["Code"] == "ResourceInUse"


def test_list_training_jobs_filters_by_status(clients):
    name = start_training_job(clients, unique("listjob"), concepts={"x.txt": b"x"})
    wait_until_done(clients, name)

    failed = clients.sagemaker.list_training_jobs(StatusEquals="Failed", MaxResults=100)
    assert name in {j["TrainingJobName"] for j in failed["TrainingJobSummaries"]}
    completed = clients.sagemaker.list_training_jobs(StatusEquals="Completed", MaxResults=100)
    assert name not in {j["TrainingJobName"] for j in completed["TrainingJobSummaries"]}


def test_a_job_past_its_max_runtime_is_stopped(clients):
    name = start_training_job(
        clients, unique("overtime"), concepts=CONCEPTS, steps=500, max_runtime_seconds=4
    )

    job = wait_until_done(clients, name)

    assert job["TrainingJobStatus"] == "Stopped"
    assert job["SecondaryStatus"] == "MaxRuntimeExceeded"
    assert any("/stopped-" in key for key in clients.keys(f"training/{name}/checkpoints/"))
