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
PROJECT_TAG = "easel:project"

# The environment variables through which the stack hands these tag keys to its Lambda handlers
# (bundled on their own, without this package).
DEPLOYMENT_TAG_ENV = "EASEL_DEPLOYMENT_TAG"
IDLE_TTL_TAG_ENV = "EASEL_IDLE_TTL_TAG"

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


SHORT_NAME_PATTERN = r"^[a-z0-9](-?[a-z0-9])*$"
_SHORT_NAME_RE = re.compile(SHORT_NAME_PATTERN)


def check_short_name(value: str, *, field: str = "name", max_length: int = 40) -> str:
    """The part of a resource name a person chooses (an endpoint's, a training job's): lower-case
    letters, digits and single '-'. Raise ``ValueError`` naming ``field`` otherwise."""
    if len(value) > max_length:
        raise ValueError(f"{field}: at most {max_length} characters (this one has {len(value)})")
    if not value or not _SHORT_NAME_RE.match(value):
        raise ValueError(
            f"{field}: use 1-{max_length} lower-case letters, digits and single '-' "
            "(no leading or trailing '-')"
        )
    return value


def resource_prefix(deployment_id: str) -> str:
    """What every name a deployment gives a resource starts with."""
    return f"{deployment_id}-"


def resource_name(deployment_id: str, name: str) -> str:
    """``<deployment_id>-<name>``: the name of a resource the kit or the portal creates."""
    return f"{resource_prefix(deployment_id)}{name}"


def handler_tag_environment() -> dict[str, str]:
    """Environment for a Lambda handler that finds resources by their ``easel:*`` tags."""
    return {DEPLOYMENT_TAG_ENV: DEPLOYMENT_TAG, IDLE_TTL_TAG_ENV: IDLE_TTL_TAG}


def deployment_tags(deployment_id: str) -> list[dict[str, str]]:
    """The AWS ``Tags`` list that marks a resource as this deployment's."""
    return [{"Key": DEPLOYMENT_TAG, "Value": deployment_id}]
