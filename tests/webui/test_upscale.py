"""Extras upscale in the portal: `POST /sdapi/v1/extra-single-image`, `GET /sdapi/v1/upscalers`
and the gallery's Upscale (x2/x4, an upscaler), each saved to the caller's gallery; owners only."""

from __future__ import annotations

import base64
import io
import json

from PIL import Image

from easel_contracts import table as keys

from .fakes import png_b64


def _auth(user="alice", password="user-password-123"):
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def _size(encoded: str) -> tuple[int, int]:
    return Image.open(io.BytesIO(base64.b64decode(encoded))).size


def _gallery_image(world, owner: str) -> str:
    """One generated image in `owner`'s gallery (made through the A1111 txt2img route)."""
    response = world.client().post(
        "/sdapi/v1/txt2img", headers=_auth(owner),
        json={"prompt": f"{owner}'s heron", "steps": 2, "width": 64, "height": 64})
    assert response.status_code == 200, response.text
    mine = [i for i in world.portal.table.query_index("images") if i["owner"] == owner]
    return str(mine[-1]["image_id"])


def _upscale(world, user: str, source: str, *, scale: str, upscaler: str):
    """The gallery's Upscale form posted by `user`, signed in."""
    client = world.signed_in(user)
    return client.post(f"/gallery/{source}/upscale",
                       data={"scale": scale, "upscaler": upscaler,
                             "csrf_token": client.headers["X-CSRF-Token"]})


def _images_of(world, owner: str) -> list[dict]:
    return [i for i in world.portal.table.query_index("images") if i["owner"] == owner]


def test_extra_single_image_answers_the_a1111_shape_and_saves_to_the_gallery(world):
    world.add_user("alice")
    world.in_service()
    response = world.client().post("/sdapi/v1/extra-single-image", headers=_auth(), json={
        "image": png_b64(size=16), "upscaling_resize": 4, "upscaler_1": "tiny-x4"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"image", "html_info"}
    assert _size(body["image"]) == (64, 64)
    sent = json.loads(world.runtime.calls[-1][1]["Body"])
    assert sent["task"] == "extra-single-image" and sent["payload"]["upscaler_1"] == "tiny-x4"
    saved = _images_of(world, "alice")
    assert [(i["task"], i["width"], i["height"]) for i in saved] == [
        ("extra-single-image", 64, 64)]
    assert "image" not in json.loads(saved[0]["params"])  # the input is not kept as a param


def test_an_unknown_upscaler_is_a_422_with_the_names_the_server_has(world):
    world.add_user("alice")
    world.in_service()
    response = world.client().post("/sdapi/v1/extra-single-image", headers=_auth(), json={
        "image": png_b64(), "upscaler_1": "R-ESRGAN 4x+"})
    assert response.status_code == 422  # the server's refusal (its 404) is the caller's to fix
    assert "tiny-x4" in response.text and "Lanczos" in response.text
    assert _images_of(world, "alice") == []


def test_an_out_of_range_factor_is_refused_before_any_endpoint_call(world):
    world.add_user("alice")
    world.in_service()
    response = world.client().post("/sdapi/v1/extra-single-image", headers=_auth(), json={
        "image": png_b64(), "upscaling_resize": 8, "upscaler_1": "Lanczos"})
    assert response.status_code == 422
    assert "upscaling_resize" in response.text
    assert not [c for c in world.runtime.calls if c[0] == "invoke_endpoint"]


def test_the_upscalers_route_lists_the_endpoints_upscalers(world):
    world.add_user("alice")
    world.in_service()
    response = world.client().get("/sdapi/v1/upscalers", headers=_auth())
    assert response.status_code == 200, response.text
    assert [u["name"] for u in response.json()] == ["None", "Lanczos", "Nearest", "tiny-x4"]


def test_the_gallery_upscale_saves_a_larger_copy_to_the_owners_gallery(world):
    world.add_user("alice")
    world.in_service()
    source = _gallery_image(world, "alice")
    response = _upscale(world, "alice", source, scale="4", upscaler="tiny-x4")
    assert response.status_code == 303, response.text
    assert "notice=" in response.headers["location"]
    upscaled = [i for i in _images_of(world, "alice") if i["task"] == "extra-single-image"]
    assert len(upscaled) == 1
    record = world.portal.table.get(*keys.image_key(upscaled[0]["image_id"]))
    assert (record["width"], record["height"]) == (32, 32)  # the fake's 8x8 image, x4
    assert record["prompt"] == "alice's heron"  # searchable under its source's prompt
    assert json.loads(record["params"])["source_image_id"] == source


def test_the_gallery_upscale_of_another_users_image_is_not_found(world):
    world.add_user("alice")
    world.add_user("bob")
    world.in_service()
    source = _gallery_image(world, "alice")
    response = _upscale(world, "bob", source, scale="2", upscaler="Lanczos")
    assert response.status_code == 404
    assert not [i for i in world.portal.table.query_index("images")
                if i["task"] == "extra-single-image"]


def test_the_gallery_upscale_with_a_bad_factor_says_what_to_choose(world):
    world.add_user("alice")
    world.in_service()
    source = _gallery_image(world, "alice")
    response = _upscale(world, "alice", source, scale="9", upscaler="Lanczos")
    assert response.status_code == 303
    assert "error=" in response.headers["location"] and "Scale" in response.headers["location"]


def test_the_gallery_offers_upscale_with_the_endpoints_models(world):
    world.add_user("alice")
    world.in_service()
    _gallery_image(world, "alice")
    client = world.signed_in("alice")
    page = client.get("/gallery")
    assert 'class="inline upscale-form"' in page.text and "<option>Lanczos</option>" in page.text
    assert client.get("/gallery/upscalers").json() == {
        "upscalers": ["Lanczos", "Nearest", "tiny-x4"]}


def test_an_upscale_holds_one_of_the_users_generation_slots_while_it_runs(world):
    world.add_user("alice")
    world.in_service()
    generation = world.portal.generation
    generation.per_user_limit = 1
    held = generation._claim_slot("alice", "a-running-job")
    body = {"image": png_b64(), "upscaler_1": "Lanczos"}
    busy = world.client().post("/sdapi/v1/extra-single-image", headers=_auth(), json=body)
    assert busy.status_code == 429 and "wait for one to finish" in busy.text
    assert not [c for c in world.runtime.calls if c[0] == "invoke_endpoint"]
    world.portal.table.put(generation._slot_item(held, "a-running-job", held=False))
    done = world.client().post("/sdapi/v1/extra-single-image", headers=_auth(), json=body)
    assert done.status_code == 200, done.text
    assert generation._claim_slot("alice", "next-job") == held  # the upscale gave it back


def test_an_upscale_counts_in_the_portals_bounded_queue(world):
    world.add_user("alice")
    world.in_service()
    world.portal.generation.queue_limit = 0
    response = world.client().post("/sdapi/v1/extra-single-image", headers=_auth(),
                                   json={"image": png_b64(), "upscaler_1": "Lanczos"})
    assert response.status_code == 503 and response.headers["retry-after"] == "5"
