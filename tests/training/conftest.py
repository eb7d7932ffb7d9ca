"""Fixtures for the training job tests: a SageMaker layout in tmp_path with a tiny random-weight
base model (built by easel_inference.builder) and small concept images drawn with PIL."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

SIZE = 32  # training and image size in the tests (the tiny model's latents are 16x16)
FAST = {
    "resolution": str(SIZE),
    "max_train_steps": "3",
    "validation_steps": "0",
    "checkpointing_steps": "0",
    "save_precision": "fp32",
}


def draw_concept(path: Path, *, size: tuple[int, int], seed: int) -> None:
    """A small picture: coloured background, a disc and a little noise."""
    rng = np.random.default_rng(seed)
    width, height = size
    image = Image.new("RGB", size, tuple(int(c) for c in rng.integers(0, 255, 3)))
    draw = ImageDraw.Draw(image)
    x, y = int(rng.integers(0, width // 2)), int(rng.integers(0, height // 2))
    draw.ellipse((x, y, x + width // 2, y + height // 2),
                 fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
    noise = rng.integers(-10, 10, (height, width, 3))
    array = np.clip(np.asarray(image, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
    Image.fromarray(array).save(path)


class JobLayout:
    """A ``$EASEL_OPT_ML`` folder for one job."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.concepts = root / "input" / "data" / "concepts"
        self.model_channel = root / "input" / "data" / "model"
        self.class_channel = root / "input" / "data" / "class"

    def write_hyperparameters(self, values: dict[str, object]) -> None:
        config = self.root / "input" / "config"
        config.mkdir(parents=True, exist_ok=True)
        (config / "hyperparameters.json").write_text(json.dumps(values), encoding="utf-8")

    def add_images(self, count: int, *, size: tuple[int, int] = (SIZE, SIZE), start: int = 0,
                   folder: Path | None = None) -> list[Path]:
        folder = folder or self.concepts
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for index in range(start, start + count):
            path = folder / f"image-{index}.png"
            draw_concept(path, size=size, seed=index)
            paths.append(path)
        return paths

    @property
    def paths(self):
        from easel_training.paths import JobPaths

        return JobPaths(self.root)


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    """Test processes share few cores: one thread each here and in `train` subprocesses."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def model_channels(tmp_path_factory) -> Callable[[str], Path]:
    """A tiny base model per architecture, built once per test process."""
    from easel_inference.builder import build_model_dir
    from easel_inference.flow_builder import FLOW_FAMILIES, build_flow_pipeline, save_flow_diffusers

    built: dict[str, Path] = {}

    def get(arch: str = "sd15") -> Path:
        if arch not in built:
            root = tmp_path_factory.mktemp(f"model-{arch}")
            if arch in FLOW_FAMILIES:  # SD3.5 / FLUX.1: a diffusers folder in the model layout
                save_flow_diffusers(build_flow_pipeline(arch, seed=0),
                                    root / "Stable-diffusion" / "tiny")
                built[arch] = root
            else:
                built[arch] = build_model_dir(root, arch=arch, size="tiny", name="tiny", seed=0)
        return built[arch]

    return get


@pytest.fixture
def make_job(tmp_path, model_channels, monkeypatch) -> Callable[..., JobLayout]:
    """Create a job folder: base model, ``images`` concept images, hyperparameters."""
    monkeypatch.setenv("EASEL_DEVICE", "cpu")
    monkeypatch.delenv("EASEL_NUM_PROCESSES", raising=False)
    counter = iter(range(1000))

    def make(hyperparameters: dict[str, object] | None = None, *, images: int = 2,
             arch: str = "sd15", image_size: tuple[int, int] = (SIZE, SIZE),
             with_model: bool = True) -> JobLayout:
        layout = JobLayout(tmp_path / f"job-{next(counter)}")
        layout.root.mkdir(parents=True)
        if with_model:
            layout.model_channel.parent.mkdir(parents=True, exist_ok=True)
            layout.model_channel.symlink_to(model_channels(arch), target_is_directory=True)
        if images:
            layout.add_images(images, size=image_size)
        values = {"instance_prompt": "a photo of sks dog", **FAST, **(hyperparameters or {})}
        layout.write_hyperparameters(values)
        return layout

    return make


PHASES = ["loading", "caching", "first_step", "training", "saving"]  # a job without class images


def record_progress_writes(patch: pytest.MonkeyPatch) -> list[tuple[str, int, str]]:
    """Every progress.json write from now on, as (phase, step, status)."""
    from easel_training import progress as reporter

    writes: list[tuple[str, int, str]] = []
    write = reporter.write_progress

    def recording(path, progress):
        writes.append((progress.phase, progress.step, progress.status))
        write(path, progress)

    patch.setattr(reporter, "write_progress", recording)
    return writes


def assert_phases_in_order(writes: list[tuple[str, int, str]], *, steps: int) -> None:
    phases = [phase for phase, _, _ in writes]
    assert list(dict.fromkeys(phases)) == PHASES  # every phase, each entered once, in order
    assert phases == sorted(phases, key=PHASES.index)
    # the first step's phase is written before the loop; the first step done is "training"
    assert writes[phases.index("first_step")][:2] == ("first_step", 0)
    assert writes[phases.index("training")][:2] == ("training", 1)
    assert writes[-1] == ("saving", steps, "completed")


def run_in_process(layout: JobLayout, stop=None):
    """Run the job in this process and return its JobOutcome (with the trained pipeline)."""
    from easel_training.job import run_job
    from easel_training.stopping import StopRequest

    return run_job(paths=layout.paths, stop=stop or StopRequest())
