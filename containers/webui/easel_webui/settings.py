"""Portal settings: every AWS location and limit comes from the environment.

The stack (or `make local`) sets the `EASEL_*` variables; boto3 reads the standard
`AWS_ENDPOINT_URL_<SERVICE>` variables itself, so the same code talks to AWS or the local emulator.
The instance-type allowlists come from the stack's `EASEL_PORTAL_CONFIG` (config/*.yaml, the one
place they are written down); `EASEL_ENDPOINT_INSTANCE_TYPES` / `EASEL_TRAINING_INSTANCE_TYPES`
override them with JSON objects mapping an instance type to its facts
(`easel_contracts.instances.InstanceFacts`), for example
`{"ml.g5.xlarge": {"gpu_memory_gb": 24, "instance_storage": true, "hourly_usd": 1.408}}`.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from easel_contracts.instances import InstanceTypes
from easel_contracts.naming import DEFAULT_DEPLOYMENT_ID, DEPLOYMENT_ID_RULE, is_deployment_id


class SettingsError(ValueError):
    """An environment variable is missing or invalid; the message names it."""


_ARN_ROLE_RE = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]{1,512}$")


class Settings(BaseModel):
    """Validated portal settings (see README.md, "Environment")."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bucket: str = Field(min_length=3, max_length=63)
    table: str = Field(min_length=3, max_length=255)
    admin_secret: str = Field(min_length=1)
    session_secret: str = Field(min_length=1)
    execution_role_arn: str
    deployment_id: str = DEFAULT_DEPLOYMENT_ID
    region: str = "us-east-1"
    inference_image: str = ""
    training_image: str = ""
    endpoint_instance_types: InstanceTypes
    training_instance_types: InstanceTypes
    max_endpoints_per_user: int = Field(default=2, ge=1, le=50)
    max_instances_per_endpoint: int = Field(default=2, ge=1, le=20)
    idle_ttl_hours: float = Field(default=4, ge=0, le=720)
    log_retention_days: int = Field(default=30, ge=1, le=3653)
    training_max_runtime_hours: float = Field(default=4, gt=0, le=120)
    spot_by_default: bool = False
    secret_cache_seconds: float = Field(default=30, ge=0, le=3600)
    session_max_age_seconds: int = Field(default=12 * 3600, ge=60, le=30 * 86400)
    login_max_failures: int = Field(default=5, ge=1, le=100)
    login_window_seconds: int = Field(default=900, ge=10, le=86400)
    # the first wait once a client has spent its attempts; it doubles up to the window
    login_backoff_seconds: int = Field(default=30, ge=1, le=3600)
    # proxies in front of the portal that append to X-Forwarded-For (CloudFront, then the ALB)
    forwarded_hops: int = Field(default=2, ge=0, le=5)
    sync_timeout_seconds: float = Field(default=50, gt=0, le=58)
    # generation jobs waiting or running: per portal task, and per user across all tasks
    generation_queue_per_task: int = Field(default=32, ge=1, le=1000)
    generation_jobs_per_user: int = Field(default=4, ge=1, le=100)
    # how long a stopping portal task waits for its generation jobs to save their images, after
    # answering its open requests (up to sync_timeout_seconds): both fit in the stack's container
    # stop timeout (120 s, Fargate's most) before ECS kills the task
    shutdown_wait_seconds: float = Field(default=60, ge=0, le=600)
    secure_cookies: bool = True
    # `make local` (local.studio): the admin password is printed in its terminal, not read from
    # AWS Secrets Manager; the pages say so
    local_mode: bool = False
    password_hash_time_cost: int = Field(default=3, ge=1, le=10)
    password_hash_memory_kib: int = Field(default=65536, ge=1024, le=1024 * 1024)
    # argon2 checks running at once per portal task (each takes password_hash_memory_kib)
    password_hash_concurrency: int = Field(default=4, ge=1, le=64)
    password_hash_wait_seconds: float = Field(default=10, ge=0, le=60)
    realtime_max_response_bytes: int = Field(default=6 * 1024 * 1024, ge=1024)
    async_max_response_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)

    def check(self) -> Settings:
        if not is_deployment_id(self.deployment_id):
            raise SettingsError(f"EASEL_DEPLOYMENT_ID: use {DEPLOYMENT_ID_RULE}")
        if not _ARN_ROLE_RE.match(self.execution_role_arn):
            raise SettingsError("EASEL_EXECUTION_ROLE_ARN: not an IAM role ARN")
        return self


# Environment variable -> settings field.
ENV_FIELDS: dict[str, str] = {
    "EASEL_BUCKET": "bucket",
    "EASEL_TABLE": "table",
    "EASEL_ADMIN_SECRET": "admin_secret",
    "EASEL_SESSION_SECRET": "session_secret",
    "EASEL_EXECUTION_ROLE_ARN": "execution_role_arn",
    "EASEL_DEPLOYMENT_ID": "deployment_id",
    "AWS_DEFAULT_REGION": "region",
    "EASEL_INFERENCE_IMAGE": "inference_image",
    "EASEL_TRAINING_IMAGE": "training_image",
    "EASEL_ENDPOINT_INSTANCE_TYPES": "endpoint_instance_types",
    "EASEL_TRAINING_INSTANCE_TYPES": "training_instance_types",
    "EASEL_MAX_ENDPOINTS_PER_USER": "max_endpoints_per_user",
    "EASEL_MAX_INSTANCES_PER_ENDPOINT": "max_instances_per_endpoint",
    "EASEL_IDLE_TTL_HOURS": "idle_ttl_hours",
    "EASEL_LOG_RETENTION_DAYS": "log_retention_days",
    "EASEL_TRAINING_MAX_RUNTIME_HOURS": "training_max_runtime_hours",
    "EASEL_SPOT_BY_DEFAULT": "spot_by_default",
    "EASEL_SECRET_CACHE_SECONDS": "secret_cache_seconds",
    "EASEL_SESSION_MAX_AGE_SECONDS": "session_max_age_seconds",
    "EASEL_LOGIN_MAX_FAILURES": "login_max_failures",
    "EASEL_LOGIN_WINDOW_SECONDS": "login_window_seconds",
    "EASEL_LOGIN_BACKOFF_SECONDS": "login_backoff_seconds",
    "EASEL_FORWARDED_HOPS": "forwarded_hops",
    "EASEL_SYNC_TIMEOUT_SECONDS": "sync_timeout_seconds",
    "EASEL_GENERATION_QUEUE_PER_TASK": "generation_queue_per_task",
    "EASEL_GENERATION_JOBS_PER_USER": "generation_jobs_per_user",
    "EASEL_SHUTDOWN_WAIT_SECONDS": "shutdown_wait_seconds",
    "EASEL_SECURE_COOKIES": "secure_cookies",
    "EASEL_LOCAL_MODE": "local_mode",
    "EASEL_PASSWORD_HASH_TIME_COST": "password_hash_time_cost",
    "EASEL_PASSWORD_HASH_MEMORY_KIB": "password_hash_memory_kib",
    "EASEL_PASSWORD_HASH_CONCURRENCY": "password_hash_concurrency",
    "EASEL_PASSWORD_HASH_WAIT_SECONDS": "password_hash_wait_seconds",
    "EASEL_REALTIME_MAX_RESPONSE_BYTES": "realtime_max_response_bytes",
    "EASEL_ASYNC_MAX_RESPONSE_BYTES": "async_max_response_bytes",
}
_JSON_FIELDS = {"endpoint_instance_types", "training_instance_types"}
# EASEL_PORTAL_CONFIG (set by the stack from config/*.yaml): {"deployment_id", "endpoints":
# {...}, "training": {...}} -> settings fields. Single EASEL_* variables override it.
PORTAL_CONFIG_ENV = "EASEL_PORTAL_CONFIG"
_PORTAL_CONFIG_FIELDS: dict[tuple[str, ...], str] = {
    ("deployment_id",): "deployment_id",
    ("endpoints", "instance_types"): "endpoint_instance_types",
    ("endpoints", "idle_ttl_hours"): "idle_ttl_hours",
    ("endpoints", "max_per_user"): "max_endpoints_per_user",
    ("endpoints", "max_instances"): "max_instances_per_endpoint",
    ("endpoints", "log_retention_days"): "log_retention_days",
    ("training", "instance_types"): "training_instance_types",
    ("training", "max_runtime_hours"): "training_max_runtime_hours",
    ("training", "spot_by_default"): "spot_by_default",
}


def _from_portal_config(raw: str) -> dict[str, object]:
    try:
        document = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise SettingsError(f"{PORTAL_CONFIG_ENV}: not valid JSON ({exc.msg})") from None
    if not isinstance(document, dict):
        raise SettingsError(f"{PORTAL_CONFIG_ENV}: must be a JSON object")
    values: dict[str, object] = {}
    for path, field in _PORTAL_CONFIG_FIELDS.items():
        node: object = document
        for part in path:
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            values[field] = node
    return values
_FIELD_ENV = {field: env for env, field in ENV_FIELDS.items()}


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read and validate the settings; errors name the environment variable."""
    env = os.environ if environ is None else environ
    data: dict[str, object] = {}
    if env.get(PORTAL_CONFIG_ENV):
        data.update(_from_portal_config(env[PORTAL_CONFIG_ENV]))
    if env.get("AWS_REGION") and not env.get("AWS_DEFAULT_REGION"):
        data["region"] = env["AWS_REGION"]
    for name, field in ENV_FIELDS.items():
        raw = env.get(name)
        if raw is None or raw == "":
            continue
        if field in _JSON_FIELDS:
            try:
                data[field] = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise SettingsError(f"{name}: not valid JSON ({exc.msg})") from None
        else:
            data[field] = raw
    try:
        return Settings.model_validate(data).check()
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            field = str(error["loc"][0]) if error["loc"] else ""
            where = _FIELD_ENV.get(field, field)
            rest = ".".join(str(p) for p in error["loc"][1:])
            label = f"{where}[{rest}]" if rest else where
            message = "is required" if error["type"] == "missing" else error["msg"]
            if error["type"] == "missing" and field in _JSON_FIELDS:
                message += f" (set {PORTAL_CONFIG_ENV} from the stack, or this JSON allowlist)"
            problems.append(f"{label}: {message}")
        raise SettingsError("invalid portal settings: " + "; ".join(problems)) from None
