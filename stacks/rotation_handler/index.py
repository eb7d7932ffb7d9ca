"""Secrets Manager rotation for the Easel admin password.

Implements the four rotation steps (createSecret, setSecret, testSecret, finishSecret). The
password exists only in the secret (the portal reads it with a short cache), so `setSecret` has
nothing external to update. Every step is idempotent: Secrets Manager retries steps freely.
Passwords are never logged.
"""

from __future__ import annotations

import json
import logging
import os
import re
from typing import Any

import boto3

logger = logging.getLogger("easel.rotation")
logger.setLevel(logging.INFO)

PASSWORD_LENGTH = int(os.environ.get("PASSWORD_LENGTH", "32"))
_PASSWORD_RE = re.compile(r"^[A-Za-z0-9]+$")


class RotationError(RuntimeError):
    """A rotation step cannot continue; Secrets Manager keeps the current version."""


def check_password_shape(value: str, *, length: int = PASSWORD_LENGTH) -> None:
    """Raise RotationError unless `value` is a secret of the shape the portal accepts."""
    try:
        data = json.loads(value)
    except ValueError:
        raise RotationError("pending value is not JSON") from None
    if not isinstance(data, dict) or data.get("username") != "admin":
        raise RotationError("pending value lacks username 'admin'")
    password = data.get("password")
    if not isinstance(password, str) or len(password) != length:
        raise RotationError(f"pending password must be a string of {length} characters")
    if not _PASSWORD_RE.match(password):
        raise RotationError("pending password must contain only letters and digits")
    if not (any(c.islower() for c in password) and any(c.isupper() for c in password)
            and any(c.isdigit() for c in password)):
        raise RotationError("pending password must mix lower case, upper case and digits")


def create_secret(client: Any, arn: str, token: str) -> None:
    current = client.get_secret_value(SecretId=arn, VersionStage="AWSCURRENT")
    try:
        client.get_secret_value(SecretId=arn, VersionId=token, VersionStage="AWSPENDING")
        logger.info("createSecret: pending version already exists")
        return
    except client.exceptions.ResourceNotFoundException:
        pass
    data = json.loads(current["SecretString"])
    data["password"] = client.get_random_password(
        PasswordLength=PASSWORD_LENGTH,
        ExcludePunctuation=True,
        IncludeSpace=False,
        RequireEachIncludedType=True,
    )["RandomPassword"]
    client.put_secret_value(
        SecretId=arn,
        ClientRequestToken=token,
        SecretString=json.dumps(data),
        VersionStages=["AWSPENDING"],
    )
    logger.info("createSecret: pending version created")


def set_secret(client: Any, arn: str, token: str) -> None:
    # The password is only stored in this secret; there is no external system to update.
    logger.info("setSecret: nothing to update outside the secret")


def test_secret(client: Any, arn: str, token: str) -> None:
    pending = client.get_secret_value(SecretId=arn, VersionId=token, VersionStage="AWSPENDING")
    check_password_shape(pending["SecretString"])
    logger.info("testSecret: pending version has the expected shape")


def finish_secret(client: Any, arn: str, token: str) -> None:
    metadata = client.describe_secret(SecretId=arn)
    current_version = None
    for version, stages in metadata.get("VersionIdsToStages", {}).items():
        if "AWSCURRENT" in stages:
            if version == token:
                logger.info("finishSecret: version already AWSCURRENT")
                return
            current_version = version
            break
    client.update_secret_version_stage(
        SecretId=arn,
        VersionStage="AWSCURRENT",
        MoveToVersionId=token,
        RemoveFromVersionId=current_version,
    )
    logger.info("finishSecret: AWSCURRENT moved to the new version")


STEPS = {
    "createSecret": create_secret,
    "setSecret": set_secret,
    "testSecret": test_secret,
    "finishSecret": finish_secret,
}


def handler(event: dict[str, Any], context: Any, client: Any = None) -> None:
    arn = event["SecretId"]
    token = event["ClientRequestToken"]
    step = event["Step"]
    client = client or boto3.client("secretsmanager")
    if step not in STEPS:
        raise RotationError(f"unknown rotation step {step!r}")
    metadata = client.describe_secret(SecretId=arn)
    if not metadata.get("RotationEnabled"):
        raise RotationError("rotation is not enabled for this secret")
    stages = metadata.get("VersionIdsToStages", {})
    if token not in stages:
        raise RotationError("the rotation token is not a version of this secret")
    if "AWSCURRENT" in stages[token] and step != "finishSecret":
        logger.info("%s: version is already AWSCURRENT; nothing to do", step)
        return
    if "AWSCURRENT" not in stages[token] and "AWSPENDING" not in stages[token]:
        raise RotationError("the rotation token is not staged as AWSPENDING")
    STEPS[step](client, arn, token)
