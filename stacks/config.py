"""Typed deploy settings, loaded in one place.

`load_config(stage)` reads `config/default.yaml`, deep-merges `config/<stage>.yaml` over it (when
the stage is not `default`) and validates the result into an `EaselConfig`. Any problem is raised
as a `ConfigError` whose message names the file and the offending key, so a typo fails `cdk synth`
with a message a person can act on instead of a broken deploy.
"""

from __future__ import annotations

import ipaddress
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from easel_contracts.instances import InstanceTypes
from easel_contracts.naming import DEFAULT_DEPLOYMENT_ID, DeploymentId

CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"

# CloudWatch Logs accepts only these retention periods (days).
LOG_RETENTION_DAYS = (
    1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557,
    2922, 3288, 3653,
)

_BUCKET_RE = re.compile(r"^(?!xn--)(?!.*\.\.)[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def _check_bucket_name(value: str) -> str:
    if not _BUCKET_RE.match(value):
        raise ValueError(f"{value!r} is not a valid S3 bucket name")
    return value


BucketName = Annotated[str, AfterValidator(_check_bucket_name)]
_TABLE_RE = re.compile(r"^[A-Za-z0-9_.-]{3,255}$")


def _check_table_name(value: str) -> str:
    if not _TABLE_RE.match(value):
        raise ValueError(
            f"{value!r} is not a DynamoDB table name (3-255 letters, digits, '_', '-' or '.'); "
            "use the TableName output of the deployment that kept it"
        )
    return value


TableName = Annotated[str, AfterValidator(_check_table_name)]


class ConfigError(ValueError):
    """A deploy setting is missing, unknown or invalid; the message names the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ImageBuildConfig(_Strict):
    compute_type: Literal["small", "medium", "large", "2xlarge"] = "large"
    timeout_minutes: int = Field(default=50, ge=10, le=480)


class PortalConfig(_Strict):
    vpc_cidr: str = "10.42.0.0/16"
    max_azs: int = Field(default=2, ge=2, le=3)
    nat_gateways: int = Field(default=1, ge=0, le=3)
    desired_count: int = Field(default=1, ge=1, le=10)
    cpu: Literal[256, 512, 1024, 2048, 4096] = 512
    memory_mib: int = Field(default=1024, ge=512, le=30720)

    @field_validator("vpc_cidr")
    @classmethod
    def _cidr(cls, value: str) -> str:
        try:
            net = ipaddress.IPv4Network(value, strict=True)
        except ValueError as exc:
            raise ValueError(f"{value!r} is not an IPv4 CIDR block: {exc}") from None
        if not 16 <= net.prefixlen <= 24:
            raise ValueError(f"{value!r}: the prefix must be between /16 and /24")
        if not net.is_private:
            raise ValueError(f"{value!r} is not a private (RFC 1918) range")
        return value

    @model_validator(mode="after")
    def _nat_within_azs(self) -> PortalConfig:
        if self.nat_gateways > self.max_azs:
            raise ValueError("nat_gateways cannot exceed max_azs")
        return self


class EndpointsConfig(_Strict):
    instance_types: InstanceTypes
    idle_ttl_hours: float = Field(default=4, gt=0, le=24 * 30)
    max_per_user: int = Field(default=2, ge=1, le=50)
    max_instances: int = Field(default=2, ge=1, le=20)
    log_retention_days: int = 30

    @field_validator("log_retention_days")
    @classmethod
    def _retention(cls, value: int) -> int:
        if value not in LOG_RETENTION_DAYS:
            raise ValueError(f"{value} is not a CloudWatch retention; one of {LOG_RETENTION_DAYS}")
        return value


class TrainingConfig(_Strict):
    instance_types: InstanceTypes
    max_runtime_hours: float = Field(default=4, gt=0, le=24 * 5)
    spot_by_default: bool = False


class EaselConfig(_Strict):
    """Every deploy setting Easel reads. Documented key by key in README.md."""

    deployment_id: DeploymentId = DEFAULT_DEPLOYMENT_ID
    account: Annotated[str, StringConstraints(pattern=r"^\d{12}$")] | None = None
    region: Annotated[str, StringConstraints(pattern=r"^[a-z]{2}(-gov)?-[a-z]+-\d$")] | None = None
    purge_data: bool = False
    data_bucket_name: BucketName | None = Field(
        default=None, description="re-attach a bucket retained by an earlier deployment"
    )
    table_name: TableName | None = Field(
        default=None, description="re-attach a table retained by an earlier deployment"
    )
    noncurrent_version_days: int = Field(default=30, ge=1, le=3650)
    admin_password_rotation_days: int = Field(default=30, ge=1, le=365)
    image_build: ImageBuildConfig = ImageBuildConfig()
    portal: PortalConfig = PortalConfig()
    endpoints: EndpointsConfig
    training: TrainingConfig


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path.name}: not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path.name}: the top level must be a mapping of keys to values")
    return data


def _format_errors(source: str, exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"]) or "(top level)"
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown key (check the spelling against the config reference in README.md)"
        elif error["type"] == "missing":
            message = "required key is missing"
        lines.append(f"  {key}: {message}")
    return f"{source}: invalid configuration\n" + "\n".join(lines)


def load_config(stage: str = "default", *, config_dir: Path | None = None) -> EaselConfig:
    """Load and validate `config/default.yaml` merged with `config/<stage>.yaml`."""
    directory = config_dir or CONFIG_DIR
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,40}", stage):
        raise ConfigError(f"stage {stage!r}: use letters, digits, '-' or '_'")
    default_path = directory / "default.yaml"
    if not default_path.is_file():
        raise ConfigError(f"{default_path}: missing (the base configuration)")
    data = _read_yaml(default_path)
    source = default_path.name
    if stage != "default":
        stage_path = directory / f"{stage}.yaml"
        if not stage_path.is_file():
            raise ConfigError(f"stage {stage!r}: {stage_path} does not exist")
        data = _deep_merge(data, _read_yaml(stage_path))
        source = f"{default_path.name} + {stage_path.name}"
    try:
        return EaselConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(source, exc)) from None



def portal_settings_json(config: EaselConfig) -> str:
    """The settings the portal needs from config, as one JSON environment variable."""
    return json.dumps(
        {
            "deployment_id": config.deployment_id,
            "endpoints": config.endpoints.model_dump(),
            "training": config.training.model_dump(),
        },
        separators=(",", ":"),
    )
