"""EaselStack: the one deployable stack, composed of constructs."""

from __future__ import annotations

from typing import Any

from aws_cdk import CfnOutput, Stack
from constructs import Construct

from stacks.cleanup import DeploymentCleanup
from stacks.config import EaselConfig
from stacks.registries import ContainerRepositories
from stacks.sagemaker_access import SageMakerExecutionRole
from stacks.secrets import PortalSecrets
from stacks.storage import DataStorage
from stacks.table import StateTable


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
        self.cleanup = DeploymentCleanup(self, "Cleanup", deployment_id=config.deployment_id)
        # Deleted first on `cdk destroy`: endpoints still need their role, images and data.
        self.cleanup.resource.node.add_dependency(
            self.execution_role, self.repositories, self.storage
        )

        CfnOutput(self, "BucketName", value=self.storage.bucket.bucket_name)
        CfnOutput(self, "AdminSecretName", value=self.secrets.admin_secret.secret_name)
        CfnOutput(self, "Region", value=self.region)
        CfnOutput(self, "TableName", value=self.table.table.table_name)
        CfnOutput(self, "ExecutionRoleArn", value=self.execution_role.role.role_arn)
