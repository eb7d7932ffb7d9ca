"""Applies each endpoint's scaling plan when SageMaker reports the endpoint InService.

An EventBridge rule on SageMaker's "SageMaker Endpoint State Change" events (source
`aws.sagemaker`; https://docs.aws.amazon.com/sagemaker/latest/dg/automating-sagemaker-with-eventbridge.html)
for this deployment's endpoints invokes a small Lambda (`scaling_handler/`). It reads the plan the
portal stored on the endpoint's table record and registers the scalable target, its policies and
alarms, so scaling never depends on someone opening a page.
"""

from __future__ import annotations

from pathlib import Path

from aws_cdk import Duration, Stack
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from constructs import Construct

from easel_contracts import table as table_keys
from stacks.lambda_defaults import LAMBDA_RUNTIME, function_role
from stacks.nag import (
    acknowledge,
    alarm_finding,
    owned_sagemaker_findings,
    scalable_target_finding,
    target_tracking_alarm_finding,
)
from stacks.naming import (
    AUTOSCALING_SLR_NAME,
    alarm_arn,
    deployment_tag_condition,
    owned_sagemaker_arns,
    scalable_target_arn,
    target_tracking_alarm_arn,
)

HANDLER_DIR = Path(__file__).resolve().parent / "scaling_handler"
EVENT_SOURCE = "aws.sagemaker"
EVENT_DETAIL_TYPE = "SageMaker Endpoint State Change"
# EventBridge events spell the status IN_SERVICE (the API spells it InService); both match.
IN_SERVICE_STATUSES = ["IN_SERVICE", "InService"]
# The portal's endpoint records: partition keys `endpoint#<name>` (easel_contracts.table).
ENDPOINT_RECORD_KEYS = table_keys.endpoint_key("*").pk


def autoscaling_tag_condition(deployment_id: str, *, request: bool = False) -> dict:
    """Application Auto Scaling ABAC: the scalable target carries (or, when registering, the
    request sets) `easel:deployment=<deployment_id>`."""
    return deployment_tag_condition(deployment_id,
                                    context="RequestTag" if request else "ResourceTag")


def scaling_removal_statements(stack: Stack, deployment_id: str) -> list[iam.PolicyStatement]:
    """What removing an endpoint's scaling takes (the portal on delete, the reaper, cleanup):
    deregistering its scalable target, limited by the `easel:deployment` tag because targets have
    random ids, and the CloudWatch rights Application Auto Scaling checks on the caller when it
    deletes target tracking's alarms with the target (plus the portal's own backlog alarms)."""
    return [
        iam.PolicyStatement(
            sid="DeregisterOwnScalableTargets",
            actions=["application-autoscaling:DeregisterScalableTarget"],
            resources=[scalable_target_arn(stack)],
            conditions=autoscaling_tag_condition(deployment_id),
        ),
        iam.PolicyStatement(
            sid="RemoveEndpointAlarms",
            actions=["cloudwatch:DescribeAlarms", "cloudwatch:DeleteAlarms"],
            resources=[alarm_arn(stack, deployment_id),
                       target_tracking_alarm_arn(stack, deployment_id)],
        ),
    ]


def scaling_removal_findings(stack: Stack, deployment_id: str) -> list[str]:
    """The cdk-nag IAM5 findings of `scaling_removal_statements`."""
    return [alarm_finding(stack, deployment_id),
            target_tracking_alarm_finding(stack, deployment_id), scalable_target_finding(stack)]


class EndpointScaler(Construct):
    """EventBridge rule + Lambda that apply the portal's scaling plan on InService."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        deployment_id: str,
        table: dynamodb.ITable,
    ) -> None:
        super().__init__(scope, construct_id)
        stack = Stack.of(self)
        log_group = logs.LogGroup(self, "Logs", retention=logs.RetentionDays.ONE_YEAR)
        role = function_role(
            self, "Role", log_group=log_group,
            description=f"Easel {deployment_id}: applies endpoint scaling plans on InService",
        )
        self.function = lambda_.Function(
            self, "Function",
            runtime=LAMBDA_RUNTIME,
            handler="index.handler",
            code=lambda_.Code.from_asset(str(HANDLER_DIR)),
            timeout=Duration.minutes(1),
            environment={"DEPLOYMENT_ID": deployment_id, "TABLE_NAME": table.table_name},
            role=role,
            log_group=log_group,
            description="Easel: applies an endpoint's scaling plan when it becomes InService",
        )
        self.rule = events.Rule(
            self, "InService",
            description=f"Easel {deployment_id}: endpoints that became InService",
            event_pattern=events.EventPattern(
                source=[EVENT_SOURCE],
                detail_type=[EVENT_DETAIL_TYPE],
                detail={
                    "EndpointName": [{"prefix": f"{deployment_id}-"}],
                    "EndpointStatus": IN_SERVICE_STATUSES,
                },
            ),
            targets=[targets.LambdaFunction(self.function, retry_attempts=4)],
        )
        self._grant(stack, role, deployment_id, table)

    def _grant(
        self, stack: Stack, role: iam.Role, deployment_id: str, table: dynamodb.ITable
    ) -> None:
        role.add_to_policy(iam.PolicyStatement(
            sid="ReadAndMarkEndpointRecords",
            actions=["dynamodb:GetItem", "dynamodb:UpdateItem"],
            resources=[table.table_arn],
            conditions={"ForAllValues:StringLike": {"dynamodb:LeadingKeys": [
                ENDPOINT_RECORD_KEYS]}},
        ))
        target = scalable_target_arn(stack)
        role.add_to_policy(iam.PolicyStatement(
            sid="RegisterTaggedScalableTargets",
            actions=["application-autoscaling:RegisterScalableTarget",
                     "application-autoscaling:TagResource"],
            resources=[target],
            conditions=autoscaling_tag_condition(deployment_id, request=True),
        ))
        role.add_to_policy(iam.PolicyStatement(
            sid="PoliciesOnOwnScalableTargets",
            actions=["application-autoscaling:PutScalingPolicy"],
            resources=[target],
            conditions=autoscaling_tag_condition(deployment_id),
        ))
        # Application Auto Scaling checks that the caller may describe and rescale the endpoint
        # and create the target-tracking alarms (see naming.target_tracking_alarm_arn).
        role.add_to_policy(iam.PolicyStatement(
            sid="RightsAutoScalingChecksOnTheCaller",
            actions=["sagemaker:DescribeEndpoint", "sagemaker:DescribeEndpointConfig",
                     "sagemaker:UpdateEndpointWeightsAndCapacities"],
            resources=owned_sagemaker_arns(stack, deployment_id),
        ))
        role.add_to_policy(iam.PolicyStatement(
            sid="EndpointAlarms",
            actions=["cloudwatch:PutMetricAlarm", "cloudwatch:DescribeAlarms",
                     "cloudwatch:DeleteAlarms"],
            resources=[alarm_arn(stack, deployment_id),
                       target_tracking_alarm_arn(stack, deployment_id)],
        ))
        role.add_to_policy(iam.PolicyStatement(
            sid="AutoScalingServiceLinkedRole",
            actions=["iam:CreateServiceLinkedRole"],
            resources=[stack.format_arn(service="iam", region="", resource="role",
                                        resource_name=AUTOSCALING_SLR_NAME)],
            conditions={"StringEquals": {
                "iam:AWSServiceName": "sagemaker.application-autoscaling.amazonaws.com"}},
        ))
        acknowledge(
            role,
            "Scalable targets: any ARN (Application Auto Scaling gives targets random ids) but "
            "only with the easel:deployment tag of this deployment (RequestTag on register, "
            "ResourceTag on policies); SageMaker resources and alarms named for this "
            "deployment's endpoints, as Application Auto Scaling checks on the caller.",
            scalable_target_finding(stack),
            *owned_sagemaker_findings(stack, deployment_id),
            alarm_finding(stack, deployment_id),
            target_tracking_alarm_finding(stack, deployment_id),
        )
