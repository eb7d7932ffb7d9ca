"""Per-user views (gallery, training jobs) query the user's own records through `owner#` items,
so they do not depend on how many records everyone else has; older records get their owner items
from a one-off backfill."""

from __future__ import annotations

from easel_contracts import table as keys
from easel_webui.store import OWNER_ITEMS_MIGRATION, backfill_owner_items, serialize

from .conftest import TABLE
from .helpers import poll_job


def _image_record(image_id: str, owner: str, created: str, prompt: str) -> dict:
    return {**keys.image_key(image_id).item(), **keys.image_index(created, image_id),
            "image_id": image_id, "owner": owner, "key": f"outputs/{owner}/{image_id}.png",
            "params_key": f"outputs/{owner}/{image_id}.json", "endpoint": "easel-demo",
            "task": "txt2img", "prompt": prompt, "params": "{}", "created_at": created}


def _training_record(job: str, owner: str, created: str) -> dict:
    return {**keys.training_job_key(job).item(), **keys.training_job_index(created, job),
            "job": job, "owner": owner, "mode": "lora", "output_name": job,
            "model_s3_uri": "s3://easel-test-data/models/tiny.tar.gz",
            "concepts_s3_uri": f"s3://easel-test-data/concepts/{owner}/set/",
            "instance_type": "ml.g5.2xlarge", "created_at": created}


def _write_all(world, items: list[dict]) -> None:
    client = world.portal.table.client
    for start in range(0, len(items), 25):
        client.batch_write_item(RequestItems={TABLE: [
            {"PutRequest": {"Item": serialize(item)}} for item in items[start:start + 25]]})


def test_a_users_image_stays_in_her_gallery_after_others_make_5000_newer_ones(world):
    world.in_service()
    world.add_user("alice")
    alice = world.signed_in("alice")
    response = alice.post("/generate", json={"endpoint": "easel-demo", "task": "txt2img",
                                             "payload": {"prompt": "alice-old-prompt"}})
    assert poll_job(alice, response.json()["job_id"])["status"] == "done"
    newer = []
    for n in range(5001):
        image_id = f"bob{n:05d}"
        created = f"2999-01-01T00:00:00Z{n:05d}"  # newer than anything made today
        newer += [_image_record(image_id, "bob", created, "bob-prompt"),
                  keys.owner_image_item("bob", created, image_id)]
    _write_all(world, newer)
    assert "alice-old-prompt" in alice.get("/gallery").text


def test_a_users_training_job_stays_listed_after_others_submit_500_newer_ones(world):
    world.add_user("alice")
    created = "2026-01-01T00:00:00Z"
    _write_all(world, [_training_record("easel-alice-job", "alice", created),
                       keys.owner_training_item("alice", created, "easel-alice-job")])
    newer = []
    for n in range(501):
        job, when = f"easel-bob-{n}", f"2999-01-01T00:00:00Z{n:05d}"
        newer += [_training_record(job, "bob", when), keys.owner_training_item("bob", when, job)]
    _write_all(world, newer)
    page = world.signed_in("alice").get("/training").text
    assert "easel-alice-job" in page and "easel-bob-" not in page


def test_deleting_an_image_removes_its_owner_item(world):
    world.in_service()
    world.add_user("alice")
    alice = world.signed_in("alice")
    response = alice.post("/generate", json={"endpoint": "easel-demo", "task": "txt2img",
                                             "payload": {"prompt": "to delete"}})
    image_id = poll_job(alice, response.json()["job_id"])["images"][0]["image_id"]
    table = world.portal.table
    assert len(table.query(keys.owner_partition("alice"))) == 1
    alice.post(f"/gallery/{image_id}/delete")
    assert table.query(keys.owner_partition("alice")) == []


def test_portal_start_runs_the_backfill_once(world):
    table = world.portal.table  # the first use builds the portal
    assert table.get(*keys.migration_key(OWNER_ITEMS_MIGRATION)) is not None
    assert backfill_owner_items(table) is None


def test_backfill_gives_older_records_their_owner_items(world):
    world.add_user("alice")
    table = world.portal.table
    table.delete(*keys.migration_key(OWNER_ITEMS_MIGRATION))
    _write_all(world, [_image_record("legacy1", "alice", "2025-05-05T00:00:00Z", "legacy-prompt"),
                       _training_record("easel-legacy", "alice", "2025-05-05T00:00:00Z")])
    alice = world.signed_in("alice")
    assert "legacy-prompt" not in alice.get("/gallery").text  # no owner item yet
    assert backfill_owner_items(table) == 2
    assert "legacy-prompt" in alice.get("/gallery").text
    assert "easel-legacy" in alice.get("/training").text
    assert table.get(*keys.migration_key(OWNER_ITEMS_MIGRATION)) is not None


def test_backfill_is_idempotent(world):
    table = world.portal.table
    table.delete(*keys.migration_key(OWNER_ITEMS_MIGRATION))
    _write_all(world, [_image_record("legacy1", "alice", "2025-05-05T00:00:00Z", "p")])
    assert backfill_owner_items(table) == 1
    first = table.query(keys.owner_partition("alice"))
    table.delete(*keys.migration_key(OWNER_ITEMS_MIGRATION))  # as if the marker write was lost
    assert backfill_owner_items(table) == 1
    assert table.query(keys.owner_partition("alice")) == first
    assert backfill_owner_items(table) is None
