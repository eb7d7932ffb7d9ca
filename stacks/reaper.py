"""Scheduled Lambda that deletes endpoints idle past their time-to-live."""

from __future__ import annotations

from pathlib import Path

from aws_cdk import Duration, Stack
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from constructs import Construct

from easel_contracts.naming import handler_tag_environment
from stacks.lambda_defaults import LAMBDA_RUNTIME, function_role
from stacks.nag import (
    acknowledge,
    owned_sagemaker_findings,
)
from stacks.naming import (
    deployment_tag_condition,
    owned_sagemaker_arns,
)
from stacks.scaling import scaling_removal_findings, scaling_removal_statements

HANDLER_DIR = Path(__file__).resolve().parent / "reaper_handler"
SCHEDULE = Duration.minutes(15)


class EndpointReaper(Construct):
    """Every 15 minutes, deletes this deployment's endpoints idle for longer than their TTL."""

    def __init__(
        self, scope: Construct, construct_id: str, *, deployment_id: str, default_ttl_hours: float
    ) -> None:
        super().__init__(scope, construct_id)
        stack = Stack.of(self)
        log_group = logs.LogGroup(self, "Logs", retention=logs.RetentionDays.ONE_YEAR)
        self.function = lambda_.Function(
            self, "Function",
            runtime=LAMBDA_RUNTIME,
            handler="index.handler",
            code=lambda_.Code.from_asset(str(HANDLER_DIR)),
            timeout=Duration.minutes(2),
            environment={"DEPLOYMENT_ID": deployment_id,
                         "DEFAULT_IDLE_TTL_HOURS": str(default_ttl_hours),
                         **handler_tag_environment()},
            log_group=log_group,
            role=function_role(self, "Role", log_group=log_group,
                               description=f"Easel {deployment_id}: endpoint reaper"),
            description="Easel: deletes endpoints idle past their time-to-live",
        )
        owned = owned_sagemaker_arns(stack, deployment_id)
        self.function.add_to_role_policy(iam.PolicyStatement(
            actions=["sagemaker:ListEndpoints", "cloudwatch:GetMetricData"], resources=["*"],
        ))
        self.function.add_to_role_policy(iam.PolicyStatement(
            actions=["sagemaker:ListTags", "sagemaker:DescribeEndpoint",
                     "sagemaker:DescribeEndpointConfig"],
            resources=owned,
        ))
        self.function.add_to_role_policy(iam.PolicyStatement(
            actions=["sagemaker:DeleteEndpoint", "sagemaker:DeleteEndpointConfig",
                     "sagemaker:DeleteModel"],
            resources=owned,
            conditions=deployment_tag_condition(deployment_id),
        ))
        self.function.add_to_role_policy(iam.PolicyStatement(
            actions=["application-autoscaling:DescribeScalableTargets"], resources=["*"],
        ))
        for statement in scaling_removal_statements(stack, deployment_id):
            self.function.add_to_role_policy(statement)
        acknowledge(
            self,
            "Alarms are limited to names of this deployment's endpoints (its own and the "
            "target-tracking alarms Application Auto Scaling made for them); scalable targets "
            "have random ids, so deregistering is limited by the easel:deployment tag instead.",
            *scaling_removal_findings(stack, deployment_id),
        )
        acknowledge(
            self,
            "ListEndpoints, GetMetricData and DescribeScalableTargets have no resource scope; "
            "every other action is limited to SageMaker resources named for (deletes: tagged "
            "with) this deployment.",
            "IAM5[Resource::*]", *owned_sagemaker_findings(stack, deployment_id),
        )
        events.Rule(
            self, "Schedule",
            schedule=events.Schedule.rate(SCHEDULE),
            targets=[targets.LambdaFunction(self.function)],
        )
