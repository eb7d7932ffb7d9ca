"""AWS's and NVIDIA's rules for the GPU images, which the stand-ins (moto, local SageMaker) do not
enforce: each allowlisted type's host driver runs the locks' CUDA runtime, each AMI named exists in
SageMaker's API, and each GPU has kernels in the locked torch wheel."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import botocore
import pytest

from easel_contracts import instances
from stacks.config import load_config

ROOT = Path(__file__).resolve().parents[2]
CUDA_LOCKS = [ROOT / "containers" / name / "requirements.lock" for name in ("inference", "training")]

# torch.cuda.get_arch_list() of the PyPI wheel torch==2.13.0 (cu130, manylinux_2_28_x86_64), read
# from the CUDA arch flags compiled into its torch/lib/libtorch_python.so. A torch bump in a lock
# fails test_the_recorded_arch_list_is_for_the_locked_torch until the list is read again.
TORCH_WHEEL_ARCHS = {"2.13.0": ("sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120")}


def _pins(lock: Path) -> dict[str, str]:
    pins = {}
    for line in lock.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^([A-Za-z0-9_.-]+)==([^\s;#]+)", line.strip())
        if match:
            pins[match[1].lower()] = match[2]
    return pins


def _cuda_runtime(lock: Path) -> str:
    """CUDA major.minor of the lock's `nvidia-cuda-runtime*` wheel (what torch loads at run time)."""
    runtime = {name: v for name, v in _pins(lock).items()
               if name.startswith("nvidia-cuda-runtime")}
    assert len(runtime) == 1, f"{lock}: expected one nvidia-cuda-runtime* pin, got {runtime}"
    (version,) = runtime.values()
    return ".".join(version.split(".")[:2])


def _botocore_ami_enum() -> set[str]:
    data = Path(botocore.__file__).parent / "data" / "sagemaker"
    (model,) = sorted(data.glob("*/service-2.json*"))[-1:]
    opener = gzip.open if model.suffix == ".gz" else open
    with opener(model, "rt", encoding="utf-8") as handle:
        shapes = json.load(handle)["shapes"]
    member = shapes["ProductionVariant"]["members"]["InferenceAmiVersion"]["shape"]
    return set(shapes[member]["enum"])


def _allowlisted() -> list[str]:
    config = load_config()
    return sorted({*config.endpoints.instance_types, *config.training.instance_types})


def _endpoint_types() -> list[str]:
    return sorted(load_config().endpoints.instance_types)


def _kernel_runs_on(arch: str, capability: tuple[int, int]) -> bool:
    """NVIDIA's binary compatibility: SASS built for sm_XY runs on compute capability X.Z, Z >= Y;
    PTX (compute_XY) is JIT-compiled for any capability >= X.Y. (CUDA C++ Programming Guide,
    "Binary Compatibility" and "PTX Compatibility".)"""
    kind, _, digits = arch.partition("_")
    major, minor = int(digits[:-1]), int(digits[-1])
    if kind == "sm":
        return major == capability[0] and minor <= capability[1]
    return (major, minor) <= capability


def test_the_locks_use_one_cuda_runtime():
    assert len({_cuda_runtime(lock) for lock in CUDA_LOCKS}) == 1


@pytest.mark.parametrize("ami", sorted({*instances.AMI_DRIVERS,
                                        *(f.inference_ami for f in instances.GPU_FAMILIES.values())}))
def test_every_ami_named_is_in_sagemakers_api(ami):
    assert ami in _botocore_ami_enum()


@pytest.mark.parametrize("lock", CUDA_LOCKS, ids=lambda p: p.parent.name)
@pytest.mark.parametrize("instance_type", _endpoint_types())
def test_each_endpoint_types_ami_driver_runs_the_locks_cuda_runtime(instance_type, lock):
    family = instances.family_of(instance_type)
    cuda = _cuda_runtime(lock)
    assert instances.driver_runs_cuda(family.inference_driver, cuda), (
        f"{instance_type}: {family.inference_ami} has driver {family.inference_driver}; "
        f"CUDA {cuda} needs {instances.min_driver(cuda)}")


@pytest.mark.parametrize("instance_type", _allowlisted())
def test_each_allowlisted_gpu_has_kernels_in_the_locked_torch_wheel(instance_type):
    family = instances.family_of(instance_type)
    (torch_version,) = {_pins(lock)["torch"] for lock in CUDA_LOCKS}
    archs = TORCH_WHEEL_ARCHS[torch_version]
    assert any(_kernel_runs_on(arch, family.compute_capability) for arch in archs), (
        f"{instance_type}: {family.gpu} ({family.sm}) has no kernels in torch {torch_version}")


def test_the_recorded_arch_list_is_for_the_locked_torch():
    for lock in CUDA_LOCKS:
        assert _pins(lock)["torch"] in TORCH_WHEEL_ARCHS, f"{lock}: read the new wheel's arch list"


def test_every_known_family_runs_the_images():
    """Not only today's allowlist: any family config may name must pass the same rules."""
    cuda = _cuda_runtime(CUDA_LOCKS[0])
    archs = TORCH_WHEEL_ARCHS[_pins(CUDA_LOCKS[0])["torch"]]
    for name, family in instances.GPU_FAMILIES.items():
        assert instances.driver_runs_cuda(family.inference_driver, cuda), name
        assert any(_kernel_runs_on(a, family.compute_capability) for a in archs), name
        assert all(source.startswith("https://") for source in family.sources), name


def test_v100_is_not_a_known_family():
    # sm_70: the CUDA 13 wheels carry kernels from sm_75 up
    assert not any(_kernel_runs_on(a, (7, 0)) for a in TORCH_WHEEL_ARCHS["2.13.0"])
    with pytest.raises(ValueError, match="not a GPU family"):
        instances.family_of("ml.p3.2xlarge")


def test_the_default_drivers_without_an_ami_would_not_run_cuda_13():
    # inference-gpu-drivers: 470 on g4dn/g5/p4d, 535 on g6/p5, 550 on p5e/p5en by default
    for driver in (470, 535, 550):
        assert not instances.driver_runs_cuda(driver, "13.0")
    assert instances.driver_runs_cuda("580.95.05", "13.0")


@pytest.mark.parametrize(("text", "version"), [
    ("NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.54.03  Tue Jun  6 22:20:39 UTC 2023\n"
     "GCC version:  gcc version 10.5.0", "535.54.03"),
    ("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.95.05  Release Build  "
     "(dvs-builder@U16-I3-B03-4-3)  Tue Sep 23 09:55:41 UTC 2025", "580.95.05"),
    ("", None),
])
def test_driver_version_is_read_from_the_proc_file(text, version):
    assert instances.parse_driver_version(text) == version


def test_host_problem_says_driver_found_and_needed():
    problem = instances.cuda_host_problem(driver_version="470.256.02", runtime_cuda="13.0",
                                          cuda_available=False)
    assert problem is not None
    assert "driver 470.256.02 found, 580 or newer needed" in problem
    assert instances.AMI_GPU_4_1 in problem


@pytest.mark.parametrize(("driver", "runtime", "available", "words"), [
    (None, "13.0", False, "no NVIDIA driver found, 580 or newer needed"),
    (None, None, False, "CPU build"),
    ("580.95.05", "13.0", False, "sees no usable GPU"),
])
def test_host_problem_names_what_is_missing(driver, runtime, available, words):
    problem = instances.cuda_host_problem(driver_version=driver, runtime_cuda=runtime,
                                          cuda_available=available)
    assert problem is not None and words in problem


def test_a_host_that_runs_the_build_has_no_problem():
    assert instances.cuda_host_problem(driver_version="580.95.05", runtime_cuda="13.0",
                                       cuda_available=True) is None


@pytest.mark.parametrize(("environ", "required"), [
    ({}, False), ({"EASEL_REQUIRE_CUDA": "0"}, False), ({"EASEL_REQUIRE_CUDA": "1"}, True),
])
def test_cuda_is_required_only_when_asked(environ, required):
    assert instances.cuda_required(environ) is required


# --- GPUs per instance type (one inference worker per GPU)

@pytest.mark.parametrize(("instance_type", "gpus"), [
    ("ml.g5.xlarge", 1), ("ml.g5.12xlarge", 4), ("ml.g6e.12xlarge", 4), ("ml.g4dn.12xlarge", 4),
    ("ml.p4d.24xlarge", 8), ("ml.p5.48xlarge", 8), ("ml.g5.48xlarge", 8),
])
def test_gpu_count_per_instance_type_follows_the_ec2_specifications(instance_type, gpus):
    # INSTANCE_GPUS_DOC / BATCH_GPU_JOBS_DOC: the Accelerators tables
    assert instances.gpu_count(instance_type) == gpus


def test_a_type_outside_the_families_has_no_gpu_count():
    with pytest.raises(ValueError, match="not a GPU family"):
        instances.gpu_count("ml.m5.12xlarge")


def _allowlist(**entries):
    from pydantic import TypeAdapter

    return TypeAdapter(instances.InstanceTypes).validate_python(entries)


def test_an_allowlist_entry_without_gpus_takes_the_types_count():
    facts = _allowlist(**{"ml.g5.12xlarge": {"gpu_memory_gb": 96, "instance_storage": True,
                                              "hourly_usd": 7}})
    assert facts["ml.g5.12xlarge"].gpus == 4


def test_an_allowlist_entry_that_contradicts_the_gpu_count_is_refused():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="ml.g5.12xlarge has 4 GPUs"):
        _allowlist(**{"ml.g5.12xlarge": {"gpu_memory_gb": 24, "gpus": 1,
                                          "instance_storage": True, "hourly_usd": 7}})


def test_the_endpoint_allowlist_offers_a_multi_gpu_type():
    assert any(facts.gpus > 1 for facts in load_config().endpoints.instance_types.values())


# --- host memory and local NVMe per instance type (both memory plans read them)

@pytest.mark.parametrize(("instance_type", "memory_gib", "nvme_gb"), [
    ("ml.g4dn.xlarge", 16, 125), ("ml.g5.xlarge", 16, 250), ("ml.g6.xlarge", 16, 250),
    ("ml.g6e.xlarge", 32, 250), ("ml.g5.2xlarge", 32, 450), ("ml.g5.48xlarge", 768, 7600),
    ("ml.p4d.24xlarge", 1152, 8000), ("ml.p5.48xlarge", 2048, 30400),
])
def test_host_memory_and_nvme_follow_the_ec2_specifications(instance_type, memory_gib, nvme_gb):
    # INSTANCE_GPUS_DOC: "Memory (GiB)" and "Instance store volumes"
    assert instances.host_memory_gib(instance_type) == memory_gib
    assert instances.nvme_gb(instance_type) == nvme_gb


def test_every_type_with_a_gpu_count_has_its_host_facts():
    assert set(instances.INSTANCE_HOSTS) == set(instances.INSTANCE_GPUS)


def test_every_configured_type_has_its_host_memory():
    config = load_config()
    configured = {**config.endpoints.instance_types, **config.training.instance_types}
    assert [name for name in configured if instances.host_memory_gib(name) is None] == []


def test_a_type_without_a_row_has_no_host_facts():
    assert instances.host_memory_gib("ml.m5.xlarge") is None
    assert instances.nvme_gb("ml.m5.xlarge") is None
