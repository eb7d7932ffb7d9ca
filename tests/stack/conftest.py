"""The stack's template, synthesized once per test session (with cdk-nag attached)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.hookimpl(tryfirst=True)  # before xdist reads the marks to group the tests
def pytest_collection_modifyitems(config, items):
    # Keep every test that uses the synthesized template on one xdist worker: one synth.
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).is_relative_to(here):
            item.add_marker(pytest.mark.xdist_group("cdk-synth"))


@dataclass
class Synth:
    template: dict[str, Any]
    template_path: Path | None
    nag_error: str | None
    stack: Any

    def resources(self, type_name: str) -> dict[str, dict[str, Any]]:
        return {
            logical_id: resource
            for logical_id, resource in self.template["Resources"].items()
            if resource["Type"] == type_name
        }

    def only(self, type_name: str, *, path_contains: str = "") -> tuple[str, dict[str, Any]]:
        found = {
            k: v
            for k, v in self.resources(type_name).items()
            if path_contains in v.get("Metadata", {}).get("aws:cdk:path", "")
        }
        assert len(found) == 1, f"expected one {type_name} ({path_contains}), got {list(found)}"
        return next(iter(found.items()))


def synthesize(tmp: Path, **build_kwargs: Any) -> Synth:
    from stacks.app import build_app

    app, stack = build_app(outdir=tmp, **build_kwargs)
    nag_error = None
    try:
        assembly = app.synth()
    except Exception as error:  # cdk-nag findings abort synthesis
        report = tmp / "validation-report.json"
        nag_error = report.read_text() if report.exists() else str(error)
        app, stack = build_app(outdir=tmp / "no-nag", nag=False, **build_kwargs)
        assembly = app.synth()
    artifact = assembly.get_stack_artifact(stack.artifact_id)
    path = Path(assembly.directory) / artifact.template_file
    return Synth(json.loads(path.read_text()), path, nag_error, stack)


@pytest.fixture(scope="session")
def synth(tmp_path_factory) -> Synth:
    return synthesize(tmp_path_factory.mktemp("cdk-out"), stage="default")


@pytest.fixture(scope="session")
def template(synth) -> dict[str, Any]:
    return synth.template
