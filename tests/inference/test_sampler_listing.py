"""The ``samplers`` listing follows the endpoint's checkpoints: an endpoint of SD3.5 / FLUX.1
models lists only the flow-matching samplers they take, so a client (the portal's X/Y plot
check, the Generate form) is not offered a sampler the server then refuses."""

from __future__ import annotations

from easel_contracts.families import ModelFamily
from easel_inference.samplers import advertised_sampler_names, sampler_listing


def _names(*families: ModelFamily | None) -> list[str]:
    return [sampler.name for sampler in sampler_listing(families).root]


def test_a_flux_endpoint_lists_only_euler_with_its_alias() -> None:
    listed = sampler_listing([ModelFamily.FLUX_DEV]).root
    assert [(sampler.name, sampler.aliases) for sampler in listed] == [("Euler", ["k_euler"])]


def test_flow_families_together_list_the_samplers_any_of_them_takes() -> None:
    assert _names(ModelFamily.FLUX_SCHNELL, ModelFamily.SD35_LARGE) == ["Euler", "Heun"]


def test_a_unet_checkpoint_beside_a_flow_one_keeps_every_a1111_sampler() -> None:
    assert _names(ModelFamily.FLUX_DEV, None) == advertised_sampler_names()


def test_an_endpoint_with_no_checkpoint_known_lists_every_a1111_sampler() -> None:
    assert _names() == advertised_sampler_names()
