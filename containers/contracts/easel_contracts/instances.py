"""SageMaker GPU instance facts: the allowlist entry, the family table and the driver rule.

Three parties read these: the CDK app validates `config/*.yaml`'s `instance_types` with
`InstanceTypes`, the portal reads the same allowlist back from the stack (`EASEL_PORTAL_CONFIG`)
and builds endpoint configs from `GPU_FAMILIES` (the `InferenceAmiVersion` per family), and the
inference server and the training job apply `cuda_host_problem` at start.

Per deployment (config, because it varies by region and by choice): which types are allowed, their
GPU count and memory, whether they have local NVMe storage, and the hourly price. Per family
(facts from AWS and NVIDIA, each row citing its page): the GPU and its compute capability, the
SageMaker inference AMI that runs the images' CUDA build and that AMI's driver.

Why the AMI matters: the images lock torch with CUDA 13 runtime wheels, which need an NVIDIA driver
580 or newer (NVIDIA's minor-version compatibility rule, `MIN_DRIVER_FOR_CUDA`). Without an
`InferenceAmiVersion`, SageMaker hosts run driver 470 (g4dn/g5/p4d) or 535/550 (g6/p5), where
torch sees no GPU. Training hosts have no AMI selector; their driver is not documented by AWS, so
the training job checks it at start and fails with "driver X found, Y needed".
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, NamedTuple

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

# --- the allowlist entry (per deployment, from config)


class InstanceFacts(BaseModel):
    """One allowed SageMaker instance type and the facts the portal needs about it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    gpu_memory_gb: float = Field(gt=0, le=2048, description="GPU memory of the whole instance")
    gpus: int = Field(default=1, ge=1, le=16)
    instance_storage: bool = Field(
        description="True when the type has local NVMe storage; such types take no EBS volume size"
    )
    hourly_usd: float = Field(ge=0, le=1000, description="on-demand price in the deploy region")


# --- the family table (facts from AWS and NVIDIA)

# SageMaker inference AMI whose driver runs the images' CUDA 13.0 runtime.
AMI_GPU_4_1 = "al2023-ami-sagemaker-inference-gpu-4-1"
AMI_DRIVERS: dict[str, tuple[int, str]] = {
    # InferenceAmiVersion -> (NVIDIA driver major, highest CUDA it runs). Source: the
    # ProductionVariant API reference (InferenceAmiVersion), mirrored in botocore's model.
    "al2-ami-sagemaker-inference-gpu-2": (535, "12.2"),
    "al2-ami-sagemaker-inference-gpu-2-1": (535, "12.2"),
    "al2-ami-sagemaker-inference-gpu-3-1": (550, "12.4"),
    AMI_GPU_4_1: (580, "13.0"),
}
PRODUCTION_VARIANT_DOC = "https://docs.aws.amazon.com/sagemaker/latest/APIReference/API_ProductionVariant.html"
INFERENCE_DRIVERS_DOC = "https://docs.aws.amazon.com/sagemaker/latest/dg/inference-gpu-drivers.html"
INSTANCE_GPUS_DOC = "https://docs.aws.amazon.com/ec2/latest/instancetypes/ac.html"
CUDA_GPUS_DOC = "https://developer.nvidia.com/cuda-gpus"
CUDA_COMPAT_DOC = "https://docs.nvidia.com/deploy/cuda-compatibility/"

# NVIDIA's minor-version compatibility: an application built with CUDA <major>.x runs on a Linux
# driver at or above this version, whatever the minor (CUDA_COMPAT_DOC, "Minor Version
# Compatibility" table).
MIN_DRIVER_FOR_CUDA: dict[int, int] = {11: 450, 12: 525, 13: 580}


class GpuFamily(BaseModel):
    """One SageMaker GPU instance family: its GPU, the inference AMI Easel sets, and sources."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    gpu: str
    compute_capability: tuple[int, int]
    inference_ami: str = Field(description="the ProductionVariant InferenceAmiVersion Easel sets")
    sources: tuple[str, ...] = Field(min_length=1)

    @property
    def inference_driver(self) -> int:
        return AMI_DRIVERS[self.inference_ami][0]

    @property
    def inference_cuda(self) -> str:
        return AMI_DRIVERS[self.inference_ami][1]

    @property
    def sm(self) -> str:
        major, minor = self.compute_capability
        return f"sm_{major}{minor}"


def _family(gpu: str, capability: tuple[int, int]) -> GpuFamily:
    return GpuFamily(
        gpu=gpu, compute_capability=capability, inference_ami=AMI_GPU_4_1,
        sources=(INFERENCE_DRIVERS_DOC, PRODUCTION_VARIANT_DOC, INSTANCE_GPUS_DOC, CUDA_GPUS_DOC),
    )


# Instance family -> GPU, compute capability, AMI (-> driver -> highest CUDA, from AMI_DRIVERS).
# Not here: ml.p3 (V100, sm_70): the CUDA 13 torch wheels carry no kernels below sm_75, and
# ml.p2 (K80). A family joins only once its row holds for the locks (tests/contracts).
GPU_FAMILIES: dict[str, GpuFamily] = {
    "g4dn": _family("NVIDIA T4", (7, 5)),
    "g5": _family("NVIDIA A10G", (8, 6)),
    "g6": _family("NVIDIA L4", (8, 9)),
    "g6e": _family("NVIDIA L40S", (8, 9)),
    "p4d": _family("NVIDIA A100 40GB", (8, 0)),
    "p4de": _family("NVIDIA A100 80GB", (8, 0)),
    "p5": _family("NVIDIA H100", (9, 0)),
    "p5e": _family("NVIDIA H200", (9, 0)),
    "p5en": _family("NVIDIA H200", (9, 0)),
}

INSTANCE_TYPE_PATTERN = r"^ml\.(?P<family>[a-z0-9]+)\.(?P<size>(?:\d+)?x?large|metal)$"
_INSTANCE_RE = re.compile(INSTANCE_TYPE_PATTERN)


def family_of(instance_type: str) -> GpuFamily:
    """The family row of `ml.<family>.<size>`; `ValueError` saying what to use otherwise."""
    match = _INSTANCE_RE.match(instance_type)
    if not match:
        raise ValueError(f"{instance_type!r} is not a SageMaker instance type (like ml.g5.xlarge)")
    family = GPU_FAMILIES.get(match["family"])
    if family is None:
        raise ValueError(
            f"{instance_type!r} is not a GPU family Easel's images run on; "
            f"use one of: {', '.join(GPU_FAMILIES)}"
        )
    return family


# GPUs per instance type (the sizes Easel's families come in). Sources: the EC2 accelerated
# computing specifications (INSTANCE_GPUS_DOC, "Accelerators" table) and AWS Batch's GPU job page
# (BATCH_GPU_JOBS_DOC), which lists each g4dn/g5/g6/g6e/p4d/p5 size with its GPU count.
BATCH_GPU_JOBS_DOC = "https://docs.aws.amazon.com/batch/latest/userguide/gpu-jobs.html"
_SINGLE_GPU_SIZES = ("xlarge", "2xlarge", "4xlarge", "8xlarge", "16xlarge")
INSTANCE_GPUS: dict[str, int] = {
    **{f"ml.{family}.{size}": 1 for family in ("g4dn", "g5", "g6", "g6e")
       for size in _SINGLE_GPU_SIZES},
    "ml.g4dn.12xlarge": 4,
    "ml.g5.12xlarge": 4, "ml.g5.24xlarge": 4, "ml.g5.48xlarge": 8,
    "ml.g6.12xlarge": 4, "ml.g6.24xlarge": 4, "ml.g6.48xlarge": 8,
    "ml.g6e.12xlarge": 4, "ml.g6e.24xlarge": 4, "ml.g6e.48xlarge": 8,
    "ml.p4d.24xlarge": 8, "ml.p4de.24xlarge": 8,
    "ml.p5.48xlarge": 8, "ml.p5e.48xlarge": 8, "ml.p5en.48xlarge": 8,
}


# Host memory (GiB) and local NVMe instance storage (GB, 0: EBS only) per instance type. Source:
# the EC2 accelerated computing specifications (INSTANCE_GPUS_DOC: "Memory (GiB)" in the
# summary table, "Instance store volumes" in the instance storage table). Both memory plans read
# them: the serving plan (text encoders kept in host memory, the model unpacked on local disk)
# and the training plan (the pipeline loaded on the CPU first).
class HostFacts(NamedTuple):
    memory_gib: int
    nvme_gb: int


INSTANCE_HOSTS: dict[str, HostFacts] = {f"ml.{name}": HostFacts(*facts) for name, facts in {
    "g4dn.xlarge": (16, 125), "g4dn.2xlarge": (32, 225), "g4dn.4xlarge": (64, 225),
    "g4dn.8xlarge": (128, 900), "g4dn.12xlarge": (192, 900), "g4dn.16xlarge": (256, 900),
    "g5.xlarge": (16, 250), "g5.2xlarge": (32, 450), "g5.4xlarge": (64, 600),
    "g5.8xlarge": (128, 900), "g5.12xlarge": (192, 3800), "g5.16xlarge": (256, 1900),
    "g5.24xlarge": (384, 3800), "g5.48xlarge": (768, 7600),
    "g6.xlarge": (16, 250), "g6.2xlarge": (32, 450), "g6.4xlarge": (64, 600),
    "g6.8xlarge": (128, 900), "g6.12xlarge": (192, 3760), "g6.16xlarge": (256, 1880),
    "g6.24xlarge": (384, 3760), "g6.48xlarge": (768, 7520),
    "g6e.xlarge": (32, 250), "g6e.2xlarge": (64, 450), "g6e.4xlarge": (128, 600),
    "g6e.8xlarge": (256, 900), "g6e.12xlarge": (384, 3800), "g6e.16xlarge": (512, 1900),
    "g6e.24xlarge": (768, 3800), "g6e.48xlarge": (1536, 7600),
    "p4d.24xlarge": (1152, 8000), "p4de.24xlarge": (1152, 8000),
    "p5.48xlarge": (2048, 30400), "p5e.48xlarge": (2048, 30400), "p5en.48xlarge": (2048, 30400),
}.items()}


def host_memory_gib(instance_type: str) -> int | None:
    """The host memory of ``instance_type`` in GiB, None where ``INSTANCE_HOSTS`` has no row."""
    host = INSTANCE_HOSTS.get(instance_type)
    return None if host is None else host.memory_gib


def nvme_gb(instance_type: str) -> int | None:
    """The local NVMe storage of ``instance_type`` in GB (0: none), None where there is no row."""
    host = INSTANCE_HOSTS.get(instance_type)
    return None if host is None else host.nvme_gb


def gpu_count(instance_type: str) -> int | None:
    """The GPUs of ``instance_type`` (from ``INSTANCE_GPUS``), None where the table has no row."""
    family_of(instance_type)
    return INSTANCE_GPUS.get(instance_type)


def inference_ami(instance_type: str) -> str:
    """The `InferenceAmiVersion` an endpoint on `instance_type` must set."""
    return family_of(instance_type).inference_ami


def _check_instance_types(value: dict[str, InstanceFacts]) -> dict[str, InstanceFacts]:
    """Every type a GPU family Easel runs on; ``gpus`` from ``INSTANCE_GPUS`` where the entry
    leaves it out, and an entry that contradicts the table is refused."""
    if not value:
        raise ValueError("at least one instance type is required")
    checked: dict[str, InstanceFacts] = {}
    for name, facts in value.items():
        known = gpu_count(name)
        if known is not None and "gpus" not in facts.model_fields_set:
            facts = facts.model_copy(update={"gpus": known})
        elif known is not None and facts.gpus != known:
            raise ValueError(f"{name} has {known} GPUs ({INSTANCE_GPUS_DOC}), not {facts.gpus}; "
                             f"set gpus: {known} or leave it out")
        checked[name] = facts
    return checked


InstanceTypes = Annotated[dict[str, InstanceFacts], AfterValidator(_check_instance_types)]


# --- the driver rule, applied on the host by both containers

REQUIRE_CUDA_ENV = "EASEL_REQUIRE_CUDA"
NVIDIA_VERSION_FILE = "/proc/driver/nvidia/version"
_NVRM_RE = re.compile(r"Kernel Module\s+(?:for\s+\S+\s+)?(\d+\.\d+(?:\.\d+)?)")


def cuda_required(environ: Mapping[str, str]) -> bool:
    """True where the job must run on a GPU: `EASEL_REQUIRE_CUDA=1`, which the portal sets on every
    SageMaker model and training job (the local stand-in sets 0 unless it runs on a GPU)."""
    return environ.get(REQUIRE_CUDA_ENV, "").strip().lower() in ("1", "true", "yes")


def parse_driver_version(nvidia_version_text: str) -> str | None:
    """The driver version in `/proc/driver/nvidia/version` (e.g. `580.95.05`), or None."""
    match = _NVRM_RE.search(nvidia_version_text or "")
    return match[1] if match else None


def min_driver(cuda_version: str) -> int:
    """The lowest Linux driver major that runs CUDA `cuda_version` (e.g. "13.0" -> 580)."""
    try:
        major = int(cuda_version.split(".")[0])
    except ValueError:
        raise ValueError(f"{cuda_version!r} is not a CUDA version like 13.0") from None
    if major not in MIN_DRIVER_FOR_CUDA:
        raise ValueError(f"CUDA {cuda_version}: no minimum driver recorded (see {CUDA_COMPAT_DOC})")
    return MIN_DRIVER_FOR_CUDA[major]


def driver_runs_cuda(driver_version: str | int, cuda_version: str) -> bool:
    """Whether a driver (`580.95.05` or `580`) runs applications built with `cuda_version`."""
    return int(str(driver_version).split(".")[0]) >= min_driver(cuda_version)


def cuda_host_problem(
    *, driver_version: str | None, runtime_cuda: str | None, cuda_available: bool
) -> str | None:
    """Why this host cannot run the image's CUDA build, or None when it can.

    `driver_version` from `/proc/driver/nvidia/version` (None: no driver), `runtime_cuda` the CUDA
    the image's torch was built with (`torch.version.cuda`; None: a CPU build), `cuda_available`
    what torch found.
    """
    if runtime_cuda is None:
        return "CUDA is required but this image's torch is a CPU build"
    needed = min_driver(runtime_cuda)
    if driver_version is None:
        return (f"CUDA is required: no NVIDIA driver found, {needed} or newer needed "
                f"(CUDA {runtime_cuda})")
    if not driver_runs_cuda(driver_version, runtime_cuda):
        return (f"CUDA is required: NVIDIA driver {driver_version} found, {needed} or newer "
                f"needed (CUDA {runtime_cuda}); on SageMaker endpoints set InferenceAmiVersion "
                f"{AMI_GPU_4_1}")
    if not cuda_available:
        return (f"CUDA is required: NVIDIA driver {driver_version} found but torch sees no usable "
                f"GPU (CUDA {runtime_cuda})")
    return None


def this_host_problem(torch_module: Any, version_file: str = NVIDIA_VERSION_FILE) -> str | None:
    """`cuda_host_problem` for the running host: the driver from `version_file`, the CUDA build
    and GPU visibility from the caller's `torch` (passed in: this package does not depend on it)."""
    try:
        text = Path(version_file).read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    return cuda_host_problem(
        driver_version=parse_driver_version(text),
        runtime_cuda=torch_module.version.cuda,
        cuda_available=bool(torch_module.cuda.is_available()),
    )
