"""Each image's requirements.lock: exact pins that cover its package and resolve for the image."""

from __future__ import annotations

import ast
import importlib.metadata
import json
import re
import subprocess
import sys
import time

import pytest

from .conftest import CONTAINERS, IMAGE_NAMES
from .dockerfiles import Image, expect_known_violation, normalize, python_version

# pip does not widen `--platform manylinux_2_28_x86_64` to older manylinux tags, so list the
# glibc range every base image here satisfies (manylinux2014 = 2.17 ... 2.28).
PLATFORMS = [f"manylinux_2_{minor}_x86_64" for minor in range(17, 29)] + ["manylinux2014_x86_64"]


def _locked_image(name: str) -> Image:
    image = Image(name, CONTAINERS / name)
    if not (image.folder / "requirements.lock").is_file():
        pytest.fail(f"containers/{name}/requirements.lock is missing: every image pins its own")
    return image


@pytest.fixture(params=IMAGE_NAMES)
def locked(request) -> Image:
    expect_known_violation(request, request.param)
    return _locked_image(request.param)


def test_every_line_is_an_exact_pin(locked):
    assert locked.lock(), f"{locked.name}: empty lock"  # lock() rejects anything but ==


def test_lock_covers_the_package_dependencies(locked):
    assert locked.pyproject(), f"containers/{locked.name}/pyproject.toml is missing"
    dependencies = locked.pyproject()["project"].get("dependencies", [])
    pins = locked.lock()
    siblings = {f"easel-{n}" for n in (*IMAGE_NAMES, "contracts")}  # built from containers/
    missing = []
    for requirement in dependencies:
        name = normalize(re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0])
        if name not in pins and name not in siblings:
            missing.append(name)
    assert not missing, f"{locked.name}: pyproject dependencies not in requirements.lock: {missing}"


@pytest.mark.network
def test_lock_resolves_for_linux_x86_64_and_the_image_python(locked, tmp_path):
    version = python_version(locked)
    command = [
        sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed",
        "--only-binary=:all:", "--implementation", "cp", "--python-version", version,
        *[arg for platform in PLATFORMS for arg in ("--platform", platform)],
        "--target", str(tmp_path / "target"), "--report", str(tmp_path / "report.json"),
        "-r", str(locked.folder / "requirements.lock"),
    ]
    started = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    elapsed = time.monotonic() - started
    errors = "\n".join(line for line in result.stderr.splitlines() if "WARNING" not in line)
    assert result.returncode == 0, f"{locked.name} (python {version}):\n{errors}"
    report = json.loads((tmp_path / "report.json").read_text())
    resolved = {normalize(item["metadata"]["name"]): item["metadata"]["version"]
                for item in report["install"]}
    for name, version_pin in locked.lock().items():
        assert resolved.get(name) == version_pin, f"{name}: locked {version_pin}, got {resolved}"
    print(f"{locked.name}: lock resolved in {elapsed:.1f} s")


def _third_party_imports(image: Image) -> dict[str, str]:
    """`{top-level module: first file importing it}` for the image's own packages."""
    own = {p.name for p in image.folder.iterdir() if (p / "__init__.py").is_file()}
    found: dict[str, str] = {}
    for package in sorted(own):
        for path in sorted((image.folder / package).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".", 1)[0]
                    if top not in sys.stdlib_module_names and top not in own:
                        found.setdefault(top, str(path.relative_to(image.folder)))
    return found


def test_lock_provides_every_third_party_import(locked):
    assert any((p / "__init__.py").is_file() for p in locked.folder.iterdir()), (
        f"containers/{locked.name} has no package"
    )
    providers = importlib.metadata.packages_distributions()
    pins = locked.lock()
    siblings = {f"easel-{n}" for n in (*IMAGE_NAMES, "contracts")}  # built from containers/
    missing = []
    for module, where in sorted(_third_party_imports(locked).items()):
        distributions = {normalize(d) for d in providers.get(module, [])}
        if not distributions:
            missing.append(f"{module} (imported in {where}; not installed here either)")
        elif not distributions & (set(pins) | siblings):
            missing.append(f"{module} from {sorted(distributions)} (imported in {where})")
    assert not missing, f"{locked.name}: imports the lock does not install: {missing}"
