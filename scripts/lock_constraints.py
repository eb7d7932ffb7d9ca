"""Print pip constraints that hold the test environment to the images' locked versions.

`make venv` passes the output to pip (`-c`), so the tests exercise the library versions the
images ship, not whatever was released upstream since the locks were written. Only the images'
direct dependencies (from each `containers/*/pyproject.toml`) and the few libraries whose
behaviour they pass through (`TRANSITIVE`) are constrained: the dev tools (moto, the SageMaker
SDK, cfn-lint, ...) resolve the rest freely.

    python scripts/lock_constraints.py > .venv/constraints.txt
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TRANSITIVE = ("huggingface-hub", "tokenizers", "safetensors", "starlette")


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_pins(lock: Path) -> dict[str, str]:
    pins = {}
    for raw in lock.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            if not version:
                raise SystemExit(f"{lock}: not an exact pin: {raw!r}")
            pins[normalize(name)] = version.strip()
    return pins


def constraints(root: Path = ROOT) -> dict[str, str]:
    chosen: dict[str, str] = {}
    for project in sorted((root / "containers").glob("*/pyproject.toml")):
        lock = project.with_name("requirements.lock")
        if not lock.is_file():
            continue
        pins = lock_pins(lock)
        declared = tomllib.loads(project.read_text())["project"].get("dependencies", [])
        names = [normalize(re.split(r"[\s\[<>=!~;]", d, maxsplit=1)[0]) for d in declared]
        for name in [*names, *TRANSITIVE]:
            if name not in pins:
                continue
            if chosen.get(name, pins[name]) != pins[name]:
                raise SystemExit(
                    f"{name} is locked at {chosen[name]} and {pins[name]} in different images"
                )
            chosen[name] = pins[name]
    return chosen


def main() -> int:
    for name, version in sorted(constraints().items()):
        sys.stdout.write(f"{name}=={version}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
