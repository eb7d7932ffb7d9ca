"""Fixtures for the local-AWS tests: a running LocalAws with fake serve/train entry points."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from local_helpers import Clients, clients_for, fake_settings

from local.runtime import LocalAws


@pytest.fixture(scope="session")
def fake_aws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalAws]:
    """One local AWS per test worker, running the fake entry points."""
    with LocalAws(tmp_path_factory.mktemp("local-aws"), settings=fake_settings()) as aws:
        yield aws


@pytest.fixture
def clients(fake_aws: LocalAws, monkeypatch: pytest.MonkeyPatch) -> Clients:
    """Plain boto3 clients pointed at ``fake_aws`` through the environment only."""
    return clients_for(fake_aws, monkeypatch)
