"""Custom resource that, on `cdk destroy`, removes what the portal created in SageMaker."""

from __future__ import annotations

from pathlib import Path

from aws_cdk import CustomResource, Duration, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import custom_resources as cr
from constructs import Construct

from stacks.lambda_defaults import LAMBDA_RUNTIME
from stacks.nag import (
    BASIC_EXECUTION_POLICY,
    acknowledge,
    alarm_finding,
    arn_of,
    log_group_finding,
    owned_sagemaker_findings,
    partition_arn,
)
from stacks.naming import (
    TRAINING_LOG_GROUP,
    alarm_arn,
    endpoint_log_group,
    log_group_arn,
    owned_sagemaker_arns,
    scaling_alarm_arn,
)

HANDLER_DIR = Path(__file__).resolve().parent / "cleanup_handler"
# CloudFormation waits at most one hour for a custom resource (its ServiceTimeout, 3600 s at most:
# https://docs.aws.amazon.com/AWSCloudFormation/latest/UserGuide/aws-resource-cloudformation-customresource.html).
TOTAL_TIMEOUT = Duration.minutes(57)
# The handler gives up (logging leftovers) before the Provider's own timeout would fail the
# delete; until then it waits for endpoints still being created (SageMaker cannot delete them
# before they leave Creating), which the portal's download and start-up timeouts bound.
GIVE_UP = Duration.minutes(52)
# Instance start and image pull before the model download starts (beyond the portal's timeouts).
PROVISIONING_ALLOWANCE = Duration.minutes(10)
QUERY_INTERVAL = Duration.seconds(20)


def scaling_alarm_finding(stack: Stack, deployment_id: str) -> str:
    """The IAM5 finding for `naming.scaling_alarm_arn`."""
    name = f"alarm:TargetTracking-endpoint/{deployment_id}-*"
    return f"IAM5[Resource::{partition_arn(stack, 'cloudwatch', name)}]"


class DeploymentCleanup(Construct):
    """On stack delete, deletes every SageMaker endpoint, endpoint config and model tagged with
    this deployment and stops its running training jobs, waiting until they are gone.

    Make this construct depend on whatever those resources use (execution role, bucket,
    repositories) so CloudFormation deletes it, and so runs it, first.
    """

    def __init__(
        self, scope: Construct, construct_id: str, *, deployment_id: str, purge_logs: bool
    ) -> None:
        super().__init__(scope, construct_id)
        stack = Stack.of(self)
        code = lambda_.Code.from_asset(str(HANDLER_DIR))
        log_group = logs.LogGroup(self, "Logs", retention=logs.RetentionDays.ONE_YEAR)
        environment = {
            "DEPLOYMENT_ID": deployment_id,
            "GIVE_UP_SECONDS": str(GIVE_UP.to_seconds()),
            "PURGE_LOGS": "true" if purge_logs else "false",
        }
        self.on_event = lambda_.Function(
            self,
            "OnEvent",
            runtime=LAMBDA_RUNTIME,
            handler="index.on_event",
            code=code,
            timeout=Duration.minutes(5),
            environment=environment,
            log_group=log_group,
            description="Easel: starts deleting this deployment's SageMaker resources",
        )
        self.is_complete = lambda_.Function(
            self,
            "IsComplete",
            runtime=LAMBDA_RUNTIME,
            handler="index.is_complete",
            code=code,
            timeout=Duration.minutes(5),
            environment=environment,
            log_group=log_group,
            description="Easel: waits until this deployment's SageMaker resources are gone",
        )

        owned = owned_sagemaker_arns(stack, deployment_id)
        for function in (self.on_event, self.is_complete):
            # SageMaker's List* actions support no resource-level scoping.
            function.add_to_role_policy(
                iam.PolicyStatement(
                    sid="ListSageMaker",
                    actions=[
                        "sagemaker:ListEndpoints",
                        "sagemaker:ListEndpointConfigs",
                        "sagemaker:ListModels",
                        "sagemaker:ListTrainingJobs",
                    ],
                    resources=["*"],
                )
            )
            function.add_to_role_policy(
                iam.PolicyStatement(
                    sid="ReadOwnTags", actions=["sagemaker:ListTags"], resources=owned
                )
            )
            function.add_to_role_policy(
                iam.PolicyStatement(
                    sid="DeleteOwnResources",
                    actions=[
                        "sagemaker:DeleteEndpoint",
                        "sagemaker:DeleteEndpointConfig",
                        "sagemaker:DeleteModel",
                        "sagemaker:StopTrainingJob",
                    ],
                    resources=owned,
                    conditions={
                        "StringEquals": {"aws:ResourceTag/easel:deployment": deployment_id}
                    },
                )
            )
            # Scaling targets and policies the portal registered for the endpoints.
            function.add_to_role_policy(
                iam.PolicyStatement(
                    sid="RemoveEndpointScaling",
                    actions=[
                        "application-autoscaling:DescribeScalableTargets",
                        "application-autoscaling:DeregisterScalableTarget",
                    ],
                    resources=["*"],
                )
            )
            alarms = alarm_arn(stack, deployment_id)
            # The backlog alarms, and target tracking's own (deleted with the caller's rights
            # when a scalable target is deregistered).
            function.add_to_role_policy(
                iam.PolicyStatement(
                    sid="RemoveBacklogAlarms",
                    actions=["cloudwatch:DescribeAlarms", "cloudwatch:DeleteAlarms"],
                    resources=[alarms, scaling_alarm_arn(stack, deployment_id)],
                )
            )
            log_groups = log_group_arn(stack, endpoint_log_group(deployment_id))
            # DescribeLogGroups names no log group, so it is authorized on log-group:* only.
            function.add_to_role_policy(
                iam.PolicyStatement(
                    sid="FindLogGroups",
                    actions=["logs:DescribeLogGroups"],
                    resources=[log_group_arn(stack, "*")],
                )
            )
            function.add_to_role_policy(
                iam.PolicyStatement(
                    sid="RemoveEndpointLogGroups",
                    actions=["logs:ListTagsForResource", "logs:DeleteLogGroup"],
                    resources=[log_groups, f"{log_groups}:*"],
                )
            )
            training_logs = log_group_arn(stack, TRAINING_LOG_GROUP)
            function.add_to_role_policy(
                iam.PolicyStatement(
                    sid="FindTrainingLogStreams",
                    actions=["logs:DescribeLogStreams"],
                    resources=[training_logs, f"{training_logs}:*"],
                )
            )
            function.add_to_role_policy(
                iam.PolicyStatement(
                    sid="RemoveTrainingLogStreams",
                    actions=["logs:DeleteLogStream"],
                    resources=[f"{training_logs}:log-stream:{deployment_id}-*"],
                )
            )
            acknowledge(
                function,
                "Alarms and log groups are limited to names of this deployment's endpoints; "
                "DescribeLogGroups names no group (log-group:* is its only resource); in the "
                "shared training log group only streams of this deployment's jobs are deleted.",
                alarm_finding(stack, deployment_id),
                scaling_alarm_finding(stack, deployment_id),
                log_group_finding(stack, "*"),
                log_group_finding(stack, endpoint_log_group(deployment_id)),
                log_group_finding(stack, endpoint_log_group(deployment_id) + ":*"),
                log_group_finding(stack, f"{TRAINING_LOG_GROUP}:*"),
                log_group_finding(stack, f"{TRAINING_LOG_GROUP}:log-stream:{deployment_id}-*"),
            )
            acknowledge(
                function,
                "SageMaker List* and Application Auto Scaling actions have no resource scope; "
                "the other actions are limited to resources named for (and SageMaker deletes to "
                "resources tagged with) this deployment.",
                "IAM5[Resource::*]",
                *owned_sagemaker_findings(stack, deployment_id),
            )
            acknowledge(
                function,
                "The basic execution policy only lets the function write its own logs.",
                BASIC_EXECUTION_POLICY,
            )

        self.provider = cr.Provider(
            self,
            "Provider",
            on_event_handler=self.on_event,
            is_complete_handler=self.is_complete,
            query_interval=QUERY_INTERVAL,
            total_timeout=TOTAL_TIMEOUT,
            log_group=log_group,
        )
        framework = {
            name: self.provider.node.find_child(name)
            for name in ("framework-onEvent", "framework-isComplete", "framework-onTimeout")
        }
        acknowledge(
            self.provider,
            "CDK Provider framework: its functions may invoke only this construct's handler "
            "functions (any version), and its waiter only the framework's own functions.",
            *(
                f"IAM5[Resource::{arn_of(target)}:*]"
                for target in (
                    self.on_event,
                    self.is_complete,
                    framework["framework-isComplete"],
                    framework["framework-onTimeout"],
                )
            ),
        )
        acknowledge(
            self.provider,
            "CDK Provider framework functions use the basic execution policy for their logs.",
            BASIC_EXECUTION_POLICY,
        )
        acknowledge(
            self.provider,
            "The waiter state machine is CDK's own; each step is logged by the handlers "
            "(SF1), and X-Ray tracing of it would add cost without insight (SF2).",
            "SF1",
            "SF2",
        )

        self.resource = CustomResource(
            self,
            "Resource",
            service_token=self.provider.service_token,
            resource_type="Custom::EaselCleanup",
            properties={"DeploymentId": deployment_id},
        )
