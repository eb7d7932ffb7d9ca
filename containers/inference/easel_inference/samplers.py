"""A1111 sampler and schedule-type names mapped to diffusers schedulers."""

from __future__ import annotations

import inspect
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    DPMSolverSDEScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FlowMatchHeunDiscreteScheduler,
    HeunDiscreteScheduler,
    LMSDiscreteScheduler,
    UniPCMultistepScheduler,
)
from easel_contracts.families import FAMILIES, ModelFamily
from easel_contracts.invocations import Sampler as SamplerItem
from easel_contracts.invocations import Samplers

from .errors import BadRequest


@dataclass(frozen=True)
class Sampler:
    name: str
    scheduler_class: type
    options: dict[str, Any] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    karras: bool = True


SAMPLERS: dict[str, Sampler] = {
    sampler.name: sampler
    for sampler in (
        Sampler("Euler a", EulerAncestralDiscreteScheduler, aliases=("k_euler_a",), karras=False),
        Sampler("Euler", EulerDiscreteScheduler, aliases=("k_euler",)),
        Sampler("Heun", HeunDiscreteScheduler, aliases=("k_heun",)),
        Sampler("LMS", LMSDiscreteScheduler, aliases=("k_lms",)),
        Sampler("DDIM", DDIMScheduler, aliases=("ddim",), karras=False),
        Sampler("UniPC", UniPCMultistepScheduler, aliases=("unipc",), karras=False),
        Sampler(
            "DPM++ 2M",
            DPMSolverMultistepScheduler,
            {"algorithm_type": "dpmsolver++", "solver_order": 2},
            aliases=("k_dpmpp_2m",),
        ),
        Sampler(
            "DPM++ 2M SDE",
            DPMSolverMultistepScheduler,
            {"algorithm_type": "sde-dpmsolver++", "solver_order": 2},
            aliases=("k_dpmpp_2m_sde",),
        ),
        # A1111's DPM++ SDE: second-order SDE steps with Brownian-tree noise (torchsde), seeded
        # per image by generate() through ``noise_sampler_seed``
        Sampler("DPM++ SDE", DPMSolverSDEScheduler, aliases=("k_dpmpp_sde",)),
    )
}
SCHEDULE_TYPES = ("Automatic", "Uniform", "Karras")
DEFAULT_SAMPLER = "Euler a"


def advertised_sampler_names() -> list[str]:
    """Every sampler_name accepted, A1111 style: the base names and their Karras variants."""
    names = []
    for sampler in SAMPLERS.values():
        names.append(sampler.name)
        if sampler.karras:
            names.append(f"{sampler.name} Karras")
    return names


def sampler_listing(flow_families: Collection[ModelFamily | None] = ()) -> Samplers:
    """A1111's sampler listing for the endpoint's checkpoints, given the flow family of each
    (None: a UNet model, or one not recognised): while any is a UNet model, or none is known,
    every A1111 sampler with its Karras variants; when all are SD3.5 / FLUX.1, only the
    flow-matching samplers their families take (what ``resolve_flow_sampler`` accepts)."""
    if flow_families and all(family is not None for family in flow_families):
        return Samplers([
            SamplerItem(name=sampler.name, aliases=list(sampler.aliases), options={})
            for sampler in FLOW_SAMPLERS.values()
            if any(sampler.name in _FLOW_SAMPLERS_OF[family] for family in flow_families
                   if family is not None)])
    listing = []
    for sampler in SAMPLERS.values():
        listing.append(SamplerItem(name=sampler.name, aliases=list(sampler.aliases), options={}))
        if sampler.karras:
            listing.append(
                SamplerItem(
                    name=f"{sampler.name} Karras",
                    aliases=[alias + "_ka" for alias in sampler.aliases],
                    options={"scheduler": "karras"},
                )
            )
    return Samplers(listing)


def resolve_sampler(sampler_name: str | None, schedule: str | None) -> tuple[Sampler, bool]:
    """(sampler, use_karras) for A1111's ``sampler_name`` and ``scheduler`` fields."""
    name = (sampler_name or DEFAULT_SAMPLER).strip()
    by_alias = {alias: s for s in SAMPLERS.values() for alias in s.aliases}
    karras = False
    if name.endswith(" Karras") and name[: -len(" Karras")] in SAMPLERS:
        name, karras = name[: -len(" Karras")], True
    sampler = SAMPLERS.get(name) or by_alias.get(name)
    if sampler is None or (karras and not sampler.karras):
        raise BadRequest(
            f"unknown sampler_name {name!r}; valid: {', '.join(advertised_sampler_names())}",
            field="sampler_name",
        )
    schedule_name = (schedule or "Automatic").strip()
    matched = {s.lower(): s for s in SCHEDULE_TYPES}.get(schedule_name.lower())
    if matched is None:
        raise BadRequest(
            f"unknown scheduler {schedule_name!r}; valid: {', '.join(SCHEDULE_TYPES)}",
            field="scheduler",
        )
    if matched == "Karras":
        karras = True
    elif matched == "Uniform":
        karras = False
    if karras and not sampler.karras:
        raise BadRequest(
            f"sampler {sampler.name!r} has no Karras variant", field="scheduler"
        )
    return sampler, karras


# SD3.5 and FLUX.1 are flow-matching models: A1111 names that have a flow-matching equivalent.
# FLUX.1's schedule shifts with the image size (``mu``), which only the Euler scheduler takes.
FLOW_SAMPLERS: dict[str, Sampler] = {
    sampler.name: sampler
    for sampler in (
        Sampler("Euler", FlowMatchEulerDiscreteScheduler, aliases=("k_euler",), karras=False),
        Sampler("Heun", FlowMatchHeunDiscreteScheduler, aliases=("k_heun",), karras=False),
    )
}
_FLOW_SAMPLERS_OF = {
    ModelFamily.SD35_MEDIUM: ("Euler", "Heun"),
    ModelFamily.SD35_LARGE: ("Euler", "Heun"),
    ModelFamily.FLUX_DEV: ("Euler",),
    ModelFamily.FLUX_SCHNELL: ("Euler",),
}


def resolve_flow_sampler(sampler_name: str | None, schedule: str | None,
                         family: ModelFamily) -> Sampler:
    """The flow-matching sampler of an SD3.5 / FLUX.1 request; a name the family has no
    equivalent for is refused with the ones it has."""
    facts = FAMILIES[family]
    names = _FLOW_SAMPLERS_OF[family]
    name = (sampler_name or facts.sampler).strip()
    by_alias = {alias: s.name for s in FLOW_SAMPLERS.values() for alias in s.aliases}
    name = by_alias.get(name, name)
    if name not in names:
        raise BadRequest(
            f"sampler_name {name!r} has no equivalent for {facts.label} (a flow-matching "
            f"model); use one of: {', '.join(names)}",
            field="sampler_name",
        )
    schedule_name = (schedule or "Automatic").strip().lower()
    if schedule_name not in ("automatic", "uniform"):
        raise BadRequest(
            f"scheduler {schedule!r} is not available for {facts.label}; use Automatic "
            "(the model's own flow-matching schedule)", field="scheduler")
    return FLOW_SAMPLERS[name]


def seed_scheduler_noise(scheduler: Any, seeds: list[int]) -> None:
    """Seed a Brownian-tree scheduler's noise, one tree per image, so the same seed gives the
    same image; schedulers that draw noise from the pipeline's generators need nothing."""
    if hasattr(scheduler, "noise_sampler_seed"):  # its set_timesteps drops the old tree
        scheduler.noise_sampler_seed = list(seeds)


def make_scheduler(base_config: dict[str, Any], sampler: Sampler, *, karras: bool) -> Any:
    """A fresh scheduler of the sampler's class, keeping the model's noise schedule."""
    accepted = set(inspect.signature(sampler.scheduler_class.__init__).parameters)
    config = {k: v for k, v in base_config.items() if not k.startswith("_")}
    config.update(sampler.options)
    if "use_karras_sigmas" in accepted:
        config["use_karras_sigmas"] = karras
    return sampler.scheduler_class.from_config(config)
