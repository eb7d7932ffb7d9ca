"""The portal's access to its DynamoDB table. Record kinds and their keys:
`easel_contracts.table`."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError

from easel_contracts import table as keys
from easel_contracts.table import GSI, GSI_PK, GSI_SK, PK, SK, Key

log = logging.getLogger("easel_webui.store")
# BatchGetItem takes at most 100 keys per call.
# https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/API_BatchGetItem.html
BATCH_GET_MAX_KEYS = 100
OWNER_ITEMS_MIGRATION = "owner-items-v1"
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
            TableName=self.name, Key=serialize({PK: pk, SK: sk}), ConsistentRead=consistent
        )
        item = answer.get("Item")
        return deserialize(item) if item else None

    def get_many(self, keys: list[tuple[str, str]]) -> dict[tuple[str, str], dict[str, Any]]:
        """Several items in one round trip (consistent reads): ``{(pk, sk): item}`` for those
        that exist."""
        unique = list(dict.fromkeys(keys))
        found: dict[tuple[str, str], dict[str, Any]] = {}
        for start in range(0, len(unique), BATCH_GET_MAX_KEYS):
            chunk = unique[start:start + BATCH_GET_MAX_KEYS]
            wanted = {"Keys": [serialize({PK: pk, SK: sk}) for pk, sk in chunk],
                      "ConsistentRead": True}
            while wanted.get("Keys"):
                answer = self.client.batch_get_item(RequestItems={self.name: wanted})
                for item in answer.get("Responses", {}).get(self.name, []):
                    record = deserialize(item)
                    found[Key(record[PK], record[SK])] = record
                wanted = answer.get("UnprocessedKeys", {}).get(self.name, {})
        return found

    def put(self, item: dict[str, Any], *, must_not_exist: bool = False,
            expect: tuple[str, Any] | None = None,
            unless_live: tuple[str, float] | None = None) -> bool:
        """Write an item; with `must_not_exist`, answer False when it already exists; with
        `expect=(attribute, value)`, answer False unless the stored item has that value there
        (optimistic concurrency: several portal tasks may write the same item); with
        `unless_live=(attribute, moment)`, answer False when the item exists and that attribute
        (an expiry, epoch s) is not before `moment` (a lease held by someone else)."""
        kwargs: dict[str, Any] = {"TableName": self.name, "Item": serialize(item)}
        if must_not_exist:
            kwargs["ConditionExpression"] = f"attribute_not_exists({PK})"
        elif expect is not None:
            kwargs["ConditionExpression"] = "#e = :e"
            kwargs["ExpressionAttributeNames"] = {"#e": expect[0]}
            kwargs["ExpressionAttributeValues"] = serialize({":e": expect[1]})
        elif unless_live is not None:
            kwargs["ConditionExpression"] = f"attribute_not_exists({PK}) OR #e < :e"
            kwargs["ExpressionAttributeNames"] = {"#e": unless_live[0]}
            kwargs["ExpressionAttributeValues"] = serialize({":e": unless_live[1]})
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
            "Key": serialize({PK: pk, SK: sk}),
            "UpdateExpression": expression.strip(),
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": serialize(attr_values),
            "ReturnValues": "ALL_NEW",
        }
        if must_exist:
            kwargs["ConditionExpression"] = f"attribute_exists({PK})"
        try:
            answer = self.client.update_item(**kwargs)
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
                return None
            raise
        return deserialize(answer["Attributes"])

    def delete(self, pk: str, sk: str) -> None:
        self.client.delete_item(TableName=self.name, Key=serialize({PK: pk, SK: sk}))

    def query_index(self, gsi1pk: str, *, newest_first: bool = False,
                    limit: int = 1000) -> list[dict[str, Any]]:
        """Items of one GSI partition, in sort-key order."""
        return self._query({
            "IndexName": GSI,
            "KeyConditionExpression": "#p = :p",
            "ExpressionAttributeNames": {"#p": GSI_PK},
            "ExpressionAttributeValues": serialize({":p": gsi1pk}),
            "ScanIndexForward": not newest_first,
        }, limit)

    def query(self, pk: str, *, sk_prefix: str = "", newest_first: bool = False,
              limit: int = 1000) -> list[dict[str, Any]]:
        """Items of one partition (whose sort key starts with `sk_prefix`), in sort-key order."""
        condition = "#p = :p" + (" AND begins_with(#s, :s)" if sk_prefix else "")
        values: dict[str, Any] = {":p": pk, **({":s": sk_prefix} if sk_prefix else {})}
        return self._query({
            "KeyConditionExpression": condition,
            "ExpressionAttributeNames": {"#p": PK, **({"#s": SK} if sk_prefix else {})},
            "ExpressionAttributeValues": serialize(values),
            "ScanIndexForward": not newest_first,
            "ConsistentRead": True,
        }, limit)

    def query_range(self, partition: str, *, index: bool, low: str, high: str,
                    start: dict[str, str] | None, limit: int,
                    ) -> tuple[list[dict[str, Any]], dict[str, str] | None]:
        """One page (at most `limit` items), newest first, of a partition (of the table, or of
        the GSI when `index`) whose sort keys lie in [`low`, `high`], from `start` (an item's
        key attributes, as `last_key` gives them). Answers the items and the key to go on
        from (None at the end)."""
        names = {"#p": GSI_PK if index else PK, "#s": GSI_SK if index else SK}
        request: dict[str, Any] = {
            "TableName": self.name,
            "KeyConditionExpression": "#p = :p AND #s BETWEEN :lo AND :hi",
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": serialize({":p": partition, ":lo": low, ":hi": high}),
            "ScanIndexForward": False, "Limit": limit,
        }
        if index:
            request["IndexName"] = GSI
        else:
            request["ConsistentRead"] = True
        if start:
            request["ExclusiveStartKey"] = serialize(start)
        answer = self.client.query(**request)
        items = [deserialize(item) for item in answer.get("Items", [])]
        more = answer.get("LastEvaluatedKey")
        return items, (deserialize(more) if more else None)

    def iter_index(self, gsi1pk: str, *, attributes: tuple[str, ...]) -> Iterator[dict[str, Any]]:
        """Every item of one GSI partition, page by page, with only `attributes`."""
        names = {f"#a{i}": name for i, name in enumerate(attributes)}
        kwargs: dict[str, Any] = {
            "TableName": self.name, "IndexName": GSI,
            "KeyConditionExpression": "#p = :p",
            "ExpressionAttributeNames": {"#p": GSI_PK, **names},
            "ExpressionAttributeValues": serialize({":p": gsi1pk}),
            "ProjectionExpression": ", ".join(names),
        }
        while True:
            answer = self.client.query(**kwargs)
            yield from (deserialize(item) for item in answer.get("Items", []))
            if "LastEvaluatedKey" not in answer:
                return
            kwargs["ExclusiveStartKey"] = answer["LastEvaluatedKey"]

    def _query(self, request: dict[str, Any], limit: int) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {"TableName": self.name, **request}
        while len(items) < limit:
            kwargs["Limit"] = limit - len(items)
            answer = self.client.query(**kwargs)
            items.extend(deserialize(item) for item in answer.get("Items", []))
            if "LastEvaluatedKey" not in answer:
                break
            kwargs["ExclusiveStartKey"] = answer["LastEvaluatedKey"]
        return items[:limit]


def owned_records(table: Table, owner: str, kind: str, *, limit: int) -> list[dict[str, Any]]:
    """The newest `limit` records of one kind that `owner` owns (through their `owner#` items),
    newest first; a record deleted since its owner item was read is left out."""
    items = table.query(keys.owner_partition(owner), sk_prefix=keys.owner_sort_prefix(kind),
                        newest_first=True, limit=limit)
    refs = [keys.referenced_key(item) for item in items]
    found = table.get_many(refs)
    return [found[ref] for ref in refs if ref in found]


_OWNED_KINDS = ((keys.IMAGES_INDEX, keys.OWNER_IMAGE, "image_id"),
                (keys.TRAINING_INDEX, keys.OWNER_TRAINING, "job"))


def backfill_owner_items(table: Table) -> int | None:
    """Give every image and training job recorded before `owner#` items existed its owner item.

    Idempotent (an owner item is a pure function of its record) and done once per table: a
    marker item records completion; until it exists, every portal start tries again. Returns the
    number of items written, None when an earlier run finished the job."""
    marker = keys.migration_key(OWNER_ITEMS_MIGRATION)
    if table.get(*marker):
        return None
    written = 0
    for index, kind, name in _OWNED_KINDS:
        for record in table.iter_index(index, attributes=(PK, SK, "owner", "created_at", name)):
            table.put(keys.owner_item(record["owner"], kind, record["created_at"], record[name],
                                      Key(record[PK], record[SK])))
            written += 1
    table.put({**marker.item(), "finished_at": iso_now(), "items_written": written})
    log.info("owner items: %d written for earlier records", written)
    return written


def now() -> float:
    return time.time()


def iso_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
