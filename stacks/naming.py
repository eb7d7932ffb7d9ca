"""How the kit names and finds the SageMaker resources a deployment owns."""

from __future__ import annotations

from aws_cdk import ArnFormat, Stack
from aws_cdk import aws_iam as iam

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


def list_sagemaker_statement() -> iam.PolicyStatement:
    """The List* calls that find a deployment's SageMaker resources among the account's (the
    portal and the cleanup). SageMaker's List* actions support no resource-level scoping, so they
    take "*"; whatever is then read or changed is scoped to ``owned_sagemaker_arns``."""
    return iam.PolicyStatement(
        sid="ListSageMaker",
        actions=["sagemaker:ListEndpoints", "sagemaker:ListEndpointConfigs",
                 "sagemaker:ListModels", "sagemaker:ListTrainingJobs"],
        resources=["*"],
    )


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
    """The portal's own alarms (async backlog), named `<deployment_id>-…`."""
    return stack.format_arn(
        service="cloudwatch",
        resource="alarm",
        resource_name=resource_name(deployment_id, "*"),
        arn_format=ArnFormat.COLON_RESOURCE_NAME,
    )


def target_tracking_alarm_arn(stack: Stack, deployment_id: str) -> str:
    """The alarms Application Auto Scaling creates for target-tracking policies on this
    deployment's endpoints (`TargetTracking-endpoint/<endpoint>/variant/...`). AAS creates and
    deletes them with the caller's CloudWatch rights, so whoever puts or removes those policies
    (directly, or by deregistering the target) needs PutMetricAlarm/DescribeAlarms/DeleteAlarms
    on them. Source: Application Auto Scaling User Guide, "Identity-based policy examples",
    permissions required for API actions on target resources (SageMaker, CloudWatch):
    https://docs.aws.amazon.com/autoscaling/application/userguide/security_iam_id-based-policy-examples.html
    """
    return stack.format_arn(
        service="cloudwatch",
        resource="alarm",
        resource_name=f"TargetTracking-endpoint/{deployment_id}-*",
        arn_format=ArnFormat.COLON_RESOURCE_NAME,
    )


def scalable_target_arn(stack: Stack) -> str:
    """Every scalable target of the account and region; grants on it carry a condition on the
    `easel:deployment` tag (Application Auto Scaling supports ABAC on scalable targets:
    https://docs.aws.amazon.com/autoscaling/application/userguide/security_iam_service-with-iam.html
    and the Service Authorization Reference for application-autoscaling)."""
    return stack.format_arn(
        service="application-autoscaling",
        resource="scalable-target",
        resource_name="*",
        arn_format=ArnFormat.SLASH_RESOURCE_NAME,
    )


AUTOSCALING_SLR_NAME = (
    "aws-service-role/sagemaker.application-autoscaling.amazonaws.com/"
    "AWSServiceRoleForApplicationAutoScaling_SageMakerEndpoint"
)
