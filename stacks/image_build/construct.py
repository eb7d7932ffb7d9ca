"""`ImageBuild`: one container image built in the account during `cdk deploy` (CodeBuild), so
deploying needs no local Docker and no GPU.

The image's part of `containers/` (its Dockerfile and what it copies; see `tags`) is uploaded as
an S3 asset and built by its own CodeBuild project (x86_64, privileged for Docker) with
`docker build -f <image>/Dockerfile .`, pushed under a content-hash tag. Per image:

    Build (custom resource: start or reuse the build; seconds)
      -> Ready<tag> (WaitCondition, signalled when CodeBuild reports the build finished)
      -> Image (custom resource: the pushed tag and digest)

Consumers take `image_uri`, which references `Image`, so they wait for the build and move to the
new tag whenever the image's sources change. A tag already in ECR is not rebuilt.
"""

from __future__ import annotations

from pathlib import Path

from aws_cdk import (
    CfnWaitCondition,
    CfnWaitConditionHandle,
    CustomResource,
    Duration,
    RemovalPolicy,
    Stack,
)
from aws_cdk import aws_codebuild as codebuild
from aws_cdk import aws_ecr as ecr
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from constructs import Construct

from stacks.image_build.buildspec import BUILD_IMAGE, CACHE_TAG, buildspec
from stacks.image_build.handler.handler import BUILD_RESOURCE, IMAGE_RESOURCE
from stacks.image_build.tags import CONTAINERS_DIR, image_tag_for, source_asset
from stacks.image_build.waiter import (
    acknowledge,
    logical_id,
    max_build_timeout_minutes,
    queued_timeout_minutes,
    wait_seconds,
    waiter_of,
)
from stacks.nag import partition_arn

# EC2-backed compute types: the Lambda-backed ones cannot run the Docker daemon.
DOCKER_COMPUTE_TYPES = (
    codebuild.ComputeType.SMALL,
    codebuild.ComputeType.MEDIUM,
    codebuild.ComputeType.LARGE,
    codebuild.ComputeType.X_LARGE,
    codebuild.ComputeType.X2_LARGE,
)
# CodeBuild's TimeoutInMinutes range as the kit uses it.
BUILD_TIMEOUT_RANGE = (5, 480)


class ImageBuild(Construct):
    """One container image, built from `containers_dir` by CodeBuild and pushed to `repository`.

    `builds` is how many image builds the same deploy starts (they may queue behind each other
    on a concurrent-build quota of 1); the wait condition waits for all of them in a row.

    Attributes:
        image_tag: the built tag (a token resolved from the `Image` custom resource).
        image_uri: `<repository uri>:<tag>`, a token that makes its consumer wait for the build.
        image_digest: the pushed image's digest (token).
        source_hash_tag: the same tag as a plain string known at synth (for tests and scripts).
        project: the CodeBuild project.
        asset: the S3 asset with the build context.
        wait: the wait condition the build's end signals.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        repository: ecr.IRepository,
        image: str,
        compute_type: codebuild.ComputeType,
        build_timeout: Duration,
        builds: int = 1,
        containers_dir: str | Path = CONTAINERS_DIR,
    ) -> None:
        super().__init__(scope, construct_id)
        containers = Path(containers_dir).resolve()
        if compute_type not in DOCKER_COMPUTE_TYPES:
            raise ValueError(
                f"compute_type {compute_type.value}: Docker builds need one of "
                f"{', '.join(c.value for c in DOCKER_COMPUTE_TYPES)}"
            )
        minutes = int(build_timeout.to_minutes())
        low, high = BUILD_TIMEOUT_RANGE
        if not low <= minutes <= high:
            raise ValueError(f"build_timeout {minutes} minutes: CodeBuild allows {low} to {high}")
        if builds < 1:
            raise ValueError(f"builds {builds}: at least this image's own build")
        if minutes > max_build_timeout_minutes(builds):
            raise ValueError(
                f"build_timeout {minutes} minutes: {builds} builds of that length one after "
                f"another (a CodeBuild quota of 1) outlast CloudFormation's 12-hour wait; use at "
                f"most {max_build_timeout_minutes(builds)} minutes"
            )
        self.image_name = image
        self.asset = source_asset(self, "Source", containers, image)
        self.source_hash_tag = image_tag_for(self.asset.asset_hash)

        # A new handle and wait condition per tag: CloudFormation cannot reuse a signalled handle
        # or update a wait condition, so a new tag gets a fresh pair (the old one is deleted).
        suffix = self.source_hash_tag[:12]
        self.handle = CfnWaitConditionHandle(self, f"Handle{suffix}")

        log_group = logs.LogGroup(
            self,
            "BuildLogs",
            retention=logs.RetentionDays.ONE_MONTH,
            removal_policy=RemovalPolicy.DESTROY,
        )
        self.project = codebuild.Project(
            self,
            "Project",
            description=f"Builds the {image} container image and pushes it to ECR",
            source=codebuild.Source.s3(bucket=self.asset.bucket, path=self.asset.s3_object_key),
            build_spec=codebuild.BuildSpec.from_object(buildspec()),
            environment=codebuild.BuildEnvironment(
                build_image=BUILD_IMAGE,
                compute_type=compute_type,
                privileged=True,
            ),
            environment_variables={
                "REPOSITORY_URI": codebuild.BuildEnvironmentVariable(
                    value=repository.repository_uri
                ),
                "DOCKERFILE": codebuild.BuildEnvironmentVariable(value=f"{image}/Dockerfile"),
                "CACHE_TAG": codebuild.BuildEnvironmentVariable(value=CACHE_TAG),
                "IMAGE_TAG": codebuild.BuildEnvironmentVariable(value=self.source_hash_tag),
                # The wait to signal: by the build once it pushed, and by the waiter's handlers.
                "WAIT_HANDLE_URL": codebuild.BuildEnvironmentVariable(value=self.handle.ref),
            },
            timeout=build_timeout,
            queued_timeout=Duration.minutes(queued_timeout_minutes(builds, minutes)),
            # The AWS managed key for S3 (what CodeBuild would use anyway), named explicitly:
            # no key to pay for or to lose, and the build's artifacts and logs are encrypted.
            encryption_key=kms.Alias.from_alias_name(self, "S3ManagedKey", "alias/aws/s3"),
            logging=codebuild.LoggingOptions(
                cloud_watch=codebuild.CloudWatchLoggingOptions(log_group=log_group)
            ),
        )
        repository.grant_pull_push(self.project)
        self.project.add_to_role_policy(
            iam.PolicyStatement(
                actions=["ecr-public:GetAuthorizationToken", "sts:GetServiceBearerToken"],
                resources=["*"],
            )
        )

        waiter = waiter_of(self)
        waiter.allow(project=self.project, repository=repository)
        properties = {
            "ProjectName": self.project.project_name,
            "RepositoryName": repository.repository_name,
            "ImageTag": self.source_hash_tag,
            "ComputeType": compute_type.value,
        }
        self.build = CustomResource(
            self,
            "Build",
            service_token=waiter.provider.service_token,
            resource_type=BUILD_RESOURCE,
            properties=properties,
        )
        # The rule and the signaller (with its invoke permission) exist before any build ends.
        self.build.node.add_dependency(self.project, waiter.role, waiter.rule, waiter.signaller)
        self.wait = CfnWaitCondition(
            self,
            f"Ready{suffix}",
            handle=self.handle.ref,
            timeout=str(wait_seconds(builds, minutes)),
            count=1,
        )
        self.wait.node.add_dependency(self.build)
        self.resource = CustomResource(
            self,
            "Image",
            service_token=waiter.provider.service_token,
            resource_type=IMAGE_RESOURCE,
            properties=properties,
        )
        self.resource.node.add_dependency(self.wait)
        self.image_tag = self.resource.get_att_string("ImageTag")
        self.image_uri = repository.repository_uri_for_tag(self.image_tag)
        self.image_digest = self.resource.get_att_string("ImageDigest")
        self._suppress_findings()

    def _suppress_findings(self) -> None:
        project = logical_id(self.project)
        stack = Stack.of(self)
        acknowledge(
            self.project,
            "AwsSolutions-IAM5",
            ["Resource::*"],
            "ecr:GetAuthorizationToken, ecr-public:GetAuthorizationToken and "
            "sts:GetServiceBearerToken support no resource scoping (registry logins); pushes "
            "and pulls are limited to this image's repository.",
        )
        acknowledge(
            self.project,
            "AwsSolutions-IAM5",
            ["Action::s3:GetObject*", "Action::s3:GetBucket*", "Action::s3:List*"],
            "aws-cdk-lib's read grant for the build's source asset: limited to the asset "
            "bucket and this image's own zip object.",
        )
        acknowledge(
            self.project,
            "AwsSolutions-IAM5",
            [
                "Resource::"
                + partition_arn(stack, "logs", f"log-group:/aws/codebuild/<{project}>:*"),
                "Resource::" + partition_arn(stack, "codebuild", f"report-group/<{project}>-*"),
            ],
            "aws-cdk-lib's default CodeBuild rights: log streams of this project's own log "
            "group and this project's own report groups.",
        )
        acknowledge(
            self.project,
            "AwsSolutions-IAM5",
            [
                "Action::kms:GenerateDataKey*",
                "Action::kms:ReEncrypt*",
                "Resource::" + partition_arn(stack, "kms", "key/*"),
            ],
            "aws-cdk-lib's grant for the project's encryption key, the AWS managed alias/aws/s3: "
            "a key ARN cannot be known for an imported alias, so the statement names key/* and "
            "is limited by the condition kms:ResourceAliases = alias/aws/s3.",
        )
