"""Submit a DreamBooth/LoRA training job from the terminal and follow its progress.

    python -m scripts.train --name my-dog --concepts s3://BUCKET/concepts/admin/dog/ \
        --model s3://BUCKET/models/base/model.tar.gz --instance-prompt "a photo of sks dog"
    python -m scripts.train --follow easel-my-dog

Every hyperparameter of the training job is a flag (`--max-train-steps`, `--rank`, ...), made
from the one model of them (`easel_contracts.hyperparameters`); a flag left out takes the model's
default. The job is checked by the portal's own code (`easel_webui.training` and
`easel_webui.sagemaker_requests`): one definition of what a valid job is, for both. A concepts
path that is outside the data bucket, empty, or holds no images is refused before any job exists.
The job is submitted with the SageMaker Python SDK v3 (`sagemaker.train.ModelTrainer`, the kit's
bucket as the SDK's default bucket, so no other bucket is created), or with `--via boto3` as the
same CreateTrainingJob request the portal sends. The job is recorded in the portal's table, so it
shows on the portal's Training page too.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from types import SimpleNamespace
from typing import Any

from botocore.exceptions import ClientError
from tqdm import tqdm

from easel_contracts.hyperparameters import HyperParameterError, HyperParameters, field_schemas
from easel_contracts.progress import (
    PROGRESS_FILE,
    PROGRESS_MAX_BYTES,
    Progress,
    ProgressError,
    parse_progress,
)
from easel_contracts.s3uri import S3Uri
from scripts.cli import ScriptError, UsageError, run_main
from scripts.stack import StackOutputs, Target, add_target_arguments, resolve_target

TERMINAL = ("Completed", "Failed", "Stopped")
SDK_MISSING = (
    "the SageMaker Python SDK v3 is not installed in this environment. Install it with "
    "`pip install 'sagemaker>=3,<4'`, or pass --via boto3 to send the same request with boto3."
)
CLI_USER = "admin"  # jobs from the terminal belong to the portal's admin


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.train",
        description="Submit a DreamBooth/LoRA training job and follow its progress.",
        epilog="The result's S3 URI is printed on stdout when the job completes.",
    )
    parser.add_argument("--follow", metavar="JOB", help="only follow an existing job")
    job = parser.add_argument_group("job")
    job.add_argument("--name", help="job name (lower-case letters, digits, '-'); the job is "
                     "named <deployment_id>-<name>")
    job.add_argument("--concepts", help="S3 URI of the training images (+ .txt captions), "
                     "e.g. s3://BUCKET/concepts/admin/dog/")
    job.add_argument("--model", help="S3 URI of the base model (models/<name>/model.tar.gz "
                     "or a prefix)")
    job.add_argument("--instance-type", default="",
                     help="training instance type from the config's allowlist (default: first)")
    job.add_argument("--spot", action="store_true", help="managed spot training")
    job.add_argument("--image", help="training image URI (default: EASEL_TRAINING_IMAGE, else "
                     "the stack's TrainingImageUri output)")
    job.add_argument("--via", choices=("sdk", "boto3"), default="sdk",
                     help="submit with the SageMaker Python SDK (default) or plain boto3")
    add_hyperparameter_arguments(parser)
    follow = parser.add_argument_group("following")
    follow.add_argument("--no-follow", action="store_true", help="return once submitted")
    follow.add_argument("--interval", type=float, default=15,
                        help="seconds between progress checks (default 15)")
    follow.add_argument("--quiet", action="store_true", help="no progress bar")
    add_target_arguments(parser)
    return parser


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_hyperparameter_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per hyperparameter, from the contract's JSON schema; left out: its default."""
    group = parser.add_argument_group(
        "hyperparameters", "the training job's settings (containers/training/README.md)")
    for name, field in field_schemas().items():
        if field["required"]:
            default = "required"
        elif field["derived"]:
            default = "default: derived"
        else:
            default = f"default: {field['default']!r}"
        text = field.get("description", "").replace("%", "%%").replace("`", "")
        options: dict[str, Any] = {"dest": name, "default": None, "help": f"{text} ({default})"}
        if field["type"] == "boolean":
            options["action"] = argparse.BooleanOptionalAction
        elif "enum" in field:
            options["choices"] = field["enum"]
        else:
            options["metavar"] = {"integer": "N", "number": "X"}.get(field["type"], "TEXT")
        group.add_argument(_flag(name), **options)


def hyperparameters_from_args(args: argparse.Namespace) -> HyperParameters:
    """The given hyperparameter flags onto the contract (every problem named by its flag)."""
    values = {}
    for name in HyperParameters.model_fields:
        value = getattr(args, name)
        if isinstance(value, bool):
            values[name] = "true" if value else "false"
        elif value is not None:
            values[name] = value
    try:
        return HyperParameters.from_strings(values)
    except HyperParameterError as exc:
        raise ScriptError("not submitted: " + "; ".join(
            f"{_flag(name)}: {text}" for name, text in exc.problems)) from None


class Locations:
    """Where the deployment keeps things: EASEL_* variables first (local mode), then outputs."""

    def __init__(self, target: Target, outputs: StackOutputs) -> None:
        self.target = target
        self.outputs = outputs

    def _value(self, env: str, output: str) -> str:
        return os.environ.get(env) or self.outputs.require(output)

    @property
    def bucket(self) -> str:
        return self._value("EASEL_BUCKET", "BucketName")

    @property
    def table(self) -> str:
        return self._value("EASEL_TABLE", "TableName")

    @property
    def role(self) -> str:
        return self._value("EASEL_EXECUTION_ROLE_ARN", "ExecutionRoleArn")

    def image(self, flag: str | None) -> str:
        image = flag or os.environ.get("EASEL_TRAINING_IMAGE") or self.outputs.get(
            "TrainingImageUri")
        if not image:
            raise ScriptError(
                "no training image: pass --image URI or set EASEL_TRAINING_IMAGE (the stack "
                f"{self.target.stack_name!r} has no TrainingImageUri output)"
            )
        return image


def _require_portal_package() -> None:
    try:
        import easel_webui.training  # noqa: F401
    except ImportError:
        raise ScriptError(
            "train needs the portal package for its request builder and checks: "
            "`pip install -e containers/webui` (make venv does it)"
        ) from None


def _portal_training(target: Target, where: Locations, image: str) -> Any:
    """The portal's Training service, configured like the portal for this deployment."""
    from easel_webui.storage import Bucket
    from easel_webui.store import Table
    from easel_webui.training import Training, TrainingConfig

    config = target.config
    session = target.session()
    clients = SimpleNamespace(sagemaker=session.client("sagemaker"), s3=session.client("s3"))
    return Training(
        config=TrainingConfig(deployment_id=config.deployment_id, image=image,
                              execution_role_arn=where.role,
                              instance_types=config.training.instance_types,
                              max_runtime_hours=config.training.max_runtime_hours),
        clients=clients, table=Table(session.client("dynamodb"), where.table),
        bucket=Bucket(clients.s3, where.bucket))


def submit_with_sdk(request: dict[str, Any], *, boto_session: Any, bucket: str) -> str:
    """Submit the portal's CreateTrainingJob request through `ModelTrainer`; returns the job name.

    ModelTrainer adds a time stamp to the job name; the checkpoint (progress) location stays the
    one the request names.
    """
    try:
        from sagemaker.core.helper.session_helper import Session
        from sagemaker.core.training.configs import (
            CheckpointConfig,
            Compute,
            InputData,
            OutputDataConfig,
            StoppingCondition,
            Tag,
        )
        from sagemaker.train import ModelTrainer
    except ImportError:
        raise ScriptError(SDK_MISSING) from None
    resources = request["ResourceConfig"]
    stopping = request["StoppingCondition"]
    # The stack made the execution role for exactly these jobs (prefix-scoped S3 access); the
    # SDK's generic client-side role check would judge it against broader needs, so skip it.
    os.environ.setdefault("SAGEMAKER_VALIDATE_ROLE", "false")
    session = Session(boto_session=boto_session, default_bucket=bucket,
                      default_bucket_prefix="training")
    trainer = ModelTrainer(
        sagemaker_session=session,
        role=request["RoleArn"],
        base_job_name=request["TrainingJobName"],
        training_image=request["AlgorithmSpecification"]["TrainingImage"],
        training_input_mode="File",
        compute=Compute(instance_type=resources["InstanceType"],
                        instance_count=resources["InstanceCount"],
                        volume_size_in_gb=resources["VolumeSizeInGB"],
                        enable_managed_spot_training=request["EnableManagedSpotTraining"]),
        stopping_condition=StoppingCondition(**{
            "max_runtime_in_seconds": stopping["MaxRuntimeInSeconds"],
            **({"max_wait_time_in_seconds": stopping["MaxWaitTimeInSeconds"]}
               if "MaxWaitTimeInSeconds" in stopping else {}),
        }),
        hyperparameters=dict(request["HyperParameters"]),
        environment=dict(request.get("Environment", {})),
        output_data_config=OutputDataConfig(
            s3_output_path=request["OutputDataConfig"]["S3OutputPath"]),
        checkpoint_config=CheckpointConfig(s3_uri=request["CheckpointConfig"]["S3Uri"],
                                           local_path=request["CheckpointConfig"]["LocalPath"]),
        tags=[Tag(key=t["Key"], value=t["Value"]) for t in request["Tags"]],
    )
    channels = [InputData(channel_name=c["ChannelName"],
                          data_source=c["DataSource"]["S3DataSource"]["S3Uri"])
                for c in request["InputDataConfig"]]
    trainer.train(input_data_config=channels, wait=False, logs=False)
    return str(trainer._latest_training_job.training_job_name)


def submit(args: argparse.Namespace, target: Target) -> tuple[str, Any]:
    _require_portal_package()
    from easel_webui.auth import User
    from easel_webui.errors import PortalError
    from easel_webui.sagemaker_requests import build_create_training_job

    missing = [flag for flag, value in (("--name", args.name), ("--concepts", args.concepts),
                                        ("--model", args.model),
                                        ("--instance-prompt", args.instance_prompt))
               if not value]
    if missing:
        raise UsageError(f"missing {', '.join(missing)} (or use --follow JOB)")
    hyperparameters = hyperparameters_from_args(args)
    where = Locations(target, StackOutputs(target))
    training = _portal_training(target, where, where.image(args.image))
    default_type = next(iter(target.config.training.instance_types))
    user = User(username=CLI_USER, role="admin", generation="", builtin=True)
    try:
        spec = training.build_spec(
            user=user, name=args.name, instance_type=args.instance_type or default_type,
            model_s3_uri=args.model, concept_set="", concepts_s3_uri=args.concepts,
            spot=args.spot, hyperparameters=hyperparameters)
    except PortalError as exc:
        raise ScriptError(f"not submitted: {exc}") from None
    if args.via == "boto3":
        try:
            job_name = training.submit(spec)
        except PortalError as exc:
            raise ScriptError(f"not submitted: {exc}") from None
    else:
        job_name = submit_with_sdk(build_create_training_job(spec),
                                   boto_session=target.session(), bucket=training.bucket.name)
        training.record_job(spec, job_name)
    return job_name, training.clients


def _read_progress(s3: Any, uri: str) -> Progress | None:
    """The job's progress.json, or None while there is none or it cannot be read."""
    try:
        location = S3Uri.parse(uri).join(PROGRESS_FILE)
    except ValueError:
        return None
    try:
        body = s3.get_object(Bucket=location.bucket, Key=location.key)["Body"].read(
            PROGRESS_MAX_BYTES + 1)
        return parse_progress(body)
    except (ClientError, ProgressError):
        return None


def follow(sagemaker: Any, s3: Any, job_name: str, *, interval: float, quiet: bool,
           sleep: Callable[[float], None] = time.sleep) -> int:
    """Show progress.json as a bar until the job ends; print the result URI on success."""
    bar = tqdm(total=None, desc=job_name, unit="step", file=sys.stderr, disable=quiet)
    try:
        while True:
            try:
                job = sagemaker.describe_training_job(TrainingJobName=job_name)
            except ClientError as exc:
                message = exc.response.get("Error", {}).get("Message", "").lower()
                if any(word in message for word in ("could not find", "not found",
                                                    "does not exist")):
                    raise ScriptError(
                        f"training job {job_name!r} was not found in this region; check the "
                        "name (it starts with the deployment id) and --region"
                    ) from None
                raise
            progress = _read_progress(s3, job.get("CheckpointConfig", {}).get("S3Uri", ""))
            if progress is not None:
                if progress.total_steps and bar.total != progress.total_steps:
                    bar.total = progress.total_steps
                bar.n = progress.step
            status = job.get("TrainingJobStatus", "Unknown")
            details = {"status": job.get("SecondaryStatus", status)}
            if progress is not None and progress.loss is not None:
                details["loss"] = f"{progress.loss:.4f}"
            if progress is not None and progress.eta_seconds is not None:
                details["eta"] = f"{int(progress.eta_seconds)}s"
            if progress is not None and progress.phase_note and status not in TERMINAL:
                details["phase"] = progress.phase_note  # a slow start says what it is doing
            bar.set_postfix(details, refresh=True)
            if status in TERMINAL:
                if status == "Completed" and bar.total:
                    bar.n = bar.total
                    bar.refresh()
                break
            sleep(interval)
    except KeyboardInterrupt:
        bar.close()
        print(f"stopped following; the job keeps running. Follow it again with "
              f"`python -m scripts.train --follow {job_name}`", file=sys.stderr)
        return 130
    bar.close()
    if status == "Completed":
        result = job.get("ModelArtifacts", {}).get("S3ModelArtifacts") or (
            job.get("OutputDataConfig", {}).get("S3OutputPath", "").rstrip("/")
            + f"/{job_name}/output/model.tar.gz")
        mode = job.get("HyperParameters", {}).get("mode", "lora")
        hint = ("publish its LoRA to the library from the portal's Training page"
                if mode == "lora" else "deploy it from the portal with this S3 URI")
        print(f"completed: the result is in the archive below; {hint}", file=sys.stderr)
        print(result)
        return 0
    reason = job.get("FailureReason") or "no reason given"
    raise ScriptError(f"training job {job_name} {status.lower()}: {reason}")


def run(args: argparse.Namespace) -> int:
    target = resolve_target(args)
    if args.follow:
        session = target.session()
        clients = SimpleNamespace(sagemaker=session.client("sagemaker"), s3=session.client("s3"))
        job_name = args.follow
    else:
        job_name, clients = submit(args, target)
        print(f"submitted training job {job_name}", file=sys.stderr)
        if args.no_follow:
            print(job_name)
            return 0
    return follow(clients.sagemaker, clients.s3, job_name, interval=args.interval,
                  quiet=args.quiet)


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(run, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
