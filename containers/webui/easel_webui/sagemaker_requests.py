"""SageMaker request builders: plain functions from validated settings to boto3 call arguments.

The portal and `scripts/` share them, so an endpoint or a training job is created the same way
whoever asks. Nothing here calls AWS.

Names: everything is named `<deployment_id>-<name>` (models and endpoint configs add a time stamp
so a redeploy never collides), and tagged `easel:deployment` and `easel:creator`, so the stack's
cleanup and IAM conditions can find them.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from easel_contracts import scaling as scaling_contract
from easel_contracts.compile_cache import COMPILE_CACHE_URI_ENV
from easel_contracts.instances import (
    REQUIRE_CUDA_ENV,
    InstanceFacts,
    family_of,
    gpu_count,
    inference_ami,
)
from easel_contracts.naming import (
    CREATOR_TAG,
    DEPLOYMENT_TAG,
    IDLE_TTL_TAG,
    check_short_name,
    deployment_tags,
    resource_name,
)
from easel_contracts.readiness import STARTUP_BUDGET_ENV
from easel_contracts.s3uri import S3UriStr
from easel_contracts.workcap import ASYNC_INVOCATION_TIMEOUT_MAX_S, DEADLINE_ENV, deadline_seconds

MODE_TAG = "easel:mode"
VARIANT = "AllTraffic"
SCALABLE_DIMENSION = scaling_contract.SCALABLE_DIMENSION
# Multi-GB checkpoints: allow 20 minutes to download the model and 20 to start and warm up.
MODEL_DOWNLOAD_TIMEOUT_S = 1200
STARTUP_HEALTH_TIMEOUT_S = 1200
REALTIME_MAX_RESPONSE_BYTES = 6 * 1024 * 1024
_SAGEMAKER_NAME_MAX = 63


def stamp(now: float | None = None) -> str:
    return time.strftime("%Y%m%d%H%M%S", time.gmtime(now if now is not None else time.time()))


def _tags(deployment_id: str, creator: str, **extra: str) -> list[dict[str, str]]:
    tags = [*deployment_tags(deployment_id), {"Key": CREATOR_TAG, "Value": creator}]
    tags.extend({"Key": key, "Value": value} for key, value in extra.items())
    return tags


class EndpointSpec(BaseModel):
    """Everything needed to create one endpoint (validated)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    deployment_id: str
    name: str
    creator: str = Field(min_length=1, max_length=64)
    image: str = Field(min_length=1)
    execution_role_arn: str = Field(pattern=r"^arn:aws[a-z-]*:iam::\d{12}:role/.+$")
    model_s3_uri: S3UriStr
    instance_type: str
    instance: InstanceFacts
    mode: Literal["realtime", "async"] = "realtime"
    min_instances: int = Field(default=1, ge=0, le=20)
    max_instances: int = Field(default=1, ge=1, le=20)
    volume_size_gb: int | None = Field(default=None, ge=1, le=512)
    idle_ttl_hours: float = Field(default=4, ge=0, le=720)
    max_response_bytes: int | None = Field(default=None, ge=1024)
    async_s3_uri: S3UriStr | None = None
    # the InvocationTimeoutSeconds the portal's async invocations carry (SageMaker's 1..3600)
    async_invocation_timeout_s: int = Field(default=ASYNC_INVOCATION_TIMEOUT_MAX_S, ge=1,
                                            le=ASYNC_INVOCATION_TIMEOUT_MAX_S)
    lora_s3_uri: S3UriStr | None = None
    # where the server keeps torch's compile artifacts (easel_contracts.compile_cache)
    compile_cache_s3_uri: S3UriStr | None = None
    target_invocations_per_instance: int = Field(default=10, ge=1, le=10000)
    log_retention_days: int = Field(default=30, ge=1)
    created_at: float | None = None
    extra_environment: dict[str, str] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_short_name(value, field="name", max_length=30)

    @field_validator("instance_type")
    @classmethod
    def _instance_type(cls, value: str) -> str:
        family_of(value)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> EndpointSpec:
        if self.mode == "realtime" and self.min_instances < 1:
            raise ValueError(
                "min instances: a real-time endpoint needs at least 1 instance (or choose async)"
            )
        if self.min_instances > self.max_instances:
            raise ValueError("min instances: cannot exceed max instances")
        if self.volume_size_gb is not None and self.instance.instance_storage:
            raise ValueError(
                f"volume size: {self.instance_type} has instance storage and takes no volume"
            )
        if self.mode == "async" and not self.async_s3_uri:
            raise ValueError("async_s3_uri: required for an async endpoint")
        if len(self.model_name) > _SAGEMAKER_NAME_MAX:
            raise ValueError("name: too long once the deployment id and time stamp are added")
        return self

    @property
    def endpoint_name(self) -> str:
        return resource_name(self.deployment_id, self.name)

    @property
    def suffix(self) -> str:
        return stamp(self.created_at)

    @property
    def model_name(self) -> str:
        return f"{self.endpoint_name}-{self.suffix}"

    @property
    def endpoint_config_name(self) -> str:
        return f"{self.endpoint_name}-{self.suffix}"

    @property
    def deadline_seconds(self) -> int:
        """How long the server may work on one request: SageMaker tells the container nothing,
        so the builder sets it (``easel_contracts.workcap``)."""
        return deadline_seconds(self.mode, self.async_invocation_timeout_s)

    @property
    def gpus(self) -> int:
        """The instance type's GPUs (``easel_contracts.instances``; the allowlist entry's count
        for a type the table lacks)."""
        return gpu_count(self.instance_type) or self.instance.gpus

    @property
    def response_limit(self) -> int:
        if self.max_response_bytes is not None:
            return self.max_response_bytes
        return REALTIME_MAX_RESPONSE_BYTES if self.mode == "realtime" else 64 * 1024 * 1024

    def tags(self) -> list[dict[str, str]]:
        return _tags(self.deployment_id, self.creator, **{
            IDLE_TTL_TAG: f"{self.idle_ttl_hours:g}", MODE_TAG: self.mode,
        })


def build_create_model(spec: EndpointSpec) -> dict[str, Any]:
    environment = {
        # the server's /ping fails (503, driver found vs needed) rather than serve on the CPU
        REQUIRE_CUDA_ENV: "1",
        "EASEL_MAX_RESPONSE_BYTES": str(spec.response_limit),
        # the server refuses up front what cannot finish by then, and stops work past it
        DEADLINE_ENV: str(spec.deadline_seconds),
        # its warm-up (every size the form offers) fits SageMaker's start-up health check
        STARTUP_BUDGET_ENV: str(STARTUP_HEALTH_TIMEOUT_S),
        **({"EASEL_LORA_S3_URI": spec.lora_s3_uri} if spec.lora_s3_uri else {}),
        **({COMPILE_CACHE_URI_ENV: spec.compile_cache_s3_uri} if spec.compile_cache_s3_uri
           else {}),
        **spec.extra_environment,
    }
    container: dict[str, Any] = {"Image": spec.image, "Environment": environment}
    if spec.model_s3_uri.endswith("/"):
        container["ModelDataSource"] = {
            "S3DataSource": {
                "S3Uri": spec.model_s3_uri, "S3DataType": "S3Prefix", "CompressionType": "None",
            }
        }
    else:
        container["ModelDataUrl"] = spec.model_s3_uri
    return {
        "ModelName": spec.model_name,
        "ExecutionRoleArn": spec.execution_role_arn,
        "PrimaryContainer": container,
        "Tags": spec.tags(),
    }


def build_create_endpoint_config(spec: EndpointSpec) -> dict[str, Any]:
    variant: dict[str, Any] = {
        "VariantName": VARIANT,
        "ModelName": spec.model_name,
        "InstanceType": spec.instance_type,
        "InitialInstanceCount": max(spec.min_instances, 1),
        "ModelDataDownloadTimeoutInSeconds": MODEL_DOWNLOAD_TIMEOUT_S,
        "ContainerStartupHealthCheckTimeoutInSeconds": STARTUP_HEALTH_TIMEOUT_S,
        # the host AMI whose NVIDIA driver runs the image's CUDA build (easel_contracts.instances)
        "InferenceAmiVersion": inference_ami(spec.instance_type),
    }
    if spec.volume_size_gb is not None:
        variant["VolumeSizeInGB"] = spec.volume_size_gb
    request: dict[str, Any] = {
        "EndpointConfigName": spec.endpoint_config_name,
        "ProductionVariants": [variant],
        "Tags": spec.tags(),
    }
    if spec.mode == "async":
        base = (spec.async_s3_uri or "").rstrip("/")
        request["AsyncInferenceConfig"] = {
            "OutputConfig": {
                "S3OutputPath": f"{base}/out/{spec.endpoint_name}/",
                "S3FailurePath": f"{base}/out/{spec.endpoint_name}/failures/",
            },
            # the server runs one worker per GPU (EASEL_WORKERS): as many requests at once
            "ClientConfig": {"MaxConcurrentInvocationsPerInstance": spec.gpus},
        }
    return request


def build_create_endpoint(spec: EndpointSpec) -> dict[str, Any]:
    return {
        "EndpointName": spec.endpoint_name,
        "EndpointConfigName": spec.endpoint_config_name,
        "Tags": spec.tags(),
    }


def scaling_resource_id(endpoint_name: str) -> str:
    return f"endpoint/{endpoint_name}/variant/{VARIANT}"


def build_scaling(spec: EndpointSpec) -> scaling_contract.ScalingPlan:
    """The endpoint's scaling plan: Application Auto Scaling (and, for async, CloudWatch alarm)
    requests, applied by the scaler Lambda once the endpoint is InService.

    Real-time: min..max instances, target tracking on invocations per instance.
    Async: 0..max instances; target tracking on the backlog per instance scales in (to zero), and
    a step-scaling policy, fired by an alarm on `HasBacklogWithoutCapacity`, brings the first
    instance back while requests queue.
    The scalable target carries the deployment tag: IAM grants on scalable targets are
    conditioned on it (`aws:RequestTag` when registering, `aws:ResourceTag` afterwards).
    """
    resource_id = scaling_resource_id(spec.endpoint_name)
    common = {
        "ServiceNamespace": scaling_contract.SERVICE_NAMESPACE,
        "ResourceId": resource_id,
        "ScalableDimension": SCALABLE_DIMENSION,
    }
    target = {
        **common,
        "MinCapacity": spec.min_instances,
        "MaxCapacity": spec.max_instances,
        "Tags": {DEPLOYMENT_TAG: spec.deployment_id},
    }
    if spec.mode == "realtime":
        policies = [{
            **common,
            "PolicyName": f"{spec.endpoint_name}-invocations",
            "PolicyType": "TargetTrackingScaling",
            "TargetTrackingScalingPolicyConfiguration": {
                "TargetValue": float(spec.target_invocations_per_instance),
                "PredefinedMetricSpecification": {
                    "PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"
                },
                "ScaleInCooldown": 600,
                "ScaleOutCooldown": 120,
            },
        }]
        return scaling_contract.ScalingPlan(
            endpoint_name=spec.endpoint_name, scalable_target=target, policies=policies)
    backlog_policy = {
        **common,
        "PolicyName": f"{spec.endpoint_name}-backlog",
        "PolicyType": "TargetTrackingScaling",
        "TargetTrackingScalingPolicyConfiguration": {
            "TargetValue": 2.0,
            "CustomizedMetricSpecification": {
                "MetricName": "ApproximateBacklogSizePerInstance",
                "Namespace": "AWS/SageMaker",
                "Dimensions": [{"Name": "EndpointName", "Value": spec.endpoint_name}],
                "Statistic": "Average",
            },
            "ScaleInCooldown": 600,
            "ScaleOutCooldown": 120,
        },
    }
    wake_policy_name = f"{spec.endpoint_name}-wake"
    wake_policy = {
        **common,
        "PolicyName": wake_policy_name,
        "PolicyType": "StepScaling",
        "StepScalingPolicyConfiguration": {
            "AdjustmentType": "ChangeInCapacity",
            "MetricAggregationType": "Average",
            "Cooldown": 300,
            "StepAdjustments": [{"MetricIntervalLowerBound": 0.0, "ScalingAdjustment": 1}],
        },
    }
    alarm = {
        "AlarmName": backlog_alarm_name(spec.endpoint_name),
        "AlarmDescription": f"Easel: wake {spec.endpoint_name} when requests wait with no instance",
        "Namespace": "AWS/SageMaker",
        "MetricName": "HasBacklogWithoutCapacity",
        "Dimensions": [{"Name": "EndpointName", "Value": spec.endpoint_name}],
        "Statistic": "Average",
        "Period": 60,
        "EvaluationPeriods": 2,
        "DatapointsToAlarm": 2,
        "Threshold": 1.0,
        "ComparisonOperator": "GreaterThanOrEqualToThreshold",
        "TreatMissingData": "missing",
    }
    return scaling_contract.ScalingPlan(
        endpoint_name=spec.endpoint_name, scalable_target=target,
        policies=[backlog_policy, wake_policy],
        alarms=[scaling_contract.AlarmRequest(policy_name=wake_policy_name, request=alarm)],
    )


def backlog_alarm_name(endpoint_name: str) -> str:
    return f"{endpoint_name}-backlog-without-capacity"


def endpoint_log_group_name(endpoint_name: str) -> str:
    return f"/aws/sagemaker/Endpoints/{endpoint_name}"


def build_log_group(spec: EndpointSpec) -> dict[str, Any]:
    return {
        "logGroupName": endpoint_log_group_name(spec.endpoint_name),
        "retentionInDays": spec.log_retention_days,
        "tags": {DEPLOYMENT_TAG: spec.deployment_id, CREATOR_TAG: spec.creator},
    }


# --- training jobs

class TrainingSpec(BaseModel):
    """Everything needed to create one training job (validated)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    deployment_id: str
    name: str
    creator: str = Field(min_length=1, max_length=64)
    image: str = Field(min_length=1)
    execution_role_arn: str = Field(pattern=r"^arn:aws[a-z-]*:iam::\d{12}:role/.+$")
    bucket: str = Field(min_length=3, max_length=63)
    concepts_s3_uri: S3UriStr
    model_s3_uri: S3UriStr
    class_s3_uri: S3UriStr | None = None
    instance_type: str
    instance: InstanceFacts
    spot: bool = False
    max_runtime_seconds: int = Field(ge=600, le=5 * 24 * 3600)
    volume_size_gb: int = Field(default=100, ge=1, le=1024)
    hyperparameters: dict[str, str]
    # a resumed job: the stopped job's checkpoint folder (else the job's own)
    checkpoint_s3_uri: S3UriStr | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_short_name(value, field="job name", max_length=40)

    @field_validator("instance_type")
    @classmethod
    def _instance_type(cls, value: str) -> str:
        family_of(value)
        return value

    @field_validator("hyperparameters")
    @classmethod
    def _strings(cls, value: dict[str, str]) -> dict[str, str]:
        for key, item in value.items():
            if not isinstance(item, str) or len(item) > 2500:
                raise ValueError(f"hyperparameters.{key}: must be a string of at most 2500")
        return value

    @property
    def job_name(self) -> str:
        return resource_name(self.deployment_id, self.name)

    @property
    def prefix(self) -> str:
        return f"s3://{self.bucket}/training/{self.job_name}"

    @property
    def checkpoints(self) -> str:
        return self.checkpoint_s3_uri or f"{self.prefix}/checkpoints/"


def _channel(name: str, uri: str) -> dict[str, Any]:
    data_type = "S3Prefix"
    return {
        "ChannelName": name,
        "DataSource": {"S3DataSource": {
            "S3DataType": data_type, "S3Uri": uri, "S3DataDistributionType": "FullyReplicated",
        }},
        "InputMode": "File",
    }


def build_create_training_job(spec: TrainingSpec) -> dict[str, Any]:
    channels = [_channel("concepts", spec.concepts_s3_uri), _channel("model", spec.model_s3_uri)]
    if spec.class_s3_uri:
        channels.append(_channel("class", spec.class_s3_uri))
    stopping: dict[str, int] = {"MaxRuntimeInSeconds": spec.max_runtime_seconds}
    if spec.spot:
        stopping["MaxWaitTimeInSeconds"] = spec.max_runtime_seconds * 2
    return {
        "TrainingJobName": spec.job_name,
        "AlgorithmSpecification": {"TrainingImage": spec.image, "TrainingInputMode": "File"},
        "RoleArn": spec.execution_role_arn,
        "HyperParameters": dict(spec.hyperparameters),
        # no AMI selector for training hosts: the job checks the driver and fails in its first
        # minute ("driver X found, Y needed") rather than train on the CPU
        "Environment": {REQUIRE_CUDA_ENV: "1"},
        "InputDataConfig": channels,
        # SageMaker writes <S3OutputPath>/<job>/output/model.tar.gz = training/<job>/output/...
        "OutputDataConfig": {"S3OutputPath": f"s3://{spec.bucket}/training/"},
        "ResourceConfig": {
            "InstanceType": spec.instance_type,
            "InstanceCount": 1,
            "VolumeSizeInGB": spec.volume_size_gb,
        },
        "StoppingCondition": stopping,
        "EnableManagedSpotTraining": spec.spot,
        "CheckpointConfig": {
            "S3Uri": spec.checkpoints,
            "LocalPath": "/opt/ml/checkpoints",
        },
        "Tags": _tags(spec.deployment_id, spec.creator),
    }
