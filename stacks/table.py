"""The portal's DynamoDB table: generic keys so new record types never need a new table."""

from __future__ import annotations

from aws_cdk import CfnResource, RemovalPolicy, Stack
from aws_cdk import aws_dynamodb as dynamodb
from constructs import Construct

from easel_contracts.table import GSI, GSI_PK, GSI_SK, PK, SK, TTL
from stacks.nag import arn_of, partition_arn

GSI_NAME = GSI


class StateTable(Construct):
    """On-demand table with `pk`/`sk` string keys, one GSI (`gsi1pk`/`gsi1sk`), PITR, encryption
    and a `ttl` attribute for short-lived records (login throttling, sessions).

    Retained on `cdk destroy` unless `purge_data`; a retained table is re-attached by name
    (`existing_table_name`): it keeps its data, keys, GSI, PITR and encryption, and the portal is
    granted it (and its GSI) exactly as a new one.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        purge_data: bool,
        existing_table_name: str | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        self.table: dynamodb.ITable
        if existing_table_name:
            self.table = dynamodb.Table.from_table_attributes(
                self, "Table", table_name=existing_table_name, global_indexes=[GSI_NAME]
            )
            return
        string = dynamodb.AttributeType.STRING
        table = dynamodb.Table(
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
        table.add_global_secondary_index(
            index_name=GSI_NAME,
            partition_key=dynamodb.Attribute(name=GSI_PK, type=string),
            sort_key=dynamodb.Attribute(name=GSI_SK, type=string),
        )
        self.table = table


def index_finding(table: dynamodb.ITable) -> str:
    """The cdk-nag finding for a grant on the table's `<table>/index/*`: a GetAtt for a table of
    this stack, the name for a re-attached one."""
    if isinstance(table.node.default_child, CfnResource):
        return f"IAM5[Resource::{arn_of(table)}/index/*]"
    name = f"table/{table.table_name}/index/*"
    return f"IAM5[Resource::{partition_arn(Stack.of(table), 'dynamodb', name)}]"
