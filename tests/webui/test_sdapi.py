"""The AUTOMATIC1111-compatible API: Basic auth per user, A1111 shapes, saved outputs."""

from __future__ import annotations

import base64
import json

import pytest

from easel_contracts import table as keys

from .conftest import ADMIN_PASSWORD


def _auth(user="alice", password="user-password-123"):
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def _setup(world):
    world.add_user("alice")
    world.in_service()
    return world.client()


def test_txt2img_answers_the_a1111_shape_and_saves_outputs(world):
    client = _setup(world)
    response = client.post("/sdapi/v1/txt2img", headers=_auth(),
                           json={"prompt": "api cat", "steps": 2, "width": 64, "height": 64})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"images", "parameters", "info"}
    assert base64.b64decode(body["images"][0]).startswith(b"\x89PNG")
    assert json.loads(body["info"])["seed"] == 1234
    assert body["parameters"]["prompt"] == "api cat"
    assert len([k for k in world.keys("outputs/alice/") if k.endswith(".png")]) == 1
    images = world.portal.table.query_index("images")
    assert [i["owner"] for i in images] == ["alice"]


def test_img2img_requires_init_images(world):
    client = _setup(world)
    missing = client.post("/sdapi/v1/img2img", headers=_auth(), json={"prompt": "x"})
    assert missing.status_code == 422
    assert "init_images" in missing.json()["detail"]
    image = base64.b64encode(b"\x89PNG fake").decode()
    ok = client.post("/sdapi/v1/img2img", headers=_auth(),
                     json={"prompt": "x", "init_images": [image], "denoising_strength": 0.4})
    assert ok.status_code == 200
    sent = json.loads(world.runtime.generations()[-1]["Body"])
    assert sent["task"] == "img2img" and sent["payload"]["init_images"] == [image]


def test_listing_routes_return_the_endpoint_listings(world):
    client = _setup(world)
    assert client.get("/sdapi/v1/sd-models", headers=_auth()).json()[0]["title"] == \
        "tiny.safetensors"
    assert client.get("/sdapi/v1/samplers", headers=_auth()).json()[0]["name"] == "Euler a"
    assert client.get("/sdapi/v1/loras", headers=_auth()).json()[0]["name"] == "style"
    assert client.get("/controlnet/model_list", headers=_auth()).json() == {
        "model_list": ["control_sd15_canny"]}
    options = client.get("/sdapi/v1/options", headers=_auth()).json()
    assert options["sd_model_checkpoint"] == "tiny.safetensors"
    assert options["easel_endpoint"] == "easel-demo"


def test_options_post_selects_the_checkpoint_for_later_generations(world):
    client = _setup(world)
    bad = client.post("/sdapi/v1/options", headers=_auth(),
                      json={"sd_model_checkpoint": "nope.safetensors"})
    assert bad.status_code == 422 and "sd_model_checkpoint" in bad.json()["detail"]
    ok = client.post("/sdapi/v1/options", headers=_auth(),
                     json={"sd_model_checkpoint": "tiny.safetensors"})
    assert ok.status_code == 200 and ok.json() is None
    client.post("/sdapi/v1/txt2img", headers=_auth(), json={"prompt": "x"})
    sent = json.loads(world.runtime.generations()[-1]["Body"])
    assert sent["payload"]["override_settings"]["sd_model_checkpoint"] == "tiny.safetensors"


def test_options_post_chooses_the_users_endpoint(world):
    client = _setup(world)
    world.in_service("easel-second")
    assert client.post("/sdapi/v1/options", headers=_auth(),
                       json={"easel_endpoint": "easel-second"}).status_code == 200
    client.post("/sdapi/v1/txt2img", headers=_auth(), json={"prompt": "x"})
    assert world.runtime.generations()[-1]["EndpointName"] == "easel-second"
    # another user's choice is their own
    world.portal.auth.create_user(username="bob", password="user-password-123", role="user",
                                  by="t")
    client.post("/sdapi/v1/txt2img", headers=_auth("bob"), json={"prompt": "x"})
    assert world.runtime.generations()[-1]["EndpointName"] == "easel-demo"


def test_progress_has_the_a1111_shape(world):
    client = _setup(world)
    body = client.get("/sdapi/v1/progress", headers=_auth()).json()
    assert {"progress", "eta_relative", "state", "current_image", "textinfo"} <= set(body)
    assert body["state"]["job_count"] == 0


def test_wrong_basic_credentials_are_401_with_challenge(world):
    client = _setup(world)
    response = client.get("/sdapi/v1/sd-models", headers=_auth(password="wrong-password"))
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Basic")
    assert client.get("/sdapi/v1/sd-models").status_code == 401
    assert world.runtime.generations() == []


def test_session_cookie_does_not_authenticate_the_api(world):
    world.in_service()
    admin = world.signed_in("admin")
    assert admin.get("/sdapi/v1/sd-models").status_code == 401
    assert admin.get("/sdapi/v1/sd-models",
                     headers=_auth("admin", ADMIN_PASSWORD)).status_code == 200


def test_revoked_password_stops_the_api_at_once(world):
    client = _setup(world)
    assert client.get("/sdapi/v1/sd-models", headers=_auth()).status_code == 200
    world.portal.auth.set_password(username="alice", password="a-new-password-1")
    assert client.get("/sdapi/v1/sd-models", headers=_auth()).status_code == 401


def test_slow_generation_answers_504_with_a_job_to_poll(world_factory):
    world = world_factory(EASEL_SYNC_TIMEOUT_SECONDS="0.3")
    client = _setup(world)
    world.runtime.release.clear()
    try:
        response = client.post("/sdapi/v1/txt2img", headers=_auth(), json={"prompt": "slow"})
        assert response.status_code == 504
        body = response.json()
        assert "async" in body["detail"] and body["job_id"]
        # no promise that the images will come: a real-time job fails past SageMaker's 60 s
        assert "goes on" not in body["detail"]
        assert "only if the endpoint answers within SageMaker's 60 s" in body["detail"]
        assert "'failed' with the reason" in body["detail"]
        running = client.get(f"/api/v1/jobs/{body['job_id']}", headers=_auth()).json()
        assert running["status"] == "running"
    finally:
        world.runtime.release.set()
    import time

    for _ in range(100):
        state = client.get(f"/api/v1/jobs/{body['job_id']}", headers=_auth()).json()
        if state["status"] != "running":
            break
        time.sleep(0.05)
    assert state["status"] == "done" and len(state["images"]) == 1


def test_no_endpoint_in_service_is_a_clear_error(world):
    world.add_user("alice")
    response = world.client().post("/sdapi/v1/txt2img", headers=_auth(), json={"prompt": "x"})
    assert response.status_code == 503
    assert "No endpoint is in service" in response.json()["detail"]


def test_generation_routes_take_the_contracts_request_models_as_typed_bodies(world):
    schema = _setup(world).app.openapi()
    # txt2img: the contract's request with Easel's xy_plot (easel_contracts.xy_plot)
    for path, model in (("/sdapi/v1/txt2img", "PlottedTxt2Img"),
                        ("/sdapi/v1/img2img", "Img2ImgRequest")):
        body = schema["paths"][path]["post"]["requestBody"]["content"]["application/json"]
        assert body["schema"]["$ref"].endswith(f"/{model}")
    width = schema["components"]["schemas"]["PlottedTxt2Img"]["properties"]["width"]
    assert width["maximum"] == 4096


def test_the_api_accepts_the_model_servers_largest_sizes(world):
    client = _setup(world)
    response = client.post("/sdapi/v1/txt2img", headers=_auth(),
                           json={"prompt": "x", "width": 4096, "height": 64, "n_iter": 16})
    assert response.status_code == 200, response.text
    sent = [json.loads(call["Body"])["payload"] for call in world.runtime.generations()]
    assert len(sent) == 16  # one invocation a batch, so each can be skipped
    first = sent[0]["seed"]
    assert sent == [{"prompt": "x", "width": 4096, "height": 64, "n_iter": 1,
                     "seed": first + index} for index in range(16)]
    assert len(response.json()["images"]) == 17  # their grid first (A1111's return_grid)


@pytest.mark.parametrize(("field", "value"), [
    ("width", 4104), ("n_iter", 17), ("steps", 151), ("hr_scale", 5),
])
def test_out_of_bounds_requests_are_422_before_any_endpoint_call(world, field, value):
    client = _setup(world)
    response = client.post("/sdapi/v1/txt2img", headers=_auth(), json={field: value})
    assert response.status_code == 422
    assert field in response.json()["detail"]
    assert world.runtime.generations() == []


def test_a_listing_answer_off_the_contract_is_a_clear_502(world):
    client = _setup(world)
    world.runtime.raw_answers["sd-models"] = [{"model_name": "tiny"}]
    response = client.get("/sdapi/v1/sd-models", headers=_auth())
    assert response.status_code == 502
    assert "does not match the invocation contract" in response.json()["detail"]
    assert "title" in response.json()["detail"]


def test_a_generation_answer_off_the_contract_fails_the_job_and_saves_nothing(world):
    client = _setup(world)
    world.runtime.raw_answers["txt2img"] = {"images": ["iVBORw0KGgo="], "parameters": {}}
    response = client.post("/sdapi/v1/txt2img", headers=_auth(), json={"prompt": "x"})
    assert response.status_code == 502
    assert "info" in response.json()["detail"]
    assert world.keys("outputs/") == []


def test_a_saved_checkpoint_that_is_not_a_plain_name_is_a_422_not_a_crash(world):
    client = _setup(world)
    world.portal.table.update("user#alice", "prefs", {"checkpoint": "../other"},
                              must_exist=False)
    response = client.post("/sdapi/v1/txt2img", headers=_auth(), json={"prompt": "x"})
    assert response.status_code == 422
    assert "choose another" in response.json()["detail"]
    assert world.runtime.generations() == []


# --- the model server's refusals keep their meaning (issue 15: fuzzing found 4xx passed on as 502)

def _txt2img(client, **fields):
    body = {"prompt": "x", "steps": 1, "width": 64, "height": 64, **fields}
    return client.post("/sdapi/v1/txt2img", headers=_auth(), json=body)


def test_a_request_the_server_refuses_is_a_422_with_its_message_not_a_502(world):
    client = _setup(world)
    response = _txt2img(client, sampler_name="No such sampler")
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert detail.startswith("The model server refused this request: sampler_name: ")
    assert "unknown sampler_name 'No such sampler'" in detail


def test_too_much_work_for_the_deadline_is_a_422_saying_what_to_lower(world):
    client = _setup(world)
    world.runtime.fail_with = "this request needs about 90 s; lower steps to 10"
    world.runtime.fail_body = {"error": "TooMuchWork", "field": "steps"}
    response = _txt2img(client)
    assert response.status_code == 422
    assert "steps: this request needs about 90 s; lower steps to 10" in response.json()["detail"]


def test_a_busy_server_is_a_503_with_its_retry_after(world):
    client = _setup(world)
    world.runtime.fail_with = "the endpoint is busy; retry in 7 s"
    world.runtime.fail_status = 503
    world.runtime.fail_body = {"error": "Busy", "retry_after_seconds": 7}
    response = _txt2img(client)
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "7"
    assert "retry in 7 s" in response.json()["detail"]


def test_work_the_server_stopped_at_its_deadline_is_a_504(world):
    client = _setup(world)
    world.runtime.fail_with = "stopped after step 3: its deadline of 55 s passed"
    world.runtime.fail_status = 504
    response = _txt2img(client)
    assert response.status_code == 504
    assert "deadline of 55 s passed" in response.json()["detail"]


@pytest.mark.parametrize("status", [500, 502])
def test_a_failing_model_server_is_still_a_502(world, status):
    client = _setup(world)
    world.runtime.fail_with = "internal error during txt2img"
    world.runtime.fail_status = status
    response = _txt2img(client)
    assert response.status_code == 502
    assert response.json()["detail"] == "The model server failed: internal error during txt2img"


def test_a_refused_job_is_recorded_failed_with_the_servers_message(world):
    client = _setup(world)
    assert _txt2img(client, sampler_name="bogus").status_code == 422
    job_id = world.portal.table.get(*keys.user_prefs_key("alice"))["last_job"]
    job = client.get(f"/api/v1/jobs/{job_id}", headers=_auth()).json()
    assert job["status"] == "failed"
    assert "unknown sampler_name 'bogus'" in job["error"]


# --- the work cap, applied by the portal before any job (one rule: easel_contracts.workcap)

def _measured_options(world, seconds_per_pixel_step: float = 1e-4) -> None:
    """The endpoint's options answer with the speed its server timed at warm-up (CPU-like)."""
    from easel_contracts import invocations as inv
    from easel_contracts.workcap import MeasuredSpeed

    options = inv.Options(
        sd_model_checkpoint="tiny.safetensors", sd_checkpoints_loaded=["tiny"],
        model_load_seconds={"tiny": 0.1}, CLIP_stop_at_last_layers=1, sd_vae="Automatic",
        samples_format="png", device="cpu", dtype="float32", max_response_bytes=6 * 1024 * 1024,
        pipeline_budget=2, warmed_up=None, deadline_seconds=55.0,
        speed=MeasuredSpeed(model="tiny", device="cpu", width=64, height=64,
                            seconds_per_pixel_step=seconds_per_pixel_step,
                            seconds_per_pixel_image=0.0))
    world.runtime.raw_answers["options"] = options.model_dump(mode="json")


def test_work_that_cannot_finish_by_the_deadline_is_refused_before_any_job(world):
    client = _setup(world)
    _measured_options(world)
    response = _txt2img(client, width=512, height=512, steps=20)
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert "more than its 55 s deadline" in detail and "lower steps to" in detail
    assert world.runtime.generations() == []
    assert "last_job" not in (world.portal.table.get(*keys.user_prefs_key("alice")) or {})


def test_work_that_fits_the_measured_speed_runs(world):
    client = _setup(world)
    _measured_options(world)
    assert _txt2img(client, width=64, height=64, steps=20).status_code == 200
    assert len(world.runtime.generations()) == 1


def test_the_speed_is_read_once_per_endpoint_not_per_request(world):
    client = _setup(world)
    _measured_options(world)
    for _ in range(3):
        assert _txt2img(client).status_code == 200
    options = [call for call in world.runtime.named("invoke_endpoint")
               if json.loads(call["Body"])["task"] == "options"]
    assert len(options) == 1


def test_an_endpoint_without_a_measured_speed_is_left_to_its_server(world):
    client = _setup(world)  # the fake server's options carry no speed (an older image)
    assert _txt2img(client, width=512, height=512, steps=20).status_code == 200
