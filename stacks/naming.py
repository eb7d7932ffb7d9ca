"""How the kit names and finds the SageMaker resources a deployment owns."""

from __future__ import annotations

from aws_cdk import ArnFormat, Stack

DEPLOYMENT_TAG = "easel:deployment"
OWNED_SAGEMAKER_KINDS = ("endpoint", "endpoint-config", "model", "training-job")


def owned_sagemaker_arns(stack: Stack, deployment_id: str) -> list[str]:
    """ARN patterns of every SageMaker resource named `<deployment_id>-…`."""
    return [
        stack.format_arn(
            service="sagemaker",
            resource=kind,
            resource_name=f"{deployment_id}-*",
            arn_format=ArnFormat.SLASH_RESOURCE_NAME,
        )
        for kind in OWNED_SAGEMAKER_KINDS
    ]
