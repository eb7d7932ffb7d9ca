"""Fixtures for the helper CLIs: an in-process moto AWS with a fake Easel stack."""

from __future__ import annotations

import json
import os

import boto3
import pytest
from moto import mock_aws
from script_support import EASEL_ENV, REGION, STACK_TEMPLATE


@pytest.fixture
def aws(monkeypatch, tmp_path):
    for name in EASEL_ENV:
        monkeypatch.delenv(name, raising=False)
    for name in [n for n in os.environ if n.startswith("AWS_ENDPOINT_URL")]:
        monkeypatch.delenv(name)  # `make local` exports them; these tests use in-process moto
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with mock_aws():
        yield boto3.Session(region_name=REGION)


@pytest.fixture
def stack(aws):
    """A stack named `easel` (the default deployment_id) with the outputs the scripts read."""
    aws.client("cloudformation").create_stack(StackName="easel",
                                             TemplateBody=json.dumps(STACK_TEMPLATE))
    return aws
