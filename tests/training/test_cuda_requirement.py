"""On SageMaker (EASEL_REQUIRE_CUDA=1, set on every training job) a host without a usable CUDA
driver fails the job before any model loads, with the driver found and needed in output/failure;
it never trains on the CPU. Without the requirement (local mode, tests) the CPU trains."""

from __future__ import annotations

import time

import pytest

from easel_contracts.instances import cuda_host_problem
from easel_training import cli
from easel_training.errors import TrainingInputError
from easel_training.job import resolve_device


def _run_cli(layout, monkeypatch) -> tuple[int, str]:
    monkeypatch.setenv("EASEL_OPT_ML", str(layout.root))
    code = cli.main([])
    failure = layout.root / "output" / "failure"
    return code, failure.read_text(encoding="utf-8") if failure.exists() else ""


def test_required_cuda_on_this_cpu_host_fails_the_job_at_once(make_job, monkeypatch):
    layout = make_job()
    monkeypatch.setenv("EASEL_DEVICE", "auto")
    monkeypatch.setenv("EASEL_REQUIRE_CUDA", "1")
    started = time.monotonic()
    exit_code, failure = _run_cli(layout, monkeypatch)
    assert exit_code == 2
    assert failure.startswith("CUDA is required")
    assert time.monotonic() - started < 60
    assert not (layout.root / "model" / "Lora").exists()
    progress = (layout.root / "checkpoints" / "progress.json")
    assert not progress.exists() or '"failed"' in progress.read_text(encoding="utf-8")


def test_an_old_driver_is_named_with_the_one_needed():
    old = lambda: cuda_host_problem(  # noqa: E731
        driver_version="535.183.01", runtime_cuda="13.0", cuda_available=False)
    with pytest.raises(TrainingInputError, match="driver 535.183.01 found, 580 or newer needed"):
        resolve_device({"EASEL_REQUIRE_CUDA": "1"}, cuda_probe=old)


def test_a_host_that_runs_the_build_trains_on_cuda():
    assert resolve_device({"EASEL_REQUIRE_CUDA": "1"}, cuda_probe=lambda: None) == "cuda"


def test_required_cuda_and_a_cpu_device_conflict():
    with pytest.raises(TrainingInputError, match="EASEL_DEVICE is cpu but EASEL_REQUIRE_CUDA=1"):
        resolve_device({"EASEL_REQUIRE_CUDA": "1", "EASEL_DEVICE": "cpu"}, cuda_probe=lambda: None)


def test_without_the_requirement_the_cpu_is_used():
    assert resolve_device({"EASEL_DEVICE": "cpu"}, cuda_probe=lambda: "never asked") == "cpu"
