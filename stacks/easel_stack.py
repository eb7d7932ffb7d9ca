"""EaselStack: the one deployable stack, composed of constructs."""

from __future__ import annotations

from typing import Any

from aws_cdk import CfnOutput, Duration, Stack
from aws_cdk import aws_codebuild as codebuild
from constructs import Construct

from stacks.cleanup import DeploymentCleanup
from stacks.config import ConfigError, EaselConfig
from stacks.image_build import ImageBuild
from stacks.image_build.waiter import max_build_timeout_minutes
from stacks.network import PortalNetwork
from stacks.portal import PortalService
from stacks.reaper import EndpointReaper
from stacks.registries import ContainerRepositories
from stacks.sagemaker_access import SageMakerExecutionRole
from stacks.scaling import EndpointScaler
from stacks.secrets import PortalSecrets
from stacks.storage import DataStorage
from stacks.table import StateTable

COMPUTE_TYPES = {
    "small": codebuild.ComputeType.SMALL,
    "medium": codebuild.ComputeType.MEDIUM,
    "large": codebuild.ComputeType.LARGE,
    "2xlarge": codebuild.ComputeType.X2_LARGE,
}


class EaselStack(Stack):
    """Everything one Easel deployment needs; `cdk deploy`/`cdk destroy` take no stack name."""

    def __init__(
        self, scope: Construct, construct_id: str, *, config: EaselConfig, **kwargs: Any
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        self.config = config

        self.storage = DataStorage(
            self,
            "Storage",
            purge_data=config.purge_data,
            noncurrent_version_days=config.noncurrent_version_days,
            existing_bucket_name=config.data_bucket_name,
        )
        self.repositories = ContainerRepositories(self, "Registries")
        self.secrets = PortalSecrets(
            self, "Secrets", rotation_days=config.admin_password_rotation_days
        )
        self.execution_role = SageMakerExecutionRole(
            self,
            "SageMakerAccess",
            deployment_id=config.deployment_id,
            bucket=self.storage.bucket,
            repositories=list(self.repositories.repositories.values()),
        )
        self.table = StateTable(self, "State", purge_data=config.purge_data)
        self.cleanup = DeploymentCleanup(
            self, "Cleanup", deployment_id=config.deployment_id, purge_logs=config.purge_data
        )
        # Deleted first on `cdk destroy`: endpoints still need their role, images and data.
        self.cleanup.resource.node.add_dependency(
            self.execution_role, self.repositories, self.storage
        )

        # All image builds start at once; on a CodeBuild quota of 1 they run one after another,
        # and each image's wait condition allows for that.
        builds = len(self.repositories.repositories)
        timeout = config.image_build.timeout_minutes
        if timeout > max_build_timeout_minutes(builds):
            raise ConfigError(
                f"image_build.timeout_minutes {timeout}: {builds} builds of that length in a row "
                f"outlast CloudFormation's 12-hour wait; use at most "
                f"{max_build_timeout_minutes(builds)}"
            )
        self.images = {
            name: ImageBuild(
                self,
                f"{name.capitalize()}Image",
                repository=repository,
                image=name,
                compute_type=COMPUTE_TYPES[config.image_build.compute_type],
                build_timeout=Duration.minutes(timeout),
                builds=builds,
            )
            for name, repository in self.repositories.repositories.items()
        }

        self.network = PortalNetwork(
            self,
            "Network",
            cidr=config.portal.vpc_cidr,
            max_azs=config.portal.max_azs,
            nat_gateways=config.portal.nat_gateways,
        )
        secrets = self.secrets
        self.portal = PortalService(
            self,
            "Portal",
            config=config,
            network=self.network,
            repository=self.repositories["webui"],
            image_tag=self.images["webui"].image_tag,
            environment={
                "EASEL_DEPLOYMENT_ID": config.deployment_id,
                "EASEL_BUCKET": self.storage.bucket.bucket_name,
                "EASEL_TABLE": self.table.table.table_name,
                "EASEL_ADMIN_SECRET": secrets.admin_secret.secret_arn,
                "EASEL_SESSION_SECRET": secrets.session_key.secret_arn,
                "EASEL_EXECUTION_ROLE_ARN": self.execution_role.role.role_arn,
                "EASEL_INFERENCE_IMAGE": self.images["inference"].image_uri,
                "EASEL_TRAINING_IMAGE": self.images["training"].image_uri,
            },
            bucket=self.storage.bucket,
            log_bucket=self.storage.log_bucket,
            table=self.table.table,
            secrets=[secrets.admin_secret, secrets.session_key],
            execution_role=self.execution_role.role,
        )
        # The bucket's CORS names the portal's origin, known once the distribution exists.
        self.storage.allow_browser_uploads_from(self.portal.url)
        # On `cdk destroy` the portal stops first, so it cannot start endpoints during cleanup.
        self.portal.service.node.add_dependency(self.cleanup.resource)
        self.reaper = EndpointReaper(
            self,
            "Reaper",
            deployment_id=config.deployment_id,
            default_ttl_hours=config.endpoints.idle_ttl_hours,
        )
        self.scaler = EndpointScaler(
            self, "Scaling", deployment_id=config.deployment_id, table=self.table.table
        )

        CfnOutput(self, "PortalUrl", value=self.portal.url)
        for name, image in self.images.items():
            CfnOutput(self, f"{name.capitalize()}ImageUri", value=image.image_uri)
        CfnOutput(self, "BucketName", value=self.storage.bucket.bucket_name)
        CfnOutput(self, "AdminSecretName", value=self.secrets.admin_secret.secret_name)
        CfnOutput(self, "Region", value=self.region)
        CfnOutput(self, "TableName", value=self.table.table.table_name)
        CfnOutput(self, "ExecutionRoleArn", value=self.execution_role.role.role_arn)
