"""Reading the containers' Dockerfiles, pyprojects and lock files for the contract tests."""

from __future__ import annotations

import io
import json
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser

from .conftest import CONTAINERS, IMAGE_NAMES

# Images whose Dockerfile is still being written: while one is missing its tests are reported
# as expected failures (visible in `pytest -ra`), never skipped silently. Empty: all three exist,
# so a missing Dockerfile fails.
PENDING_DOCKERFILES: frozenset[str] = frozenset()
# Images whose package (pyproject.toml) is still being written: the checks that need the
# package's files are expected failures meanwhile. Empty: all three packages exist.
PENDING_PACKAGES: frozenset[str] = frozenset()

# Contract violations known in files other sessions own, as (test name, image) -> reason. Each
# is a strict expected failure: reported by `pytest -ra`, and the test fails again ("XPASS
# strict") as soon as the file is fixed, so the entry must then be removed.
KNOWN_VIOLATIONS: dict[tuple[str, str], str] = {}


def expect_known_violation(request, image_name: str) -> None:
    """Mark the running test as a strict expected failure if it is a known violation."""
    reason = KNOWN_VIOLATIONS.get((request.node.originalname, image_name))
    if reason:
        request.applymarker(pytest.mark.xfail(strict=True, reason=f"{image_name}: {reason}"))


_LOCK_LINE = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==(?P<version>\S+)")


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass
class Image:
    name: str
    folder: Path

    @property
    def dockerfile(self) -> Path:
        return self.folder / "Dockerfile"

    def parser(self) -> DockerfileParser:
        return DockerfileParser(fileobj=io.BytesIO(self.dockerfile.read_bytes()))

    def pyproject(self) -> dict:
        path = self.folder / "pyproject.toml"
        return tomllib.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}

    def scripts(self) -> dict[str, str]:
        return self.pyproject().get("project", {}).get("scripts", {})

    def lock(self) -> dict[str, str]:
        """`{normalized name: version}` from requirements.lock ({} if there is none)."""
        path = self.folder / "requirements.lock"
        if not path.is_file():
            return {}
        pins = {}
        for raw in path.read_text(encoding="utf-8").splitlines():
            line = raw.split("#", 1)[0].strip()
            if not line or line.startswith("-"):
                continue
            match = _LOCK_LINE.match(line)
            if not match:
                raise AssertionError(f"{path}: {raw!r} is not pinned as name==version")
            pins[normalize(match["name"])] = match["version"]
        return pins


def existing_images() -> list[Image]:
    return [Image(n, CONTAINERS / n) for n in IMAGE_NAMES if (CONTAINERS / n / "Dockerfile").is_file()]


def exec_form(parser: DockerfileParser, instruction: str) -> list[str] | None:
    """The last ENTRYPOINT/CMD of the final stage as a list, None when absent."""
    stages = [i for i, s in enumerate(parser.structure) if s["instruction"] == "FROM"]
    final = stages[-1] if stages else 0
    found = [
        s for s in parser.structure[final:] if s["instruction"] == instruction.upper()
    ]
    if not found:
        return None
    value = found[-1]["value"].strip()
    if not value.startswith("["):
        raise AssertionError(f"{instruction} {value!r} is in shell form; use the exec form")
    return json.loads(value)


def module_exists(folder: Path, module: str) -> bool:
    path = folder.joinpath(*module.split("."))
    return (path.with_suffix(".py")).is_file() or (path / "__init__.py").is_file()


def python_version(image: Image) -> str:
    """The image's Python as X.Y: a `# python-version: X.Y` comment, else from the base tag."""
    text = image.dockerfile.read_text(encoding="utf-8")
    comment = re.search(r"^#\s*python-version:\s*(3\.\d+)\s*$", text, re.MULTILINE)
    if comment:
        return comment[1]
    base = image.parser().baseimage or ""
    tagged = re.search(r"python:(3\.\d+)", base) or re.search(r"-py3(\d+)", base)
    if tagged:
        value = tagged[1]
        return value if value.startswith("3.") else f"3.{value}"
    raise AssertionError(
        f"{image.dockerfile}: cannot tell the image's Python version from {base!r}; "
        "add a '# python-version: 3.X' comment"
    )
