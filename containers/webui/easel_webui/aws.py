"""boto3 clients, made once per application and shared by the request handlers.

Tests (and local mode) swap any of them: `Clients(sagemaker=fake)` uses the given object instead of
creating a boto3 client. boto3 itself honours `AWS_ENDPOINT_URL_<SERVICE>`.
"""

from __future__ import annotations

import threading
from typing import Any

import boto3
from botocore.config import Config

_SERVICES = {
    "s3": "s3",
    "dynamodb": "dynamodb",
    "secrets": "secretsmanager",
    "sagemaker": "sagemaker",
    "runtime": "sagemaker-runtime",
    "autoscaling": "application-autoscaling",
    "logs": "logs",
    "cloudwatch": "cloudwatch",
}


class Clients:
    """Lazily created AWS clients: `clients.s3`, `.dynamodb`, `.secrets`, `.sagemaker`,
    `.runtime` (SageMaker runtime), `.autoscaling` (Application Auto Scaling), `.logs`,
    `.cloudwatch`."""

    def __init__(self, *, region: str, session: boto3.session.Session | None = None,
                 **overrides: Any) -> None:
        unknown = set(overrides) - set(_SERVICES)
        if unknown:
            raise TypeError(f"unknown client names: {sorted(unknown)}")
        self._region = region
        self._session = session or boto3.session.Session()
        self._made: dict[str, Any] = dict(overrides)
        self._lock = threading.Lock()

    def _client(self, name: str) -> Any:
        with self._lock:
            if name not in self._made:
                read_timeout = 70 if name == "runtime" else 30
                config = Config(
                    region_name=self._region,
                    connect_timeout=5,
                    read_timeout=read_timeout,
                    retries={"max_attempts": 3 if name != "runtime" else 1, "mode": "standard"},
                    signature_version="s3v4" if name == "s3" else None,
                )
                self._made[name] = self._session.client(_SERVICES[name], config=config)
            return self._made[name]

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name not in _SERVICES:
            raise AttributeError(name)
        return self._client(name)
