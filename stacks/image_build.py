"""Build a container image inside the account during `cdk deploy` (CodeBuild), so deploying needs
no local Docker and no GPU.

`ImageBuild` uploads one `containers/<name>` folder as an S3 asset, gives it a CodeBuild project
(x86_64, privileged for Docker) that builds the folder's Dockerfile and pushes it to the kit's ECR
repository under a tag derived from the asset hash, and a custom resource that starts the build and
waits for it. Consumers take `image_uri`, which references the custom resource, so they wait for
the image and move to the new tag whenever the folder changes. An unchanged folder keeps its tag,
and a tag already in ECR is not rebuilt.

One waiter (a Provider framework with completion polling) is shared by every `ImageBuild` in a
stack; each `ImageBuild` only adds the rights for its own project and repository to it.

`python -m stacks.image_build tags` prints the tag each container folder gets (and its named
build contexts), for `scripts/images_local.sh`.

A Dockerfile may copy from a sibling container folder with `COPY --from=<folder> ...` (a BuildKit
named build context, e.g. training installing the inference package): that folder is uploaded
with the image's source and passed as `--build-context <folder>=...`, and is part of the hash.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from aws_cdk import (
    Acknowledgment,
    App,
    CfnElement,
    CustomResource,
    Duration,
    IgnoreMode,
    RemovalPolicy,
    Stack,
    Validations,
)
from aws_cdk import aws_codebuild as codebuild
from aws_cdk import aws_ecr as ecr
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3_assets as s3_assets
from aws_cdk import aws_stepfunctions as sfn
from aws_cdk import custom_resources as cr
from constructs import Construct

from stacks.lambda_defaults import LAMBDA_RUNTIME
from stacks.nag import partition_arn

HANDLER_DIR = Path(__file__).resolve().parent / "image_build_handler"
CONTAINERS_DIR = Path(__file__).resolve().parent.parent / "containers"

# The tag CodeBuild pulls as a layer cache and moves to every new build.
CACHE_TAG = "latest"
BUILD_IMAGE = codebuild.LinuxBuildImage.STANDARD_7_0  # Ubuntu 22.04, x86_64, Docker
# CloudFormation waits at most one hour for a custom resource (ServiceTimeout <= 3600 s).
WAITER_TOTAL_TIMEOUT = Duration.hours(1)
WAITER_QUERY_INTERVAL = Duration.seconds(30)
HANDLER_RUNTIME = LAMBDA_RUNTIME
TAG_LENGTH = 32

# Never part of an image's build context (and so never part of its hash): local byproducts of
# tests and editable installs. A folder's own `.dockerignore` is honoured on top of these.
DEFAULT_EXCLUDES = (
    "**/__pycache__",
    "**/*.pyc",
    "**/*.egg-info",
    "**/.pytest_cache",
    "**/.ruff_cache",
    "**/.venv",
    "build",
    "dist",
)

_WAITER_ID = "EaselImageBuildWaiter"

# Sibling container folders a Dockerfile copies from (`COPY --from=inference ...`, a BuildKit
# named build context) travel inside the build's source zip under this folder.
NAMED_CONTEXTS_DIR = ".contexts"
_STAGE_NAME = re.compile(r"^\s*FROM\s+[^\n]*?\s+AS\s+(\S+)\s*$", re.IGNORECASE | re.MULTILINE)
_COPY_FROM = re.compile(r"^\s*(?:COPY|ADD)\b[^\n]*?--from=(\S+)", re.IGNORECASE | re.MULTILINE)
_STAGING_IGNORE = shutil.ignore_patterns(
    "__pycache__", "*.pyc", "*.egg-info", ".pytest_cache", ".ruff_cache", ".venv"
)

# EC2-backed compute types: the Lambda-backed ones cannot run the Docker daemon.
DOCKER_COMPUTE_TYPES = (
    codebuild.ComputeType.SMALL,
    codebuild.ComputeType.MEDIUM,
    codebuild.ComputeType.LARGE,
    codebuild.ComputeType.X_LARGE,
    codebuild.ComputeType.X2_LARGE,
)


def buildspec() -> dict[str, Any]:
    """The CodeBuild buildspec every image uses (the single source for the tests too).

    Environment: REPOSITORY_URI (project), IMAGE_TAG (per build), CACHE_TAG (project);
    CodeBuild sets AWS_DEFAULT_REGION. The source is the container folder, Dockerfile at its root.
    """
    return {
        "version": "0.2",
        "env": {"shell": "bash", "variables": {"DOCKER_BUILDKIT": "1"}},
        "phases": {
            "pre_build": {
                "commands": [
                    'test -n "${IMAGE_TAG:-}" || { echo "IMAGE_TAG is not set" >&2; exit 1; }',
                    'REGISTRY="${REPOSITORY_URI%%/*}"',
                    'aws ecr get-login-password --region "$AWS_DEFAULT_REGION"'
                    ' | docker login --username AWS --password-stdin "$REGISTRY"',
                    # Authenticated pulls from the public gallery get higher rate limits; anonymous
                    # pulls still work if this fails.
                    "aws ecr-public get-login-password --region us-east-1"
                    " | docker login --username AWS --password-stdin public.ecr.aws"
                    ' || echo "public.ecr.aws login failed; pulling base images anonymously"',
                    'docker pull "$REPOSITORY_URI:$CACHE_TAG"'
                    ' || echo "no cache image $REPOSITORY_URI:$CACHE_TAG yet; building cold"',
                ]
            },
            "build": {
                "commands": [
                    # Folders under .contexts/ become named build contexts (COPY --from=<name>).
                    f'CONTEXTS=""; for dir in {NAMED_CONTEXTS_DIR}/*/; do [ -d "$dir" ]'
                    ' && CONTEXTS="$CONTEXTS --build-context $(basename "$dir")=${dir%/}"; done;'
                    ' docker build $CONTEXTS --cache-from "$REPOSITORY_URI:$CACHE_TAG"'
                    " --build-arg BUILDKIT_INLINE_CACHE=1"
                    ' --label "org.opencontainers.image.version=$IMAGE_TAG"'
                    ' --tag "$REPOSITORY_URI:$IMAGE_TAG" --tag "$REPOSITORY_URI:$CACHE_TAG" .',
                    'docker push "$REPOSITORY_URI:$IMAGE_TAG"',
                    'docker push "$REPOSITORY_URI:$CACHE_TAG"',
                ]
            },
        },
    }


def image_tag_for(asset_hash: str) -> str:
    """The image tag for a source hash: changes when the folder or the build recipe changes."""
    recipe = json.dumps(buildspec(), sort_keys=True) + BUILD_IMAGE.image_id
    return hashlib.sha256(f"{asset_hash}\n{recipe}".encode()).hexdigest()[:TAG_LENGTH]


def named_contexts(source_dir: Path) -> dict[str, Path]:
    """Sibling `containers/<name>` folders the Dockerfile copies from with `COPY --from=<name>`.

    A `--from` naming an earlier stage, a stage index or an image reference is not a context.
    """
    text = (source_dir / "Dockerfile").read_text(encoding="utf-8")
    stages = {name.lower() for name in _STAGE_NAME.findall(text)}
    contexts: dict[str, Path] = {}
    for name in _COPY_FROM.findall(text):
        if name.lower() in stages or name.isdigit() or any(c in name for c in "/:@$"):
            continue
        sibling = source_dir.parent / name
        if not sibling.is_dir():
            raise ValueError(
                f"{source_dir / 'Dockerfile'}: COPY --from={name} names neither a stage nor a "
                f"folder {sibling}"
            )
        contexts[name] = sibling
    return contexts


def build_context_dir(source_dir: Path) -> Path:
    """The folder to upload: `source_dir` itself, or a staged copy with its named contexts."""
    contexts = named_contexts(source_dir)
    if not contexts:
        return source_dir
    staged = Path(tempfile.mkdtemp(prefix=f"easel-image-{source_dir.name}-"))
    atexit.register(shutil.rmtree, staged, ignore_errors=True)
    shutil.copytree(source_dir, staged, dirs_exist_ok=True, ignore=_STAGING_IGNORE)
    for name, folder in sorted(contexts.items()):
        shutil.copytree(folder, staged / NAMED_CONTEXTS_DIR / name, ignore=_STAGING_IGNORE)
    return staged


def _excludes(source_dir: Path) -> list[str]:
    patterns = list(DEFAULT_EXCLUDES)
    dockerignore = source_dir / ".dockerignore"
    if dockerignore.is_file():
        for line in dockerignore.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                patterns.append(line)
    return patterns


def source_asset(scope: Construct, construct_id: str, source_dir: Path) -> s3_assets.Asset:
    """The container folder as an S3 asset (zip), with the build-context excludes applied."""
    if not (source_dir / "Dockerfile").is_file():
        raise ValueError(f"source_dir {source_dir}: no Dockerfile in it")
    return s3_assets.Asset(
        scope,
        construct_id,
        path=str(build_context_dir(source_dir)),
        exclude=_excludes(source_dir),
        ignore_mode=IgnoreMode.DOCKER,
    )


class _BuildWaiter(Construct):
    """The stack's one custom-resource provider for image builds (start, then poll)."""

    def __init__(self, scope: Construct, construct_id: str) -> None:
        super().__init__(scope, construct_id)
        self.log_group = logs.LogGroup(
            self,
            "Logs",
            retention=logs.RetentionDays.ONE_MONTH,
            removal_policy=RemovalPolicy.DESTROY,
        )
        self.role = iam.Role(
            self,
            "HandlerRole",
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description="Starts and watches the CodeBuild builds of the Easel container images",
        )
        self.log_group.grant_write(self.role)
        code = lambda_.Code.from_asset(
            str(HANDLER_DIR), exclude=["**/__pycache__", "**/*.pyc"]
        )
        common: dict[str, Any] = {
            "runtime": HANDLER_RUNTIME,
            "code": code,
            "role": self.role,
            "log_group": self.log_group,
            "memory_size": 256,
        }
        self.on_event = lambda_.Function(
            self,
            "StartBuild",
            handler="handler.on_event",
            timeout=Duration.minutes(1),
            description="Starts a CodeBuild image build unless the tag is already in ECR",
            **common,
        )
        self.is_complete = lambda_.Function(
            self,
            "CheckBuild",
            handler="handler.is_complete",
            timeout=Duration.minutes(1),
            description="Reports whether a CodeBuild image build finished, with its log link",
            **common,
        )
        # The framework's own functions get roles without AWS managed policies: they may write to
        # this log group and invoke the two handlers (the latter granted by the Provider).
        self.framework_roles = [
            iam.Role(
                self,
                role_id,
                assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
                description=f"Provider framework {purpose} for the Easel image builds",
            )
            for role_id, purpose in (
                ("FrameworkOnEventRole", "onEvent"),
                ("FrameworkCompleteRole", "isComplete/onTimeout"),
            )
        ]
        for role in self.framework_roles:
            self.log_group.grant_write(role)
        self.provider = cr.Provider(
            self,
            "Provider",
            on_event_handler=self.on_event,
            is_complete_handler=self.is_complete,
            query_interval=WAITER_QUERY_INTERVAL,
            total_timeout=WAITER_TOTAL_TIMEOUT,
            log_group=self.log_group,
            framework_on_event_role=self.framework_roles[0],
            framework_complete_and_timeout_role=self.framework_roles[1],
            disable_waiter_state_machine_logging=False,
            waiter_state_machine_log_options=cr.LogOptions(
                destination=self.log_group, level=sfn.LogLevel.ALL, include_execution_data=False
            ),
        )
        self._suppress_findings()

    def allow(self, *, project: codebuild.IProject, repository: ecr.IRepository) -> None:
        """Let the handlers start and watch `project` and look up images in `repository`."""
        self.role.add_to_principal_policy(
            iam.PolicyStatement(
                actions=[
                    "codebuild:StartBuild",
                    "codebuild:BatchGetBuilds",
                    "codebuild:ListBuildsForProject",
                ],
                resources=[project.project_arn],
            )
        )
        self.role.add_to_principal_policy(
            iam.PolicyStatement(
                actions=["ecr:DescribeImages"], resources=[repository.repository_arn]
            )
        )

    def _suppress_findings(self) -> None:
        handler_versions = [
            f"Resource::<{_logical_id(fn)}.Arn>:*"
            for fn in (
                self.on_event,
                self.is_complete,
                self.provider.node.try_find_child("framework-isComplete"),
                self.provider.node.try_find_child("framework-onTimeout"),
            )
            if fn is not None
        ]
        _acknowledge(
            self,
            "AwsSolutions-IAM5",
            handler_versions,
            "The CDK Provider framework grants lambda:InvokeFunction on its handler functions "
            "and their versions/aliases (<function arn>:*); generated by aws-cdk-lib and scoped "
            "to this waiter's own functions.",
        )
        _acknowledge(
            self.provider,
            "AwsSolutions-IAM5",
            ["Resource::*"],
            "The waiter state machine's CloudWatch Logs delivery actions "
            "(logs:CreateLogDelivery, logs:DescribeLogGroups, ...) support no resource scoping; "
            "generated by aws-cdk-lib for state machine logging.",
        )
        Validations.of(self.provider).acknowledge(
            Acknowledgment(
                id="AwsSolutions::AwsSolutions-SF2",
                reason="The Provider framework's waiter state machine only repeats a build "
                "status check every 30 s; X-Ray traces would add nothing that its CloudWatch "
                "log (all events) and the CodeBuild log do not already show.",
            )
        )


def _logical_id(construct: Construct) -> str:
    default_child = construct.node.default_child
    assert isinstance(default_child, CfnElement)
    return Stack.of(construct).get_logical_id(default_child)


def _acknowledge(scope: Construct, rule: str, findings: list[str], reason: str) -> None:
    """Acknowledge each finding of `rule` on `scope` (cdk-nag v3 needs them one by one)."""
    Validations.of(scope).acknowledge(
        *(Acknowledgment(id=f"AwsSolutions::{rule}[{finding}]", reason=reason)
          for finding in findings)
    )


def _waiter(scope: Construct) -> _BuildWaiter:
    stack = Stack.of(scope)
    existing = stack.node.try_find_child(_WAITER_ID)
    if isinstance(existing, _BuildWaiter):
        return existing
    return _BuildWaiter(stack, _WAITER_ID)


class ImageBuild(Construct):
    """One container image, built from `source_dir` by CodeBuild and pushed to `repository`.

    Attributes:
        image_tag: the built tag (a token resolved from the custom resource).
        image_uri: `<repository uri>:<tag>`, a token that makes its consumer wait for the build.
        image_digest: the pushed image's digest (token).
        source_hash_tag: the same tag as a plain string known at synth (for tests and scripts).
        project: the CodeBuild project.
        asset: the S3 asset with the build context.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        repository: ecr.IRepository,
        source_dir: str | Path,
        compute_type: codebuild.ComputeType,
        build_timeout: Duration,
        image_name: str | None = None,
        project_name: str | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        source = Path(source_dir).resolve()
        if not source.is_dir():
            raise ValueError(f"source_dir {source}: not a folder")
        if compute_type not in DOCKER_COMPUTE_TYPES:
            raise ValueError(
                f"compute_type {compute_type.value}: Docker builds need one of "
                f"{', '.join(c.value for c in DOCKER_COMPUTE_TYPES)}"
            )
        timeout_minutes = build_timeout.to_minutes()
        if not 5 <= timeout_minutes <= 480:
            raise ValueError(
                f"build_timeout {timeout_minutes} minutes: CodeBuild allows 5 to 480 minutes"
            )
        self.image_name = image_name or source.name
        self.asset = source_asset(self, "Source", source)
        self.source_hash_tag = image_tag_for(self.asset.asset_hash)

        log_group = logs.LogGroup(
            self,
            "BuildLogs",
            retention=logs.RetentionDays.ONE_MONTH,
            removal_policy=RemovalPolicy.DESTROY,
        )
        self.project = codebuild.Project(
            self,
            "Project",
            project_name=project_name,
            description=f"Builds the {self.image_name} container image and pushes it to ECR",
            source=codebuild.Source.s3(
                bucket=self.asset.bucket, path=self.asset.s3_object_key
            ),
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
                "CACHE_TAG": codebuild.BuildEnvironmentVariable(value=CACHE_TAG),
                "IMAGE_TAG": codebuild.BuildEnvironmentVariable(value=self.source_hash_tag),
            },
            timeout=build_timeout,
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

        waiter = _waiter(self)
        waiter.allow(project=self.project, repository=repository)
        self.resource = CustomResource(
            self,
            "Image",
            service_token=waiter.provider.service_token,
            resource_type="Custom::EaselImageBuild",
            properties={
                "ProjectName": self.project.project_name,
                "RepositoryName": repository.repository_name,
                "ImageTag": self.source_hash_tag,
                "ComputeType": compute_type.value,
            },
        )
        self.resource.node.add_dependency(self.project)
        self.resource.node.add_dependency(waiter.role)
        self.image_tag = self.resource.get_att_string("ImageTag")
        self.image_uri = repository.repository_uri_for_tag(self.image_tag)
        self.image_digest = self.resource.get_att_string("ImageDigest")
        self._suppress_findings()

    def _suppress_findings(self) -> None:
        project = _logical_id(self.project)
        stack = Stack.of(self)
        _acknowledge(
            self.project,
            "AwsSolutions-IAM5",
            ["Resource::*"],
            "ecr:GetAuthorizationToken, ecr-public:GetAuthorizationToken and "
            "sts:GetServiceBearerToken support no resource scoping (registry logins); pushes "
            "and pulls are limited to this image's repository.",
        )
        _acknowledge(
            self.project,
            "AwsSolutions-IAM5",
            ["Action::s3:GetObject*", "Action::s3:GetBucket*", "Action::s3:List*"],
            "aws-cdk-lib's read grant for the build's source asset: limited to the asset "
            "bucket and this image's own zip object.",
        )
        _acknowledge(
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
        _acknowledge(
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


def tags_by_image(containers_dir: Path = CONTAINERS_DIR) -> dict[str, str]:
    """The tag `ImageBuild` gives each `containers/<name>` folder that has a Dockerfile."""
    app = App()
    stack = Stack(app, "TagProbe")
    return {
        folder.name: image_tag_for(source_asset(stack, folder.name, folder).asset_hash)
        for folder in sorted(containers_dir.iterdir())
        if (folder / "Dockerfile").is_file()
    }


def _main(argv: list[str]) -> int:
    if argv[:1] != ["tags"]:
        print("usage: python -m stacks.image_build tags [CONTAINERS_DIR]", file=sys.stderr)
        return 2
    directory = Path(argv[1]) if len(argv) > 1 else CONTAINERS_DIR
    for name, tag in tags_by_image(directory).items():
        contexts = named_contexts(directory / name)
        print(" ".join([name, tag, *(f"{c}={p.resolve()}" for c, p in sorted(contexts.items()))]))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
