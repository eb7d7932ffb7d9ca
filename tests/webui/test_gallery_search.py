"""Gallery search (issue 18): prompt words, model and date range, server-side and paginated over
the user's own records (through the `owner#` items), with bounded reads per page."""

from __future__ import annotations

import json
import re

from easel_contracts import table as keys
from easel_webui import gallery

from .test_owner_views import _image_record, _write_all


def _image(image_id: str, owner: str, created: str, prompt: str, model: str = "") -> list[dict]:
    record = _image_record(image_id, owner, created, prompt)
    if model:
        record["model"] = model
    return [record, keys.owner_image_item(owner, created, image_id)]


def _shown(html: str) -> list[str]:
    return re.findall(r'data-image="([^"]+)"', html)


def _seed(world) -> None:
    world.add_user("alice")
    world.add_user("bob")
    _write_all(world, [
        *_image("a-fox-jan", "alice", "2026-01-10T10:00:00Z", "A red Fox in snow", "tiny-sd"),
        *_image("a-owl-feb", "alice", "2026-02-10T10:00:00Z", "an owl at night", "tiny-sd"),
        *_image("a-fox-mar", "alice", "2026-03-10T10:00:00Z", "fox cub, watercolor", "dream"),
        *_image("b-fox-mar", "bob", "2026-03-11T10:00:00Z", "fox of bob", "tiny-sd"),
    ])


def test_prompt_words_find_the_users_matching_images_only(world):
    _seed(world)
    html = world.signed_in("alice").get("/gallery", params={"q": "FOX"}).text
    assert _shown(html) == ["a-fox-mar", "a-fox-jan"]  # newest first, not bob's


def test_every_prompt_word_must_match(world):
    _seed(world)
    html = world.signed_in("alice").get("/gallery", params={"q": "fox snow"}).text
    assert _shown(html) == ["a-fox-jan"]


def test_model_filter_matches_the_recorded_model_name(world):
    _seed(world)
    html = world.signed_in("alice").get("/gallery", params={"model": "dream"}).text
    assert _shown(html) == ["a-fox-mar"]


def test_model_filter_falls_back_to_the_requested_checkpoint(world):
    world.add_user("alice")
    record, owner_item = _image("old", "alice", "2026-01-01T00:00:00Z", "old image")
    record["params"] = json.dumps({"override_settings": {"sd_model_checkpoint": "legacy.ckpt"}})
    _write_all(world, [record, owner_item])
    html = world.signed_in("alice").get("/gallery", params={"model": "legacy"}).text
    assert _shown(html) == ["old"]


def test_date_range_includes_both_days(world):
    _seed(world)
    html = world.signed_in("alice").get(
        "/gallery", params={"since": "2026-01-10", "until": "2026-02-10"}).text
    assert _shown(html) == ["a-owl-feb", "a-fox-jan"]


def test_a_generated_image_records_the_model_the_server_named(world):
    from .helpers import poll_job

    world.in_service()
    world.add_user("alice")
    alice = world.signed_in("alice")
    job = alice.post("/generate", json={"endpoint": "easel-demo", "task": "txt2img",
                                        "payload": {"prompt": "a kite"}}).json()["job_id"]
    state = poll_job(alice, job)
    record = world.portal.table.get(*keys.image_key(state["images"][0]["image_id"]))
    assert record["model"]
    html = alice.get("/gallery", params={"model": record["model"]}).text
    assert _shown(html) == [state["images"][0]["image_id"]]


def test_pages_follow_on_without_repeats(world, monkeypatch):
    monkeypatch.setattr(gallery, "PAGE_SIZE", 2)
    world.add_user("alice")
    items = []
    for n in range(5):
        items += _image(f"img{n}", "alice", f"2026-01-0{n + 1}T00:00:00Z", f"cat {n}")
    _write_all(world, items)
    alice = world.signed_in("alice")
    seen, url = [], "/gallery?q=cat"
    for _ in range(4):
        html = alice.get(url).text
        seen += _shown(html)
        link = re.search(r'id="gallery-next" href="([^"]+)"', html)
        if not link:
            break
        url = link.group(1).replace("&amp;", "&")
    assert seen == ["img4", "img3", "img2", "img1", "img0"]


def test_one_page_reads_a_bounded_number_of_records(world, monkeypatch):
    monkeypatch.setattr(gallery, "MAX_EXAMINED", 10)
    world.add_user("alice")
    items = []
    for n in range(30):
        items += _image(f"dog{n:02d}", "alice", f"2026-01-01T00:00:{n:02d}Z", "a dog")
    items += _image("cat", "alice", "2025-12-01T00:00:00Z", "a cat")
    _write_all(world, items)
    alice = world.signed_in("alice")
    html = alice.get("/gallery", params={"q": "cat"}).text
    assert _shown(html) == [] and 'id="gallery-partial"' in html
    for _ in range(5):  # going on finds it, a bounded stretch at a time
        url = re.search(r'id="gallery-next" href="([^"]+)"', html).group(1).replace("&amp;", "&")
        html = alice.get(url).text
        if _shown(html):
            break
    assert _shown(html) == ["cat"]


def test_an_admin_searches_everyones_images(world):
    _seed(world)
    html = world.signed_in("admin").get("/gallery", params={"q": "fox"}).text
    assert _shown(html) == ["b-fox-mar", "a-fox-mar", "a-fox-jan"]


def test_a_cursor_into_another_users_images_is_refused(world):
    _seed(world)
    forged = gallery._encode_cursor({"pk": keys.owner_partition("bob"), "sk": "image#9"})
    response = world.signed_in("alice").get("/gallery", params={"after": forged})
    assert response.status_code == 400
    assert "start again from the first page" in response.text
    assert "b-fox-mar" not in response.text


def test_bad_dates_say_the_format(world):
    world.add_user("alice")
    response = world.signed_in("alice").get("/gallery", params={"since": "10/01/2026"})
    assert response.status_code == 400
    assert "YYYY-MM-DD" in response.text and 'id="gallery-search"' in response.text


def test_a_reversed_date_range_is_refused(world):
    world.add_user("alice")
    response = world.signed_in("alice").get(
        "/gallery", params={"since": "2026-02-01", "until": "2026-01-01"})
    assert response.status_code == 400 and "swap them" in response.text


def test_overlong_search_text_is_refused(world):
    world.add_user("alice")
    response = world.signed_in("alice").get("/gallery", params={"q": "x" * 201})
    assert response.status_code == 400 and "at most 200 characters" in response.text
