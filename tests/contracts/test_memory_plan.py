"""The memory plan: which instance types a model family fits, and why not."""

from __future__ import annotations

import pytest

from easel_contracts import memory_plan
from easel_contracts.families import ModelFamily
from easel_contracts.instances import InstanceFacts
from easel_contracts.memory_plan import footprint, host_memory_gib, plan

GB = 10**9


def _facts(gpu_gb: float, gpus: int = 1, storage: bool = True) -> InstanceFacts:
    return InstanceFacts(gpu_memory_gb=gpu_gb, gpus=gpus, instance_storage=storage, hourly_usd=1)


def test_flux_dev_does_not_fit_a_24_gb_gpu_even_with_offload():
    result = plan(["flux_dev"], "ml.g5.xlarge", _facts(24), model_bytes=24 * GB)
    assert not result.fits
    assert "FLUX.1 dev needs" in result.reason and "with text-encoder offload" in result.reason
    assert "ml.g5.xlarge has 22.4 GiB a GPU" in result.reason


def test_flux_dev_fits_an_l40s_fully_in_bf16():
    result = plan(["flux_dev"], "ml.g6e.xlarge", _facts(48), model_bytes=34 * GB)
    assert result.fits and not result.offload_text_encoders and result.dtype == "bfloat16"


def test_flux_fits_a_40_gb_a100_only_with_text_encoder_offload():
    """p4d: 8 x A100 40 GB; one worker (one model copy) a GPU."""
    result = plan(["flux_schnell"], "ml.p4d.24xlarge", _facts(320, gpus=8), model_bytes=34 * GB)
    assert result.fits and result.offload_text_encoders
    assert result.gpu_need_gib < result.gpu_have_gib < footprint(
        ModelFamily.FLUX_SCHNELL, "bfloat16").full_gpu_gib


def test_offload_is_refused_when_the_host_cannot_hold_the_text_encoders(monkeypatch):
    """SD3.5 large fits a 28 GB GPU only with its 10.4 GiB of text encoders in host memory:
    beside a server that needs 5 GiB, too much for a 16 GiB xlarge (14.4 GiB usable), enough on
    a 32 GiB 2xlarge. (With the plan's 4 GiB overhead it fits the xlarge by 0.01 GiB.)"""
    monkeypatch.setattr(memory_plan, "HOST_OVERHEAD_GIB", 5.0)
    small = plan(["sd35_large"], "ml.g5.xlarge", _facts(28), model_bytes=28 * GB)
    assert not small.fits and small.offload_text_encoders
    assert "16 GiB" in small.reason and "larger size" in small.reason
    large = plan(["sd35_large"], "ml.g5.2xlarge", _facts(28), model_bytes=28 * GB)
    assert large.fits and large.offload_text_encoders


@pytest.mark.parametrize("family", ["sd35_medium", "flux_schnell"])
def test_flow_families_are_refused_on_a_t4_for_want_of_bf16(family):
    result = plan([family], "ml.g4dn.xlarge", _facts(16), model_bytes=10 * GB)
    assert not result.fits and "no fast bfloat16" in result.reason


def test_sdxl_fits_a_t4_in_float16():
    result = plan(["sdxl"], "ml.g4dn.xlarge", _facts(16), model_bytes=7 * GB)
    assert result.fits and result.dtype == "float16"


def test_the_most_demanding_checkpoint_decides():
    result = plan(["sd1", "flux_dev"], "ml.g5.xlarge", _facts(24), model_bytes=30 * GB)
    assert result.family is ModelFamily.FLUX_DEV and not result.fits


def test_an_archive_needs_room_to_be_unpacked_beside_itself():
    archive = plan(["sd1"], "ml.g4dn.xlarge", _facts(16), model_bytes=70 * GB)
    assert not archive.fits and "140 GB of disk" in archive.reason
    folder = plan(["sd1"], "ml.g4dn.xlarge", _facts(16), model_bytes=70 * GB, archive=False)
    assert folder.fits


def test_ebs_types_plan_disk_against_the_volume():
    result = plan(["sd1"], "ml.g6.xlarge", _facts(24, storage=False), model_bytes=60 * GB,
                  volume_size_gb=100)
    assert not result.fits and "has 100 GB" in result.reason


def test_xlarge_hosts_have_16_gib_except_g6e():
    assert {host_memory_gib(f"ml.{f}.xlarge") for f in ("g4dn", "g5", "g6")} == {16}
    assert host_memory_gib("ml.g6e.xlarge") == 32


def test_a_toy_size_model_is_planned_by_its_own_size():
    """Local mode's tiny random-weight FLUX.1 (a few MB by its manifest) deploys on a 24 GB type;
    the same family at its released size does not."""
    tiny = plan(["flux_dev"], "ml.g5.xlarge", _facts(24), model_bytes=5 * 10**6)
    assert tiny.fits and tiny.gpu_need_gib < 2
    assert not plan(["flux_dev"], "ml.g5.xlarge", _facts(24), model_bytes=34 * GB).fits
