"""How the kit names and finds the SageMaker resources a deployment owns."""

from __future__ import annotations

from aws_cdk import ArnFormat, Stack

from easel_contracts.naming import DEPLOYMENT_TAG, resource_name

OWNED_SAGEMAKER_KINDS = ("endpoint", "endpoint-config", "model", "training-job")
TRAINING_LOG_GROUP = "/aws/sagemaker/TrainingJobs"


def deployment_tag_condition(deployment_id: str, *, context: str = "ResourceTag") -> dict:
    """IAM condition: the resource (or, with ``RequestTag``, the request) carries this
    deployment's tag."""
    return {"StringEquals": {f"aws:{context}/{DEPLOYMENT_TAG}": deployment_id}}


def owned_sagemaker_arns(stack: Stack, deployment_id: str) -> list[str]:
    """ARN patterns of every SageMaker resource named `<deployment_id>-…`."""
    return [
        stack.format_arn(
            service="sagemaker",
            resource=kind,
            resource_name=resource_name(deployment_id, "*"),
            arn_format=ArnFormat.SLASH_RESOURCE_NAME,
        )
        for kind in OWNED_SAGEMAKER_KINDS
    ]


def endpoint_log_group(deployment_id: str) -> str:
    """Pattern of the log groups of this deployment's endpoints."""
    return f"/aws/sagemaker/Endpoints/{resource_name(deployment_id, '*')}"


def log_group_arn(stack: Stack, name: str) -> str:
    return stack.format_arn(
        service="logs",
        resource="log-group",
        resource_name=name,
        arn_format=ArnFormat.COLON_RESOURCE_NAME,
    )


def alarm_arn(stack: Stack, deployment_id: str) -> str:
    return stack.format_arn(
        service="cloudwatch",
        resource="alarm",
        resource_name=resource_name(deployment_id, "*"),
        arn_format=ArnFormat.COLON_RESOURCE_NAME,
    )
