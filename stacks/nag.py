"""Helpers to acknowledge cdk-nag (AwsSolutions) findings narrowly, with evidence.

cdk-nag 3 reports each wildcard separately (`IAM5[Resource::...]`, `IAM5[Action::...]`), so an
acknowledgement names the exact finding it accepts; a new wildcard is a new, failing finding.
"""

from __future__ import annotations

from aws_cdk import Acknowledgment, CfnResource, Stack, Validations
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


def partition_arn(service: str, resource: str) -> str:
    """How cdk-nag writes an ARN built from the stack's partition, region and account."""
    return f"arn:<AWS::Partition>:{service}:<AWS::Region>:<AWS::AccountId>:{resource}"


def owned_sagemaker_findings(deployment_id: str) -> list[str]:
    """The IAM5 findings that `naming.owned_sagemaker_arns` produces."""
    from stacks.naming import OWNED_SAGEMAKER_KINDS

    return [
        f"IAM5[Resource::{partition_arn('sagemaker', f'{kind}/{deployment_id}-*')}]"
        for kind in OWNED_SAGEMAKER_KINDS
    ]
