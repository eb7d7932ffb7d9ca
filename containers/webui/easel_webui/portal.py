"""Everything a request handler needs, built once per application from the settings."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from easel_webui.auth import Auth
from easel_webui.aws import Clients
from easel_webui.endpoints import Endpoints
from easel_webui.generation import Generation
from easel_webui.secret_cache import SecretCache
from easel_webui.settings import Settings
from easel_webui.storage import Bucket
from easel_webui.store import Table, backfill_owner_items
from easel_webui.training import Training, TrainingConfig

log = logging.getLogger("easel_webui.portal")


@dataclass
class Portal:
    settings: Settings
    clients: Any
    table: Table
    bucket: Bucket
    secrets: SecretCache
    auth: Auth
    endpoints: Endpoints
    generation: Generation
    training: Training

    @classmethod
    def build(cls, settings: Settings, clients: Any | None = None) -> Portal:
        clients = clients or Clients(region=settings.region)
        table = Table(clients.dynamodb, settings.table)
        _migrate(table)
        bucket = Bucket(clients.s3, settings.bucket)
        secrets = SecretCache(clients.secrets, ttl_seconds=settings.secret_cache_seconds)
        auth = Auth(settings=settings, table=table, secrets_cache=secrets)
        endpoints = Endpoints(settings=settings, clients=clients, table=table, bucket=bucket)
        generation = Generation(clients=clients, table=table, bucket=bucket, endpoints=endpoints,
                                queue_limit=settings.generation_queue_per_task,
                                per_user_limit=settings.generation_jobs_per_user)
        _recover(generation)
        training = Training(config=TrainingConfig.from_settings(settings), clients=clients,
                            table=table, bucket=bucket)
        return cls(settings, clients, table, bucket, secrets, auth, endpoints, generation,
                   training)

    def close(self, timeout: float | None = None) -> list[str]:
        """The portal task is stopping: wait up to ``timeout`` seconds (the
        ``shutdown_wait_seconds`` setting by default) for its generation jobs to save their
        images; the jobs still running then (see `Generation.shutdown`)."""
        wait = self.settings.shutdown_wait_seconds if timeout is None else timeout
        return self.generation.shutdown(wait)


def _migrate(table: Table) -> None:
    """One-off data migrations; a failure is logged and retried on the next start."""
    try:
        backfill_owner_items(table)
    except ClientError as exc:
        log.warning("owner items backfill not finished (retried on the next start): %s", exc)


def _recover(generation: Generation) -> None:
    """Fail the generation jobs a stopped portal task left running; a failure is logged (those
    jobs are still failed when next read)."""
    try:
        generation.recover_stale_jobs()
    except ClientError as exc:
        log.warning("stale generation jobs not swept (they fail when read): %s", exc)
