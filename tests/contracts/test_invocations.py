"""The invocation task registry: envelope, bounded requests, strict answers."""

from __future__ import annotations

import json
import typing

import pytest
from pydantic import ValidationError

from easel_contracts import invocations as inv


def test_the_envelope_accepts_exactly_the_registry_tasks():
    assert set(typing.get_args(inv.TaskName)) == set(inv.TASKS)
    for task in inv.TASKS:
        assert inv.Invocation.model_validate({"task": task}).task == task
    with pytest.raises(ValidationError, match="task"):
        inv.Invocation.model_validate({"task": "paint", "payload": {}})


def test_generation_listing_and_image_tasks_split_the_registry():
    assert set(inv.GENERATION_TASKS) == {"txt2img", "img2img"}
    assert set(inv.IMAGE_TASKS) == {"extra-single-image"}
    groups = (set(inv.GENERATION_TASKS), set(inv.LISTING_TASKS), set(inv.IMAGE_TASKS))
    assert set().union(*groups) == set(inv.TASKS)
    assert sum(map(len, groups)) == len(inv.TASKS)


def test_envelope_validates_the_payload_with_the_tasks_request_model():
    request = inv.Invocation(task="img2img", payload={"init_images": ["aGk="]}).request()
    assert isinstance(request, inv.Img2ImgRequest)
    with pytest.raises(ValidationError, match="init_images"):
        inv.Invocation(task="img2img", payload={}).request()
    with pytest.raises(ValidationError):
        inv.Invocation(task="sd-models", payload={"unexpected": 1}).request()


@pytest.mark.parametrize(("field", "value"), [
    ("width", 4104), ("width", 65), ("height", 32), ("steps", 0), ("steps", 151),
    ("batch_size", 9), ("n_iter", 17), ("seed", -2), ("seed", 2**32), ("cfg_scale", 31),
    ("cfg_scale", float("nan")), ("eta", 1.5), ("clip_skip", 13), ("prompt", "x" * 20001),
    ("hr_scale", 4.5), ("hr_scale", 0.5), ("hr_resize_x", 100),
    ("hr_second_pass_steps", 151), ("denoising_strength", 1.5),
])
def test_out_of_bounds_requests_name_the_field(field, value):
    with pytest.raises(ValidationError) as caught:
        inv.Txt2ImgRequest.model_validate({field: value})
    assert caught.value.errors()[0]["loc"][0] == field


def test_the_largest_allowed_request_passes():
    request = inv.Txt2ImgRequest(width=inv.MAX_SIDE, height=inv.MAX_SIDE,
                                 batch_size=inv.MAX_BATCH_SIZE, n_iter=inv.MAX_N_ITER,
                                 steps=inv.MAX_STEPS, seed=inv.MAX_SEED)
    assert request.width == 4096 and request.n_iter == 16


def test_unknown_a1111_fields_are_accepted_and_dropped():
    request = inv.Txt2ImgRequest.model_validate({"prompt": "x", "restore_faces": False,
                                                 "send_images": True})
    assert "restore_faces" not in request.model_dump()


def test_images_over_the_bound_are_refused():
    big = "A" * (inv.MAX_IMAGE_B64_CHARS + 1)
    with pytest.raises(ValidationError, match="init_images"):
        inv.Img2ImgRequest(init_images=[big])
    with pytest.raises(ValidationError, match="mask"):
        inv.Img2ImgRequest(init_images=["aGk="], mask=big)
    unit = {"module": "canny", "image": big}
    with pytest.raises(ValidationError, match="alwayson_scripts"):
        inv.Txt2ImgRequest(alwayson_scripts={"controlnet": {"args": [unit]}})


def test_checkpoint_names_lose_the_a1111_hash_and_path_parts_are_refused():
    settings = inv.OverrideSettings(sd_model_checkpoint="tiny.safetensors [abc123]")
    assert settings.sd_model_checkpoint == "tiny.safetensors"
    with pytest.raises(ValidationError, match="plain name"):
        inv.OverrideSettings(sd_model_checkpoint="../secret")


def test_a_listing_takes_an_empty_payload_as_before():
    request = inv.Invocation(task="samplers", payload={}).request()
    assert isinstance(request, inv.ListingRequest) and request.checkpoint is None


def test_a_listings_checkpoint_loses_the_a1111_hash_like_a_requests():
    request = inv.Invocation(task="samplers",
                             payload={"checkpoint": "flux.safetensors [0123abcd]"}).request()
    assert request.checkpoint == "flux.safetensors"


@pytest.mark.parametrize("name", ["../secret", "models/flux", "", "x" * (inv.MAX_NAME_CHARS + 1)])
def test_a_listings_checkpoint_that_is_a_path_empty_or_too_long_is_refused(name):
    with pytest.raises(ValidationError, match="checkpoint"):
        inv.ListingRequest(checkpoint=name)


def test_controlnet_units_are_checked_with_their_index():
    bad = {"controlnet": {"args": [{"module": "canny"}, {"weight": 5}]}}
    with pytest.raises(ValidationError, match=r"args\[1\]\.weight"):
        inv.Txt2ImgRequest(alwayson_scripts=bad)
    with pytest.raises(ValidationError, match="must be a list"):
        inv.Txt2ImgRequest(alwayson_scripts={"controlnet": {"args": "canny"}})
    off = {"controlnet": {"args": [{"enabled": False}, {"module": "depth"}]}}
    assert [u.module for u in inv.Txt2ImgRequest(alwayson_scripts=off).controlnet_units()] == \
        ["depth"]


def test_invocation_body_sends_only_the_fields_the_caller_set():
    body = json.loads(inv.invocation_body("txt2img", inv.Txt2ImgRequest(prompt="cat", steps=3)))
    assert body == {"task": "txt2img", "payload": {"prompt": "cat", "steps": 3}}
    with pytest.raises(TypeError, match="Img2ImgRequest"):
        inv.invocation_body("img2img", inv.Txt2ImgRequest())


def test_generation_answer_keeps_the_a1111_shape():
    answer = inv.parse_answer("txt2img", json.dumps(
        {"images": ["iVBOR"], "parameters": {"prompt": "x"}, "info": '{"seed": 1}'}))
    assert answer.model_dump() == {"images": ["iVBOR"], "parameters": {"prompt": "x"},
                                   "info": '{"seed": 1}'}


@pytest.mark.parametrize("answer", [
    {"images": [], "parameters": {}},
    {"images": [], "parameters": {}, "info": "not json"},
    {"images": [], "parameters": {}, "info": "[1]"},
    {"images": [], "parameters": {}, "info": "{}", "extra": 1},
])
def test_malformed_generation_answers_are_refused(answer):
    with pytest.raises(ValidationError):
        inv.parse_answer("txt2img", json.dumps(answer))


def test_listing_answers_are_parsed_and_dump_back_to_the_wire_shape():
    models = [{"title": "a.safetensors [1]", "model_name": "a", "hash": "1", "sha256": None,
               "filename": "/m/a.safetensors", "config": None}]
    parsed = inv.parse_answer("sd-models", json.dumps(models))
    assert parsed.model_dump() == models
    assert inv.parse_answer("controlnet-models", '{"model_list": ["c"]}').model_dump() == \
        {"model_list": ["c"]}
    with pytest.raises(ValidationError):
        inv.parse_answer("samplers", '[{"name": "Euler"}]')
    with pytest.raises(ValidationError):
        inv.parse_answer("controlnet-models", '["c"]')


@pytest.mark.parametrize(("field", "value"), [
    ("inpaint_full_res_padding", inv.MAX_INPAINT_PADDING + 1),
    ("inpaint_full_res_padding", -1),
    ("inpainting_fill", 4),
])
def test_inpainting_settings_out_of_bounds_name_the_field(field, value):
    with pytest.raises(ValidationError, match=field):
        inv.Img2ImgRequest(init_images=["aGk="], **{field: value})


def test_masked_area_only_padding_defaults_to_a1111s_32():
    request = inv.Img2ImgRequest(init_images=["aGk="], inpaint_full_res=True)
    assert request.inpaint_full_res_padding == 32


def test_enable_hr_is_accepted_with_a1111_defaults():
    request = inv.Txt2ImgRequest(enable_hr=True, width=512, height=384)
    assert request.hr_upscaler == "Latent" and request.hr_scale == 2.0
    assert request.hires_size() == (1024, 768)
    assert request.hires_steps() == request.steps


@pytest.mark.parametrize(("resize", "size"), [
    ({"hr_resize_x": 768}, (768, 576)), ({"hr_resize_y": 576}, (768, 576)),
    ({"hr_resize_x": 640, "hr_resize_y": 640}, (640, 640)),
    ({"hr_scale": 1.3}, (664, 496)),
])
def test_the_hires_size_follows_resize_then_scale_in_multiples_of_eight(resize, size):
    assert inv.Txt2ImgRequest(enable_hr=True, width=512, height=384, **resize).hires_size() == size


def test_a_hires_size_over_the_largest_side_is_refused_naming_hr_scale():
    with pytest.raises(ValidationError, match="hr_scale"):
        inv.Txt2ImgRequest(enable_hr=True, width=4096, height=512, hr_scale=1.5)
    # the same settings without enable_hr are no hires request
    inv.Txt2ImgRequest(width=4096, height=512, hr_scale=1.5)


def test_a_hires_upscaler_that_is_a_path_is_refused_naming_the_known_ones():
    with pytest.raises(ValidationError) as caught:
        inv.Txt2ImgRequest(enable_hr=True, hr_upscaler="../ESRGAN/x")
    assert caught.value.errors()[0]["loc"] == ("hr_upscaler",)
    assert "Lanczos" in str(caught.value)


def test_another_hires_upscaler_name_is_left_to_the_server_as_an_esrgan_model():
    assert inv.Txt2ImgRequest(enable_hr=True, hr_upscaler="4x-UltraSharp").hr_upscaler == \
        "4x-UltraSharp"


def test_an_unused_hires_upscaler_is_not_checked():
    assert inv.Txt2ImgRequest(hr_upscaler="R-ESRGAN 4x+").hr_upscaler == "R-ESRGAN 4x+"


@pytest.mark.parametrize(("field", "value"), [
    ("upscaling_resize", 0.5), ("upscaling_resize", 4.5), ("upscaling_resize_w", 4097),
    ("upscaler_1", "../ESRGAN/x"), ("upscaler_1", "a/b"), ("gfpgan_visibility", 0.5),
    ("codeformer_visibility", 1.0), ("image", ""),
])
def test_extras_requests_out_of_bounds_are_refused(field, value):
    with pytest.raises(ValidationError, match=field.split("_")[0]):
        inv.ExtrasSingleImageRequest.model_validate({"image": "aGk=", field: value})


def test_extras_resize_mode_1_needs_both_sides():
    with pytest.raises(ValidationError, match="upscaling_resize_w x upscaling_resize_h"):
        inv.ExtrasSingleImageRequest(image="aGk=", resize_mode=1, upscaling_resize_h=0)


def test_extras_target_size_follows_the_resize_mode():
    by_factor = inv.ExtrasSingleImageRequest(image="aGk=", upscaling_resize=2.5)
    assert by_factor.target_size(100, 40) == (250, 100)
    to_size = inv.ExtrasSingleImageRequest(image="aGk=", resize_mode=1, upscaling_resize_w=300,
                                           upscaling_resize_h=200)
    assert to_size.target_size(100, 40) == (300, 200)


def test_extras_accepts_what_the_stock_webuiapi_client_sends():
    request = inv.ExtrasSingleImageRequest.model_validate({
        "resize_mode": 0, "show_extras_results": True, "gfpgan_visibility": 0,
        "codeformer_visibility": 0, "codeformer_weight": 0, "upscaling_resize": 2,
        "upscaling_resize_w": 512, "upscaling_resize_h": 512, "upscaling_crop": True,
        "upscaler_1": "R-ESRGAN 4x+", "upscaler_2": "None", "extras_upscaler_2_visibility": 0,
        "upscale_first": False, "image": "aGk="})
    assert request.upscaler_1 == "R-ESRGAN 4x+"
