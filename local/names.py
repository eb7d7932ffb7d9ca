"""Names of the local resources, derived from the deployment id like the stack's names."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

from easel_contracts.naming import DEFAULT_DEPLOYMENT_ID, check_deployment_id, resource_name

DEFAULT_REGION = "us-east-1"
# moto's default account: ARNs the emulator returns use it, so the stand-in does too.
LOCAL_ACCOUNT_ID = "123456789012"



@dataclass(frozen=True)
class LocalNames:
    """Every name the local AWS creates for one deployment id."""

    deployment_id: str
    region: str = DEFAULT_REGION
    account_id: str = LOCAL_ACCOUNT_ID

    def __post_init__(self) -> None:
        check_deployment_id(self.deployment_id)

    @property
    def bucket(self) -> str:
        return resource_name(self.deployment_id, "data")

    @property
    def table(self) -> str:
        return resource_name(self.deployment_id, "table")

    @property
    def admin_secret(self) -> str:
        return f"{self.deployment_id}/admin-password"

    @property
    def session_secret(self) -> str:
        return f"{self.deployment_id}/session-key"

    @property
    def inference_image(self) -> str:
        """Image names are recorded by SageMaker only; the stand-in runs the local entry points."""
        return f"local/{self.deployment_id}-inference:latest"

    @property
    def training_image(self) -> str:
        return f"local/{self.deployment_id}-training:latest"

    @property
    def execution_role_name(self) -> str:
        return resource_name(self.deployment_id, "sagemaker-execution")

    @property
    def execution_role_arn(self) -> str:
        return f"arn:aws:iam::{self.account_id}:role/{self.execution_role_name}"


def resolve_names(*, deployment_id: str | None = None, region: str | None = None) -> LocalNames:
    """Names from the explicit arguments, else from the stack config, else the defaults.

    The stack config (``stacks.config.load_config``) is read when it is importable, so local
    mode and the deployed stack agree on the deployment id and region.
    """
    config_id, config_region = _config_values()
    return LocalNames(
        deployment_id=deployment_id or config_id or DEFAULT_DEPLOYMENT_ID,
        region=region or config_region or DEFAULT_REGION,
    )


def _config_values() -> tuple[str | None, str | None]:
    try:
        from stacks.config import load_config  # type: ignore[import-not-found]
    except ImportError:
        return None, None
    try:
        config = load_config()
    except Exception as exc:  # noqa: BLE001 - say why, then fall back to the defaults
        warnings.warn(
            f"local: could not read the stack config ({exc}); using defaults", stacklevel=2
        )
        return None, None
    return getattr(config, "deployment_id", None), getattr(config, "region", None)
