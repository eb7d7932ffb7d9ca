"""The data bucket (models, LoRAs, concepts, training output, images) and its access-log bucket."""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import custom_resources as cr
from constructs import Construct

from stacks.lambda_defaults import function_role
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

    def allow_browser_uploads_from(self, origin: str) -> None:
        """Let browsers at `origin` (the portal's URL) upload concept photos straight to the data
        bucket with pre-signed requests: the bucket's CORS rule names that origin only.

        The origin is the CloudFront domain, known once the distribution exists. A CORS property
        on the bucket would make the bucket depend on the distribution, whose ALB (with access
        logs) depends on the log bucket's policy, which names the data bucket: a cycle. So a
        custom resource puts the rule after both exist; it does the same for a re-attached
        bucket, whose CORS CloudFormation does not manage (the rule replaces its CORS rules).
        """
        log_group = logs.LogGroup(self, "CorsLogs", retention=logs.RetentionDays.ONE_YEAR)
        role = function_role(self, "CorsRole", log_group=log_group,
                             description="Easel: sets the data bucket's CORS rule to the portal")
        put_cors = cr.AwsSdkCall(
            service="S3",
            action="putBucketCors",
            parameters={
                "Bucket": self.bucket.bucket_name,
                "CORSConfiguration": {"CORSRules": [{
                    "AllowedOrigins": [origin],
                    "AllowedMethods": ["PUT", "POST"],
                    "AllowedHeaders": ["*"],
                    "MaxAgeSeconds": 3000,
                }]},
            },
            physical_resource_id=cr.PhysicalResourceId.of("data-bucket-cors"),
        )
        self.cors = cr.AwsCustomResource(
            self, "Cors",
            on_create=put_cors,
            on_update=put_cors,
            policy=cr.AwsCustomResourcePolicy.from_statements([iam.PolicyStatement(
                actions=["s3:PutBucketCORS"], resources=[self.bucket.bucket_arn])]),
            role=role,
            log_group=log_group,
            install_latest_aws_sdk=False,
        )

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
