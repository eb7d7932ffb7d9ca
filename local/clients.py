"""boto3 clients for the local AWS, independent of the user's own AWS configuration."""

from __future__ import annotations

import threading
from typing import Any

import boto3
from botocore.config import Config

LOCAL_ACCESS_KEY_ID = "local"
LOCAL_SECRET_ACCESS_KEY = "local-secret"  # noqa: S105 - dummy credentials for the emulator

_CONFIG = Config(
    retries={"max_attempts": 3, "mode": "standard"},
    connect_timeout=5,
    read_timeout=120,
    s3={"addressing_style": "path"},
)
_lock = threading.Lock()
_sessions: dict[str, boto3.session.Session] = {}
_clients: dict[tuple[str, str, str], Any] = {}


def local_client(service: str, *, endpoint_url: str, region: str) -> Any:
    """A boto3 client for ``service`` at ``endpoint_url`` with the dummy local credentials.

    Clients are cached (creating one loads large service models); boto3 clients are
    thread-safe, so one per service and endpoint is shared.
    """
    key = (service, endpoint_url, region)
    with _lock:
        client = _clients.get(key)
        if client is None:
            session = _sessions.get(region)
            if session is None:
                session = boto3.session.Session(
                    aws_access_key_id=LOCAL_ACCESS_KEY_ID,
                    aws_secret_access_key=LOCAL_SECRET_ACCESS_KEY,
                    region_name=region,
                )
                _sessions[region] = session
            client = session.client(service, endpoint_url=endpoint_url, config=_CONFIG)
            _clients[key] = client
        return client
