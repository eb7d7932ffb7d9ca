"""Messages a newcomer meets say what is wrong in the page's words and what to do (issue 18's
rough edges): no pydantic internals, the field the person typed, the form kept."""

from __future__ import annotations

import html
import re

from easel_webui.errors import describe_validation

from .conftest import BUCKET

MODEL = f"s3://{BUCKET}/models/tiny.tar.gz"


def _error(response) -> str:
    found = re.search(r'class="error"[^>]*>(.*?)</', response.text, re.S)
    return html.unescape(found.group(1)) if found else ""


def _deploy(client, **fields):
    data = {"name": "demo", "model": MODEL, "instance_type": "ml.g5.xlarge", "mode": "realtime",
            "min_instances": "1", "max_instances": "2", "idle_ttl_hours": "3"}
    data.update(fields)
    return client.post("/endpoints", data=data)


def test_validation_messages_drop_pydantic_prefixes_and_never_say_request():
    text = describe_validation([
        {"loc": (), "msg": "Value error, min instances: needs at least 1"},
        {"loc": ("body", "name"), "msg": "Value error, name: at most 30 characters"},
        {"loc": ("body", "steps"), "msg": "Input should be greater than 0"},
    ])
    assert text == ("min instances: needs at least 1; name: at most 30 characters; "
                    "steps: Input should be greater than 0")


def test_a_realtime_endpoint_with_no_instances_names_the_field_as_the_form_does(world):
    world.put("models/tiny.tar.gz")
    response = _deploy(world.signed_in("admin"), min_instances="0")
    assert response.status_code == 400
    message = _error(response)
    assert message.startswith("min instances: a real-time endpoint needs at least 1")
    assert "Value error" not in message and "request" not in message
    assert world.sagemaker.named("create_endpoint") == []


def test_an_endpoint_name_over_the_limit_is_refused_with_the_limit_not_cut(world):
    world.put("models/tiny.tar.gz")
    response = _deploy(world.signed_in("admin"), name="a" * 80)
    assert response.status_code == 400
    assert _error(response) == "name: at most 30 characters (this one has 80)"
    assert world.sagemaker.named("create_endpoint") == []
    # the browser must not cut a pasted name to 30 characters before the check can say so
    field = re.search(r'<input name="name"[^>]*>', response.text).group(0)
    assert "maxlength" not in field and 'value="' + "a" * 80 + '"' in field


def test_a_name_typed_with_the_deployment_prefix_keeps_the_prefix_once(world):
    world.put("models/tiny.tar.gz")
    response = _deploy(world.signed_in("admin"), name="easel-demo")
    assert response.status_code == 303, _error(response)
    (endpoint,) = world.sagemaker.named("create_endpoint")
    assert endpoint["EndpointName"] == "easel-demo"


def test_a_model_uri_that_does_not_exist_is_refused_before_sagemaker_sees_it(world):
    admin = world.signed_in("admin")
    for uri in (f"s3://{BUCKET}/models/missing.tar.gz", f"s3://{BUCKET}/models/missing/"):
        response = _deploy(admin, model="", model_s3_uri=uri)
        assert response.status_code == 400
        assert _error(response).startswith(f"model: {uri} does not exist"), _error(response)
    assert world.sagemaker.named("create_model") == []


def test_a_model_folder_that_exists_is_accepted(world):
    world.put("models/folder/model.safetensors")
    response = _deploy(world.signed_in("admin"), model="",
                       model_s3_uri=f"s3://{BUCKET}/models/folder/")
    assert response.status_code == 303, _error(response)


def test_a_picked_model_and_a_different_typed_uri_are_refused_naming_both(world):
    world.put("models/tiny.tar.gz")
    world.put("models/other.tar.gz")
    response = _deploy(world.signed_in("admin"), model_s3_uri=f"s3://{BUCKET}/models/other.tar.gz")
    assert response.status_code == 400
    assert "not both" in _error(response)
    assert world.sagemaker.named("create_model") == []


def test_an_empty_training_job_name_names_the_job_name(world):
    world.put("models/tiny.tar.gz")
    world.put("concepts/admin/dogs/1.png", b"png")
    response = world.signed_in("admin").post("/training", data={
        "name": "", "model_s3_uri": MODEL, "instance_prompt": "a photo of sks dog",
        "mode": "lora", "instance_type": "ml.g5.2xlarge", "concept_set": "dogs"})
    assert response.status_code == 400
    assert _error(response).startswith("job name: ")


def test_a_short_new_password_on_account_comes_back_to_the_form_with_the_rule(world):
    world.add_user("alice")
    alice = world.signed_in("alice")
    response = alice.post("/account/password", data={
        "current_password": "user-password-123", "new_password": "short",
        "confirm_password": "short"})
    assert response.status_code == 303
    page = alice.get(response.headers["location"])
    assert page.status_code == 200 and 'name="new_password"' in page.text
    assert _error(page) == "password: use at least 12 characters"


def test_an_empty_img2img_image_says_it_is_empty(world):
    world.in_service()
    response = world.signed_in("admin").post("/generate", json={
        "endpoint": "easel-demo", "task": "img2img",
        "payload": {"prompt": "x", "init_images": [""]}})
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert detail.startswith("init_images: an image is empty"), detail
    assert "Value error" not in detail
    assert world.runtime.generations() == []


def test_the_login_page_sends_a_local_user_to_the_terminal_for_the_password(world_factory):
    local = world_factory(EASEL_LOCAL_MODE="true").client().get("/login").text
    assert "make local" in local and "Secrets Manager" not in local


def test_the_login_page_on_aws_points_at_secrets_manager(world):
    page = world.client().get("/login").text
    assert "Secrets Manager" in page and "make local" not in page


def test_a_resolution_out_of_range_names_the_real_bounds(world):
    world.put("models/tiny.tar.gz")
    world.put("concepts/admin/dogs/1.png", b"png")
    admin = world.signed_in("admin")
    form = {"name": "dog-v1", "model_s3_uri": MODEL, "instance_prompt": "a photo of sks dog",
            "mode": "lora", "instance_type": "ml.g5.2xlarge", "concept_set": "dogs"}
    high = _error(admin.post("/training", data={**form, "resolution": "4096"}))
    low = _error(admin.post("/training", data={**form, "resolution": "8"}))
    assert high.startswith("resolution: must be at most 2048")
    assert low.startswith("resolution: must be at least 32")
