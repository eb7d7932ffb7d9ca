"""The training image's Dockerfile and lock: hadolint, SageMaker's `train` command, the named
`inference` build context, and the lock pinning the library versions these tests ran with."""

from __future__ import annotations

import importlib.metadata
import io
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from dockerfile_parse import DockerfileParser

CONTAINERS = Path(__file__).resolve().parents[2] / "containers"
FOLDER = CONTAINERS / "training"
HADOLINT = Path(sys.executable).with_name("hadolint")


def _parser() -> DockerfileParser:
    return DockerfileParser(fileobj=io.BytesIO((FOLDER / "Dockerfile").read_bytes()))


def _lock() -> dict[str, str]:
    pins = {}
    for line in (FOLDER / "requirements.lock").read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


def test_hadolint_is_clean():
    result = subprocess.run([str(HADOLINT), "--no-color", str(FOLDER / "Dockerfile")],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_sagemaker_train_command_is_the_console_script():
    parser = _parser()
    cmd = [i["value"] for i in parser.structure if i["instruction"] == "CMD"]
    assert cmd == ['["train"]']
    assert not [i for i in parser.structure if i["instruction"] == "ENTRYPOINT"]
    scripts = tomllib.loads((FOLDER / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["train"] == "easel_training.cli:main"
    labels = parser.labels
    assert labels["org.opencontainers.image.title"] == "easel-training"
    assert labels["org.opencontainers.image.source"]


def test_copies_exist_in_the_containers_context():
    # One context for every image: containers/ (docker build -f training/Dockerfile containers/).
    sources = []
    for instruction in _parser().structure:
        if instruction["instruction"] != "COPY":
            continue
        words = instruction["value"].split()
        assert not any(w.startswith("--from=") for w in words), instruction["content"]
        for source in [w for w in words if not w.startswith("--")][:-1]:
            assert (CONTAINERS / source).exists(), f"{instruction['content'].strip()}: {source}"
            sources.append(source)
    # The job imports the inference package and the contracts: both are installed.
    assert "inference/easel_inference" in sources
    assert "contracts/easel_contracts" in sources


def test_lock_is_installed_without_resolution_and_pins_the_tested_libraries():
    runs = " ".join(i["value"] for i in _parser().structure if i["instruction"] == "RUN")
    assert re.search(r"pip install --no-cache-dir --no-deps -r requirements\.lock", runs)
    pins = _lock()
    for name in ("torch", "diffusers", "transformers", "peft", "accelerate", "safetensors"):
        installed = importlib.metadata.version(name).split("+", 1)[0]
        assert pins[name] == installed, f"{name}: lock {pins[name]}, tests ran with {installed}"
    assert "open-clip-torch" in pins  # the CLIP vocabulary file of the offline tokenizer
