"""The one execution role that SageMaker endpoints and training jobs run as."""

from __future__ import annotations

from aws_cdk import Stack
from aws_cdk import aws_ecr as ecr
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3 as s3
from constructs import Construct

from easel_contracts.compile_cache import COMPILE_CACHE_PREFIX
from stacks.nag import acknowledge, bucket_arn, log_group_finding, owned_sagemaker_findings
from stacks.naming import (
    TRAINING_LOG_GROUP,
    endpoint_log_group,
    log_group_arn,
    owned_sagemaker_arns,
)

# Data-bucket prefixes, per ARCHITECTURE.md's table; compile-cache/ holds the endpoints' torch
# compile artifacts (easel_contracts.compile_cache: the first instance writes, later ones read).
READ_PREFIXES = ("models/*", "loras/*", "concepts/*", "training/*", "async/in/*",
                 f"{COMPILE_CACHE_PREFIX}*")
WRITE_PREFIXES = ("training/*", "async/out/*", f"{COMPILE_CACHE_PREFIX}*")


class SageMakerExecutionRole(Construct):
    """Least-privilege role for endpoints and training jobs of one deployment.

    Reads the model, LoRA, concept, training and async-input prefixes; writes training output and
    async results; pulls the kit's images; writes its own SageMaker log groups and metrics; and may
    tag only SageMaker resources named for this deployment.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        deployment_id: str,
        bucket: s3.IBucket,
        repositories: list[ecr.IRepository],
    ) -> None:
        super().__init__(scope, construct_id)
        stack = Stack.of(self)
        self.role = iam.Role(
            self,
            "Role",
            assumed_by=iam.ServicePrincipal("sagemaker.amazonaws.com"),
            description=f"SageMaker execution role for Easel deployment {deployment_id}",
        )
        for prefix in READ_PREFIXES:
            bucket.grant_read(self.role, prefix)
        for prefix in WRITE_PREFIXES:
            bucket.grant_put(self.role, prefix)
        for repository in repositories:
            repository.grant_pull(self.role)

        log_names = [
            endpoint_log_group(deployment_id),
            f"{endpoint_log_group(deployment_id)}:log-stream:*",
            TRAINING_LOG_GROUP,
            f"{TRAINING_LOG_GROUP}:log-stream:{deployment_id}-*",
        ]
        log_groups = [log_group_arn(stack, name) for name in log_names]
        self.role.add_to_policy(
            iam.PolicyStatement(
                sid="OwnLogs",
                actions=[
                    "logs:CreateLogGroup",
                    "logs:CreateLogStream",
                    "logs:PutLogEvents",
                    "logs:DescribeLogStreams",
                ],
                resources=log_groups,
            )
        )
        self.role.add_to_policy(
            iam.PolicyStatement(
                sid="OwnMetrics",
                actions=["cloudwatch:PutMetricData"],
                resources=["*"],
                conditions={"StringLike": {"cloudwatch:namespace": ["/aws/sagemaker/*", "Easel"]}},
            )
        )
        self.role.add_to_policy(
            iam.PolicyStatement(
                sid="TagOwnResources",
                actions=["sagemaker:AddTags"],
                resources=owned_sagemaker_arns(stack, deployment_id),
            )
        )
        data_arn = bucket_arn(bucket)
        prefixes = sorted(set(READ_PREFIXES) | set(WRITE_PREFIXES))
        acknowledge(
            self.role,
            "Object access is limited to the data-bucket prefixes in ARCHITECTURE.md's table "
            "(read models/loras/concepts/training/async-in, write training/async-out; read and "
            "write compile-cache, the endpoints' compile artifacts); the "
            "grant_read/grant_put action groups are CDK's read and write sets for objects.",
            *(f"IAM5[Resource::{data_arn}/{prefix}]" for prefix in prefixes),
            "IAM5[Action::s3:GetObject*]",
            "IAM5[Action::s3:GetBucket*]",
            "IAM5[Action::s3:List*]",
            "IAM5[Action::s3:Abort*]",
        )
        acknowledge(
            self.role,
            "Logs go only to SageMaker log groups/streams named for this deployment's "
            "endpoints and training jobs; tags only on SageMaker resources named for it.",
            *(log_group_finding(stack, name) for name in log_names if "*" in name),
            *owned_sagemaker_findings(stack, deployment_id),
        )
        acknowledge(
            self.role,
            "ecr:GetAuthorizationToken has no resource scope; cloudwatch:PutMetricData has "
            "none either and is limited by a namespace condition.",
            "IAM5[Resource::*]",
        )
