"""Settings shared by every Lambda function the stack defines."""

from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from constructs import Construct

LAMBDA_RUNTIME = lambda_.Runtime.PYTHON_3_14


def function_role(
    scope: Construct, construct_id: str, *, log_group: logs.ILogGroup, description: str
) -> iam.Role:
    """A role for the stack's own Lambda functions: it may write only to `log_group` (the
    function's explicit log group), never AWSLambdaBasicExecutionRole's logs rights on `*`.
    Pass both `role=` and `log_group=` to the function."""
    role = iam.Role(
        scope,
        construct_id,
        assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
        description=description,
    )
    log_group.grant_write(role)
    return role
