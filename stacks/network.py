"""The portal's VPC: two AZs by default, NAT count from config (0 = no NAT), subnets placed by AZ
ID in zones where CloudFront VPC origins are offered."""

from __future__ import annotations

from aws_cdk import Aws, CfnMapping, Fn, Token
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_logs as logs
from constructs import Construct

from stacks.availability_zones import VPC_ORIGIN_AZ_IDS
from stacks.nag import BASIC_EXECUTION_POLICY, acknowledge

AZ_ID_KEY = "AzIds"

FLOW_LOG_RETENTION = logs.RetentionDays.ONE_YEAR


class PortalNetwork(Construct):
    """VPC with public subnets and private subnets for the internal load balancer and tasks.

    With `nat_gateways > 0` the portal tasks run in private subnets and reach AWS through NAT;
    with 0 there is no NAT, and the tasks run in public subnets with a public IP but accept
    traffic only from the load balancer's security group. Gateway endpoints keep S3 and DynamoDB
    traffic off the NAT. VPC flow logs go to CloudWatch Logs.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        cidr: str,
        max_azs: int,
        nat_gateways: int,
    ) -> None:
        super().__init__(scope, construct_id)
        private_type = (
            ec2.SubnetType.PRIVATE_WITH_EGRESS if nat_gateways else ec2.SubnetType.PRIVATE_ISOLATED
        )
        self.vpc = ec2.Vpc(
            self,
            "Vpc",
            ip_addresses=ec2.IpAddresses.cidr(cidr),
            max_azs=max_azs,
            nat_gateways=nat_gateways,
            subnet_configuration=[
                ec2.SubnetConfiguration(name="public", subnet_type=ec2.SubnetType.PUBLIC,
                                        cidr_mask=24),
                ec2.SubnetConfiguration(name="private", subnet_type=private_type, cidr_mask=22),
            ],
            gateway_endpoints={
                "S3": ec2.GatewayVpcEndpointOptions(service=ec2.GatewayVpcEndpointAwsService.S3),
                "DynamoDB": ec2.GatewayVpcEndpointOptions(
                    service=ec2.GatewayVpcEndpointAwsService.DYNAMODB
                ),
            },
            restrict_default_security_group=True,
        )
        self.vpc.add_flow_log(
            "FlowLog",
            destination=ec2.FlowLogDestination.to_cloud_watch_logs(
                logs.LogGroup(self, "FlowLogs", retention=FLOW_LOG_RETENTION)
            ),
        )
        self._place_subnets_by_az_id()
        task_type = ec2.SubnetType.PRIVATE_WITH_EGRESS if nat_gateways else ec2.SubnetType.PUBLIC
        self.task_subnets = ec2.SubnetSelection(subnet_type=task_type)
        self.tasks_need_public_ip = nat_gateways == 0
        self.alb_subnets = ec2.SubnetSelection(subnet_type=private_type)

        restrict = self.node.try_find_child("Vpc")
        if restrict is not None:
            acknowledge(
                restrict,
                "CDK's own custom resource that removes all rules from the VPC's default security "
                "group (runs only during deploys). CDK gives its function no way to replace the "
                "managed policy, which allows creating and writing any log group in the account "
                "(logs:CreateLogGroup/CreateLogStream/PutLogEvents on *); it writes only its own.",
                BASIC_EXECUTION_POLICY,
            )

    def _place_subnets_by_az_id(self) -> None:
        """Subnet `i` of each tier goes to the `i`-th allowed AZ ID of the deploy region (a
        CfnMapping on AWS::Region, so no AWS call at synth) instead of the `i`-th AZ name,
        whose zone differs per account and may lack CloudFront VPC origins."""
        self.az_mapping = CfnMapping(
            self, "VpcOriginAzIds",
            mapping={region: {AZ_ID_KEY: list(ids)} for region, ids in VPC_ORIGIN_AZ_IDS.items()},
        )
        allowed = self.az_mapping.find_in_map(Aws.REGION, AZ_ID_KEY)
        for tier in (self.vpc.public_subnets, self.vpc.private_subnets,
                     self.vpc.isolated_subnets):
            for index, subnet in enumerate(tier):
                subnet_resource = subnet.node.default_child
                assert isinstance(subnet_resource, ec2.CfnSubnet)
                subnet_resource.add_property_deletion_override("AvailabilityZone")
                subnet_resource.add_property_override(
                    "AvailabilityZoneId", Fn.select(index, Token.as_list(allowed))
                )
