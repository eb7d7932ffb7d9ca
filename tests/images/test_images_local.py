"""scripts/images_local.sh against fake `docker` and `aws`: same tags as the CDK construct."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from stacks.image_build import tags_by_image

from .conftest import ROOT, shared_across_workers
from .fakes import docker_calls, fake_env, install_fakes

SCRIPT = ROOT / "scripts" / "images_local.sh"
REGISTRY = "123456789012.dkr.ecr.eu-west-1.amazonaws.com"


def _run(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    install_fakes(tmp_path / "bin")
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        env=fake_env(tmp_path / "bin", tmp_path / "calls.jsonl", PYTHON=sys.executable, **env),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _push_webui(tmp_path: Path) -> dict:
    # A copy of the build context, so the tag cannot move while the test runs.
    containers = tmp_path / "containers"
    for name in ("contracts", "webui"):
        shutil.copytree(ROOT / "containers" / name, containers / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    result = _run(tmp_path, "--push", "webui", EASEL_REGISTRY=REGISTRY,
                  EASEL_CONTAINERS_DIR=str(containers))
    return {
        "returncode": result.returncode,
        "stderr": result.stderr,
        "calls": docker_calls(tmp_path / "calls.jsonl"),
        "tag": tags_by_image(containers)["webui"],
        "context": str(containers),
    }


@pytest.fixture(scope="module")
def pushed(tmp_path_factory) -> tuple[dict, list[list[str]], str]:
    # One script run serves several assertions: each run boots the CDK to compute the tags.
    run = shared_across_workers(tmp_path_factory, "images-local-push", _push_webui)
    return run, run["calls"], run["tag"]


def test_builds_with_the_construct_tag(pushed):
    result, calls, webui_tag = pushed
    assert result["returncode"] == 0, result["stderr"]
    (build,) = [c for c in calls if c[:1] == ["build"]]
    assert f"easel-webui:{webui_tag}" in build
    assert build[build.index("--platform") + 1] == "linux/amd64"
    # One context for every image: containers/, with the image's Dockerfile named.
    assert build[-1] == result["context"]
    assert build[build.index("--file") + 1] == f"{result['context']}/webui/Dockerfile"
    assert "--build-context" not in build


def test_push_goes_to_the_deployment_repository_after_the_build(pushed):
    result, calls, webui_tag = pushed
    assert result["returncode"] == 0, result["stderr"]
    login = calls.index(["login", "--username", "AWS", "--password-stdin", REGISTRY])
    push = calls.index(["push", f"{REGISTRY}/easel-webui:{webui_tag}"])
    build = next(i for i, c in enumerate(calls) if c[:1] == ["build"])
    assert login < build < push


def test_unknown_image_is_refused(tmp_path):
    result = _run(tmp_path, "nope")
    assert result.returncode == 2
    assert "no image 'nope'" in result.stderr
    assert not [c for c in docker_calls(tmp_path / "calls.jsonl") if c[:1] == ["build"]]


def test_every_image_builds_from_the_one_containers_context(tmp_path):
    # A stand-in for `python -m stacks.image_build tags` (its output format is tested in
    # test_image_tags.py), so this run needs no CDK.
    fake_python = tmp_path / "python"
    fake_python.write_text("#!/bin/sh\necho 'training 0123abcd'\necho 'webui 4567ef01'\n")
    fake_python.chmod(0o755)
    install_fakes(tmp_path / "bin")
    result = subprocess.run(
        ["bash", str(SCRIPT)],
        env={**fake_env(tmp_path / "bin", tmp_path / "calls.jsonl"), "PYTHON": str(fake_python),
             "EASEL_CONTAINERS_DIR": "/repo/containers"},
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stderr
    builds = [c for c in docker_calls(tmp_path / "calls.jsonl") if c[:1] == ["build"]]
    assert [b[b.index("--file") + 1] for b in builds] == [
        "/repo/containers/training/Dockerfile", "/repo/containers/webui/Dockerfile"
    ]
    assert all(b[-1] == "/repo/containers" for b in builds)
    assert "easel-training:0123abcd" in builds[0]
