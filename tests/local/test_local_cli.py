"""`python -m local up`: prints the environment, runs until SIGTERM, then stops everything."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

from local.processes import port_is_open

REPO_ROOT = Path(__file__).resolve().parents[2]


def read_exports(process: subprocess.Popen, *, timeout: float = 60) -> tuple[dict, list[str]]:
    exports, comments = {}, []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        line = line.strip()
        if line.startswith("export "):
            key, _, value = line[len("export ") :].partition("=")
            exports[key] = shlex.split(value)[0]
        elif line.startswith("#"):
            comments.append(line)
            if "admin password" in line:
                break
    return exports, comments


def test_up_prints_exports_and_the_password_once_then_stops_on_sigterm(tmp_path):
    command = [
        sys.executable,
        "-m",
        "local",
        "up",
        "--state",
        str(tmp_path / "state"),
        "--clean",
        "--deployment-id",
        "clitest",
        "--env-file",
        str(tmp_path / "local.env"),
    ]
    process = subprocess.Popen(
        command,
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    try:
        exports, comments = read_exports(process)
    finally:
        process.send_signal(signal.SIGTERM)
        exit_code = process.wait(timeout=60)

    assert exports["EASEL_BUCKET"] == "clitest-data"
    assert exports["EASEL_DEPLOYMENT_ID"] == "clitest"
    for variable in (
        "AWS_ENDPOINT_URL_S3",
        "AWS_ENDPOINT_URL_DYNAMODB",
        "AWS_ENDPOINT_URL_SECRETS_MANAGER",
        "AWS_ENDPOINT_URL_SAGEMAKER",
        "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME",
        "EASEL_TABLE",
        "EASEL_ADMIN_SECRET",
        "EASEL_SESSION_SECRET",
        "EASEL_EXECUTION_ROLE_ARN",
        "AWS_DEFAULT_REGION",
    ):
        assert exports.get(variable), variable
    assert any("admin password" in line for line in comments)
    env_file = tmp_path / "local.env"
    assert f"export EASEL_BUCKET={exports['EASEL_BUCKET']}" in env_file.read_text()
    assert env_file.stat().st_mode & 0o077 == 0  # private: it names the local endpoints
    assert exit_code == 0
    ports = {
        urlparse(exports[v]).port for v in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL_SAGEMAKER")
    }
    assert not [port for port in ports if port_is_open(port)]
