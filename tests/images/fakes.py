"""Fake `docker`, `aws` and `curl` executables that record their calls, for running build scripts
here."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

FAKE_DOCKER = r'''
import json, os, sys
args = sys.argv[1:]
entry = {"tool": "docker", "args": args}
if args[:1] == ["login"] and "--password-stdin" in args:
    entry["stdin_password_given"] = bool(sys.stdin.read().strip())
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write(json.dumps(entry) + "\n")
rc = {"pull": "FAKE_DOCKER_PULL_RC", "build": "FAKE_DOCKER_BUILD_RC",
      "push": "FAKE_DOCKER_PUSH_RC", "login": "FAKE_DOCKER_LOGIN_RC"}.get(args[0] if args else "")
sys.exit(int(os.environ.get(rc, "0")) if rc else 0)
'''

FAKE_AWS = r'''
import json, os, sys
args = sys.argv[1:]
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write(json.dumps({"tool": "aws", "args": args}) + "\n")
if args[:2] == ["ecr", "get-login-password"]:
    if os.environ.get("FAKE_AWS_ECR_RC", "0") != "0":
        sys.exit(int(os.environ["FAKE_AWS_ECR_RC"]))
    print("fake-ecr-token")
elif args[:2] == ["ecr-public", "get-login-password"]:
    if os.environ.get("FAKE_AWS_PUBLIC_RC", "0") != "0":
        sys.exit(int(os.environ["FAKE_AWS_PUBLIC_RC"]))
    print("fake-public-token")
elif args[:2] == ["sts", "get-caller-identity"]:
    print("123456789012")
'''

FAKE_CURL = r'''
import json, os, sys
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write(json.dumps({"tool": "curl", "args": sys.argv[1:]}) + "\n")
sys.exit(int(os.environ.get("FAKE_CURL_RC", "0")))
'''


def install_fakes(bin_dir: Path) -> None:
    """Write executable `docker`, `aws` and `curl` fakes into `bin_dir` (put it first on PATH)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name, body in (("docker", FAKE_DOCKER), ("aws", FAKE_AWS), ("curl", FAKE_CURL)):
        path = bin_dir / name
        path.write_text(f"#!{sys.executable}\n{body}", encoding="utf-8")
        path.chmod(0o755)


def fake_env(bin_dir: Path, log: Path, **extra: str) -> dict[str, str]:
    env = {
        "PATH": f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin",
        "HOME": str(log.parent),
        "FAKE_LOG": str(log),
        "LANG": "C.UTF-8",
    }
    env.update(extra)
    return env


def read_calls(log: Path) -> list[dict]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]


def docker_calls(log: Path) -> list[list[str]]:
    return [call["args"] for call in read_calls(log) if call["tool"] == "docker"]
