"""The portal's records in the DynamoDB table (generic `pk`/`sk` keys, GSI `gsi1`).

| record | pk | sk | gsi1pk / gsi1sk |
| --- | --- | --- | --- |
| user | `user#<name>` | `profile` | `users` / name |
| API choices of a user | `user#<name>` | `prefs` | - |
| login failures | `throttle#<name>` | `w#<window start>` | - (expires by `ttl`) |
| generated image | `image#<id>` | `meta` | `images` / `<created>#<id>` |
| generation job | `gen#<id>` | `meta` | - (expires by `ttl`) |
| endpoint | `endpoint#<name>` | `meta` | `endpoints` / name |
| training job | `training#<name>` | `meta` | `training` / `<created>#<name>` |
"""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError

GSI = "gsi1"
_ser = TypeSerializer()
_deser = TypeDeserializer()


def _to_dynamo(value: Any) -> Any:
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, dict):
        return {k: _to_dynamo(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_to_dynamo(v) for v in value]
    return value


def _from_dynamo(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: _from_dynamo(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_dynamo(v) for v in value]
    return value


def serialize(item: dict[str, Any]) -> dict[str, Any]:
    return {k: _ser.serialize(v) for k, v in _to_dynamo(item).items()}


def deserialize(item: dict[str, Any]) -> dict[str, Any]:
    return _from_dynamo({k: _deser.deserialize(v) for k, v in item.items()})


class Table:
    """Thin typed access to the table through a low-level DynamoDB client."""

    def __init__(self, client: Any, name: str) -> None:
        self.client = client
        self.name = name

    def get(self, pk: str, sk: str, *, consistent: bool = True) -> dict[str, Any] | None:
        answer = self.client.get_item(
            TableName=self.name, Key=serialize({"pk": pk, "sk": sk}), ConsistentRead=consistent
        )
        item = answer.get("Item")
        return deserialize(item) if item else None

    def get_many(self, keys: list[tuple[str, str]]) -> dict[tuple[str, str], dict[str, Any]]:
        """Several items in one round trip (consistent reads): ``{(pk, sk): item}`` for those
        that exist."""
        wanted = {"Keys": [serialize({"pk": pk, "sk": sk}) for pk, sk in dict.fromkeys(keys)],
                  "ConsistentRead": True}
        found: dict[tuple[str, str], dict[str, Any]] = {}
        while wanted.get("Keys"):
            answer = self.client.batch_get_item(RequestItems={self.name: wanted})
            for item in answer.get("Responses", {}).get(self.name, []):
                record = deserialize(item)
                found[(record["pk"], record["sk"])] = record
            wanted = answer.get("UnprocessedKeys", {}).get(self.name, {})
        return found

    def put(self, item: dict[str, Any], *, must_not_exist: bool = False) -> bool:
        """Write an item; with `must_not_exist`, answer False when it already exists."""
        kwargs: dict[str, Any] = {"TableName": self.name, "Item": serialize(item)}
        if must_not_exist:
            kwargs["ConditionExpression"] = "attribute_not_exists(pk)"
        try:
            self.client.put_item(**kwargs)
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
                return False
            raise
        return True

    def update(self, pk: str, sk: str, values: dict[str, Any], *, must_exist: bool = True,
               add: dict[str, int] | None = None) -> dict[str, Any] | None:
        """Set attributes (and add to counters); None when `must_exist` and the item is gone."""
        names: dict[str, str] = {}
        attr_values: dict[str, Any] = {}
        sets = []
        for index, (key, value) in enumerate(values.items()):
            names[f"#s{index}"] = key
            attr_values[f":s{index}"] = value
            sets.append(f"#s{index} = :s{index}")
        adds = []
        for index, (key, value) in enumerate((add or {}).items()):
            names[f"#a{index}"] = key
            attr_values[f":a{index}"] = value
            adds.append(f"#a{index} :a{index}")
        expression = ""
        if sets:
            expression += "SET " + ", ".join(sets)
        if adds:
            expression += " ADD " + ", ".join(adds)
        kwargs: dict[str, Any] = {
            "TableName": self.name,
            "Key": serialize({"pk": pk, "sk": sk}),
            "UpdateExpression": expression.strip(),
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": serialize(attr_values),
            "ReturnValues": "ALL_NEW",
        }
        if must_exist:
            kwargs["ConditionExpression"] = "attribute_exists(pk)"
        try:
            answer = self.client.update_item(**kwargs)
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
                return None
            raise
        return deserialize(answer["Attributes"])

    def delete(self, pk: str, sk: str) -> None:
        self.client.delete_item(TableName=self.name, Key=serialize({"pk": pk, "sk": sk}))

    def query_index(self, gsi1pk: str, *, newest_first: bool = False,
                    limit: int = 1000) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {
            "TableName": self.name,
            "IndexName": GSI,
            "KeyConditionExpression": "gsi1pk = :p",
            "ExpressionAttributeValues": serialize({":p": gsi1pk}),
            "ScanIndexForward": not newest_first,
        }
        while len(items) < limit:
            answer = self.client.query(**kwargs)
            items.extend(deserialize(item) for item in answer.get("Items", []))
            if "LastEvaluatedKey" not in answer:
                break
            kwargs["ExclusiveStartKey"] = answer["LastEvaluatedKey"]
        return items[:limit]


def now() -> float:
    return time.time()


def iso_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
