"""Helpers to acknowledge cdk-nag (AwsSolutions) findings narrowly, with evidence.

cdk-nag 3 reports each wildcard separately (`IAM5[Resource::...]`, `IAM5[Action::...]`), so an
acknowledgement names the exact finding it accepts; a new wildcard is a new, failing finding.
"""

from __future__ import annotations

from aws_cdk import Acknowledgment, CfnResource, Stack, Token, Validations
from constructs import IConstruct

PACK = "AwsSolutions"
BASIC_EXECUTION_POLICY = (
    "IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole]"
)


def acknowledge(construct: IConstruct, reason: str, *findings: str) -> None:
    """Acknowledge `findings` (e.g. "S1", "IAM5[Resource::*]") on `construct` and its children."""
    if len(reason) < 20:
        raise ValueError("an acknowledgement needs a reason a reviewer can judge")
    Validations.of(construct).acknowledge(
        *(Acknowledgment(id=f"{PACK}::{PACK}-{finding}", reason=reason) for finding in findings)
    )


def arn_of(construct: IConstruct) -> str:
    """How cdk-nag writes the `Fn::GetAtt Arn` of a construct's CloudFormation resource."""
    child = construct.node.default_child
    assert isinstance(child, CfnResource), f"{construct.node.path} has no CloudFormation resource"
    return f"<{Stack.of(construct).get_logical_id(child)}.Arn>"


def partition_arn(stack: Stack, service: str, resource: str) -> str:
    """How cdk-nag writes an ARN built with `stack.format_arn`: pseudo parameters where the
    stack is environment-agnostic, literal values where config pins them."""

    def part(value: str, pseudo: str) -> str:
        return f"<AWS::{pseudo}>" if Token.is_unresolved(value) else value

    partition = part(stack.partition, "Partition")
    region = part(stack.region, "Region")
    account = part(stack.account, "AccountId")
    return f"arn:{partition}:{service}:{region}:{account}:{resource}"


def owned_sagemaker_findings(stack: Stack, deployment_id: str) -> list[str]:
    """The IAM5 findings that `naming.owned_sagemaker_arns` produces."""
    from stacks.naming import OWNED_SAGEMAKER_KINDS

    return [
        f"IAM5[Resource::{partition_arn(stack, 'sagemaker', f'{kind}/{deployment_id}-*')}]"
        for kind in OWNED_SAGEMAKER_KINDS
    ]


def log_group_finding(stack: Stack, name: str) -> str:
    """The IAM5 finding for `naming.log_group_arn(stack, name)`."""
    return f"IAM5[Resource::{partition_arn(stack, 'logs', 'log-group:' + name)}]"


def alarm_finding(stack: Stack, deployment_id: str) -> str:
    """The IAM5 finding for `naming.alarm_arn(stack, deployment_id)`."""
    return f"IAM5[Resource::{partition_arn(stack, 'cloudwatch', f'alarm:{deployment_id}-*')}]"


def target_tracking_alarm_finding(stack: Stack, deployment_id: str) -> str:
    """The IAM5 finding for `naming.target_tracking_alarm_arn(stack, deployment_id)`."""
    name = f"alarm:TargetTracking-endpoint/{deployment_id}-*"
    return f"IAM5[Resource::{partition_arn(stack, 'cloudwatch', name)}]"


def scalable_target_finding(stack: Stack) -> str:
    """The IAM5 finding for `naming.scalable_target_arn(stack)`."""
    return f"IAM5[Resource::{partition_arn(stack, 'application-autoscaling', 'scalable-target/*')}]"


def bucket_arn(bucket: IConstruct) -> str:
    """How cdk-nag writes a bucket's ARN: a GetAtt for a bucket of this stack, else its name."""
    if isinstance(bucket.node.default_child, CfnResource):
        return arn_of(bucket)
    return f"arn:<AWS::Partition>:s3:::{bucket.bucket_name}"  # type: ignore[attr-defined]
