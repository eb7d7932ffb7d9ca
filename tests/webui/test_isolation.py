"""Users see only their own images, uploads and jobs; admins see all."""

from __future__ import annotations

from .helpers import poll_job


def _generate(client, prompt):
    response = client.post("/generate", json={"endpoint": "easel-demo", "task": "txt2img",
                                              "payload": {"prompt": prompt}})
    return poll_job(client, response.json()["job_id"])


def _two_users(world):
    world.in_service()
    world.add_user("alice")
    world.add_user("bob")
    return world.signed_in("alice"), world.signed_in("bob")


def test_gallery_shows_only_own_images_admin_sees_all(world):
    alice, bob = _two_users(world)
    _generate(alice, "alice-secret-prompt")
    _generate(bob, "bob-prompt")
    assert "alice-secret-prompt" not in bob.get("/gallery").text
    assert "bob-prompt" in bob.get("/gallery").text
    admin_page = world.signed_in("admin").get("/gallery").text
    assert "alice-secret-prompt" in admin_page and "bob-prompt" in admin_page


def test_another_users_job_image_and_delete_are_not_found(world):
    alice, bob = _two_users(world)
    state = _generate(alice, "mine")
    image_id = state["images"][0]["image_id"]
    assert bob.get(f"/generate/jobs/{state['job_id']}").status_code == 404
    assert bob.post(f"/gallery/{image_id}/delete").status_code == 404
    assert world.portal.table.get(f"image#{image_id}", "meta") is not None
    reuse = bob.get(f"/generate?reuse={image_id}")
    assert "mine" not in reuse.text
    # img2img from someone else's image is refused too
    response = bob.post("/generate", json={"endpoint": "easel-demo", "task": "img2img",
                                           "payload": {"prompt": "x", "init_image_id": image_id}})
    assert response.status_code == 404


def test_concept_sets_are_private(world):
    alice, bob = _two_users(world)
    world.put("concepts/alice/private-set/1.png", b"\x89PNG")
    assert "private-set" not in bob.get("/models").text
    assert bob.get("/models/concepts/alice/private-set").status_code == 404
    assert bob.post("/models/concepts/alice/private-set/delete").status_code == 404
    assert world.keys("concepts/alice/") == ["concepts/alice/private-set/1.png"]
    assert "private-set" in world.signed_in("admin").get("/models").text


def test_uploads_always_go_to_the_callers_prefix(world):
    alice, bob = _two_users(world)
    answer = bob.post("/models/concepts/presign",
                      json={"set": "x", "files": [{"name": "1.png", "type": "image/png"}]})
    assert answer.json()["uploads"][0]["key"] == "concepts/bob/.incoming/x/1.png"


def test_api_users_see_only_their_jobs(world):
    import base64

    alice, _ = _two_users(world)
    state = _generate(alice, "mine")
    token = base64.b64encode(b"bob:user-password-123").decode()
    response = world.client().get(f"/api/v1/jobs/{state['job_id']}",
                                  headers={"Authorization": f"Basic {token}"})
    assert response.status_code == 404
