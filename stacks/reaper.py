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
    alarm_finding,
    owned_sagemaker_findings,
    scalable_target_finding,
    target_tracking_alarm_finding,
)
from stacks.naming import (
    alarm_arn,
    deployment_tag_condition,
    owned_sagemaker_arns,
    scalable_target_arn,
    target_tracking_alarm_arn,
)
from stacks.scaling import autoscaling_tag_condition

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
        self.function.add_to_role_policy(iam.PolicyStatement(
            actions=["application-autoscaling:DeregisterScalableTarget"],
            resources=[scalable_target_arn(stack)],
            conditions=autoscaling_tag_condition(deployment_id),
        ))
        self.function.add_to_role_policy(iam.PolicyStatement(
            actions=["cloudwatch:DescribeAlarms", "cloudwatch:DeleteAlarms"],
            resources=[alarm_arn(stack, deployment_id),
                       target_tracking_alarm_arn(stack, deployment_id)],
        ))
        acknowledge(
            self,
            "Alarms are limited to names of this deployment's endpoints (its own and the "
            "target-tracking alarms Application Auto Scaling made for them); scalable targets "
            "have random ids, so deregistering is limited by the easel:deployment tag instead.",
            alarm_finding(stack, deployment_id),
            target_tracking_alarm_finding(stack, deployment_id),
            scalable_target_finding(stack),
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
