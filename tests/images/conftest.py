"""Shared helpers for the image-build tests (construct, handler, buildspec, Dockerfiles)."""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONTAINERS = ROOT / "containers"
IMAGE_NAMES = ("inference", "training", "webui")


@pytest.fixture
def root() -> Path:
    return ROOT


def shared_across_workers(tmp_path_factory, name: str, produce: Callable[[Path], Any]) -> Any:
    """`produce(tmp_dir)` once per test run, its JSON result shared by all xdist workers.

    (pytest-xdist's `xdist_group` does not keep tests together with this pytest, so module
    fixtures would otherwise run once per worker: a CDK synth or a script run each.)
    """
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if not run:
        return produce(tmp_path_factory.mktemp(name))
    shared = tmp_path_factory.getbasetemp().parent
    result = shared / f"{name}-{run}.json"
    with open(shared / f"{name}-{run}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if result.exists():
            return json.loads(result.read_text())
        value = produce(tmp_path_factory.mktemp(name))
        result.write_text(json.dumps(value))
        return value
