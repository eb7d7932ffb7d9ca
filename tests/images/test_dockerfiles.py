"""Contract tests for every containers/<name>/Dockerfile (parsed with dockerfile-parse)."""

from __future__ import annotations

import glob
import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import CONTAINERS, IMAGE_NAMES
from .dockerfiles import (
    PENDING_DOCKERFILES,
    PENDING_PACKAGES,
    Image,
    exec_form,
    existing_images,
    expect_known_violation,
    module_exists,
    normalize,
)

HADOLINT = Path(sys.executable).with_name("hadolint")
REQUIRED_LABELS = ("org.opencontainers.image.title", "org.opencontainers.image.source")
SAGEMAKER_COMMANDS = {"inference": "serve", "training": "train"}
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")
SECRET_NAME = re.compile(r"(SECRET|PASSWORD|PASSWD|TOKEN|ACCESS_KEY|PRIVATE_KEY)", re.IGNORECASE)
WEIGHT_FETCH = re.compile(
    r"(huggingface-cli\s+download|hf\s+download|hf_hub_download|snapshot_download|"
    r"from_pretrained|https?://\S+\.(safetensors|ckpt|bin|pt|pth)\b)",
    re.IGNORECASE,
)


def _image(name: str) -> Image:
    image = Image(name, CONTAINERS / name)
    if not image.dockerfile.is_file():
        if name in PENDING_DOCKERFILES:
            pytest.xfail(f"containers/{name}/Dockerfile does not exist yet (being written)")
        pytest.fail(f"containers/{name}/Dockerfile is missing: every image needs one")
    return image


@pytest.fixture(params=IMAGE_NAMES)
def image(request) -> Image:
    expect_known_violation(request, request.param)
    return _image(request.param)


def _needs_package(image: Image) -> None:
    if image.name in PENDING_PACKAGES and not (image.folder / "pyproject.toml").is_file():
        pytest.xfail(f"containers/{image.name}/pyproject.toml (its package) does not exist yet")


def test_webui_dockerfile_exists():
    assert (CONTAINERS / "webui" / "Dockerfile").is_file()


def test_hadolint_reports_nothing(image):
    result = subprocess.run(
        [str(HADOLINT), "--no-color", str(image.dockerfile)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_base_images_are_pinned_public_ecr_images(image):
    parser = image.parser()
    stage_names = set()
    for instruction in parser.structure:
        if instruction["instruction"] != "FROM":
            continue
        words = instruction["value"].split()
        reference = next(w for w in words if not w.startswith("--"))
        if reference in stage_names:
            continue
        if "AS" in (w.upper() for w in words):
            stage_names.add(words[-1])
        assert reference.startswith("public.ecr.aws/") or ".dkr.ecr." in reference, (
            f"{reference}: use a registry CodeBuild pulls without Docker Hub rate limits"
        )
        name_and_tag = reference.split("@", 1)[0]
        assert ":" in name_and_tag.rsplit("/", 1)[-1], f"{reference}: pin a tag"
        assert not name_and_tag.endswith(":latest"), f"{reference}: 'latest' is not a pin"
        if "@" in reference:
            assert DIGEST.search(reference), f"{reference}: malformed digest"


def test_no_frontend_image_from_docker_hub(image):
    # `# syntax=docker/dockerfile:1` makes BuildKit pull its frontend from Docker Hub on every
    # build (rate-limited in CodeBuild); the built-in frontend covers what these Dockerfiles use.
    text = image.dockerfile.read_text(encoding="utf-8")
    for reference in re.findall(r"^#\s*syntax\s*=\s*(\S+)", text, re.MULTILINE | re.IGNORECASE):
        host = reference.split("/", 1)[0]
        assert "." in host and host != "docker.io", (
            f"{image.name}: '# syntax={reference}' pulls from Docker Hub; drop the directive"
        )


def test_required_labels_are_set(image):
    labels = image.parser().labels
    for label in REQUIRED_LABELS:
        assert labels.get(label), f"{image.dockerfile}: LABEL {label} is missing"


def test_every_copied_path_exists_in_the_context(image):
    # The build context is containers/ for every image (docker build -f <image>/Dockerfile).
    from stacks.image_build.tags import context_paths

    _needs_package(image)
    for instruction in image.parser().structure:
        if instruction["instruction"] not in ("COPY", "ADD"):
            continue
        words = instruction["value"].split()
        assert not any(w.startswith("--from") for w in words), (
            f"{image.name}: {instruction['content'].strip()}: copy from containers/ instead"
        )
        sources = [w for w in words if not w.startswith("--")][:-1]
        assert sources, f"{instruction['content'].strip()}: no source"
        for source in sources:
            assert not source.startswith(("http://", "https://")), "ADD of a URL"
            matches = glob.glob(str(CONTAINERS / source))
            assert matches, f"{image.name}: {instruction['content'].strip()} -> {source} missing"
    assert f"{image.name}/Dockerfile" in context_paths(CONTAINERS, image.name)


def test_installs_the_contracts_package_before_its_own(image):
    _needs_package(image)
    structure = image.parser().structure
    copies = [i["value"] for i in structure if i["instruction"] == "COPY"]
    assert any("contracts/easel_contracts" in c for c in copies), f"{image.name}: no contracts"
    runs = [i["value"] for i in structure if i["instruction"] == "RUN"]
    contracts = next(n for n, r in enumerate(runs) if "/opt/easel/contracts" in r)
    own = next(n for n, r in enumerate(runs) if re.search(r"pip install .* \.(\s|$)", r))
    assert contracts < own
    assert "easel-contracts" in image.pyproject()["project"]["dependencies"]


def test_entry_point_is_exec_form_and_resolves(image):
    _needs_package(image)
    parser = image.parser()
    entrypoint = exec_form(parser, "ENTRYPOINT")
    cmd = exec_form(parser, "CMD")
    command = entrypoint or cmd
    assert command, f"{image.dockerfile}: no ENTRYPOINT or CMD"
    _assert_resolves(image, command)


def test_sagemaker_command_is_a_declared_console_script(image):
    expected = SAGEMAKER_COMMANDS.get(image.name)
    if expected is None:
        pytest.skip(f"{image.name} is not run by SageMaker")
    parser = image.parser()
    # SageMaker runs `docker run <image> serve|train`: without an ENTRYPOINT that word must be
    # a program on PATH, i.e. a console script the package installs.
    if exec_form(parser, "ENTRYPOINT") is None:
        assert expected in image.scripts(), f"{image.name}: [project.scripts] lacks {expected!r}"
    else:
        _assert_resolves(image, exec_form(parser, "ENTRYPOINT"))


def test_runs_as_non_root_unless_a_comment_says_why(image):
    text = image.dockerfile.read_text(encoding="utf-8")
    users = [i["value"].strip() for i in image.parser().structure if i["instruction"] == "USER"]
    final_user = users[-1] if users else "root"
    if final_user.split(":")[0] in ("root", "0"):
        assert re.search(r"#.*\broot\b.*SageMaker|#.*SageMaker.*\broot\b", text), (
            f"{image.dockerfile}: runs as root; say in a comment why SageMaker needs it"
        )


def test_installs_its_own_lock_file(image):
    assert (image.folder / "requirements.lock").is_file(), f"{image.name}: no requirements.lock"
    runs = " ".join(i["value"] for i in image.parser().structure if i["instruction"] == "RUN")
    assert re.search(r"pip\S* install[^;&|]*-r\s+\S*requirements\.lock", runs), (
        f"{image.dockerfile}: no `pip install -r requirements.lock`"
    )


def test_no_secrets_or_weights_in_layers(image):
    for instruction in image.parser().structure:
        if instruction["instruction"] in ("ENV", "ARG"):
            name = re.split(r"[=\s]", instruction["value"].strip(), maxsplit=1)[0]
            assert not SECRET_NAME.search(name), f"{image.name}: secret-like {name}"
        if instruction["instruction"] == "RUN":
            assert not WEIGHT_FETCH.search(instruction["value"]), (
                f"{image.name}: downloads model weights at build: {instruction['value'][:120]}"
            )


def _assert_resolves(image: Image, command: list[str]) -> None:
    program, *args = command
    scripts = image.scripts()
    if program in scripts:
        module = scripts[program].split(":", 1)[0]
        assert module_exists(image.folder, module), f"{program} -> {module} missing"
        return
    if Path(program).name in ("python", "python3") and args[:1] == ["-m"]:
        assert module_exists(image.folder, args[1]) or _locked_module(image, args[1]), (
            f"python -m {args[1]}: no such module in {image.folder.name} or its lock"
        )
        return
    provider = _locked_console_script(image, program)
    assert provider, (
        f"{image.name}: {program!r} is neither a [project.scripts] entry nor a console "
        "script of a package pinned in requirements.lock"
    )
    for arg in args:
        if re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", arg):
            module = arg.split(":", 1)[0]
            assert module_exists(image.folder, module), f"{program} {arg}: {module} missing"


def _locked_console_script(image: Image, program: str) -> str | None:
    for name in image.lock():
        try:
            entry_points = importlib.metadata.distribution(name).entry_points
        except importlib.metadata.PackageNotFoundError:
            continue
        if any(ep.group == "console_scripts" and ep.name == program for ep in entry_points):
            return name
    return None


def _locked_module(image: Image, module: str) -> bool:
    top = module.split(".", 1)[0]
    for name in image.lock():
        try:
            files = importlib.metadata.distribution(name).files or []
        except importlib.metadata.PackageNotFoundError:
            continue
        if any(str(f).split("/", 1)[0] in (top, f"{top}.py") for f in files):
            return True
    return False


def test_checked_images_are_reported():
    # Not a skip: lists which Dockerfiles this run checked, so a missing one is visible.
    checked = {image.name for image in existing_images()}
    assert "webui" in checked
    assert checked | PENDING_DOCKERFILES >= set(IMAGE_NAMES)
    assert normalize("Easel_WebUI") == "easel-webui"


@pytest.mark.parametrize("name", ["inference", "training"])
def test_cuda_images_have_the_c_compiler_triton_needs_at_run_time(name: str) -> None:
    """torch.compile's Triton backend compiles a C launcher (gcc, libc headers) when a kernel
    first runs; python:3.12-slim ships no compiler, so the image must install one."""
    image = _image(name)
    assert "triton" in image.lock(), "the compiler is there for Triton, which the lock pins"
    runs = [item["value"] for item in image.parser().structure if item["instruction"] == "RUN"]
    installs = [run for run in runs if "apt-get install" in run]
    assert any(re.search(r"\bgcc\b", run) and "libc6-dev" in run for run in installs), installs
    assert all("--no-install-recommends" in run and "rm -rf /var/lib/apt/lists" in run
               for run in installs)
