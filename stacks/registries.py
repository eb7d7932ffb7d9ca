"""ECR repositories for the three images Easel builds."""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_ecr as ecr
from constructs import Construct

IMAGE_NAMES = ("inference", "training", "webui")
UNTAGGED_EXPIRY_DAYS = 14


class ContainerRepositories(Construct):
    """One scanned repository per image.

    The lifecycle rule only ever expires *untagged* images (superseded layers and cache leftovers);
    tagged images, which live endpoints and tasks reference by tag, are never expired. The
    repositories are emptied and removed on `cdk destroy`.
    """

    def __init__(self, scope: Construct, construct_id: str) -> None:
        super().__init__(scope, construct_id)
        self.repositories: dict[str, ecr.Repository] = {}
        for name in IMAGE_NAMES:
            self.repositories[name] = ecr.Repository(
                self,
                name.capitalize(),
                image_scan_on_push=True,
                encryption=ecr.RepositoryEncryption.AES_256,
                lifecycle_rules=[
                    ecr.LifecycleRule(
                        description="expire untagged images; tagged images are never expired",
                        tag_status=ecr.TagStatus.UNTAGGED,
                        max_image_age=Duration.days(UNTAGGED_EXPIRY_DAYS),
                    )
                ],
                removal_policy=RemovalPolicy.DESTROY,
                empty_on_delete=True,
            )

    def __getitem__(self, name: str) -> ecr.Repository:
        return self.repositories[name]
