"""The training memory plan: which family an instance type can train, with which savers, and a
refusal that names a type that fits."""

from __future__ import annotations

import pytest

from easel_contracts.instances import InstanceFacts
from easel_contracts.training_memory import (
    LORA_GB,
    OVERHEAD_GB,
    SIZES,
    fitting_types,
    plan_table,
    plan_training,
    refusal,
)

TYPES = {  # config/default.yaml's training allowlist
    "ml.g5.2xlarge": InstanceFacts(gpu_memory_gb=24, instance_storage=True, hourly_usd=1.515),
    "ml.g6e.2xlarge": InstanceFacts(gpu_memory_gb=48, instance_storage=True, hourly_usd=2.808),
    "ml.p4d.24xlarge": InstanceFacts(gpu_memory_gb=320, gpus=8, instance_storage=True,
                                     hourly_usd=37.688),
}


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl", "sd35_medium", "sd35_large",
                                    "flux_dev", "flux_schnell"])
def test_every_trained_family_fits_some_allowlisted_type(family):
    assert fitting_types(family, TYPES)


def test_sd15_loras_need_no_savers_on_the_smallest_type():
    plan = plan_training("sd1", "ml.g5.2xlarge", TYPES["ml.g5.2xlarge"])
    assert plan.fits and plan.savers == ()


@pytest.mark.parametrize("family", ["sdxl", "sd35_medium"])
def test_measured_families_train_loras_on_24_gb_without_savers(family):
    # bench/training.py --family, 2026-12-06: SDXL peaked at 15.66 GB and SD3.5 medium at
    # 15.22 GB without gradient checkpointing, under ml.g5.2xlarge's 24 GB
    plan = plan_training(family, "ml.g5.2xlarge", TYPES["ml.g5.2xlarge"])
    assert plan.fits and plan.savers == ()


# The peaks bench/training.py --family measured on 2026-12-06 (H200, LoRA rank 16, 1024², batch
# 1; torch.cuda.max_memory_allocated in GB): the plan must reproduce them
@pytest.mark.parametrize(("family", "checkpointed", "peak"), [
    ("sdxl", False, 15.66), ("sd35_medium", False, 15.22), ("sd35_medium", True, 6.37)])
def test_the_planned_lora_step_holds_what_the_bench_measured(family, checkpointed, peak):
    size = SIZES[family]
    activations = size.checkpointed_gb if checkpointed else size.activations_gb
    assert size.denoiser_b * 2 + LORA_GB + activations == pytest.approx(peak)


def test_sd35_medium_plans_its_measured_step_peak_plus_the_overhead():
    plan = plan_training("sd35_medium", "ml.g6e.2xlarge", TYPES["ml.g6e.2xlarge"])
    assert plan.gpu_gb == pytest.approx(15.22 + OVERHEAD_GB, abs=0.05)


def test_sdxl_plans_its_measured_setup_peak_plus_the_overhead():
    # the setup (prompts encoded, latents cached, everything on the GPU) peaked at 16.38 GB,
    # above the step's 15.66 GB
    plan = plan_training("sdxl", "ml.g6e.2xlarge", TYPES["ml.g6e.2xlarge"])
    assert plan.gpu_gb == pytest.approx(16.38 + OVERHEAD_GB, abs=0.05)


def test_gradient_checkpointing_does_not_lower_the_sdxl_setup_peak():
    plain = plan_training("sdxl", "ml.g6e.2xlarge", TYPES["ml.g6e.2xlarge"])
    checkpointed = plan_training("sdxl", "ml.g6e.2xlarge", TYPES["ml.g6e.2xlarge"],
                                 gradient_checkpointing=True)
    assert checkpointed.gpu_gb == plain.gpu_gb


def test_a_card_too_small_for_the_setup_is_refused_naming_the_setup():
    t4 = InstanceFacts(gpu_memory_gb=16, instance_storage=True, hourly_usd=0.736)
    plan = plan_training("sdxl", "ml.g4dn.xlarge", t4)
    assert not plan.fits
    assert "for its setup: encoding the prompts and caching the latents" in plan.reason


def test_flux_on_48_gb_fits_with_gradient_checkpointing():
    plan = plan_training("flux_dev", "ml.g6e.2xlarge", TYPES["ml.g6e.2xlarge"])
    assert plan.fits and plan.savers == ("gradient_checkpointing",)
    assert plan.settings == {"gradient_checkpointing": True}


def test_flux_on_24_gb_is_refused_for_gpu_and_host_memory_naming_a_type_that_fits():
    plan = plan_training("flux_dev", "ml.g5.2xlarge", TYPES["ml.g5.2xlarge"])
    assert not plan.fits
    message = refusal(plan, TYPES)
    assert "24 GB per GPU" in message and "quantized base" in message
    assert "ml.g5.2xlarge has 32 GiB" in message  # host memory while loading
    assert message.endswith("choose ml.g6e.2xlarge, which fits")


def test_the_gpu_count_divides_the_memory():
    plan = plan_training("sd35_large", "ml.p4d.24xlarge", TYPES["ml.p4d.24xlarge"])
    assert plan.gpu_available_gb == 40.0  # 8 A100s of 40 GB: the model is copied on each


def test_full_fine_tuning_adds_8bit_adam_when_checkpointing_is_not_enough():
    plan = plan_training("sdxl", "ml.g6e.2xlarge", TYPES["ml.g6e.2xlarge"], mode="full")
    assert plan.fits and plan.savers == ("gradient_checkpointing", "use_8bit_adam")


def test_a_larger_resolution_or_batch_needs_more_memory():
    small = plan_training("sdxl", "ml.g6e.2xlarge", TYPES["ml.g6e.2xlarge"], resolution=512)
    large = plan_training("sdxl", "ml.g6e.2xlarge", TYPES["ml.g6e.2xlarge"], batch_size=4)
    assert small.gpu_gb < large.gpu_gb


def test_when_no_type_fits_the_refusal_says_how_to_add_one():
    only_small = {"ml.g5.2xlarge": TYPES["ml.g5.2xlarge"]}
    plan = plan_training("flux_schnell", "ml.g5.2xlarge", TYPES["ml.g5.2xlarge"])
    assert "no allowlisted training type fits it" in refusal(plan, only_small)


def test_the_readme_table_has_a_row_per_family():
    table = plan_table(TYPES).splitlines()
    assert len(table) == 2 + 7
    assert table[-1].startswith("| FLUX.1 schnell | no (")


def test_the_training_readme_shows_the_plan_for_the_default_allowlist():
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[2]
    config = yaml.safe_load((root / "config" / "default.yaml").read_text(encoding="utf-8"))
    types = {name: InstanceFacts(**facts)
             for name, facts in config["training"]["instance_types"].items()}
    readme = (root / "containers" / "training" / "README.md").read_text(encoding="utf-8")
    assert plan_table(types) in readme, "regenerate the table with plan_table()"


def test_a_toy_size_model_is_planned_by_its_size():
    tiny = plan_training("flux_dev", "ml.g5.2xlarge", TYPES["ml.g5.2xlarge"],
                         model_bytes=3_000_000)  # the tiny random-weight FLUX of local mode
    assert tiny.fits and tiny.savers == ()
    real = plan_training("flux_dev", "ml.g5.2xlarge", TYPES["ml.g5.2xlarge"],
                         model_bytes=34_000_000_000)  # transformer, T5, CLIP and VAE in bf16
    assert not real.fits
