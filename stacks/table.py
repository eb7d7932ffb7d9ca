"""The portal's DynamoDB table: generic keys so new record types never need a new table."""

from __future__ import annotations

from aws_cdk import RemovalPolicy
from aws_cdk import aws_dynamodb as dynamodb
from constructs import Construct

from easel_contracts.table import GSI, GSI_PK, GSI_SK, PK, SK, TTL

GSI_NAME = GSI


class StateTable(Construct):
    """On-demand table with `pk`/`sk` string keys, one GSI (`gsi1pk`/`gsi1sk`), PITR, encryption
    and a `ttl` attribute for short-lived records (login throttling, sessions)."""

    def __init__(self, scope: Construct, construct_id: str, *, purge_data: bool) -> None:
        super().__init__(scope, construct_id)
        string = dynamodb.AttributeType.STRING
        self.table = dynamodb.Table(
            self,
            "Table",
            partition_key=dynamodb.Attribute(name=PK, type=string),
            sort_key=dynamodb.Attribute(name=SK, type=string),
            billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
            encryption=dynamodb.TableEncryption.AWS_MANAGED,
            point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
                point_in_time_recovery_enabled=True
            ),
            time_to_live_attribute=TTL,
            removal_policy=RemovalPolicy.DESTROY if purge_data else RemovalPolicy.RETAIN,
        )
        self.table.add_global_secondary_index(
            index_name=GSI_NAME,
            partition_key=dynamodb.Attribute(name=GSI_PK, type=string),
            sort_key=dynamodb.Attribute(name=GSI_SK, type=string),
        )
