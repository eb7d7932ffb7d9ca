"""The running emulator: subprocess, seeded from disk, snapshotted whenever it changes."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from local.clients import local_client
from local.emulator import dynamodb_state, resources, s3_state
from local.emulator.process import EmulatorProcess
from local.emulator.store import EmulatorStore
from local.names import LocalNames
from local.processes import ProcessRegistry

log = logging.getLogger(__name__)
# Large S3 bodies live here as files (hard-linked into the snapshot, never copied).
BLOB_DIR_NAME = "s3-files"


class Emulator:
    """Starts moto, re-seeds it from ``data_dir``, keeps ``data_dir`` in step while running."""

    def __init__(
        self,
        *,
        data_dir: Path,
        run_dir: Path,
        names: LocalNames,
        snapshot_interval: float = 1.0,
        registry: ProcessRegistry | None = None,
    ) -> None:
        self.names = names
        self._data_dir = data_dir
        self._process = EmulatorProcess(
            run_dir=run_dir, registry=registry, blob_dir=data_dir / BLOB_DIR_NAME
        )
        self._snapshot_interval = snapshot_interval
        self._store: EmulatorStore | None = None
        self._stop_event = threading.Event()
        self._thread: threading.Thread | None = None
        self._saved_generation = -1
        self.new_admin_password: str | None = None

    @property
    def url(self) -> str:
        return self._process.url

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def client(self, service: str):  # noqa: ANN201 - a boto3 client
        return local_client(service, endpoint_url=self.url, region=self.names.region)

    def start(self) -> None:
        self._process.start()
        try:
            self._store = EmulatorStore(
                self._data_dir,
                s3=self.client("s3"),
                dynamodb=self.client("dynamodb"),
                secretsmanager=self.client("secretsmanager"),
                files=s3_state.EmulatorFiles(self.url),
            )
            self._store.seed()
            resources.ensure_bucket(self.client("s3"), self.names)
            resources.ensure_table(self.client("dynamodb"), self.names, dynamodb_state.create_table)
            self.new_admin_password = resources.ensure_secrets(
                self.client("secretsmanager"), self.names
            )
            resources.ensure_execution_role(self.client("iam"), self.names)
            self.save()
        except BaseException:
            self._process.stop()
            raise
        self._stop_event.clear()
        self._thread = threading.Thread(
            target=self._snapshot_loop, name="emulator-snapshots", daemon=True
        )
        self._thread.start()

    def save(self) -> None:
        """Snapshot now if anything may have changed since the last snapshot."""
        if self._store is None:
            return
        generation = self._process.generation()
        if generation != self._saved_generation:
            self._store.snapshot()
            self._saved_generation = generation

    def _snapshot_loop(self) -> None:
        while not self._stop_event.wait(self._snapshot_interval):
            try:
                self.save()
            except Exception as exc:  # noqa: BLE001 - keep snapshotting; the next round retries
                # Recoverable (e.g. the emulator busy with a big transfer): one line, no
                # traceback; the next round saves what changed.
                log.warning("snapshot of the emulator deferred (%s: %s); retrying",
                            type(exc).__name__, exc)

    def stop(self) -> None:
        """Final snapshot, then stop the subprocess."""
        self._stop_event.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        try:
            if self._process.is_running():
                self.save()
        finally:
            self._process.stop()
            self._store = None
