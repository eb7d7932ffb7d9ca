"""train: the portal's validation refuses bad settings before any job; submission and follow."""

from __future__ import annotations

import io
import json

import pytest
from script_support import BUCKET, TABLE

from easel_contracts.concept_uploads import MIN_CONCEPT_IMAGES
from easel_contracts.hyperparameters import HyperParameters, field_schemas
from easel_contracts.progress import PHASE_LABELS
from easel_contracts.training_record import TrainingJobRecord
from easel_webui.store import deserialize
from scripts import train

IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/easel-training:abc"


@pytest.fixture
def data(stack):
    s3 = stack.client("s3")
    for index in range(1, MIN_CONCEPT_IMAGES + 1):
        s3.put_object(Bucket=BUCKET, Key=f"concepts/admin/dog/{index}.png", Body=b"\x89PNG fake")
    s3.put_object(Bucket=BUCKET, Key="concepts/admin/dog/1.txt", Body=b"a photo of sks dog")
    s3.put_object(Bucket=BUCKET, Key="concepts/admin/notes/readme.txt", Body=b"no images")
    s3.put_object(Bucket=BUCKET, Key="models/base/model.tar.gz", Body=b"tar")
    stack.client("dynamodb").create_table(
        TableName=TABLE, BillingMode="PAY_PER_REQUEST",
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"},
                   {"AttributeName": "sk", "KeyType": "RANGE"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"},
                              {"AttributeName": "sk", "AttributeType": "S"}])
    return stack


def _args(concepts=f"s3://{BUCKET}/concepts/admin/dog/", *extra):
    return ["--name", "dog", "--concepts", concepts, "--model", f"s3://{BUCKET}/models/base/model.tar.gz",
            "--instance-prompt", "a photo of sks dog", "--max-train-steps", "10", "--image", IMAGE,
            "--via", "boto3", "--no-follow", *extra]


def _jobs(session):
    return session.client("sagemaker").list_training_jobs()["TrainingJobSummaries"]


def _run(capsys, argv):
    code = train.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(("concepts", "reason"), [
    ("s3://other-bucket/concepts/admin/dog/", "can only read the data bucket"),
    (f"s3://{BUCKET}/concepts/admin/cat/", "is empty or does not exist"),
    (f"s3://{BUCKET}/concepts/admin/notes/", "holds 0 images"),
    (f"s3://{BUCKET}/outputs/admin/", "inside a prefix the training job can read"),
    ("not-a-uri", "is not an s3://bucket/key URI"),
])
def test_bad_concepts_path_is_refused_before_any_job_exists(data, capsys, concepts, reason):
    code, out, err = _run(capsys, _args(concepts))
    assert code == 1
    assert "not submitted" in err and reason in err
    assert _jobs(data) == []


def test_instance_type_outside_the_allowlist_is_refused(data, capsys):
    code, _, err = _run(capsys, _args(f"s3://{BUCKET}/concepts/admin/dog/",
                                      "--instance-type", "ml.p5.48xlarge"))
    assert code == 1 and "allowlist" in err
    assert _jobs(data) == []


def test_submission_sends_the_portal_request_and_records_the_job(data, capsys):
    code, out, err = _run(capsys, _args())
    assert code == 0, err
    assert out.strip() == "easel-dog"
    job = data.client("sagemaker").describe_training_job(TrainingJobName="easel-dog")
    assert job["AlgorithmSpecification"]["TrainingImage"] == IMAGE
    assert job["HyperParameters"]["instance_prompt"] == "a photo of sks dog"
    assert job["HyperParameters"]["max_train_steps"] == "10"
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"]
                for c in job["InputDataConfig"]}
    assert channels == {"concepts": f"s3://{BUCKET}/concepts/admin/dog/",
                        "model": f"s3://{BUCKET}/models/base/model.tar.gz"}
    item = data.client("dynamodb").get_item(
        TableName=TABLE, Key={"pk": {"S": "training#easel-dog"}, "sk": {"S": "meta"}})
    record = TrainingJobRecord.model_validate(deserialize(item["Item"]))
    assert (record.owner, record.job, record.output_name) == ("admin", "easel-dog", "dog")


def test_missing_required_settings_is_a_usage_error(data, capsys):
    code, _, err = _run(capsys, ["--name", "dog", "--via", "boto3"])
    assert code == 2 and "--concepts" in err and "--instance-prompt" in err


def test_sdk_path_without_the_sdk_says_how_to_install_it(data, capsys, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_sagemaker(name, *args, **kwargs):
        if name == "sagemaker" or name.startswith("sagemaker."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_sagemaker)
    argv = [a for a in _args() if a not in ("--via", "boto3")]
    code, _, err = _run(capsys, argv)
    assert code == 1
    assert "pip install 'sagemaker>=3,<4'" in err and "--via boto3" in err
    assert _jobs(data) == []


def test_follow_shows_progress_and_prints_the_result(data, capsys):
    assert _run(capsys, _args())[0] == 0
    data.client("s3").put_object(
        Bucket=BUCKET, Key="training/easel-dog/checkpoints/progress.json",
        Body=io.BytesIO(json.dumps({"step": 10, "total_steps": 10, "loss": 0.1,
                                    "status": "completed"}).encode()))
    code, out, err = _run(capsys, ["--follow", "easel-dog", "--interval", "0"])
    assert code == 0, err
    assert out.strip().startswith("s3://") and "easel-dog" in out
    assert "10/10" in err


class _StartingJob:
    """describe_training_job: in progress once, then completed."""

    def __init__(self) -> None:
        self.statuses = ["InProgress", "Completed"]

    def describe_training_job(self, TrainingJobName):  # noqa: N803 - boto3's name
        return {"TrainingJobStatus": self.statuses.pop(0),
                "CheckpointConfig": {"S3Uri": f"s3://{BUCKET}/training/{TrainingJobName}/checkpoints"}}


def test_follow_says_what_the_job_does_before_its_first_step(data, capsys):
    s3 = data.client("s3")
    s3.put_object(Bucket=BUCKET, Key="training/easel-dog/checkpoints/progress.json",
                  Body=json.dumps({"step": 0, "total_steps": 10, "status": "running",
                                   "phase": "first_step"}).encode())
    code = train.follow(_StartingJob(), s3, "easel-dog", interval=0, quiet=False)
    assert code == 0
    assert PHASE_LABELS["first_step"] in capsys.readouterr().err


def test_follow_of_an_unknown_job_fails_clearly(data, capsys):
    code, _, err = _run(capsys, ["--follow", "easel-nope", "--interval", "0", "--quiet"])
    assert code == 1 and "'easel-nope' was not found" in err


def test_sdk_submission_keeps_the_cuda_requirement(data, capsys, monkeypatch):
    """moto drops a job's Environment, so the request is read on its way out."""
    pytest.importorskip("sagemaker.train", reason="the SageMaker Python SDK v3 is not installed")
    from botocore.client import BaseClient

    data.client("iam").create_role(RoleName="easel-sagemaker-execution",
                                   AssumeRolePolicyDocument="{}")
    sent: list[dict] = []
    original = BaseClient._make_api_call

    def record(self, operation, params):
        if operation == "CreateTrainingJob":
            sent.append(params)
        return original(self, operation, params)

    monkeypatch.setattr(BaseClient, "_make_api_call", record)
    code, _, err = _run(capsys, [a for a in _args() if a not in ("--via", "boto3")])
    assert code == 0, err
    (request,) = sent
    # no AMI selector for training hosts: the job itself fails on a driver that cannot run CUDA
    assert request["Environment"]["EASEL_REQUIRE_CUDA"] == "1"


def test_sdk_submission_uses_model_trainer_and_the_kits_bucket(data, capsys):
    pytest.importorskip("sagemaker.train", reason="the SageMaker Python SDK v3 is not installed")
    data.client("iam").create_role(RoleName="easel-sagemaker-execution",
                                   AssumeRolePolicyDocument="{}")
    buckets_before = data.client("s3").list_buckets()["Buckets"]
    argv = [a for a in _args() if a not in ("--via", "boto3")]
    code, out, err = _run(capsys, argv)
    assert code == 0, err
    job_name = out.strip()
    assert job_name.startswith("easel-dog-")  # ModelTrainer adds a time stamp
    job = data.client("sagemaker").describe_training_job(TrainingJobName=job_name)
    assert job["CheckpointConfig"]["S3Uri"] == f"s3://{BUCKET}/training/easel-dog/checkpoints/"
    assert job["OutputDataConfig"]["S3OutputPath"] == f"s3://{BUCKET}/training/"
    assert data.client("s3").list_buckets()["Buckets"] == buckets_before
    item = data.client("dynamodb").get_item(
        TableName=TABLE, Key={"pk": {"S": f"training#{job_name}"}, "sk": {"S": "meta"}})
    assert "Item" in item


def test_every_hyperparameter_is_a_flag_with_the_contracts_help():
    parser = train.build_parser()
    flags = {action.dest: action for action in parser._actions}
    for name, field in field_schemas().items():
        assert name in flags, name
        assert flags[name].option_strings[0] == "--" + name.replace("_", "-")
        assert field["description"].replace("`", "")[:40] in flags[name].help
    assert flags["mode"].choices == ["lora", "full"]


def test_flags_reach_the_job_as_the_contracts_strings(data, capsys):
    code, _, err = _run(capsys, _args(f"s3://{BUCKET}/concepts/admin/dog/", "--rank", "8",
                                      "--no-cache-latents", "--random-flip",
                                      "--learning-rate", "3e-5"))
    assert code == 0, err
    job = data.client("sagemaker").describe_training_job(TrainingJobName="easel-dog")
    hp = HyperParameters.from_strings(job["HyperParameters"])
    assert (hp.rank, hp.cache_latents, hp.random_flip) == (8, False, True)
    assert hp.learning_rate == 3e-5 and hp.output_name == "dog"
    assert hp.max_train_steps == 10


def test_bad_hyperparameters_are_refused_naming_each_flag(data, capsys):
    code, _, err = _run(capsys, _args(f"s3://{BUCKET}/concepts/admin/dog/", "--rank", "0",
                                      "--resolution", "500"))
    assert code == 1
    assert "--rank: must be at least 1" in err and "--resolution: must be a multiple of 8" in err
    assert _jobs(data) == []


def test_a_family_the_instance_type_cannot_train_is_refused_before_any_job_exists(data, capsys):
    from easel_contracts.model_manifest import ManifestCheckpoint, ModelManifest

    manifest = ModelManifest(name="base", layout="archive", written_by="upload_model",
                             checkpoints=(ManifestCheckpoint(
                                 name="flux", path="Stable-diffusion/flux.safetensors",
                                 family="flux_dev"),))
    data.client("s3").put_object(Bucket=BUCKET, Key="models/base/easel-model.json",
                                 Body=manifest.to_json().encode())
    code, _, err = _run(capsys, _args(f"s3://{BUCKET}/concepts/admin/dog/",
                                      "--instance-type", "ml.g5.2xlarge"))
    assert code == 1 and "not submitted" in err
    assert "FLUX.1 dev lora training" in err and "choose ml.g6e.2xlarge, which fits" in err
    assert _jobs(data) == []
