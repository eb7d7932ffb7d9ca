"""Will a model fit an instance type? GPU memory, host RAM, dtype and disk, per family.

The portal plans before it deploys: its deploy form offers only the instance types a model fits,
and a deploy on one it does not fit is refused with the figures. The inference server reads the
plan's choice back from its environment (``EASEL_TEXT_ENCODER_OFFLOAD``): text encoders kept in
host memory and moved to the GPU one at a time while a prompt is encoded, when the model fits
only that way.

The weights are the released components' parameter counts (``model_sizes``) at the serving
dtype; the working memory (activations, the VAE decode at the native size, batch 1) is an
estimate per family to be replaced by the GPU bench's measurements. ``dtype``: bfloat16 where
the GPU has fast bf16 (compute capability 8.0 and up: A10G, L4, L40S, A100, H100), float16 below
it (T4). SD3.5 and FLUX.1 overflow in float16 (their T5 and transformer activations exceed its
range), so they need bf16 and are refused on a T4.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from .families import FAMILIES, ModelFamily
from .instances import InstanceFacts, family_of
from .model_sizes import is_toy, released_bytes, sizes_of

OFFLOAD_ENV = "EASEL_TEXT_ENCODER_OFFLOAD"
GIB = 1024**3
CUDA_CONTEXT_GIB = 1.0  # the CUDA context, cuBLAS/cuDNN workspaces and allocator slack
HOST_OVERHEAD_GIB = 4.0  # Python, torch, the server and the OS besides the weights
HOST_USABLE = 0.9  # of the instance's memory: what the container may use
BF16_MIN_CAPABILITY = (8, 0)

# working memory at the native size, batch 1, GiB (estimates; see the module docstring)
_WORKING_GIB: dict[ModelFamily, float] = {
    ModelFamily.SD1: 2.0, ModelFamily.SD2: 2.5, ModelFamily.SDXL: 4.0,
    ModelFamily.SDXL_REFINER: 4.0, ModelFamily.SD35_MEDIUM: 4.0, ModelFamily.SD35_LARGE: 5.0,
    ModelFamily.FLUX_DEV: 5.0, ModelFamily.FLUX_SCHNELL: 5.0}

# EC2 instance memory (GiB) and local NVMe (GB) by type; the EC2 accelerated-computing instance
# specifications: https://docs.aws.amazon.com/ec2/latest/instancetypes/ac.html
_HOSTS: dict[str, tuple[int, int]] = {
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
}

Dtype = Literal["float16", "bfloat16"]


class Footprint(BaseModel):
    """A family's weights at one dtype, GiB."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    denoiser_gib: float
    vae_gib: float
    text_encoders_gib: tuple[float, ...]
    working_gib: float

    @property
    def full_gpu_gib(self) -> float:
        return (self.denoiser_gib + self.vae_gib + sum(self.text_encoders_gib)
                + self.working_gib + CUDA_CONTEXT_GIB)

    @property
    def offload_gpu_gib(self) -> float:
        """Denoiser and VAE resident; one text encoder at a time beside them while encoding."""
        encoding = max(self.text_encoders_gib, default=0.0) + 0.5
        return self.denoiser_gib + self.vae_gib + max(encoding, self.working_gib) + \
            CUDA_CONTEXT_GIB


def footprint(family: ModelFamily, dtype: Dtype, *, model_bytes: int | None = None) -> Footprint:
    """A family's footprint as released; a model under ``model_sizes.TOY_SHARE`` of that (the tiny
    random-weight models of the tests and of local mode, by the manifest's bytes) is scaled
    down to its own size, as the training plan does."""
    width = 2  # bytes a parameter, both 16-bit dtypes
    sizes = sizes_of(family)
    released = Footprint(
        denoiser_gib=sizes.denoiser * width / GIB,
        vae_gib=sizes.vae * width / GIB,
        text_encoders_gib=tuple(count * width / GIB for count in sizes.text_encoders.values()),
        working_gib=_WORKING_GIB[family],
    )
    if model_bytes is None or not is_toy(family, model_bytes):
        return released
    scale = model_bytes / released_bytes(family, width)
    return Footprint(denoiser_gib=released.denoiser_gib * scale,
                     vae_gib=released.vae_gib * scale,
                     text_encoders_gib=tuple(g * scale for g in released.text_encoders_gib),
                     working_gib=released.working_gib * scale)


class MemoryPlan(BaseModel):
    """How (and whether) a model runs on an instance type; ``reason`` says why not."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    instance_type: str
    family: ModelFamily
    dtype: Dtype
    fits: bool
    offload_text_encoders: bool = False
    gpu_need_gib: float = Field(ge=0)
    gpu_have_gib: float = Field(ge=0)
    host_need_gib: float = Field(ge=0)
    host_have_gib: float | None = None
    disk_need_gb: float = Field(ge=0)
    disk_have_gb: float | None = None
    reason: str | None = None

    def summary(self) -> str:
        how = "with text-encoder offload" if self.offload_text_encoders else "fully on the GPU"
        if self.fits:
            return (f"{FAMILIES[self.family].label} fits {self.instance_type} {how} in "
                    f"{self.dtype} ({self.gpu_need_gib:.1f} of {self.gpu_have_gib:.1f} GiB GPU)")
        return f"{FAMILIES[self.family].label} does not fit {self.instance_type}: {self.reason}"


def host_memory_gib(instance_type: str) -> int | None:
    return _HOSTS.get(instance_type.removeprefix("ml."), (None, None))[0]


def nvme_gb(instance_type: str) -> int | None:
    return _HOSTS.get(instance_type.removeprefix("ml."), (None, None))[1]


def _serving_dtype(instance_type: str) -> tuple[Dtype, bool]:
    """(dtype, whether the GPU has fast bf16)."""
    fast_bf16 = family_of(instance_type).compute_capability >= BF16_MIN_CAPABILITY
    return ("bfloat16" if fast_bf16 else "float16"), fast_bf16


def plan(families: Iterable[ModelFamily | str], instance_type: str, facts: InstanceFacts, *,
         model_bytes: int, archive: bool = True,
         volume_size_gb: int | None = None) -> MemoryPlan:
    """The plan for the most demanding of a model's checkpoints (the server holds one pipeline
    a worker at a time; one worker a GPU) on ``instance_type``.

    Disk: an archive is downloaded and unpacked beside itself (twice its size), a prefix once.
    """
    chosen = [ModelFamily(f) for f in families]
    if not chosen:
        raise ValueError("a model with no checkpoint family has nothing to plan")
    dtype, fast_bf16 = _serving_dtype(instance_type)
    family = max(chosen, key=lambda f: footprint(f, dtype).full_gpu_gib)
    label = FAMILIES[family].label
    fp = footprint(family, dtype, model_bytes=model_bytes)
    gpu_have = facts.gpu_memory_gb * 1e9 / facts.gpus / GIB
    host_have = host_memory_gib(instance_type)
    disk_need = model_bytes * (2 if archive else 1) / 1e9
    disk_have = nvme_gb(instance_type) if facts.instance_storage else volume_size_gb
    base = {"instance_type": instance_type, "family": family, "dtype": dtype,
            "gpu_have_gib": round(gpu_have, 2), "host_have_gib": host_have,
            "disk_need_gb": round(disk_need, 2), "disk_have_gb": disk_have}

    def refuse(reason: str, gpu: float, host: float, offload: bool = False) -> MemoryPlan:
        return MemoryPlan(fits=False, reason=reason, gpu_need_gib=round(gpu, 2),
                          host_need_gib=round(host, 2), offload_text_encoders=offload, **base)

    host_full = HOST_OVERHEAD_GIB
    if FAMILIES[family].prediction == "flow" and not fast_bf16:
        return refuse(f"{label} needs bfloat16 (it overflows float16) and the "
                      f"{family_of(instance_type).gpu} has no fast bfloat16; choose an "
                      "instance type with an A10G, L4, L40S or newer GPU", fp.full_gpu_gib,
                      host_full)
    if disk_have is not None and disk_need > disk_have:
        return refuse(f"the model needs {disk_need:.0f} GB of disk (downloaded and unpacked), "
                      f"{instance_type} has {disk_have} GB", fp.full_gpu_gib, host_full)
    host_limit = host_have * HOST_USABLE if host_have is not None else None
    if fp.full_gpu_gib <= gpu_have:
        return MemoryPlan(fits=True, gpu_need_gib=round(fp.full_gpu_gib, 2),
                          host_need_gib=round(host_full, 2), **base)
    host_offload = HOST_OVERHEAD_GIB + sum(fp.text_encoders_gib)
    if fp.offload_gpu_gib <= gpu_have:
        if host_limit is not None and host_offload > host_limit:
            return refuse(
                f"{label} fits the GPU only with its text encoders in host memory, which needs "
                f"{host_offload:.1f} GiB of RAM; {instance_type} has {host_have} GiB "
                f"({host_limit:.1f} usable): choose a larger size of the same GPU",
                fp.offload_gpu_gib, host_offload, offload=True)
        return MemoryPlan(fits=True, offload_text_encoders=True,
                          gpu_need_gib=round(fp.offload_gpu_gib, 2),
                          host_need_gib=round(host_offload, 2), **base)
    return refuse(f"{label} needs {fp.full_gpu_gib:.1f} GiB of GPU memory in {dtype} "
                  f"({fp.offload_gpu_gib:.1f} GiB with text-encoder offload); {instance_type} "
                  f"has {gpu_have:.1f} GiB a GPU", fp.full_gpu_gib, host_full)
