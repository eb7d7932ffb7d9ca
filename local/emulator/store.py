"""The emulator's content kept on disk: re-seeded at start, snapshotted on every change."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from local.emulator import dynamodb_state, s3_state, secrets_state


class EmulatorStore:
    """Moves the emulator's S3, DynamoDB and Secrets Manager content to and from ``root``."""

    def __init__(
        self,
        root: Path,
        *,
        s3: Any,
        dynamodb: Any,
        secretsmanager: Any,
        files: s3_state.EmulatorFiles | None = None,
    ) -> None:
        self.root = root
        self._files = files
        self._s3 = s3
        self._dynamodb = dynamodb
        self._secretsmanager = secretsmanager
        self._lock = threading.Lock()

    @property
    def s3_root(self) -> Path:
        return self.root / "s3"

    @property
    def dynamodb_root(self) -> Path:
        return self.root / "dynamodb"

    @property
    def secrets_path(self) -> Path:
        return self.root / "secrets.json"

    def seed(self) -> None:
        """Load everything kept on disk into the (empty) emulator."""
        with self._lock:
            for bucket in s3_state.stored_buckets(self.s3_root):
                self._s3.create_bucket(Bucket=bucket)
                s3_state.seed_bucket(self._s3, bucket, self.s3_root / bucket, self._files)
            for table_dir in dynamodb_state.stored_tables(self.dynamodb_root):
                dynamodb_state.seed_table(self._dynamodb, table_dir)
            secrets_state.seed_secrets(self._secretsmanager, self.secrets_path)

    def snapshot(self) -> None:
        """Write the emulator's current content to disk."""
        with self._lock:
            buckets = [b["Name"] for b in self._s3.list_buckets().get("Buckets", [])]
            for bucket in buckets:
                s3_state.snapshot_bucket(self._s3, bucket, self.s3_root / bucket, self._files)
            for gone in set(s3_state.stored_buckets(self.s3_root)) - set(buckets):
                s3_state.remove_bucket_dir(self.s3_root, gone)

            tables = []
            for page in self._dynamodb.get_paginator("list_tables").paginate():
                tables.extend(page.get("TableNames", []))
            for table in tables:
                dynamodb_state.snapshot_table(self._dynamodb, table, self.dynamodb_root / table)
            stored = {p.name for p in dynamodb_state.stored_tables(self.dynamodb_root)}
            for gone in stored - set(tables):
                dynamodb_state.remove_table_dir(self.dynamodb_root, gone)

            secrets_state.snapshot_secrets(self._secretsmanager, self.secrets_path)
