"""Ownership of what users name by S3 path (issue 15): another user's training results and
private models cannot be trained on; library LoRAs are replaced only by their owner or an
administrator (upload with replace, or publish)."""

from __future__ import annotations

import html
import urllib.parse

from easel_contracts import table as keys

from .conftest import BUCKET
from .test_models import _safetensors
from .test_training import _form, _result_archive, alice_world  # noqa: F401 - the fixture


def _error(response) -> str:
    location = urllib.parse.unquote_plus(response.headers.get("location", ""))
    return location if "error=" in location else html.unescape(response.text)


def test_another_users_training_result_cannot_be_trained_on(alice_world):  # noqa: F811
    alice = alice_world.signed_in("alice")
    alice.post("/training", data=_form())
    alice_world.put("training/easel-dog-v1/output/model.tar.gz", b"weights")
    bob_world_form = _form(name="steal", concept_set="cats",
                           model_s3_uri=f"s3://{BUCKET}/training/easel-dog-v1/output/model.tar.gz")
    response = alice_world.signed_in("bob").post("/training", data=bob_world_form)
    assert "training/easel-dog-v1/ is not one of your training jobs" in _error(response)
    assert [j["TrainingJobName"] for j in alice_world.sagemaker.named("create_training_job")] \
        == ["easel-dog-v1"]


def test_the_creator_may_train_on_their_own_result(alice_world):  # noqa: F811
    alice = alice_world.signed_in("alice")
    alice.post("/training", data=_form())
    again = alice.post("/training", data=_form(
        name="dog-v2", model_s3_uri=f"s3://{BUCKET}/training/easel-dog-v1/output/model.tar.gz"))
    assert again.headers["location"].startswith("/training/easel-dog-v2")


def test_a_training_path_that_names_no_recorded_job_is_refused(alice_world):  # noqa: F811
    response = alice_world.signed_in("alice").post("/training", data=_form(
        model_s3_uri=f"s3://{BUCKET}/training/nobody-made-this/output/model.tar.gz"))
    assert "is not one of your training jobs" in _error(response)


def test_a_private_model_is_refused_to_other_users(alice_world):  # noqa: F811
    alice_world.put("models/alice-face.tar.gz", b"weights")
    alice_world.portal.table.put({**keys.library_entry_key("models/alice-face.tar.gz").item(),
                                  "owner": "alice", "shared": False})
    response = alice_world.signed_in("bob").post("/training", data=_form(
        concept_set="cats", model_s3_uri=f"s3://{BUCKET}/models/alice-face.tar.gz"))
    assert "another user's private model" in _error(response)
    assert alice_world.sagemaker.named("create_training_job") == []


def test_a_lora_is_replaced_only_by_its_owner(world):
    world.add_user("alice")
    world.add_user("bob")
    alice = world.signed_in("alice")
    alice.post("/models/loras", files={"file": ("pixel.safetensors", _safetensors())})
    original = world.s3.get_object(Bucket=BUCKET, Key="loras/pixel.safetensors")["Body"].read()
    bob = world.signed_in("bob")
    hostile = _safetensors() + b"bob was here"
    refused = bob.post("/models/loras", data={"replace": "1"},
                       files={"file": ("pixel.safetensors", hostile)})
    assert "belongs to alice" in _error(refused)
    assert world.s3.get_object(Bucket=BUCKET, Key="loras/pixel.safetensors")["Body"].read() \
        == original
    mine = alice.post("/models/loras", data={"replace": "1"},
                      files={"file": ("pixel.safetensors", _safetensors() + b"v2")})
    assert "notice=" in mine.headers["location"]


def test_an_administrator_may_replace_any_lora(world):
    world.add_user("alice")
    world.signed_in("alice").post("/models/loras",
                                  files={"file": ("pixel.safetensors", _safetensors())})
    replaced = world.signed_in("admin").post("/models/loras", data={"replace": "1"},
                                             files={"file": ("pixel.safetensors",
                                                             _safetensors() + b"v2")})
    assert "notice=" in replaced.headers["location"]


def test_a_lora_put_there_outside_the_portal_is_replaced_only_by_admins(world):
    world.add_user("bob")
    world.put("loras/house-style.safetensors", _safetensors())
    refused = world.signed_in("bob").post("/models/loras", data={"replace": "1"},
                                          files={"file": ("house-style.safetensors",
                                                          _safetensors() + b"x")})
    assert "only an administrator can replace it" in _error(refused)


def test_publishing_cannot_overwrite_another_users_lora(alice_world):  # noqa: F811
    bob = alice_world.signed_in("bob")
    bob.post("/models/loras", files={"file": ("sks-dog.safetensors", _safetensors())})
    before = alice_world.s3.get_object(Bucket=BUCKET, Key="loras/sks-dog.safetensors")["Body"]
    before = before.read()
    alice = alice_world.signed_in("alice")
    alice.post("/training", data=_form(output_name="sks-dog"))
    alice_world.sagemaker.jobs["easel-dog-v1"]["TrainingJobStatus"] = "Completed"
    alice_world.put("training/easel-dog-v1/output/model.tar.gz", _result_archive("sks-dog"))
    response = alice.post("/training/easel-dog-v1/publish")
    assert "belongs to bob" in _error(response)
    after = alice_world.s3.get_object(Bucket=BUCKET, Key="loras/sks-dog.safetensors")["Body"]
    assert after.read() == before
