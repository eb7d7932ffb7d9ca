"""family_request: how a generation request maps onto a model family's defaults and rules."""

from __future__ import annotations

from easel_contracts.families import ModelFamily
from easel_contracts.invocations import Txt2ImgRequest, family_request


def test_flux_schnell_unset_fields_take_its_defaults_and_no_guidance():
    request, notes = family_request(Txt2ImgRequest(prompt="p"), ModelFamily.FLUX_SCHNELL)
    assert (request.width, request.height, request.steps, request.cfg_scale) == (1024, 1024, 4, 0)
    assert notes == []


def test_flux_dev_takes_cfg_scale_as_its_distilled_guidance():
    request, _ = family_request(Txt2ImgRequest(prompt="p", cfg_scale=2.5), ModelFamily.FLUX_DEV)
    assert request.cfg_scale == 2.5 and request.steps == 28


def test_sd35_keeps_what_the_client_set():
    sent = Txt2ImgRequest(prompt="p", width=768, height=1344, steps=12, cfg_scale=6.0,
                          negative_prompt="blur")
    request, notes = family_request(sent, ModelFamily.SD35_LARGE)
    assert request == sent and notes == []


def test_native_side_of_the_loaded_model_wins_over_the_family_resolution():
    request, _ = family_request(Txt2ImgRequest(prompt="p"), ModelFamily.SD35_MEDIUM, side=256)
    assert (request.width, request.height) == (256, 256)


def test_one_side_set_keeps_the_other_at_the_request_default():
    request, _ = family_request(Txt2ImgRequest(prompt="p", width=768), ModelFamily.FLUX_DEV)
    assert (request.width, request.height) == (768, 512)


def test_flux_negative_prompt_and_schnell_cfg_are_ignored_with_notes():
    sent = Txt2ImgRequest(prompt="p", negative_prompt="blur", cfg_scale=7.5)
    request, notes = family_request(sent, ModelFamily.FLUX_SCHNELL)
    assert request.negative_prompt == "" and request.cfg_scale == 0.0
    assert any("negative_prompt was ignored" in n for n in notes)
    assert any("cfg_scale 7.5 was ignored" in n for n in notes)


def test_applying_twice_changes_nothing_more():
    once, _ = family_request(Txt2ImgRequest(prompt="p"), ModelFamily.SD35_MEDIUM)
    twice, _ = family_request(once, ModelFamily.SD35_MEDIUM)
    assert twice == once


def test_unet_families_keep_a1111_defaults():
    sent = Txt2ImgRequest(prompt="p", negative_prompt="blur")
    assert family_request(sent, ModelFamily.SDXL) == (sent, [])


def test_refiner_switch_must_leave_steps_to_both_passes():
    import pytest
    from pydantic import ValidationError

    for switch in (0.0, 1.0):
        with pytest.raises(ValidationError, match="refiner_switch_at must be between 0 and 1"):
            Txt2ImgRequest(refiner_checkpoint="r", refiner_switch_at=switch)
    assert Txt2ImgRequest(refiner_checkpoint="r [0ab1]", refiner_switch_at=0.8) \
        .refiner_checkpoint == "r"
    assert Txt2ImgRequest(refiner_checkpoint="", refiner_switch_at=1.0).refiner_checkpoint is None


def test_refiner_name_may_not_be_a_path():
    import pytest
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="plain name"):
        Txt2ImgRequest(refiner_checkpoint="../x")
