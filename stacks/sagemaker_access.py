"""The one execution role that SageMaker endpoints and training jobs run as."""

from __future__ import annotations

from aws_cdk import ArnFormat, CfnResource, Stack
from aws_cdk import aws_ecr as ecr
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3 as s3
from constructs import Construct

from stacks.nag import acknowledge, arn_of, owned_sagemaker_findings, partition_arn
from stacks.naming import owned_sagemaker_arns

# Data-bucket prefixes, per ARCHITECTURE.md's table.
READ_PREFIXES = ("models/*", "loras/*", "concepts/*", "training/*", "async/in/*")
WRITE_PREFIXES = ("training/*", "async/out/*")


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

        def log_arn(name: str) -> str:
            return stack.format_arn(
                service="logs",
                resource="log-group",
                resource_name=name,
                arn_format=ArnFormat.COLON_RESOURCE_NAME,
            )

        log_groups = [
            log_arn(f"/aws/sagemaker/Endpoints/{deployment_id}-*"),
            log_arn(f"/aws/sagemaker/Endpoints/{deployment_id}-*:log-stream:*"),
            log_arn("/aws/sagemaker/TrainingJobs"),
            log_arn(f"/aws/sagemaker/TrainingJobs:log-stream:{deployment_id}-*"),
        ]
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
        if isinstance(bucket.node.default_child, CfnResource):
            bucket_arn = arn_of(bucket)
        else:  # a re-attached bucket, imported by name
            bucket_arn = f"arn:<AWS::Partition>:s3:::{bucket.bucket_name}"
        prefixes = sorted(set(READ_PREFIXES) | set(WRITE_PREFIXES))
        acknowledge(
            self.role,
            "Object access is limited to the data-bucket prefixes in ARCHITECTURE.md's table "
            "(read models/loras/concepts/training/async-in, write training/async-out); the "
            "grant_read/grant_put action groups are CDK's read and write sets for objects.",
            *(f"IAM5[Resource::{bucket_arn}/{prefix}]" for prefix in prefixes),
            "IAM5[Action::s3:GetObject*]",
            "IAM5[Action::s3:GetBucket*]",
            "IAM5[Action::s3:List*]",
            "IAM5[Action::s3:Abort*]",
        )
        acknowledge(
            self.role,
            "Logs go only to SageMaker log groups/streams named for this deployment's "
            "endpoints and training jobs; tags only on SageMaker resources named for it.",
            *(
                f"IAM5[Resource::{partition_arn('logs', 'log-group:' + name)}]"
                for name in (
                    f"/aws/sagemaker/Endpoints/{deployment_id}-*",
                    f"/aws/sagemaker/Endpoints/{deployment_id}-*:log-stream:*",
                    f"/aws/sagemaker/TrainingJobs:log-stream:{deployment_id}-*",
                )
            ),
            *owned_sagemaker_findings(deployment_id),
        )
        acknowledge(
            self.role,
            "ecr:GetAuthorizationToken has no resource scope; cloudwatch:PutMetricData has "
            "none either and is limited by a namespace condition.",
            "IAM5[Resource::*]",
        )
