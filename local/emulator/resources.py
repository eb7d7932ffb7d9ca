"""The resources the stack would create, created in the emulator when they are missing."""

from __future__ import annotations

import json
import secrets
import string
from typing import Any

from easel_contracts import table as table_contract
from easel_contracts.naming import deployment_tags
from local.names import LocalNames

_PASSWORD_ALPHABET = string.ascii_letters + string.digits
ADMIN_PASSWORD_LENGTH = 24


def generate_admin_password() -> str:
    """A random password with no characters that break shells or URLs."""
    return "".join(secrets.choice(_PASSWORD_ALPHABET) for _ in range(ADMIN_PASSWORD_LENGTH))


def table_schema(table: str) -> dict[str, Any]:
    """The portal table: generic pk/sk string keys and one GSI (gsi1pk/gsi1sk)."""
    return {
        "TableName": table,
        "KeySchema": [
            {"AttributeName": table_contract.PK, "KeyType": "HASH"},
            {"AttributeName": table_contract.SK, "KeyType": "RANGE"},
        ],
        "AttributeDefinitions": [
            {"AttributeName": name, "AttributeType": "S"}
            for name in table_contract.KEY_ATTRIBUTES
        ],
        "GlobalSecondaryIndexes": [
            {
                "IndexName": table_contract.GSI,
                "KeySchema": [
                    {"AttributeName": table_contract.GSI_PK, "KeyType": "HASH"},
                    {"AttributeName": table_contract.GSI_SK, "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "ALL"},
            }
        ],
        "BillingMode": "PAY_PER_REQUEST",
    }


def _tags(names: LocalNames) -> list[dict[str, str]]:
    return deployment_tags(names.deployment_id)


def ensure_bucket(s3: Any, names: LocalNames) -> None:
    existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    if names.bucket not in existing:
        s3.create_bucket(Bucket=names.bucket)
        s3.put_bucket_tagging(Bucket=names.bucket, Tagging={"TagSet": _tags(names)})


def ensure_table(dynamodb: Any, names: LocalNames, create_table: Any) -> None:
    if names.table not in dynamodb.list_tables().get("TableNames", []):
        create_table(dynamodb, table_schema(names.table))


def ensure_secrets(secretsmanager: Any, names: LocalNames) -> str | None:
    """Create the admin and session secrets if missing; the new admin password, if any."""
    existing = set()
    for page in secretsmanager.get_paginator("list_secrets").paginate():
        existing.update(s["Name"] for s in page.get("SecretList", []))
    new_password = None
    if names.admin_secret not in existing:
        new_password = generate_admin_password()
        secretsmanager.create_secret(
            Name=names.admin_secret,
            Description="Easel admin password (local)",
            # The same shape as the stack's generated secret.
            SecretString=json.dumps({"username": "admin", "password": new_password}),
            Tags=_tags(names),
        )
    if names.session_secret not in existing:
        secretsmanager.create_secret(
            Name=names.session_secret,
            Description="Easel portal session-signing key (local)",
            SecretString=secrets.token_hex(32),
            Tags=_tags(names),
        )
    return new_password


def ensure_execution_role(iam: Any, names: LocalNames) -> None:
    """The SageMaker execution role (IAM is not persisted: it is recreated at each start)."""
    try:
        iam.get_role(RoleName=names.execution_role_name)
    except iam.exceptions.NoSuchEntityException:
        trust = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"Service": "sagemaker.amazonaws.com"},
                    "Action": "sts:AssumeRole",
                }
            ],
        }
        iam.create_role(
            RoleName=names.execution_role_name,
            AssumeRolePolicyDocument=json.dumps(trust),
            Tags=_tags(names),
        )
