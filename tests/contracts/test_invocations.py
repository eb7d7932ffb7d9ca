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


def test_generation_and_listing_tasks_split_the_registry():
    assert set(inv.GENERATION_TASKS) == {"txt2img", "img2img"}
    assert set(inv.GENERATION_TASKS) | set(inv.LISTING_TASKS) == set(inv.TASKS)
    assert not set(inv.GENERATION_TASKS) & set(inv.LISTING_TASKS)


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
    ("enable_hr", True),
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
