"""The portal: the webui image on ECS Fargate behind an internal ALB, reached over HTTPS through
CloudFront (VPC origin), with a task role scoped to the kit's own resources."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from aws_cdk import Duration, Stack
from aws_cdk import aws_cloudfront as cloudfront
from aws_cdk import aws_cloudfront_origins as origins
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecr as ecr
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_elasticloadbalancingv2 as elbv2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_secretsmanager as sm
from constructs import Construct

from stacks.config import EaselConfig, portal_settings_json
from stacks.nag import (
    acknowledge,
    bucket_arn,
    log_group_finding,
    owned_sagemaker_findings,
)
from stacks.naming import (
    TRAINING_LOG_GROUP,
    deployment_tag_condition,
    endpoint_log_group,
    list_sagemaker_statement,
    log_group_arn,
    owned_sagemaker_arns,
)
from stacks.network import PortalNetwork
from stacks.scaling import scaling_removal_findings, scaling_removal_statements
from stacks.table import index_finding

CONTAINER_PORT = 8080
HEALTH_PATH = "/health"
# the longest a Fargate container may take to stop after SIGTERM (stopTimeout, ContainerDefinition:
# https://docs.aws.amazon.com/AmazonECS/latest/APIReference/API_ContainerDefinition.html)
FARGATE_MAX_STOP_TIMEOUT_S = 120
# Prefixes from ARCHITECTURE.md's table: the portal reads and writes these ...
READ_WRITE_PREFIXES = ("models/*", "loras/*", "concepts/*", "async/*", "outputs/*")
# ... and only reads training output (jobs write it).
READ_PREFIXES = ("training/*",)
LOG_RETENTION = logs.RetentionDays.ONE_YEAR


def instance_type_condition(instance_types: Iterable[str]) -> dict[str, Any]:
    """IAM condition: the request names instance types, all of them in `instance_types`."""
    return {
        "ForAllValues:StringEquals": {"sagemaker:InstanceTypes": sorted(instance_types)},
        "Null": {"sagemaker:InstanceTypes": "false"},
    }


class PortalService(Construct):
    """Fargate service + internal ALB + CloudFront distribution for the portal."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: EaselConfig,
        network: PortalNetwork,
        repository: ecr.IRepository,
        image_tag: str,
        environment: dict[str, str],
        bucket: s3.IBucket,
        log_bucket: s3.IBucket,
        table: dynamodb.ITable,
        secrets: list[sm.ISecret],
        execution_role: iam.IRole,
    ) -> None:
        super().__init__(scope, construct_id)
        stack = Stack.of(self)
        deployment_id = config.deployment_id
        self._config = config
        vpc = network.vpc

        # --- load balancer: internal, reachable only from inside the VPC (CloudFront's VPC origin)
        self.alb_security_group = ec2.SecurityGroup(
            self, "AlbSecurityGroup", vpc=vpc, allow_all_outbound=False,
            description="Easel portal ALB: HTTP from the CloudFront VPC origin inside the VPC",
        )
        self.alb_security_group.add_ingress_rule(
            ec2.Peer.ipv4(vpc.vpc_cidr_block), ec2.Port.tcp(80),
            "CloudFront VPC origin ENIs live in this VPC",
        )
        self.alb = elbv2.ApplicationLoadBalancer(
            self, "Alb", vpc=vpc, internet_facing=False,
            vpc_subnets=network.alb_subnets, security_group=self.alb_security_group,
            drop_invalid_header_fields=True,
        )
        if config.region:
            self.alb.log_access_logs(log_bucket, prefix="alb")
        else:
            acknowledge(
                self.alb,
                "ALB access logs need the region's ELB log-delivery principal, which an "
                "environment-agnostic synth cannot know; set `region` in config to turn them on. "
                "CloudFront and the portal's own logs still record every request.",
                "ELB2",
            )

        # --- the service
        cluster = ecs.Cluster(
            self, "Cluster", vpc=vpc, container_insights_v2=ecs.ContainerInsights.ENABLED
        )
        task = ecs.FargateTaskDefinition(
            self, "Task", cpu=config.portal.cpu, memory_limit_mib=config.portal.memory_mib,
            runtime_platform=ecs.RuntimePlatform(
                cpu_architecture=ecs.CpuArchitecture.X86_64,
                operating_system_family=ecs.OperatingSystemFamily.LINUX,
            ),
        )
        self.task_role = task.task_role
        task.add_container(
            "web",
            image=ecs.ContainerImage.from_ecr_repository(repository, image_tag),
            port_mappings=[ecs.PortMapping(container_port=CONTAINER_PORT)],
            environment={
                **environment,
                "EASEL_PORTAL_CONFIG": portal_settings_json(config),
                "UVICORN_PORT": str(CONTAINER_PORT),
                "FORWARDED_ALLOW_IPS": "*",  # only the ALB can reach the task
            },
            logging=ecs.LogDriver.aws_logs(
                stream_prefix="portal",
                log_group=logs.LogGroup(self, "Logs", retention=LOG_RETENTION),
            ),
            readonly_root_filesystem=False,
            # on a stop (deploy, scale-in) the portal answers its open requests, then waits for
            # its generation jobs to save their images (EASEL_SHUTDOWN_WAIT_SECONDS): Fargate's
            # most, not the 30 s default, before SIGKILL
            stop_timeout=Duration.seconds(FARGATE_MAX_STOP_TIMEOUT_S),
        )
        self.service_security_group = ec2.SecurityGroup(
            self, "ServiceSecurityGroup", vpc=vpc, allow_all_outbound=True,
            description="Easel portal tasks: only the ALB may connect",
        )
        self.service = ecs.FargateService(
            self, "Service", cluster=cluster, task_definition=task,
            desired_count=config.portal.desired_count,
            assign_public_ip=network.tasks_need_public_ip,
            vpc_subnets=network.task_subnets,
            security_groups=[self.service_security_group],
            circuit_breaker=ecs.DeploymentCircuitBreaker(rollback=True),
            min_healthy_percent=100,
        )
        self.service.connections.allow_from(self.alb, ec2.Port.tcp(CONTAINER_PORT))
        listener = self.alb.add_listener("Http", port=80, open=False)
        listener.add_targets(
            "Portal", port=CONTAINER_PORT, protocol=elbv2.ApplicationProtocol.HTTP,
            targets=[self.service],
            health_check=elbv2.HealthCheck(path=HEALTH_PATH, healthy_http_codes="200"),
            deregistration_delay=Duration.seconds(30),
            stickiness_cookie_duration=None,
        )

        # --- CloudFront: HTTPS for viewers; the origin is the internal ALB through a VPC origin
        self.distribution = cloudfront.Distribution(
            self, "Cdn",
            comment=f"Easel portal ({deployment_id})",
            default_behavior=cloudfront.BehaviorOptions(
                origin=origins.VpcOrigin.with_application_load_balancer(
                    self.alb,
                    protocol_policy=cloudfront.OriginProtocolPolicy.HTTP_ONLY,
                    read_timeout=Duration.seconds(60),
                ),
                viewer_protocol_policy=cloudfront.ViewerProtocolPolicy.REDIRECT_TO_HTTPS,
                allowed_methods=cloudfront.AllowedMethods.ALLOW_ALL,
                cache_policy=cloudfront.CachePolicy.CACHING_DISABLED,
                origin_request_policy=cloudfront.OriginRequestPolicy.ALL_VIEWER_EXCEPT_HOST_HEADER,
            ),
            http_version=cloudfront.HttpVersion.HTTP2_AND_3,
        )
        self.url = f"https://{self.distribution.distribution_domain_name}"
        acknowledge(
            self.distribution,
            "Without a custom domain the distribution uses CloudFront's default certificate, "
            "whose TLS policy is fixed (CFR4). No WAF web ACL is attached (the kit offers no "
            "option for one): a CloudFront-scope web ACL must be created in us-east-1, which a "
            "stack in another region cannot do; every page and API call needs a signed-in "
            "session, and sign-in is throttled (CFR2). People sign in, so no geo restriction "
            "(CFR1). No CloudFront access logs: the portal logs every request itself (CFR3; "
            "standard logging v2 needs no ACL bucket, but its delivery source must be created "
            "in us-east-1, like the web ACL).",
            "CFR1", "CFR2", "CFR3", "CFR4",
        )
        acknowledge(
            self.alb_security_group,
            "Ingress is HTTP from the VPC's own CIDR only: CloudFront's VPC origin connects from "
            "ENIs inside the VPC and TLS ends at CloudFront; the ALB is internal.",
            "EC23",
        )
        acknowledge(
            task,
            "The environment holds only resource names and ARNs; the portal reads secret values "
            "from Secrets Manager at run time (so rotations apply without a restart).",
            "ECS2",
        )
        acknowledge(
            task.obtain_execution_role(),
            "ecr:GetAuthorizationToken, needed to pull the portal image, has no resource scope.",
            "IAM5[Resource::*]",
        )

        self._grant(stack, deployment_id, bucket, table, secrets, execution_role)
        self._acknowledge(stack, deployment_id, bucket, table)

    def _grant(
        self,
        stack: Stack,
        deployment_id: str,
        bucket: s3.IBucket,
        table: dynamodb.ITable,
        secrets: list[sm.ISecret],
        execution_role: iam.IRole,
    ) -> None:
        role = self.task_role
        for prefix in READ_WRITE_PREFIXES:
            bucket.grant_read_write(role, prefix)
            bucket.grant_delete(role, prefix)
        for prefix in READ_PREFIXES:
            bucket.grant_read(role, prefix)
        table.grant_read_write_data(role)
        for secret in secrets:
            secret.grant_read(role)

        owned = owned_sagemaker_arns(stack, deployment_id)
        tag_condition = deployment_tag_condition(deployment_id, context="RequestTag")
        role.add_to_principal_policy(iam.PolicyStatement(
            sid="CreateTaggedSageMakerResources",
            actions=["sagemaker:CreateModel", "sagemaker:CreateEndpoint"],
            resources=owned, conditions=tag_condition,
        ))
        # Only the config's instance types: every type in the request must be allowed, and the
        # request must name one (without the Null check, a request with no instance type would
        # pass ForAllValues vacuously). sagemaker:InstanceTypes is the condition key of
        # CreateEndpointConfig and CreateTrainingJob (Service Authorization Reference, SageMaker).
        for sid, action, types in (
            ("CreateEndpointConfigsOfAllowedTypes", "sagemaker:CreateEndpointConfig",
             self._config.endpoints.instance_types),
            ("CreateTrainingJobsOfAllowedTypes", "sagemaker:CreateTrainingJob",
             self._config.training.instance_types),
        ):
            role.add_to_principal_policy(iam.PolicyStatement(
                sid=sid, actions=[action], resources=owned,
                conditions={**tag_condition, **instance_type_condition(types)},
            ))
        role.add_to_principal_policy(iam.PolicyStatement(
            sid="ManageOwnSageMakerResources",
            actions=["sagemaker:AddTags", "sagemaker:ListTags", "sagemaker:DescribeModel",
                     "sagemaker:DeleteModel", "sagemaker:DescribeEndpointConfig",
                     "sagemaker:DeleteEndpointConfig", "sagemaker:DescribeEndpoint",
                     "sagemaker:DeleteEndpoint", "sagemaker:UpdateEndpoint",
                     "sagemaker:DescribeTrainingJob", "sagemaker:StopTrainingJob",
                     "sagemaker:InvokeEndpoint", "sagemaker:InvokeEndpointAsync"],
            resources=owned,
        ))
        role.add_to_principal_policy(list_sagemaker_statement())
        role.add_to_principal_policy(iam.PolicyStatement(
            sid="PassExecutionRoleToSageMaker",
            actions=["iam:PassRole"],
            resources=[execution_role.role_arn],
            conditions={"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}},
        ))
        # Scaling is applied by the scaler Lambda (stacks/scaling.py); the portal only removes it
        # when it deletes an endpoint: deregistering the target (tagged with this deployment)
        # drops its policies, and Application Auto Scaling then deletes their target-tracking
        # alarms with the caller's CloudWatch rights.
        for statement in scaling_removal_statements(stack, deployment_id):
            role.add_to_principal_policy(statement)
        endpoint_logs = log_group_arn(stack, endpoint_log_group(deployment_id))
        training_logs = log_group_arn(stack, TRAINING_LOG_GROUP)
        role.add_to_principal_policy(iam.PolicyStatement(
            sid="EndpointLogGroups",
            actions=["logs:CreateLogGroup", "logs:PutRetentionPolicy", "logs:TagResource",
                     "logs:DeleteLogGroup", "logs:FilterLogEvents", "logs:GetLogEvents"],
            resources=[endpoint_logs, f"{endpoint_logs}:*"],
        ))
        role.add_to_principal_policy(iam.PolicyStatement(
            sid="ReadTrainingLogs",
            actions=["logs:FilterLogEvents", "logs:GetLogEvents"],
            resources=[f"{training_logs}:log-stream:{deployment_id}-*"],
        ))

    def _acknowledge(
        self, stack: Stack, deployment_id: str, bucket: s3.IBucket, table: dynamodb.ITable
    ) -> None:
        data_arn = bucket_arn(bucket)
        prefixes = sorted(set(READ_WRITE_PREFIXES) | set(READ_PREFIXES))
        policy = self.task_role.node.find_child("DefaultPolicy")
        acknowledge(
            policy,
            "Object access is limited to the data-bucket prefixes in ARCHITECTURE.md's table "
            "(read/write models, loras, concepts, async, outputs; read training); the action "
            "groups are CDK's object read/write/delete sets.",
            *(f"IAM5[Resource::{data_arn}/{prefix}]" for prefix in prefixes),
            "IAM5[Action::s3:GetObject*]", "IAM5[Action::s3:GetBucket*]",
            "IAM5[Action::s3:List*]", "IAM5[Action::s3:DeleteObject*]", "IAM5[Action::s3:Abort*]",
        )
        acknowledge(
            policy,
            "SageMaker, log-group and alarm access is limited to resources named for this "
            "deployment; creation also requires the deployment tag. Scalable targets have "
            "random ids: deregistering is limited to targets tagged with this deployment.",
            *owned_sagemaker_findings(stack, deployment_id),
            *scaling_removal_findings(stack, deployment_id),
            log_group_finding(stack, endpoint_log_group(deployment_id)),
            log_group_finding(stack, endpoint_log_group(deployment_id) + ":*"),
            log_group_finding(stack, f"{TRAINING_LOG_GROUP}:log-stream:{deployment_id}-*"),
        )
        acknowledge(
            policy,
            "SageMaker List* actions support no resource-level scoping.",
            "IAM5[Resource::*]",
        )
        acknowledge(
            policy,
            "The table grant covers the table's own indexes (its GSI), <table>/index/*.",
            index_finding(table),
        )

