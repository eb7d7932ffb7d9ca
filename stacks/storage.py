"""The data bucket (models, LoRAs, concepts, training output, images) and its access-log bucket."""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3 as s3
from constructs import Construct

from stacks.nag import acknowledge

INCOMPLETE_UPLOAD_DAYS = 7
ACCESS_LOG_DAYS = 365


def tls_only_statement(bucket: s3.IBucket) -> iam.PolicyStatement:
    """Deny every request to the bucket and its objects that does not use TLS."""
    return iam.PolicyStatement(
        sid="DenyInsecureTransport",
        effect=iam.Effect.DENY,
        principals=[iam.AnyPrincipal()],
        actions=["s3:*"],
        resources=[bucket.bucket_arn, bucket.arn_for_objects("*")],
        conditions={"Bool": {"aws:SecureTransport": "false"}},
    )


class DataStorage(Construct):
    """Encrypted, TLS-only, private, versioned data bucket with access logs.

    Retained on `cdk destroy` unless `purge_data`; a retained bucket can be re-attached by name
    (`existing_bucket_name`) and then still gets the TLS-only policy.
    """

    def allow_browser_uploads_from(self, origin: str) -> bool:
        """Let browsers at `origin` (the portal's URL, known once its distribution exists) upload
        concept photos straight to the bucket with pre-signed requests (CORS). Only a bucket this
        stack created has its CORS managed by CloudFormation: a re-attached bucket keeps its own
        CORS rules (returns False), and the portal then takes the uploads itself."""
        if not isinstance(self.bucket, s3.Bucket):
            return False
        self.bucket.add_cors_rule(
            allowed_methods=[s3.HttpMethods.PUT, s3.HttpMethods.POST],
            allowed_origins=[origin],
            allowed_headers=["*"],
            max_age=3000,
        )
        return True

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        purge_data: bool,
        noncurrent_version_days: int,
        existing_bucket_name: str | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        removal = RemovalPolicy.DESTROY if purge_data else RemovalPolicy.RETAIN

        self.log_bucket = s3.Bucket(
            self,
            "AccessLogs",
            encryption=s3.BucketEncryption.S3_MANAGED,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            lifecycle_rules=[
                s3.LifecycleRule(
                    id="expire-access-logs",
                    expiration=Duration.days(ACCESS_LOG_DAYS),
                    abort_incomplete_multipart_upload_after=Duration.days(INCOMPLETE_UPLOAD_DAYS),
                )
            ],
            removal_policy=removal,
            auto_delete_objects=purge_data,
        )
        acknowledge(
            self.log_bucket,
            "This is the access-log bucket; logging it into itself would loop.",
            "S1",
        )

        self.bucket: s3.IBucket
        if existing_bucket_name:
            self.bucket = s3.Bucket.from_bucket_name(self, "Data", existing_bucket_name)
            # An imported bucket ignores add_to_resource_policy, so the policy is its own resource.
            policy = s3.BucketPolicy(self, "DataPolicy", bucket=self.bucket)
            policy.document.add_statements(tls_only_statement(self.bucket))
        else:
            self.bucket = s3.Bucket(
                self,
                "Data",
                encryption=s3.BucketEncryption.S3_MANAGED,
                block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
                enforce_ssl=True,
                versioned=True,
                server_access_logs_bucket=self.log_bucket,
                server_access_logs_prefix="data/",
                lifecycle_rules=[
                    s3.LifecycleRule(
                        id="expire-old-versions",
                        noncurrent_version_expiration=Duration.days(noncurrent_version_days),
                        expired_object_delete_marker=True,
                    ),
                    s3.LifecycleRule(
                        id="abort-incomplete-uploads",
                        abort_incomplete_multipart_upload_after=Duration.days(
                            INCOMPLETE_UPLOAD_DAYS
                        ),
                    ),
                ],
                removal_policy=removal,
                auto_delete_objects=purge_data,
            )
