"""Local mode's stand-in for the stack's EventBridge rule on "SageMaker Endpoint State Change":
when the SageMaker stand-in brings an endpoint InService, the scaler Lambda's own code
(`stacks/scaling_handler`) applies the endpoint's scaling plan against the AWS emulator."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from stacks.scaling_handler import index as scaler


def in_service_event(endpoint: str, *, region: str) -> dict[str, Any]:
    """The event SageMaker sends to EventBridge when `endpoint` becomes InService."""
    return {
        "source": "aws.sagemaker",
        "detail-type": "SageMaker Endpoint State Change",
        "region": region,
        "detail": {"EndpointName": endpoint, "EndpointStatus": "IN_SERVICE"},
    }


def scaling_listener(
    *, deployment_id: str, region: str, table_name: str, client: Callable[[str], Any]
) -> Callable[[str], dict[str, str]]:
    """`on_in_service` for the SageMaker stand-in; `client(service)` gives emulator clients."""

    def on_in_service(endpoint: str) -> dict[str, str]:
        return scaler.apply_event(
            in_service_event(endpoint, region=region),
            deployment_id=deployment_id,
            table=scaler.Table(client("dynamodb"), table_name),
            autoscaling=client("application-autoscaling"),
            cloudwatch=client("cloudwatch"),
        )

    return on_in_service
