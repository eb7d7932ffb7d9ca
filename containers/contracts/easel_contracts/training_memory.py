"""Training memory plan: can an instance type train a family, and with which memory savers.

Three parties read it: the portal's training form and ``scripts/train.py`` (they refuse, before a
job starts, a family that no setting fits on the chosen type, naming a type that fits, and turn on
the savers the plan needs), and the README's table (``plan_table``).

The plan is calibrated with the peaks ``bench/training.py --family`` measured at full size on a
GPU (SDXL, SD3.5 medium and large, FLUX.1 dev: ``_ACTIVATIONS_GB`` and the setup's working
memory); the rest are estimates, marked as such. What it models, per GPU (data
parallelism copies the model on each):

- the frozen denoiser in bf16 (2 bytes a parameter) and the LoRA adapters with their gradients
  and moments (``LORA_GB``); a ``full`` fine-tune keeps fp32 weights, gradients and AdamW's two
  moments: 16 bytes, 10 with 8-bit AdamW;
- activations for one image at the family's resolution, with or without gradient checkpointing,
  scaled by the batch and by the pixel count;
- the job's setup, which gradient checkpointing does not shrink: SD1.x/2.x/SDXL encode the
  prompts and cache the latents with the denoiser, the text encoders and the VAE all on the GPU;
  SD3.5/FLUX.1 encode the prompts with the text encoders alone on the GPU (then free them) and
  cache the latents with the transformer there;
- a fixed overhead for the CUDA context and the allocator (the measured peaks are
  ``torch.cuda.max_memory_allocated``, which counts neither);
- host memory: the whole pipeline is loaded on the CPU in bf16 before it moves to the GPU
  (fp32 for SD1.x/2.x/SDXL, which also train in ``full`` mode).

A quantized (8-bit or 4-bit) base would halve or quarter the frozen weights; the training job
does not implement it, so the plan never relies on it and says so when only it would fit.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from easel_contracts.families import ModelFamily, facts_for
from easel_contracts.instances import host_memory_gib
from easel_contracts.model_sizes import is_toy, released_bytes, sizes_of

GB = 1e9
GIB = 1024**3
HEADROOM = 0.85  # plan to use at most this share of a GPU's (or the host's) memory
OVERHEAD_GB = 2.0  # CUDA context, allocator fragmentation (the VAE: in the working memory)
LORA_GB = 0.5  # LoRA adapters (rank 16-ish) with their fp32 gradients and AdamW moments
HOST_OVERHEAD_GB = 4.0  # Python, torch, the data loader, the page cache the loader uses


class FamilySize(BaseModel):
    """What a family weighs: parameters in billions, working memory in GB per 1024² image."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    denoiser_b: float
    text_encoders_b: float
    vae_b: float
    activations_gb: float  # bf16, batch 1, 1024², no gradient checkpointing
    checkpointed_gb: float  # the same with gradient checkpointing
    setup_gb: float  # the setup's working memory (VAE included), one image at a time


FLOW_FAMILIES = frozenset({ModelFamily.SD35_MEDIUM, ModelFamily.SD35_LARGE,
                           ModelFamily.FLUX_DEV, ModelFamily.FLUX_SCHNELL})


def _beyond_weights(family: ModelFamily, peak_gb: float) -> float:
    """What a measured LoRA peak held beyond the frozen bf16 denoiser (parameters and buffers,
    as ``model_sizes`` counts them: SD3.5's position table is a buffer the bench held too) and
    the LoRA allowance."""
    return peak_gb - sizes_of(family).denoiser * 2 / GB - LORA_GB


# Activations per 1024² image, GB (bf16, SDPA attention, batch 1; without and with gradient
# checkpointing). Its keys are the families the job trains. "measured": derived from a peak that
# `bench/training.py --family sdxl|sd35|sd35_large|flux [--gradient-checkpointing]
# [--gpu-gb 24|48]` measured on 2026-12-06 (SDXL, SD3.5 medium: H200; SD3.5 large, FLUX.1 dev:
# H100; torch 2.11.0+cu130, diffusers 0.42.1; random weights built on the GPU in bf16, 1024²,
# batch 1, LoRA rank 16, cached latents and text embeddings; torch.cuda.max_memory_allocated()
# in GB of 1e9 bytes; bench/results/training-families-2026-12-06.json). "estimate": not
# measured yet.
_ACTIVATIONS_GB: dict[ModelFamily, tuple[float, float]] = {
    ModelFamily.SD1: (12.0, 3.0),  # estimates
    ModelFamily.SD2: (12.0, 3.0),  # estimates
    # measured: 15.66 GB with the CUDA-graph step; with checkpointing: estimate
    ModelFamily.SDXL: (_beyond_weights(ModelFamily.SDXL, 15.66), 4.0),
    # measured: 15.22 GB without, 6.37 GB with gradient checkpointing
    ModelFamily.SD35_MEDIUM: (_beyond_weights(ModelFamily.SD35_MEDIUM, 15.22),
                              _beyond_weights(ModelFamily.SD35_MEDIUM, 6.37)),
    # without checkpointing: estimate; measured: 18.90 GB with gradient checkpointing
    ModelFamily.SD35_LARGE: (24.0, _beyond_weights(ModelFamily.SD35_LARGE, 18.90)),
    # measured on FLUX.1 dev: 51.10 GB without, 27.03 GB with gradient checkpointing (schnell is
    # the same transformer less the guidance embedding); on a 24 GB card even the bf16 weights
    # did not fit, as planned here
    ModelFamily.FLUX_DEV: (_beyond_weights(ModelFamily.FLUX_DEV, 51.10),
                           _beyond_weights(ModelFamily.FLUX_DEV, 27.03)),
    ModelFamily.FLUX_SCHNELL: (_beyond_weights(ModelFamily.FLUX_DEV, 51.10),
                               _beyond_weights(ModelFamily.FLUX_DEV, 27.03)),
}

# The setup's working memory per 1024² image (one image at a time), GB: its measured peak less
# what was on the GPU. SD1.x/2.x/SDXL (one trainer, one VAE): measured on SDXL (setup peak
# 16.38 GB: the full-size CLIP-L and OpenCLIP-G, the denoiser, the VAE encoding 8 images);
# estimate for SD1.x/2.x. SD3.5/FLUX.1 (one trainer, one 16-channel VAE): the largest of the
# setup peaks measured on SD3.5 medium (8.64 GB), SD3.5 large (20.39 GB) and FLUX.1 dev
# (27.56 GB), an upper bound for caching the latents, as the bench's one-layer text encoders were
# on the GPU too; the real text encoders' peak is the estimate in `_gpu_need`.
_UNET_SETUP_GB = (_beyond_weights(ModelFamily.SDXL, 16.38)
                  - sizes_of(ModelFamily.SDXL).text_encoder_total * 2 / GB)
_FLOW_SETUP_GB = max(_beyond_weights(ModelFamily.SD35_MEDIUM, 8.64),
                     _beyond_weights(ModelFamily.SD35_LARGE, 20.39),
                     _beyond_weights(ModelFamily.FLUX_DEV, 27.56))


def _family_size(family: ModelFamily) -> FamilySize:
    sizes = sizes_of(family)
    activations, checkpointed = _ACTIVATIONS_GB[family]
    return FamilySize(denoiser_b=sizes.denoiser / 1e9,
                      text_encoders_b=sizes.text_encoder_total / 1e9, vae_b=sizes.vae / 1e9,
                      activations_gb=activations, checkpointed_gb=checkpointed,
                      setup_gb=_FLOW_SETUP_GB if family in FLOW_FAMILIES else _UNET_SETUP_GB)


SIZES: dict[ModelFamily, FamilySize] = {family: _family_size(family) for family in _ACTIVATIONS_GB}

Saver = Literal["gradient_checkpointing", "use_8bit_adam"]


class TrainingMemoryPlan(BaseModel):
    """The plan for one family on one instance type."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    family: ModelFamily
    instance_type: str
    mode: Literal["lora", "full"]
    fits: bool
    savers: tuple[Saver, ...] = Field(
        default=(), description="memory savers the job needs on this type (turned on)")
    gpu_gb: float = Field(description="estimated peak GPU memory per GPU, GB")
    gpu_available_gb: float
    host_gb: float = Field(description="estimated peak host memory while loading, GB")
    host_available_gb: float | None
    reason: str = Field("", description="why it does not fit (empty when it does)")

    @property
    def settings(self) -> dict[str, bool]:
        """The hyperparameters the plan turns on."""
        return {saver: True for saver in self.savers}


def _gpu_need(family: ModelFamily, size: FamilySize, *, mode: str, resolution: int,
              batch: int, checkpointing: bool, eight_bit: bool) -> tuple[float, float]:
    """(training peak, setup peak) in GB per GPU."""
    pixels = (resolution / 1024) ** 2
    per_image = size.checkpointed_gb if checkpointing else size.activations_gb
    activations = per_image * pixels * batch
    if mode == "full":  # fp32 weights; gradients and moments arrive with the first step
        weights = size.denoiser_b * (10 if eight_bit else 16)
        setup_weights = size.denoiser_b * 4
    else:  # frozen bf16 base + LoRA adapters, their gradients and moments
        weights = setup_weights = size.denoiser_b * 2 + LORA_GB
    training = weights + activations + OVERHEAD_GB
    encoders = size.text_encoders_b * 2
    caching = setup_weights + size.setup_gb * pixels + OVERHEAD_GB
    # SD3.5/FLUX.1: the text encoders alone, then the latents; the others: all on the GPU at once
    setup = (max(encoders + OVERHEAD_GB, caching) if family in FLOW_FAMILIES
             else caching + encoders)
    return training, setup


def _host_need(family: ModelFamily, size: FamilySize) -> float:
    bytes_per = 2 if family in FLOW_FAMILIES else 4
    return (size.denoiser_b + size.text_encoders_b + size.vae_b) * bytes_per + HOST_OVERHEAD_GB


def _scaled(size: FamilySize, family: ModelFamily, model_bytes: int | None) -> FamilySize:
    """A model far smaller than its family's release (the tiny random-weight models of the tests
    and of local mode) is planned by its own size; any other by the release's."""
    if model_bytes is None or not is_toy(family, model_bytes):
        return size
    scale = model_bytes / released_bytes(family)
    return FamilySize(**{name: value * scale for name, value in size.model_dump().items()})


def plan_training(family: ModelFamily | str, instance_type: str, instance: Any, *,
                  mode: Literal["lora", "full"] = "lora", resolution: int | None = None,
                  batch_size: int = 1, gradient_checkpointing: bool = False,
                  use_8bit_adam: bool = False, model_bytes: int | None = None,
                  ) -> TrainingMemoryPlan:
    """The plan for ``family`` on ``instance`` (anything with ``gpu_memory_gb`` and ``gpus``,
    e.g. ``easel_contracts.instances.InstanceFacts``). Savers already requested stay on; the
    plan adds gradient checkpointing, then (``full`` mode) 8-bit AdamW, until the job fits.
    ``model_bytes`` (the manifest's total) lets a toy-size model be planned by its size. Host
    memory comes from ``instances.INSTANCE_HOSTS``; a type without a row is planned on its GPU
    memory alone."""
    facts = facts_for(family)
    family = facts.family
    size = _scaled(SIZES[family], family, model_bytes)
    resolution = resolution or facts.resolution
    per_gpu = float(instance.gpu_memory_gb) / int(getattr(instance, "gpus", 1) or 1)
    available = per_gpu * HEADROOM
    host_gib = host_memory_gib(instance_type)
    host_available = host_gib * GIB / GB * HEADROOM if host_gib else None
    host = _host_need(family, size)
    options = [(gradient_checkpointing, use_8bit_adam)]
    if not gradient_checkpointing:
        options.append((True, use_8bit_adam))
    if mode == "full" and not use_8bit_adam:
        options.append((True, True))
    training = setup = 0.0
    chosen = None
    for checkpointing, eight_bit in options:
        training, setup = _gpu_need(family, size, mode=mode, resolution=resolution,
                                    batch=batch_size, checkpointing=checkpointing,
                                    eight_bit=eight_bit)
        if max(training, setup) <= available:
            chosen = (checkpointing, eight_bit)
            break
    peak = max(training, setup)
    reasons = []
    if chosen is None:
        reasons.append(
            f"{facts.label} {mode} training at {resolution}px needs about {peak:.1f} GB of GPU "
            f"memory even with gradient checkpointing{' and 8-bit AdamW' if mode == 'full' else ''}"
            + (" (for its setup: encoding the prompts and caching the latents, which no memory "
               "saver shrinks)" if setup > training else "")
            + f"; {instance_type} has {per_gpu:.0f} GB per GPU, of which the plan uses "
            f"{HEADROOM:.0%}"
            + (" (a quantized base model would be needed, which the job does not offer)"
               if mode == "lora" and family in FLOW_FAMILIES else ""))
    if host_available is not None and host > host_available:
        reasons.append(f"loading {facts.label} takes about {host * GB / GIB:.0f} GiB of host "
                       f"memory; {instance_type} has {host_gib} GiB")
    savers: list[Saver] = []
    if chosen is not None:
        if chosen[0]:
            savers.append("gradient_checkpointing")
        if chosen[1]:
            savers.append("use_8bit_adam")
    return TrainingMemoryPlan(
        family=family, instance_type=instance_type, mode=mode, fits=not reasons,
        savers=tuple(savers), gpu_gb=round(peak, 1), gpu_available_gb=round(per_gpu, 1),
        host_gb=round(host, 1),
        host_available_gb=None if host_gib is None else round(host_gib * GIB / GB, 1),
        reason="; ".join(reasons))


def fitting_types(family: ModelFamily | str, instance_types: Mapping[str, Any],
                  **settings: Any) -> list[str]:
    """The allowlisted types that can train ``family``, cheapest first."""
    fits = [name for name, facts in instance_types.items()
            if plan_training(family, name, facts, **settings).fits]
    return sorted(fits, key=lambda name: float(getattr(instance_types[name], "hourly_usd", 0)))


def refusal(plan: TrainingMemoryPlan, instance_types: Mapping[str, Any], *,
            resolution: int | None = None, batch_size: int = 1) -> str | None:
    """The message refusing a plan that does not fit, naming the cheapest allowlisted type that
    does (or saying none does); None when it fits."""
    if plan.fits:
        return None
    others = [name for name in fitting_types(plan.family, instance_types, mode=plan.mode,
                                             resolution=resolution, batch_size=batch_size)
              if name != plan.instance_type]
    advice = (f"choose {others[0]}, which fits" if others else
              "no allowlisted training type fits it: add one with more GPU memory to the "
              "config's training instance_types")
    return f"instance type: {plan.reason}; {advice}"


def plan_table(instance_types: Mapping[str, Any]) -> str:
    """The README table: each trained family (LoRA) on each type, with the savers it needs."""
    names = list(instance_types)
    rows = ["| family | " + " | ".join(f"`{n}`" for n in names) + " |",
            "| --- |" + " --- |" * len(names)]
    for family in SIZES:
        cells = []
        for name in names:
            plan = plan_training(family, name, instance_types[name])
            if plan.fits:
                cells.append(f"fits ~{plan.gpu_gb:.0f} GB" + (
                    " (" + ", ".join(s.replace("_", " ") for s in plan.savers) + ")"
                    if plan.savers else ""))
            else:
                cells.append(f"no (~{plan.gpu_gb:.0f} GB GPU, ~{plan.host_gb:.0f} GB host)")
        rows.append(f"| {facts_for(family).label} | " + " | ".join(cells) + " |")
    return "\n".join(rows)
