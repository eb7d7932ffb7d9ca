"""Names and tags of everything a deployment creates.

A literal ``deployment_id`` (3-20 characters) starts every name the kit and the portal give a
resource, and the ``easel:deployment`` tag carries it, so cleanup, the reaper, ``leftovers`` and IAM
conditions can find what belongs to a deployment.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import StringConstraints

DEPLOYMENT_TAG = "easel:deployment"
CREATOR_TAG = "easel:creator"
IDLE_TTL_TAG = "easel:idle-ttl-hours"

DEPLOYMENT_ID_PATTERN = r"^[a-z][a-z0-9-]{1,18}[a-z0-9]$"
DEPLOYMENT_ID_RULE = "3-20 lower-case letters, digits or '-', starting with a letter"
DEFAULT_DEPLOYMENT_ID = "easel"
_DEPLOYMENT_RE = re.compile(DEPLOYMENT_ID_PATTERN)

DeploymentId = Annotated[str, StringConstraints(pattern=DEPLOYMENT_ID_PATTERN)]


def is_deployment_id(value: str) -> bool:
    return bool(_DEPLOYMENT_RE.match(value))


def check_deployment_id(value: str) -> str:
    """Return ``value`` when it is a valid deployment id, else raise ``ValueError``."""
    if not is_deployment_id(value):
        raise ValueError(f"deployment id {value!r}: use {DEPLOYMENT_ID_RULE}")
    return value


def deployment_tags(deployment_id: str) -> list[dict[str, str]]:
    """The AWS ``Tags`` list that marks a resource as this deployment's."""
    return [{"Key": DEPLOYMENT_TAG, "Value": deployment_id}]
