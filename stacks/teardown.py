"""What `cdk destroy` leaves: log groups follow `purge_data`, and every Lambda logs to a log
group of the stack.

A Lambda function without a logging configuration writes to `/aws/lambda/<function>`, a group
Lambda creates at run time and CloudFormation never deletes (CDK's own provider functions, e.g.
the one that empties buckets during `cdk destroy`, are such functions). `route_function_logs`
gives each one a log group of the stack instead; the function references it, so CloudFormation
deletes the function (after its last invocation) before the group, and nothing can recreate it.
"""

from __future__ import annotations

from aws_cdk import CfnResource, RemovalPolicy, Stack
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs

FUNCTION_TYPE = "AWS::Lambda::Function"
LOG_RETENTION = logs.RetentionDays.ONE_YEAR


def _has_logging_config(function: CfnResource) -> bool:
    if isinstance(function, lambda_.CfnFunction):
        return function.logging_config is not None
    return False  # CDK's CustomResourceProvider functions are raw CfnResources without one


def route_function_logs(stack: Stack, *, purge_data: bool) -> list[logs.LogGroup]:
    """Give every Lambda function of `stack` that has no log group of its own one of the stack."""
    removal = RemovalPolicy.DESTROY if purge_data else RemovalPolicy.RETAIN
    added = []
    functions = [
        c for c in stack.node.find_all()
        if isinstance(c, CfnResource) and c.cfn_resource_type == FUNCTION_TYPE
        and not _has_logging_config(c)
    ]
    for function in functions:
        scope = function.node.scope
        assert scope is not None
        group = logs.LogGroup(
            scope, f"{function.node.id}Logs", retention=LOG_RETENTION, removal_policy=removal
        )
        function.add_property_override("LoggingConfig", {"LogGroup": group.log_group_name})
        added.append(group)
    return added


def apply_log_removal(stack: Stack, *, purge_data: bool) -> None:
    """With `purge_data`, every log group of the stack is deleted with it; otherwise each keeps
    its own policy (kept by default: logs are data)."""
    if not purge_data:
        return
    for construct in stack.node.find_all():
        if isinstance(construct, logs.CfnLogGroup):
            construct.apply_removal_policy(RemovalPolicy.DESTROY)
