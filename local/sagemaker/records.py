"""The stand-in's own state (models, endpoint configs, endpoints, training jobs) on disk."""

from __future__ import annotations

import copy
import threading
import time
from pathlib import Path
from typing import Any

from local.statefiles import read_json, write_json_atomic

KINDS = ("model", "endpoint-config", "endpoint", "training-job")


def now() -> float:
    """Timestamps are kept as epoch seconds, which is what the AWS JSON protocols send."""
    return round(time.time(), 3)


class RecordStore:
    """One JSON file per resource: ``<root>/<kind>/<name>.json``; write-through on change."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.RLock()
        self._records: dict[str, dict[str, dict[str, Any]]] = {kind: {} for kind in KINDS}
        for kind in KINDS:
            folder = root / kind
            if folder.is_dir():
                for path in sorted(folder.glob("*.json")):
                    record = read_json(path)
                    if isinstance(record, dict):
                        self._records[kind][path.stem] = record

    def _path(self, kind: str, name: str) -> Path:
        return self.root / kind / f"{name}.json"

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        """A copy of the record (None if absent)."""
        with self._lock:
            record = self._records[kind].get(name)
            return copy.deepcopy(record) if record is not None else None

    def exists(self, kind: str, name: str) -> bool:
        with self._lock:
            return name in self._records[kind]

    def put(self, kind: str, name: str, record: dict[str, Any]) -> None:
        with self._lock:
            self._records[kind][name] = copy.deepcopy(record)
            write_json_atomic(self._path(kind, name), record)

    def create(self, kind: str, name: str, record: dict[str, Any]) -> bool:
        """Store a new record; False (and nothing stored) when the name is taken."""
        with self._lock:
            if name in self._records[kind]:
                return False
            self.put(kind, name, record)
            return True

    def update(self, kind: str, name: str, **changes: Any) -> dict[str, Any] | None:
        """Merge ``changes`` into the record; None when it no longer exists."""
        with self._lock:
            record = self._records[kind].get(name)
            if record is None:
                return None
            record.update(changes)
            write_json_atomic(self._path(kind, name), record)
            return copy.deepcopy(record)

    def delete(self, kind: str, name: str) -> bool:
        with self._lock:
            existed = self._records[kind].pop(name, None) is not None
            self._path(kind, name).unlink(missing_ok=True)
            return existed

    def all(self, kind: str) -> list[dict[str, Any]]:
        with self._lock:
            return [copy.deepcopy(r) for r in self._records[kind].values()]
