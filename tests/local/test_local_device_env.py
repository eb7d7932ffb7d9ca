"""The stand-in runs the containers on this machine: it overrides the EASEL_REQUIRE_CUDA=1 that
the portal sets for SageMaker's GPU hosts, so local mode keeps working on a CPU."""

from __future__ import annotations

from easel_contracts.instances import cuda_required
from local.settings import StandInSettings


def test_a_cpu_stand_in_turns_the_cuda_requirement_off():
    env = {"EASEL_REQUIRE_CUDA": "1", **StandInSettings(device="cpu").device_env()}
    assert cuda_required(env) is False


def test_a_gpu_stand_in_keeps_the_cuda_requirement():
    assert cuda_required(StandInSettings(device="cuda").device_env()) is True
