"""Secrets Manager values with a short cache, so a rotation takes effect without a restart."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

from easel_webui.errors import UpstreamError


class SecretCache:
    """Reads `AWSCURRENT` values and keeps each for `ttl_seconds`."""

    def __init__(self, client: Any, *, ttl_seconds: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._client = client
        self._ttl = ttl_seconds
        self._clock = clock
        self._values: dict[str, tuple[float, str]] = {}
        self._lock = threading.Lock()

    def get(self, secret_id: str) -> str:
        with self._lock:
            cached = self._values.get(secret_id)
            if cached and self._clock() - cached[0] < self._ttl:
                return cached[1]
        try:
            answer = self._client.get_secret_value(SecretId=secret_id, VersionStage="AWSCURRENT")
        except Exception as exc:  # noqa: BLE001 - any failure means the portal cannot sign in
            raise UpstreamError(
                "The portal cannot read its secrets right now; try again in a minute."
            ) from exc
        value = answer.get("SecretString")
        if not isinstance(value, str) or not value:
            raise UpstreamError("A portal secret has no string value; ask the operator.")
        with self._lock:
            self._values[secret_id] = (self._clock(), value)
        return value

    def admin_password(self, secret_id: str) -> str:
        """The `password` of the admin secret `{"username": "admin", "password": ...}` (the
        stack's shape); a secret that is not a JSON object is taken as the password itself."""
        raw = self.get(secret_id)
        try:
            data = json.loads(raw)
        except json.JSONDecodeError:
            return raw
        if not isinstance(data, dict):
            return raw
        password = data.get("password")
        if not isinstance(password, str) or not password:
            raise UpstreamError("The admin secret has no password; ask the operator.")
        return password
