"""The buildspec's commands, run with bash against fake `docker` and `aws` executables.

The commands come from `stacks.image_build.buildspec.buildspec()`, the object the construct hands to
CodeBuild (the template test checks that the project carries exactly this buildspec).
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

from stacks.image_build.buildspec import CACHE_TAG, buildspec

from .fakes import docker_calls, fake_env, install_fakes, read_calls

REPOSITORY_URI = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/easel-webui"
TAG = "0123456789abcdef0123456789abcdef"
BUILD_UUID = "8d1d1f2e-1111-2222-3333-444455556666"
HANDLE_URL = "https://cloudformation-waitcondition-eu-west-1.s3.amazonaws.com/x?X-Amz-Signature=s"
PHASES = ("install", "pre_build", "build", "post_build")


def _script(spec: dict) -> str:
    """A bash script with CodeBuild's semantics: one shell; a failing install or pre_build command
    ends the build; a failing build command skips the rest of the build phase, and post_build
    still runs with CODEBUILD_BUILD_SUCCEEDING=0 before the build fails."""
    lines = ["export CODEBUILD_BUILD_SUCCEEDING=1"]
    for name, value in spec.get("env", {}).get("variables", {}).items():
        lines.append(f"export {name}={shlex.quote(value)}")
    for phase in PHASES:
        commands = spec["phases"].get(phase, {}).get("commands", [])
        if phase == "build":
            lines.append("build_phase() {")
            lines += [f"{{ {command}\n}} || return 1" for command in commands]
            lines.append("}")
            lines.append("build_phase || { echo 'FAILED: build' >&2; CODEBUILD_BUILD_SUCCEEDING=0; }")
            continue
        for command in commands:
            lines.append(f"{{ {command}\n}} || {{ echo 'FAILED: {phase}' >&2; exit 1; }}")
    lines.append('[ "$CODEBUILD_BUILD_SUCCEEDING" = 1 ]')
    return "\n".join(lines) + "\n"


def _run(tmp_path: Path, *, image_tag: str = TAG, dockerfile: str = "webui/Dockerfile",
         handle: bool = True, **fake_rcs: str) -> subprocess.CompletedProcess:
    spec = buildspec()
    assert spec["env"]["shell"] == "bash"
    bin_dir = tmp_path / "bin"
    install_fakes(bin_dir)
    # The source is laid out like containers/: one folder per image, the Dockerfile inside.
    source = tmp_path / "src"
    (source / "webui").mkdir(parents=True, exist_ok=True)
    (source / "webui" / "Dockerfile").write_text("FROM scratch\n")
    env = fake_env(
        bin_dir,
        tmp_path / "calls.jsonl",
        REPOSITORY_URI=REPOSITORY_URI,
        CACHE_TAG=CACHE_TAG,
        DOCKERFILE=dockerfile,
        CODEBUILD_BUILD_ID=f"easel-webui:{BUILD_UUID}",
        **({"WAIT_HANDLE_URL": HANDLE_URL} if handle else {}),
        AWS_DEFAULT_REGION="eu-west-1",
        **({"IMAGE_TAG": image_tag} if image_tag else {}),
        **fake_rcs,
    )
    return subprocess.run(
        ["bash", "-c", _script(spec)],
        cwd=source,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _index(calls: list[list[str]], verb: str, *must_contain: str) -> int:
    for i, args in enumerate(calls):
        if args[:1] == [verb] and all(item in args for item in must_contain):
            return i
    raise AssertionError(f"no `docker {verb}` with {must_contain} in {calls}")


def test_cold_build_logs_in_builds_with_cache_from_and_pushes_the_hash_tag(tmp_path):
    result = _run(tmp_path, FAKE_DOCKER_PULL_RC="1")  # no cache image yet
    assert result.returncode == 0, result.stderr
    calls = docker_calls(tmp_path / "calls.jsonl")
    login = _index(calls, "login", "123456789012.dkr.ecr.eu-west-1.amazonaws.com")
    assert calls[login][calls[login].index("--username") + 1] == "AWS"
    pull = _index(calls, "pull", f"{REPOSITORY_URI}:{CACHE_TAG}")
    build = _index(calls, "build")
    build_args = calls[build]
    assert build_args[build_args.index("--cache-from") + 1] == f"{REPOSITORY_URI}:{CACHE_TAG}"
    tags = [build_args[i + 1] for i, arg in enumerate(build_args) if arg == "--tag"]
    assert f"{REPOSITORY_URI}:{TAG}" in tags
    assert build_args[-1] == "."
    push = _index(calls, "push", f"{REPOSITORY_URI}:{TAG}")
    _index(calls, "push", f"{REPOSITORY_URI}:{CACHE_TAG}")
    assert login < pull < build < push


def test_registry_login_receives_the_ecr_token_on_stdin(tmp_path):
    assert _run(tmp_path).returncode == 0
    logins = [c for c in read_calls(tmp_path / "calls.jsonl")
              if c["tool"] == "docker" and c["args"][:1] == ["login"]]
    assert logins and all(c["stdin_password_given"] for c in logins)
    aws = [c["args"][:2] for c in read_calls(tmp_path / "calls.jsonl") if c["tool"] == "aws"]
    assert ["ecr", "get-login-password"] in aws


def test_warm_build_pulls_the_cache_image(tmp_path):
    assert _run(tmp_path, FAKE_DOCKER_PULL_RC="0").returncode == 0
    calls = docker_calls(tmp_path / "calls.jsonl")
    assert _index(calls, "pull") < _index(calls, "build")


def test_failed_docker_build_fails_the_build_and_pushes_nothing(tmp_path):
    result = _run(tmp_path, FAKE_DOCKER_BUILD_RC="1")
    assert result.returncode != 0
    assert not [c for c in docker_calls(tmp_path / "calls.jsonl") if c[:1] == ["push"]]


def test_failed_ecr_login_stops_before_building(tmp_path):
    result = _run(tmp_path, FAKE_AWS_ECR_RC="255", FAKE_DOCKER_LOGIN_RC="1")
    assert result.returncode != 0
    assert not [c for c in docker_calls(tmp_path / "calls.jsonl") if c[:1] == ["build"]]


def test_public_gallery_login_failure_is_tolerated(tmp_path):
    result = _run(tmp_path, FAKE_AWS_PUBLIC_RC="255")
    assert result.returncode == 0, result.stderr
    _index(docker_calls(tmp_path / "calls.jsonl"), "push", f"{REPOSITORY_URI}:{TAG}")


def test_missing_image_tag_fails_before_any_docker_call(tmp_path):
    result = _run(tmp_path, image_tag="")
    assert result.returncode != 0
    assert "IMAGE_TAG" in result.stderr
    assert docker_calls(tmp_path / "calls.jsonl") == []


def test_builds_the_images_dockerfile_from_the_one_containers_context(tmp_path):
    assert _run(tmp_path).returncode == 0
    calls = docker_calls(tmp_path / "calls.jsonl")
    build = calls[_index(calls, "build")]
    assert build[build.index("--file") + 1] == "webui/Dockerfile"
    assert build[-1] == "."  # the source root: the image's part of containers/
    assert "--build-context" not in build


def test_missing_dockerfile_fails_before_any_docker_call(tmp_path):
    result = _run(tmp_path, dockerfile="inference/Dockerfile")
    assert result.returncode != 0
    assert "no Dockerfile inference/Dockerfile" in result.stderr
    assert docker_calls(tmp_path / "calls.jsonl") == []


def _curls(tmp_path: Path) -> list[list[str]]:
    return [c["args"] for c in read_calls(tmp_path / "calls.jsonl") if c["tool"] == "curl"]


def test_pushed_image_signals_its_wait_condition_after_the_push(tmp_path):
    import json

    assert _run(tmp_path).returncode == 0
    (curl,) = _curls(tmp_path)
    assert curl[-1] == HANDLE_URL
    assert curl[curl.index("--request") + 1] == "PUT"
    assert curl[curl.index("--header") + 1] == "Content-Type:"  # presigned: no content type
    body = json.loads(curl[curl.index("--data-binary") + 1])
    # The same UniqueId the build-finished signaller uses, so the two signals are one.
    assert body == {"Status": "SUCCESS", "Reason": f"pushed {TAG}", "UniqueId": BUILD_UUID,
                    "Data": TAG}
    tools = [c["tool"] + ":" + c["args"][0] for c in read_calls(tmp_path / "calls.jsonl")]
    assert tools.index("curl:--silent") > max(i for i, t in enumerate(tools) if t == "docker:push")


def test_failed_build_sends_no_success_signal(tmp_path):
    result = _run(tmp_path, FAKE_DOCKER_BUILD_RC="1")
    assert result.returncode != 0
    assert _curls(tmp_path) == []


def test_failed_signal_does_not_fail_a_pushed_build(tmp_path):
    result = _run(tmp_path, FAKE_CURL_RC="22")
    assert result.returncode == 0, result.stderr
    assert "could not signal the wait condition" in result.stdout


def test_no_handle_no_signal(tmp_path):
    assert _run(tmp_path, handle=False).returncode == 0
    assert _curls(tmp_path) == []
