"""lock_constraints: the test environment is held to the images' locked library versions."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest

from scripts import lock_constraints


def _image(root: Path, name: str, dependencies: list[str], lock: str) -> None:
    folder = root / "containers" / name
    folder.mkdir(parents=True)
    listed = ", ".join(f'"{d}"' for d in dependencies)
    (folder / "pyproject.toml").write_text(f'[project]\nname = "{name}"\ndependencies = [{listed}]\n')
    (folder / "requirements.lock").write_text(lock)


def test_constrains_direct_dependencies_and_passed_through_libraries_only(tmp_path) -> None:
    _image(tmp_path, "a", ["Diffusers>=0.30", "torch"],
           "# comment\ndiffusers==0.42.1\ntorch==2.13.0\nrich==15.0.0\ntokenizers==0.23.3\n")
    assert lock_constraints.constraints(tmp_path) == {
        "diffusers": "0.42.1", "torch": "2.13.0", "tokenizers": "0.23.3"}


def test_two_images_locking_one_library_differently_is_an_error(tmp_path) -> None:
    _image(tmp_path, "a", ["numpy"], "numpy==2.4.6\n")
    _image(tmp_path, "b", ["numpy"], "numpy==2.3.0\n")
    with pytest.raises(SystemExit, match="numpy is locked at"):
        lock_constraints.constraints(tmp_path)


def test_the_test_environment_runs_the_locked_versions() -> None:
    for name, version in lock_constraints.constraints().items():
        installed = importlib.metadata.version(name).split("+", 1)[0]
        assert installed == version, f"{name}: locked {version}, installed {installed}"
