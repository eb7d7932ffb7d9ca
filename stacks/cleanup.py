"""Custom resource that, on `cdk destroy`, removes what the portal created in SageMaker."""

from __future__ import annotations

from pathlib import Path

from aws_cdk import CustomResource, Duration, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import custom_resources as cr
from constructs import Construct

from easel_contracts.naming import handler_tag_environment
from stacks.lambda_defaults import LAMBDA_RUNTIME, function_role
from stacks.nag import (
    acknowledge,
    arn_of,
    log_group_finding,
    owned_sagemaker_findings,
)
from stacks.naming import (
    TRAINING_LOG_GROUP,
    deployment_tag_condition,
    endpoint_log_group,
    list_sagemaker_statement,
    log_group_arn,
    owned_sagemaker_arns,
)
from stacks.scaling import scaling_removal_findings, scaling_removal_statements

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
        role = function_role(
            self, "Role", log_group=log_group,
            description=f"Easel {deployment_id}: removes the portal's SageMaker resources",
        )
        environment = {
            "DEPLOYMENT_ID": deployment_id,
            "GIVE_UP_SECONDS": str(GIVE_UP.to_seconds()),
            "PURGE_LOGS": "true" if purge_logs else "false",
            **handler_tag_environment(),
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
            role=role,
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
            role=role,
            description="Easel: waits until this deployment's SageMaker resources are gone",
        )

        owned = owned_sagemaker_arns(stack, deployment_id)
        # Both handlers share one role: it writes only to their log group (function_role).
        role.add_to_policy(list_sagemaker_statement())
        role.add_to_policy(iam.PolicyStatement(
            sid="ReadOwnTags", actions=["sagemaker:ListTags"], resources=owned
        ))
        role.add_to_policy(iam.PolicyStatement(
            sid="DeleteOwnResources",
            actions=["sagemaker:DeleteEndpoint", "sagemaker:DeleteEndpointConfig",
                     "sagemaker:DeleteModel", "sagemaker:StopTrainingJob"],
            resources=owned,
            conditions=deployment_tag_condition(deployment_id),
        ))
        # Scaling targets the scaler registered for the endpoints: finding them has no resource
        # scope; deregistering is limited to targets tagged with this deployment.
        role.add_to_policy(iam.PolicyStatement(
            sid="FindEndpointScaling",
            actions=["application-autoscaling:DescribeScalableTargets"],
            resources=["*"],
        ))
        for statement in scaling_removal_statements(stack, deployment_id):
            role.add_to_policy(statement)
        log_groups = log_group_arn(stack, endpoint_log_group(deployment_id))
        # DescribeLogGroups names no log group, so it is authorized on log-group:* only.
        role.add_to_policy(iam.PolicyStatement(
            sid="FindLogGroups", actions=["logs:DescribeLogGroups"],
            resources=[log_group_arn(stack, "*")],
        ))
        role.add_to_policy(iam.PolicyStatement(
            sid="RemoveEndpointLogGroups",
            actions=["logs:ListTagsForResource", "logs:DeleteLogGroup"],
            resources=[log_groups, f"{log_groups}:*"],
        ))
        # In the shared training log group, only streams of this deployment's jobs.
        training_logs = log_group_arn(stack, TRAINING_LOG_GROUP)
        role.add_to_policy(iam.PolicyStatement(
            sid="FindTrainingLogStreams", actions=["logs:DescribeLogStreams"],
            resources=[training_logs, f"{training_logs}:*"],
        ))
        role.add_to_policy(iam.PolicyStatement(
            sid="RemoveTrainingLogStreams", actions=["logs:DeleteLogStream"],
            resources=[f"{training_logs}:log-stream:{deployment_id}-*"],
        ))
        acknowledge(
            role,
            "Alarms and log groups are limited to names of this deployment's endpoints (the "
            "portal's alarms and the target-tracking alarms Application Auto Scaling made for "
            "them); scalable targets have random ids, so deregistering is limited by the "
            "easel:deployment tag instead. DescribeLogGroups names no group (log-group:* is its "
            "only resource); in the shared training log group only streams of this "
            "deployment's jobs are deleted.",
            *scaling_removal_findings(stack, deployment_id),
            log_group_finding(stack, endpoint_log_group(deployment_id)),
            log_group_finding(stack, endpoint_log_group(deployment_id) + ":*"),
            log_group_finding(stack, "*"),
            log_group_finding(stack, f"{TRAINING_LOG_GROUP}:*"),
            log_group_finding(stack, f"{TRAINING_LOG_GROUP}:log-stream:{deployment_id}-*"),
        )
        acknowledge(
            role,
            "SageMaker List* and DescribeScalableTargets have no resource scope; the other "
            "actions are limited to resources named for (and SageMaker deletes to resources "
            "tagged with) this deployment.",
            "IAM5[Resource::*]",
            *owned_sagemaker_findings(stack, deployment_id),
        )

        # The framework's own functions get roles without AWS managed policies: they write only
        # to this log group (invoking the handlers is granted by the Provider).
        framework_roles = [
            function_role(self, role_id, log_group=log_group,
                          description=f"Provider framework {purpose} for the Easel cleanup")
            for role_id, purpose in (("FrameworkOnEventRole", "onEvent"),
                                     ("FrameworkCompleteRole", "isComplete/onTimeout"))
        ]
        self.provider = cr.Provider(
            self,
            "Provider",
            on_event_handler=self.on_event,
            is_complete_handler=self.is_complete,
            query_interval=QUERY_INTERVAL,
            total_timeout=TOTAL_TIMEOUT,
            log_group=log_group,
            framework_on_event_role=framework_roles[0],
            framework_complete_and_timeout_role=framework_roles[1],
        )
        framework = {
            name: self.provider.node.find_child(name)
            for name in ("framework-onEvent", "framework-isComplete", "framework-onTimeout")
        }
        acknowledge(
            self,
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
