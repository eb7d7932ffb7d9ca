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
from .instances import InstanceFacts, family_of, host_memory_gib, nvme_gb
from .model_sizes import is_toy, released_bytes, sizes_of

OFFLOAD_ENV = "EASEL_TEXT_ENCODER_OFFLOAD"
FP8_ENV = "EASEL_FP8_WEIGHTS"  # off | on | auto: SD3.5 / FLUX.1 transformer stored in float8
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


def footprint(family: ModelFamily, dtype: Dtype, *, model_bytes: int | None = None,
              fp8: bool = False) -> Footprint:
    """A family's footprint as released; a model under ``model_sizes.TOY_SHARE`` of that (the tiny
    random-weight models of the tests and of local mode, by the manifest's bytes) is scaled
    down to its own size, as the training plan does. ``fp8``: the denoiser stored in float8
    (1 byte a parameter; one layer at a time is upcast, within the working memory)."""
    width = 2  # bytes a parameter, both 16-bit dtypes
    sizes = sizes_of(family)
    released = Footprint(
        denoiser_gib=sizes.denoiser * width / GIB,
        vae_gib=sizes.vae * width / GIB,
        text_encoders_gib=tuple(count * width / GIB for count in sizes.text_encoders.values()),
        working_gib=_WORKING_GIB[family],
    )
    scale = 1.0
    if model_bytes is not None and is_toy(family, model_bytes):
        scale = model_bytes / released_bytes(family, width)
    return Footprint(denoiser_gib=released.denoiser_gib * scale * (0.5 if fp8 else 1.0),
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
    fp8_weights: bool = False  # the transformer stored in float8 (``FP8_ENV``)
    gpu_need_gib: float = Field(ge=0)
    gpu_have_gib: float = Field(ge=0)
    host_need_gib: float = Field(ge=0)
    host_have_gib: float | None = None
    disk_need_gb: float = Field(ge=0)
    disk_have_gb: float | None = None
    reason: str | None = None

    def summary(self) -> str:
        how = "with text-encoder offload" if self.offload_text_encoders else "fully on the GPU"
        weights = f"FP8 weights, {self.dtype} compute" if self.fp8_weights else self.dtype
        if self.fits:
            return (f"{FAMILIES[self.family].label} fits {self.instance_type} {how} in "
                    f"{weights} ({self.gpu_need_gib:.1f} of {self.gpu_have_gib:.1f} GiB GPU)")
        return f"{FAMILIES[self.family].label} does not fit {self.instance_type}: {self.reason}"


def _serving_dtype(instance_type: str) -> tuple[Dtype, bool]:
    """(dtype, whether the GPU has fast bf16)."""
    fast_bf16 = family_of(instance_type).compute_capability >= BF16_MIN_CAPABILITY
    return ("bfloat16" if fast_bf16 else "float16"), fast_bf16


def plan(families: Iterable[ModelFamily | str], instance_type: str, facts: InstanceFacts, *,
         model_bytes: int, archive: bool = True, volume_size_gb: int | None = None,
         fp8: Literal["off", "auto", "on"] = "off") -> MemoryPlan:
    """The plan for the most demanding of a model's checkpoints (the server holds one pipeline
    a worker at a time; one worker a GPU) on ``instance_type``.

    ``fp8`` (SD3.5 / FLUX.1 only): ``on`` plans the transformer stored in float8 (1 byte a
    parameter), ``auto`` only where the 16-bit plan does not fit, ``off`` never (a refusal then
    says when FP8 would fit). FP8 storage is a cast the layer undoes before it computes, so no
    FP8 tensor cores are needed: any GPU that serves the family in bf16 (A10G, L4, L40S, A100,
    H100) may store it; a T4 is refused before (no bf16).

    Disk: an archive is downloaded and unpacked beside itself (twice its size), a prefix once.
    """
    chosen = [ModelFamily(f) for f in families]
    if not chosen:
        raise ValueError("a model with no checkpoint family has nothing to plan")
    dtype, fast_bf16 = _serving_dtype(instance_type)
    family = max(chosen, key=lambda f: footprint(f, dtype).full_gpu_gib)
    label = FAMILIES[family].label
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
    full = footprint(family, dtype, model_bytes=model_bytes)
    if FAMILIES[family].prediction == "flow" and not fast_bf16:
        return refuse(f"{label} needs bfloat16 (it overflows float16) and the "
                      f"{family_of(instance_type).gpu} has no fast bfloat16; choose an "
                      "instance type with an A10G, L4, L40S or newer GPU", full.full_gpu_gib,
                      host_full)
    if disk_have is not None and disk_need > disk_have:
        return refuse(f"the model needs {disk_need:.0f} GB of disk (downloaded and unpacked), "
                      f"{instance_type} has {disk_have} GB", full.full_gpu_gib, host_full)
    host_limit = host_have * HOST_USABLE if host_have is not None else None
    flow = FAMILIES[family].prediction == "flow"
    # the server stores only SD3.5 / FLUX.1 transformers in FP8
    options = {"off": (False,), "on": (flow,), "auto": (False, True) if flow else (False,)}[fp8]
    host_refusal: MemoryPlan | None = None
    for stored_fp8 in options:
        fp = footprint(family, dtype, model_bytes=model_bytes, fp8=stored_fp8)
        if fp.full_gpu_gib <= gpu_have:
            return MemoryPlan(fits=True, fp8_weights=stored_fp8,
                              gpu_need_gib=round(fp.full_gpu_gib, 2),
                              host_need_gib=round(host_full, 2), **base)
        host_offload = HOST_OVERHEAD_GIB + sum(fp.text_encoders_gib)
        if fp.offload_gpu_gib <= gpu_have:
            if host_limit is not None and host_offload > host_limit:
                host_refusal = host_refusal or refuse(
                    f"{label} fits the GPU only with its text encoders in host memory, which "
                    f"needs {host_offload:.1f} GiB of RAM; {instance_type} has {host_have} GiB "
                    f"({host_limit:.1f} usable): choose a larger size of the same GPU",
                    fp.offload_gpu_gib, host_offload, offload=True)
                continue
            return MemoryPlan(fits=True, offload_text_encoders=True, fp8_weights=stored_fp8,
                              gpu_need_gib=round(fp.offload_gpu_gib, 2),
                              host_need_gib=round(host_offload, 2), **base)
    if host_refusal is not None:
        return host_refusal
    fp = footprint(family, dtype, model_bytes=model_bytes, fp8=options[-1])
    weights = "FP8 weights" if options[-1] else dtype
    reason = (f"{label} needs {fp.full_gpu_gib:.1f} GiB of GPU memory in {weights} "
              f"({fp.offload_gpu_gib:.1f} GiB with text-encoder offload); {instance_type} "
              f"has {gpu_have:.1f} GiB a GPU")
    if fp8 == "off" and flow:
        with_fp8 = plan(chosen, instance_type, facts, model_bytes=model_bytes, archive=archive,
                        volume_size_gb=volume_size_gb, fp8="on")
        if with_fp8.fits:
            reason += (f"; it fits with FP8 weights ({FP8_ENV}=on, "
                       f"{with_fp8.gpu_need_gib:.1f} GiB; see the README for their measured "
                       "deviation)")
    return refuse(reason, fp.full_gpu_gib, host_full)
