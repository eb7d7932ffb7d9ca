"""The parameter-count table both memory plans weigh models by (its numbers are checked against
the architectures in tests/inference/test_model_sizes.py)."""

from __future__ import annotations

import pytest

from easel_contracts.families import FAMILIES, ModelFamily
from easel_contracts.instances import InstanceFacts
from easel_contracts.memory_plan import GIB, footprint
from easel_contracts.model_sizes import MODEL_SIZES, TOY_SHARE, is_toy, released_bytes
from easel_contracts.training_memory import plan_training


@pytest.mark.parametrize("family", list(ModelFamily), ids=str)
def test_every_family_has_sizes_for_exactly_its_text_encoders(family):
    assert tuple(MODEL_SIZES[family].text_encoders) == FAMILIES[family].text_encoders


def test_released_bytes_are_the_total_at_two_bytes_a_parameter():
    sizes = MODEL_SIZES[ModelFamily.FLUX_DEV]
    assert released_bytes("flux_dev") == 2 * (sizes.denoiser + sizes.vae + sum(
        sizes.text_encoders.values()))


def test_a_model_under_the_toy_share_is_a_toy_and_a_release_is_not():
    release = released_bytes(ModelFamily.SDXL)
    assert is_toy("sdxl", int(release * TOY_SHARE) - 1)
    assert not is_toy("sdxl", release)
    assert not is_toy("sdxl", None)


def test_serving_plan_weighs_each_component_by_the_table():
    sizes = MODEL_SIZES[ModelFamily.SD35_LARGE]
    fp = footprint(ModelFamily.SD35_LARGE, "bfloat16")
    assert fp.denoiser_gib * GIB == pytest.approx(sizes.denoiser * 2)
    assert fp.vae_gib * GIB == pytest.approx(sizes.vae * 2)
    assert [g * GIB for g in fp.text_encoders_gib] == pytest.approx(
        [n * 2 for n in sizes.text_encoders.values()])


def test_training_plan_loads_a_flow_family_by_the_table_in_bf16():
    sizes = MODEL_SIZES[ModelFamily.FLUX_DEV]
    plan = plan_training("flux_dev", "ml.g6e.2xlarge",
                         InstanceFacts(gpu_memory_gb=48, instance_storage=True, hourly_usd=1))
    host_overhead_gb = 4.0
    assert plan.host_gb == pytest.approx(sizes.total * 2 / 1e9 + host_overhead_gb, abs=0.05)
