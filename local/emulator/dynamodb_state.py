"""DynamoDB tables on disk: ``<root>/<table>/schema.json`` and ``<root>/<table>/items.json``.

Items are kept in DynamoDB's typed JSON; binary values are stored as ``{"__b64__": ...}``.
"""

from __future__ import annotations

import base64
import shutil
from pathlib import Path
from typing import Any

from local.statefiles import read_json, write_json_atomic

SCHEMA_NAME = "schema.json"
ITEMS_NAME = "items.json"
_BATCH = 25


def _encode(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return {"__b64__": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_encode(v) for v in value]
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"__b64__"}:
            return base64.b64decode(value["__b64__"])
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def describe_schema(dynamodb: Any, table: str) -> dict[str, Any]:
    """What is needed to create the table again."""
    description = dynamodb.describe_table(TableName=table)["Table"]
    schema: dict[str, Any] = {
        "TableName": table,
        "KeySchema": description["KeySchema"],
        "AttributeDefinitions": description["AttributeDefinitions"],
        "BillingMode": "PAY_PER_REQUEST",
    }
    gsis = [
        {"IndexName": g["IndexName"], "KeySchema": g["KeySchema"], "Projection": g["Projection"]}
        for g in description.get("GlobalSecondaryIndexes", [])
    ]
    lsis = [
        {"IndexName": i["IndexName"], "KeySchema": i["KeySchema"], "Projection": i["Projection"]}
        for i in description.get("LocalSecondaryIndexes", [])
    ]
    if gsis:
        schema["GlobalSecondaryIndexes"] = gsis
    if lsis:
        schema["LocalSecondaryIndexes"] = lsis
    ttl = dynamodb.describe_time_to_live(TableName=table).get("TimeToLiveDescription", {})
    if ttl.get("TimeToLiveStatus") in ("ENABLED", "ENABLING") and ttl.get("AttributeName"):
        schema["TimeToLiveAttribute"] = ttl["AttributeName"]
    return schema


def snapshot_table(dynamodb: Any, table: str, table_dir: Path) -> None:
    """Write the table's schema and every item to ``table_dir``."""
    schema = describe_schema(dynamodb, table)
    items: list[dict[str, Any]] = []
    for page in dynamodb.get_paginator("scan").paginate(TableName=table):
        items.extend(page.get("Items", []))
    write_json_atomic(table_dir / SCHEMA_NAME, schema)
    write_json_atomic(table_dir / ITEMS_NAME, _encode(items))


def create_table(dynamodb: Any, schema: dict[str, Any]) -> None:
    """Create a table from a stored schema (ignoring the TTL part)."""
    arguments = {k: v for k, v in schema.items() if k != "TimeToLiveAttribute"}
    dynamodb.create_table(**arguments)
    if schema.get("TimeToLiveAttribute"):
        dynamodb.update_time_to_live(
            TableName=schema["TableName"],
            TimeToLiveSpecification={
                "Enabled": True,
                "AttributeName": schema["TimeToLiveAttribute"],
            },
        )


def seed_table(dynamodb: Any, table_dir: Path) -> str | None:
    """Create the table kept in ``table_dir`` and load its items; returns its name."""
    schema = read_json(table_dir / SCHEMA_NAME)
    if not schema:
        return None
    create_table(dynamodb, schema)
    items = _decode(read_json(table_dir / ITEMS_NAME, []))
    for start in range(0, len(items), _BATCH):
        requests = [{"PutRequest": {"Item": item}} for item in items[start : start + _BATCH]]
        pending: dict[str, Any] = {schema["TableName"]: requests}
        while pending:
            pending = dynamodb.batch_write_item(RequestItems=pending).get("UnprocessedItems", {})
    return str(schema["TableName"])


def stored_tables(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if (p / SCHEMA_NAME).is_file())


def remove_table_dir(root: Path, table: str) -> None:
    shutil.rmtree(root / table, ignore_errors=True)
