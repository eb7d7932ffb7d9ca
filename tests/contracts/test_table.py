"""The table's keys are stored data: a changed format would orphan every existing record, so the
formats are pinned here."""

from easel_contracts import table as keys


def test_record_keys_keep_their_stored_format():
    assert keys.user_key("ana") == ("user#ana", "profile")
    assert keys.user_prefs_key("ana") == ("user#ana", "prefs")
    assert keys.login_attempts_key("ana", "10.0.0.1") == ("throttle#ana", "client#10.0.0.1")
    assert keys.library_entry_key("loras/x.safetensors") == ("library#loras/x.safetensors",
                                                              "owner")
    assert keys.user_tombstone_key("ana") == ("user#ana", "tombstone")
    assert keys.revoked_session_key("n1") == ("revoked#n1", "session")
    assert keys.image_key("i1") == ("image#i1", "meta")
    assert keys.generation_job_key("g1") == ("gen#g1", "meta")
    assert keys.generation_slot_key("ana", 2) == ("user#ana", "genslot#2")
    assert keys.endpoint_key("easel-demo") == ("endpoint#easel-demo", "meta")
    assert keys.training_job_key("easel-dog") == ("training#easel-dog", "meta")


def test_index_entries_keep_their_stored_format():
    assert keys.user_index("ana") == {"gsi1pk": "users", "gsi1sk": "ana"}
    assert keys.image_index("2026-01-01T00:00:00Z", "i1") == {
        "gsi1pk": "images", "gsi1sk": "2026-01-01T00:00:00Z#i1"}
    assert keys.endpoint_index("easel-demo") == {"gsi1pk": "endpoints", "gsi1sk": "easel-demo"}
    assert keys.training_job_index("2026-01-01T00:00:00Z", "easel-dog") == {
        "gsi1pk": "training", "gsi1sk": "2026-01-01T00:00:00Z#easel-dog"}


def test_key_item_names_the_table_key_attributes():
    assert keys.image_key("i1").item() == {"pk": "image#i1", "sk": "meta"}


def test_owner_items_sort_newest_last_within_a_kind_and_point_at_their_record():
    older = keys.owner_image_item("ana", "2026-01-01T00:00:00Z", "i1")
    newer = keys.owner_image_item("ana", "2026-02-01T00:00:00Z", "i0")
    assert older["pk"] == newer["pk"] == keys.owner_partition("ana")
    assert older["sk"] < newer["sk"]
    assert older["sk"].startswith(keys.owner_sort_prefix(keys.OWNER_IMAGE))
    assert keys.referenced_key(older) == keys.image_key("i1")
    assert keys.owner_image_key("ana", "2026-01-01T00:00:00Z", "i1") == (older["pk"], older["sk"])


def test_owner_items_of_different_kinds_do_not_share_a_sort_prefix():
    image = keys.owner_image_item("ana", "2026-01-01T00:00:00Z", "x")
    job = keys.owner_training_item("ana", "2026-01-01T00:00:00Z", "x")
    assert not job["sk"].startswith(keys.owner_sort_prefix(keys.OWNER_IMAGE))
    assert not image["sk"].startswith(keys.owner_sort_prefix(keys.OWNER_TRAINING))
    assert keys.referenced_key(job) == keys.training_job_key("x")
