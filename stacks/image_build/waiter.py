"""The stack's one image-build waiter: start handler, build-finished signaller, wait timing.

CloudFormation gives a custom resource at most one hour, so the handlers only start builds and
report digests (seconds each); the waiting is done by one `AWS::CloudFormation::WaitCondition`
per image (up to 12 hours), signalled by `on_build_state` when CodeBuild reports the build
finished (EventBridge rule on the kit's own projects).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aws_cdk import (
    Acknowledgment,
    CfnElement,
    Duration,
    RemovalPolicy,
    Stack,
    Validations,
)
from aws_cdk import aws_codebuild as codebuild
from aws_cdk import aws_ecr as ecr
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import custom_resources as cr
from constructs import Construct

from stacks.lambda_defaults import LAMBDA_RUNTIME

HANDLER_DIR = Path(__file__).resolve().parent / "handler"
HANDLER_RUNTIME = LAMBDA_RUNTIME
WAITER_ID = "EaselImageBuildWaiter"

# CloudFormation limits (AWS CloudFormation User Guide):
# - a custom resource must answer within one hour (ServiceTimeout, 1..3600 s; "Custom resources"
#   https://docs.aws.amazon.com/AWSCloudFormation/latest/UserGuide/template-custom-resources.html
#   and the ServiceTimeout property of AWS::CloudFormation::CustomResource);
# - a wait condition waits at most 43200 s (12 h) ("AWS::CloudFormation::WaitCondition",
#   Timeout: "The maximum time is 43200 seconds (12 hours)").
CUSTOM_RESOURCE_MAX_SECONDS = 3600
WAIT_CONDITION_MAX_SECONDS = 43200
# Per build, on top of its CodeBuild timeout: provisioning, source download and the gap between
# one queued build finishing and the next starting.
PER_BUILD_MARGIN_MINUTES = 5
# CodeBuild limits a build's queue time to 5..480 minutes (QueuedTimeoutInMinutes).
QUEUE_MINUTES_RANGE = (5, 480)


def wait_seconds(builds: int, build_timeout_minutes: int) -> int:
    """How long one image's wait condition waits: every build of the deploy may run before it.

    With a concurrent-build quota of 1, CodeBuild queues the other builds (it queues up to five
    times the quota; "Builds in AWS CodeBuild", codebuild/latest/userguide/builds-working.html)
    and runs them one after another, so the last one finishes after `builds` full builds.
    """
    return builds * (build_timeout_minutes + PER_BUILD_MARGIN_MINUTES) * 60


def queued_timeout_minutes(builds: int, build_timeout_minutes: int) -> int:
    """How long a build may stay queued: behind every other build of the same deploy."""
    low, high = QUEUE_MINUTES_RANGE
    queued = (builds - 1) * (build_timeout_minutes + PER_BUILD_MARGIN_MINUTES)
    return min(max(queued, low), high)


def max_build_timeout_minutes(builds: int) -> int:
    """The longest per-build timeout whose sequential builds still fit one wait condition."""
    return WAIT_CONDITION_MAX_SECONDS // 60 // builds - PER_BUILD_MARGIN_MINUTES


class BuildWaiter(Construct):
    """Start/report handler (one Provider, no polling) and the build-finished signaller."""

    def __init__(self, scope: Construct, construct_id: str) -> None:
        super().__init__(scope, construct_id)
        self.log_group = logs.LogGroup(
            self,
            "Logs",
            retention=logs.RetentionDays.ONE_MONTH,
            removal_policy=RemovalPolicy.DESTROY,
        )
        code = lambda_.Code.from_asset(str(HANDLER_DIR), exclude=["**/__pycache__", "**/*.pyc"])
        self.role = self._role(
            "HandlerRole", "Starts the CodeBuild builds of the Easel images and reads their digests"
        )
        self.signal_role = self._role(
            "SignalRole", "Signals the Easel image builds' wait conditions when a build finishes"
        )
        common: dict[str, Any] = {
            "runtime": HANDLER_RUNTIME,
            "code": code,
            "log_group": self.log_group,
            "memory_size": 256,
            "timeout": Duration.minutes(1),
        }
        self.on_event = lambda_.Function(
            self,
            "StartBuild",
            handler="handler.on_event",
            role=self.role,
            description="Starts an image build (unless the tag is in ECR); reports image digests",
            **common,
        )
        self.signaller = lambda_.Function(
            self,
            "SignalBuild",
            handler="handler.on_build_state",
            role=self.signal_role,
            description="Signals an image's wait condition when its CodeBuild build finishes",
            **common,
        )
        # The framework's own function gets a role without AWS managed policies: it may write to
        # this log group and invoke the handler (the latter granted by the Provider).
        self.framework_role = self._role(
            "FrameworkOnEventRole", "Provider framework onEvent for the Easel image builds"
        )
        self.provider = cr.Provider(
            self,
            "Provider",
            on_event_handler=self.on_event,
            log_group=self.log_group,
            framework_on_event_role=self.framework_role,
        )
        self.rule = events.Rule(
            self,
            "BuildFinished",
            description="A CodeBuild build of an Easel image finished: signal its wait condition",
            event_pattern=events.EventPattern(
                source=["aws.codebuild"],
                detail_type=["CodeBuild Build State Change"],
                detail={"build-status": ["SUCCEEDED", "FAILED", "FAULT", "STOPPED", "TIMED_OUT"]},
            ),
        )
        self.rule.add_target(targets.LambdaFunction(self.signaller, retry_attempts=4))
        self._suppress_findings()

    def _role(self, role_id: str, description: str) -> iam.Role:
        role = iam.Role(
            self,
            role_id,
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description=description,
        )
        self.log_group.grant_write(role)
        return role

    def allow(self, *, project: codebuild.IProject, repository: ecr.IRepository) -> None:
        """Watch `project`'s builds; let the handlers start them and look up images."""
        self.role.add_to_principal_policy(
            iam.PolicyStatement(
                actions=[
                    "codebuild:StartBuild",
                    "codebuild:BatchGetBuilds",
                    "codebuild:ListBuildsForProject",
                    "codebuild:BatchGetProjects",
                ],
                resources=[project.project_arn],
            )
        )
        repository.grant(self.role, "ecr:DescribeImages")
        self.signal_role.add_to_principal_policy(
            iam.PolicyStatement(
                actions=["codebuild:BatchGetBuilds", "codebuild:BatchGetProjects"],
                resources=[project.project_arn],
            )
        )
        self.rule.add_event_pattern(detail={"project-name": [project.project_name]})

    def _suppress_findings(self) -> None:
        acknowledge(
            self,
            "AwsSolutions-IAM5",
            [f"Resource::<{logical_id(self.on_event)}.Arn>:*"],
            "The CDK Provider framework grants lambda:InvokeFunction on its handler function "
            "and its versions/aliases (<function arn>:*); generated by aws-cdk-lib and scoped "
            "to this waiter's own function.",
        )


def logical_id(construct: Construct) -> str:
    default_child = construct.node.default_child
    assert isinstance(default_child, CfnElement)
    return Stack.of(construct).get_logical_id(default_child)


def acknowledge(scope: Construct, rule: str, findings: list[str], reason: str) -> None:
    """Acknowledge each finding of `rule` on `scope` (cdk-nag v3 needs them one by one)."""
    Validations.of(scope).acknowledge(
        *(Acknowledgment(id=f"AwsSolutions::{rule}[{finding}]", reason=reason)
          for finding in findings)
    )


def waiter_of(scope: Construct) -> BuildWaiter:
    """The stack's one waiter, created by the first image build."""
    stack = Stack.of(scope)
    existing = stack.node.try_find_child(WAITER_ID)
    if isinstance(existing, BuildWaiter):
        return existing
    return BuildWaiter(stack, WAITER_ID)
