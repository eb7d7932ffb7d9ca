"""The work cap: a request's work, the speed timed at warm-up, and the refusal up front."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from easel_contracts.invocations import Img2ImgRequest, Options, Txt2ImgRequest
from easel_contracts.workcap import (
    ASYNC_INVOCATION_TIMEOUT_MAX_S,
    REALTIME_INVOCATION_TIMEOUT_S,
    MeasuredSpeed,
    Work,
    check_work,
    deadline_seconds,
    speed_from_runs,
    work_of,
)

# one second a 512x512 step, nothing paid once an image: easy numbers to check
SPEED = MeasuredSpeed(model="m", device="cuda", width=512, height=512,
                      seconds_per_pixel_step=1 / (512 * 512), seconds_per_pixel_image=0.0)
UNIT = {"enabled": True, "module": "canny", "model": "cn", "image": "aGk="}


def test_work_counts_pixels_steps_and_every_image_of_every_iteration() -> None:
    work = work_of(Txt2ImgRequest(width=512, height=256, steps=30, batch_size=4, n_iter=3))
    assert (work.pixels, work.steps, work.images) == (512 * 256, 30, 12)
    assert work.step_passes == 30 * 12 and work.pixel_images == 512 * 256 * 12


def test_each_enabled_controlnet_unit_adds_work() -> None:
    plain = work_of(Txt2ImgRequest(steps=10))
    two = work_of(Txt2ImgRequest(steps=10, alwayson_scripts={"controlnet": {"args": [
        UNIT, UNIT, {**UNIT, "enabled": False}]}}))
    assert two.controlnet_units == 2
    assert two.step_passes > plain.step_passes


def test_img2img_work_counts_the_steps_its_strength_runs() -> None:
    work = work_of(Img2ImgRequest(init_images=["aGk="], steps=40, denoising_strength=0.25))
    assert work.steps == 10


def test_fifty_controlnet_units_are_refused_by_the_request_model() -> None:
    with pytest.raises(ValidationError, match="at most 16 entries"):
        Txt2ImgRequest(alwayson_scripts={"controlnet": {"args": [UNIT] * 50}})


def test_more_enabled_controlnet_units_than_the_bound_are_refused() -> None:
    with pytest.raises(ValidationError, match="at most 4 enabled units"):
        Txt2ImgRequest(alwayson_scripts={"controlnet": {"args": [UNIT] * 5}})
    Txt2ImgRequest(alwayson_scripts={"controlnet": {"args": [UNIT] * 4 + [
        {**UNIT, "enabled": False}] * 6}})


def test_a_request_that_fits_the_deadline_is_not_refused() -> None:
    assert check_work(Txt2ImgRequest(steps=50), SPEED, deadline_s=55) is None


def test_a_request_too_big_for_the_deadline_is_refused_with_what_to_lower() -> None:
    refusal = check_work(Txt2ImgRequest(steps=20, batch_size=2, n_iter=2), SPEED, deadline_s=55)
    assert refusal is not None and refusal.error == "TooMuchWork"
    assert refusal.estimated_seconds == 80
    assert refusal.largest["steps"] == 13  # 4 images x 13 steps = 52 s
    assert refusal.largest["images"] == 2
    assert "steps to 13" in refusal.detail and "55 s deadline" in refusal.detail
    assert refusal.field == "steps"


def test_each_suggestion_fits_the_deadline_on_its_own() -> None:
    request = Txt2ImgRequest(width=768, height=512, steps=10, batch_size=2,
                             alwayson_scripts={"controlnet": {"args": [UNIT, UNIT]}})
    refusal = check_work(request, SPEED, deadline_s=55)
    assert refusal is not None
    largest = refusal.largest
    assert set(largest) == {"steps", "images", "width", "height", "controlnet_units"}
    changes = [{"steps": largest["steps"]},
               {"batch_size": largest["images"], "n_iter": 1},
               {"width": largest["width"], "height": largest["height"]},
               {"alwayson_scripts": {"controlnet": {"args": [UNIT] * largest["controlnet_units"]}}}]
    for change in changes:
        smaller = Txt2ImgRequest.model_validate({**request.model_dump(), **change})
        assert check_work(smaller, SPEED, deadline_s=55) is None, change
    assert largest["width"] % 8 == 0 and largest["width"] > largest["height"]  # aspect kept


def test_a_request_that_fits_alone_but_not_behind_the_queue_is_busy_with_a_retry_time() -> None:
    refusal = check_work(Txt2ImgRequest(steps=20), SPEED, deadline_s=55, queued_s=50)
    assert refusal is not None and refusal.error == "Busy"
    assert refusal.retry_after_seconds == 15


def test_speed_separates_step_cost_from_per_image_cost() -> None:
    speed = speed_from_runs(model="m", device="cpu", width=64, height=64,
                            short=(2, 3.0), long=(6, 5.0))
    pixels = 64 * 64
    assert speed.seconds_per_pixel_step * pixels == pytest.approx(0.5)
    assert speed.seconds_per_pixel_image * pixels == pytest.approx(2.0)
    assert speed.seconds_for(Work(pixels=pixels, steps=10, images=2, controlnet_units=0)) == \
        pytest.approx(14.0)


def test_a_second_size_tells_how_step_cost_grows_with_the_pixels() -> None:
    # a step costs 1 s at 64x64 and 16 s at 128x128: all of it grows with the pixels squared
    speed = speed_from_runs(model="m", device="cpu", width=64, height=64,
                            short=(2, 2.0), long=(6, 6.0), other=(128, 128, 6, 96.0))
    assert speed.seconds_per_squared_pixel_step * 4096 ** 2 == pytest.approx(1.0)
    assert speed.seconds_per_pixel_step == pytest.approx(0.0, abs=1e-12)
    assert speed.step_seconds(512 * 512) == pytest.approx(4096.0)
    refusal = check_work(Txt2ImgRequest(width=512, height=512, steps=20), speed, deadline_s=55)
    assert refusal is not None and refusal.largest["width"] < 512


def test_a_second_size_no_slower_a_pixel_keeps_the_cost_linear() -> None:
    speed = speed_from_runs(model="m", device="cuda", width=512, height=512,
                            short=(2, 2.0), long=(6, 6.0), other=(256, 256, 6, 3.0))
    assert speed.seconds_per_squared_pixel_step == 0.0
    # the smaller size ran slower a pixel (an idle GPU): that rate is kept, erring slow
    assert speed.step_seconds(512 * 512) == pytest.approx(2.0)


def test_a_single_run_counts_all_its_seconds_as_step_work() -> None:
    # the CPU's warm-up: one 1-step run of 3 s (say 2 s of step, 1 s paid once an image)
    speed = speed_from_runs(model="m", device="cpu", width=64, height=64, short=(1, 3.0))
    assert speed.seconds_per_pixel_step * 64 * 64 == pytest.approx(3.0)
    assert speed.seconds_per_pixel_image == 0.0
    # so every request is estimated at least at its true 2 s a step + 1 s an image
    work = Work(pixels=64 * 64, steps=10, images=1, controlnet_units=0)
    assert speed.seconds_for(work) == pytest.approx(30.0)
    assert speed.seconds_for(work) >= 10 * 2.0 + 1.0


def test_a_noisy_timing_errs_towards_a_slower_speed() -> None:
    speed = speed_from_runs(model="m", device="cpu", width=64, height=64,
                            short=(2, 3.0), long=(6, 2.0))
    assert speed.seconds_per_pixel_step > 0
    assert speed.seconds_per_pixel_step * 64 * 64 == pytest.approx(1.5)


def test_the_deadline_leaves_a_margin_under_each_invocation_timeout() -> None:
    assert deadline_seconds("realtime") < REALTIME_INVOCATION_TIMEOUT_S
    assert deadline_seconds("async") < ASYNC_INVOCATION_TIMEOUT_MAX_S
    assert deadline_seconds("async", 900) < 900
    assert deadline_seconds("async", 900) > deadline_seconds("realtime")
    with pytest.raises(ValueError, match="1..3600"):
        deadline_seconds("async", 7200)


def test_the_options_answer_carries_the_speed_and_deadline() -> None:
    options = Options(sd_model_checkpoint="m", sd_checkpoints_loaded=["m"], model_load_seconds={},
                      CLIP_stop_at_last_layers=1, sd_vae="Automatic", samples_format="png",
                      device="cuda", dtype="float16", max_response_bytes=1024, pipeline_budget=1,
                      warmed_up=None, speed=SPEED, deadline_seconds=55)
    parsed = Options.model_validate_json(options.model_dump_json())
    assert parsed.speed == SPEED


def test_the_hires_second_pass_counts_its_steps_at_its_size() -> None:
    plain = Txt2ImgRequest(width=512, height=512, steps=20)
    hires = Txt2ImgRequest(width=512, height=512, steps=20, enable_hr=True, hr_scale=2,
                           denoising_strength=0.5, hr_second_pass_steps=10)
    work = work_of(hires)
    assert (work.hires_pixels, work.hires_steps) == (1024 * 1024, 5)
    extra = SPEED.seconds_for(work) - SPEED.seconds_for(work_of(plain))
    assert extra == pytest.approx(5 * SPEED.step_seconds(1024 * 1024)
                                  + 1024 * 1024 * SPEED.seconds_per_pixel_image)


def test_a_hires_request_that_fits_only_without_its_second_pass_is_refused() -> None:
    base = {"width": 512, "height": 512, "steps": 10}
    assert check_work(Txt2ImgRequest(**base), SPEED, deadline_s=55) is None
    hires = Txt2ImgRequest(**base, enable_hr=True, hr_scale=4)
    refusal = check_work(hires, SPEED, deadline_s=55)
    assert refusal is not None and refusal.error == "TooMuchWork"
