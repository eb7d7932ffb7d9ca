"""Generate: submit then poll; images and parameters land in S3 and the table; gallery."""

from __future__ import annotations

import json

from .conftest import BUCKET
from .helpers import poll_job


def _submit(client, endpoint="easel-demo", task="txt2img", **payload):
    body = {"endpoint": endpoint, "task": task,
            "payload": {"prompt": "a red square", "steps": 2, "width": 64, "height": 64,
                        **payload}}
    return client.post("/generate", json=body)


def test_submit_returns_a_job_then_poll_gives_images(world):
    world.in_service()
    world.add_user("alice")
    alice = world.signed_in("alice")
    response = _submit(alice, batch_size=2)
    assert response.status_code == 202
    state = poll_job(alice, response.json()["job_id"])
    assert state["status"] == "done", state
    assert len(state["images"]) == 3  # their grid first, then the two
    assert state["images"][0]["grid"] and not state["images"][1]["grid"]
    assert all(i["url"] and i["download_url"] for i in state["images"])
    (call,) = world.runtime.generations()
    assert call["EndpointName"] == "easel-demo"
    body = json.loads(call["Body"])
    assert body["task"] == "txt2img" and body["payload"]["prompt"] == "a red square"


def test_images_and_parameters_land_in_s3_and_the_table(world):
    world.in_service()
    world.add_user("alice")
    alice = world.signed_in("alice")
    state = poll_job(alice, _submit(alice).json()["job_id"])
    keys = world.keys("outputs/alice/")
    pngs = [k for k in keys if k.endswith(".png")]
    metas = [k for k in keys if k.endswith(".json")]
    assert len(pngs) == 1 and len(metas) == 1
    png = world.s3.get_object(Bucket=BUCKET, Key=pngs[0])["Body"].read()
    assert png.startswith(b"\x89PNG")
    meta = json.loads(world.s3.get_object(Bucket=BUCKET, Key=metas[0])["Body"].read())
    assert meta["request"]["prompt"] == "a red square" and meta["endpoint"] == "easel-demo"
    image_id = state["images"][0]["image_id"]
    record = world.portal.table.get(f"image#{image_id}", "meta")
    assert record["owner"] == "alice" and record["key"] == pngs[0]
    assert json.loads(record["params"])["steps"] == 2
    endpoint = world.portal.table.get("endpoint#easel-demo", "meta")
    assert endpoint["last_used_at"] > 0  # the reaper sees it was used


def test_gallery_lists_images_with_reuse_and_download(world):
    world.in_service()
    admin = world.signed_in("admin")
    state = poll_job(admin, _submit(admin, prompt="gallery prompt").json()["job_id"])
    image_id = state["images"][0]["image_id"]
    page = admin.get("/gallery")
    assert "gallery prompt" in page.text
    assert f"/generate?reuse={image_id}" in page.text
    assert "response-content-disposition=attachment" in page.text
    reuse = admin.get(f"/generate?reuse={image_id}")
    assert "gallery prompt" in reuse.text  # the form is prefilled from the stored parameters


def test_model_server_errors_are_shown_not_raised(world):
    world.in_service()
    world.runtime.fail_with = "width must be a multiple of 8"
    admin = world.signed_in("admin")
    state = poll_job(admin, _submit(admin).json()["job_id"])
    assert state["status"] == "failed"
    assert "width must be a multiple of 8" in state["error"]
    assert world.keys("outputs/") == []


def test_invalid_parameters_are_refused_with_the_field_name(world):
    world.in_service()
    admin = world.signed_in("admin")
    response = _submit(admin, width=65)
    assert response.status_code == 422
    assert "width" in response.json()["detail"]
    response = _submit(admin, steps=0)
    assert "steps" in response.json()["detail"]
    assert world.runtime.generations() == []


def test_unknown_endpoint_is_refused(world):
    admin = world.signed_in("admin")
    response = _submit(admin, endpoint="easel-nope")
    assert response.status_code == 404


def test_img2img_can_reuse_a_gallery_image(world):
    world.in_service()
    admin = world.signed_in("admin")
    first = poll_job(admin, _submit(admin).json()["job_id"])
    image_id = first["images"][0]["image_id"]
    second = _submit(admin, task="img2img", init_image_id=image_id, denoising_strength=0.5)
    assert second.status_code == 202, second.text
    assert poll_job(admin, second.json()["job_id"])["status"] == "done"
    body = json.loads(world.runtime.generations()[-1]["Body"])
    assert body["task"] == "img2img"
    assert body["payload"]["init_images"][0].startswith("iVBOR")  # base64 PNG
    meta = world.portal.table.get(f"image#{image_id}", "meta")
    assert meta is not None


def test_controlnet_canny_parameters_pass_through(world):
    world.in_service()
    admin = world.signed_in("admin")
    unit = {"enabled": True, "module": "canny", "model": "canny", "image": "iVBORw0KGgo="}
    response = _submit(admin, alwayson_scripts={"controlnet": {"args": [unit]}})
    state = poll_job(admin, response.json()["job_id"])
    assert state["status"] == "done"
    body = json.loads(world.runtime.generations()[-1]["Body"])
    assert body["payload"]["alwayson_scripts"]["controlnet"]["args"][0]["module"] == "canny"
    stored = state["images"][0]["params"]["alwayson_scripts"]["controlnet"]["args"][0]
    assert "image" not in stored  # control images are not copied into the history


def test_generate_options_come_from_the_endpoint_listing_tasks(world):
    world.in_service()
    admin = world.signed_in("admin")
    data = admin.get("/generate/options?endpoint=easel-demo").json()
    assert data["sd-models"][0]["title"] == "tiny.safetensors"
    assert data["loras"][0]["name"] == "style"
    assert data["samplers"][0]["name"] == "Euler a"
    assert data["controlnet-models"] == {"model_list": ["control_sd15_canny"]}
    tasks = [json.loads(c["Body"])["task"] for c in world.runtime.named("invoke_endpoint")]
    assert tasks == ["sd-models", "loras", "samplers", "controlnet-models", "upscalers",
                     "options"]


def test_generate_options_offer_the_endpoints_esrgan_models_for_hires_fix(world):
    world.in_service()
    data = world.signed_in("admin").get("/generate/options?endpoint=easel-demo").json()
    assert data["hr_upscalers"][0] == "Latent" and "Lanczos" in data["hr_upscalers"]
    assert data["hr_upscalers"][-1] == "tiny-x4"  # the endpoint's ESRGAN/ model


def test_generate_options_give_the_endpoint_models_native_size_for_the_form(world):
    world.in_service()
    data = world.signed_in("admin").get("/generate/options?endpoint=easel-demo").json()
    assert data["native_size"] == {"width": 64, "height": 64}  # where the endpoint warmed up


def test_an_endpoint_without_the_controlnet_listing_still_gives_its_options(world):
    world.in_service()
    world.runtime.controlnet_listing = False  # an endpoint image from before that task
    data = world.signed_in("admin").get("/generate/options?endpoint=easel-demo").json()
    assert data["controlnet-models"] == {"model_list": []}
    assert data["sd-models"][0]["title"] == "tiny.safetensors"


def test_generate_page_lists_library_loras_for_the_picker(world):
    world.in_service()
    world.put("loras/my-style.safetensors", b"12345678{}")
    page = world.signed_in("admin").get("/generate")
    assert 'value="my-style"' in page.text
    assert 'value="easel-demo"' in page.text


def test_async_endpoint_input_goes_through_s3_and_the_answer_is_read_back(world):
    world.in_service("easel-queue", mode="async")
    world.runtime.s3 = world.s3
    admin = world.signed_in("admin")
    state = poll_job(admin, _submit(admin, endpoint="easel-queue").json()["job_id"])
    assert state["status"] == "done", state
    (call,) = world.runtime.named("invoke_endpoint_async")
    assert call["InputLocation"].startswith(f"s3://{BUCKET}/async/in/")
    assert world.runtime.generations() == []
    assert len([k for k in world.keys("outputs/admin/") if k.endswith(".png")]) == 1


def test_async_answer_at_a_location_that_is_no_s3_uri_fails_the_job_with_a_reason(world,
                                                                                 monkeypatch):
    world.in_service("easel-queue", mode="async")
    monkeypatch.setattr(world.runtime, "invoke_endpoint_async",
                        lambda **kwargs: {"OutputLocation": "https://elsewhere/out"})
    admin = world.signed_in("admin")
    state = poll_job(admin, _submit(admin, endpoint="easel-queue").json()["job_id"])
    assert state["status"] == "failed"
    assert "bad location 'https://elsewhere/out'" in state["error"]


def test_a_job_whose_worker_vanished_is_reported_failed(world):
    from easel_webui.generation import STALE_AFTER_SECONDS

    world.add_user("alice")
    world.portal.table.put({
        "pk": "gen#lost", "sk": "meta", "job_id": "lost", "owner": "alice",
        "endpoint": "easel-demo", "task": "txt2img", "status": "running",
        "started": 1000.0, "created_at": "2026-01-01T00:00:00Z"})
    state = world.signed_in("alice").get("/generate/jobs/lost").json()
    assert STALE_AFTER_SECONDS < 3600
    assert state["status"] == "failed" and "submit it again" in state["error"].lower()


def test_the_generate_form_has_the_model_servers_bounds(world):
    world.in_service()
    admin = world.signed_in("admin")
    accepted = _submit(admin, width=4096, n_iter=16)
    assert accepted.status_code == 202
    assert poll_job(admin, accepted.json()["job_id"])["status"] == "done"
    refused = _submit(admin, width=4104)
    assert refused.status_code == 422 and "width" in refused.json()["detail"]


def test_an_unknown_task_is_refused_naming_the_generation_tasks(world):
    world.in_service()
    response = _submit(world.signed_in("admin"), task="sd-models")
    assert response.status_code == 400
    assert "txt2img, img2img" in response.json()["detail"]
    assert world.runtime.generations() == []


def _job_record(job_id: str, **fields):
    return {"pk": f"gen#{job_id}", "sk": "meta", "job_id": job_id, "owner": "alice",
            "endpoint": "easel-demo", "task": "txt2img", "status": "running",
            "created_at": "2026-01-01T00:00:00Z", **fields}


def test_a_job_of_a_stopped_portal_task_is_failed_once_its_heartbeat_is_stale(world):
    import time

    from easel_webui.generation import STALE_HEARTBEAT_SECONDS

    world.add_user("alice")
    stale = time.time() - STALE_HEARTBEAT_SECONDS - 5
    world.portal.table.put(_job_record("orphan", started=stale, heartbeat=stale,
                                       portal_task="a-task-that-restarted"))
    world.portal.table.put({"pk": "user#alice", "sk": "prefs", "last_job": "orphan"})
    alice = world.signed_in("alice")
    state = alice.get("/generate/jobs/orphan").json()
    assert state["status"] == "failed" and "portal task running this job stopped" in state["error"]
    stored = world.portal.table.get("gen#orphan", "meta")
    assert stored["status"] == "failed"  # recorded, not only reported


def test_progress_does_not_report_a_job_whose_portal_task_stopped(world):
    import base64
    import time

    from easel_webui.generation import STALE_HEARTBEAT_SECONDS

    world.add_user("alice")
    world.in_service()
    stale = time.time() - STALE_HEARTBEAT_SECONDS - 5
    world.portal.table.put(_job_record("orphan", started=stale, heartbeat=stale))
    world.portal.table.put({"pk": "user#alice", "sk": "prefs", "last_job": "orphan"})
    token = base64.b64encode(b"alice:user-password-123").decode()
    progress = world.client().get("/sdapi/v1/progress",
                                  headers={"Authorization": f"Basic {token}"}).json()
    assert progress["state"]["job"] == "" and progress["textinfo"] == "idle"


def test_a_job_whose_portal_task_beats_stays_running(world, monkeypatch):
    from easel_webui import generation as generation_module

    world.in_service()
    admin = world.signed_in("admin")
    world.runtime.release.clear()
    try:
        job_id = _submit(admin).json()["job_id"]
        later = generation_module.now() + generation_module.STALE_HEARTBEAT_SECONDS * 3
        monkeypatch.setattr(generation_module, "now", lambda: later)
        world.portal.generation.beat()  # the task is alive: it renews the heartbeat
        assert admin.get(f"/generate/jobs/{job_id}").json()["status"] == "running"
    finally:
        world.runtime.release.set()


def test_hires_fix_settings_pass_through_to_the_endpoint_and_the_history(world):
    world.in_service()
    admin = world.signed_in("admin")
    hires = {"enable_hr": True, "hr_upscaler": "Lanczos", "hr_scale": 1.5,
             "hr_second_pass_steps": 4, "denoising_strength": 0.45}
    response = _submit(admin, **hires)
    state = poll_job(admin, response.json()["job_id"])
    assert state["status"] == "done", state
    sent = json.loads(world.runtime.generations()[-1]["Body"])["payload"]
    assert {key: sent[key] for key in hires} == hires
    assert state["images"][0]["params"]["hr_upscaler"] == "Lanczos"


def test_a_hires_upscaler_that_is_a_path_is_refused_with_the_field(world):
    world.in_service()
    refused = _submit(world.signed_in("admin"), enable_hr=True, hr_upscaler="../R-ESRGAN 4x+")
    assert refused.status_code == 422 and "hr_upscaler" in refused.json()["detail"]
    assert world.runtime.generations() == []


def test_a_hires_upscaler_the_server_lacks_fails_the_job_with_its_names(world):
    # any plain name may be an ESRGAN model of the endpoint: the server says which it has
    world.in_service()
    admin = world.signed_in("admin")
    state = poll_job(admin, _submit(admin, enable_hr=True,
                                    hr_upscaler="R-ESRGAN 4x+").json()["job_id"])
    assert state["status"] == "failed"
    assert "hr_upscaler" in state["error"] and "tiny-x4" in state["error"]
    # nothing saved for it (the bucket itself is not checked: a job thread of an earlier test
    # in this process can still be writing its images into the shared moto backend)
    assert not state.get("images")


def test_the_generate_page_offers_the_hires_upscalers(world):
    world.in_service()
    page = world.signed_in("admin").get("/generate")
    assert 'id="hr-on"' in page.text
    assert "<option>Latent</option>" in page.text and "<option>Lanczos</option>" in page.text
