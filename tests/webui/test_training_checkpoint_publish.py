"""Training (issue 18): a stopped (or failed) lora job's last checkpoint LoRA goes into the LoRA
library, with the completed-job publish's owner checks and name rule; the page says the step."""

from __future__ import annotations

import html
import urllib.parse

import numpy as np
import pytest
from safetensors.numpy import save

from easel_contracts import table as keys
from easel_contracts.training_record import TrainingJobRecord

from .test_training import _form, seed_alice_world

OLD = "easel-dog-v1"
CHECKPOINTS = f"training/{OLD}/checkpoints/"


def lora_bytes(seed: int = 0) -> bytes:
    """A small kohya-format LoRA file."""
    rng = np.random.default_rng(seed)
    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    return save({f"{name}.lora_down.weight": rng.standard_normal((4, 32), dtype=np.float32),
                 f"{name}.lora_up.weight": rng.standard_normal((32, 4), dtype=np.float32),
                 f"{name}.alpha": np.array(4.0, dtype=np.float32)},
                metadata={"ss_network_dim": "4"})


def put_checkpoint(world, step: int, *, lora: bytes | None = None, state: bool = True,
                   prefix: str = CHECKPOINTS) -> None:
    if state:
        world.put(f"{prefix}checkpoint-{step}/state.json", b'{"format": 2}')
    world.put(f"{prefix}checkpoint-{step}/trainable.safetensors", b"weights")
    if lora is not None:
        world.put(f"{prefix}checkpoint-{step}/lora.safetensors", lora)


def ended_job(world, status: str = "Stopped", **fields) -> None:
    world.signed_in("alice").post("/training", data=_form(**fields))
    world.sagemaker.jobs[OLD]["TrainingJobStatus"] = status


@pytest.fixture
def studio(world):
    return seed_alice_world(world)


def _record(world) -> TrainingJobRecord:
    return TrainingJobRecord.model_validate(world.portal.table.get(*keys.training_job_key(OLD)))


def test_a_stopped_job_offers_its_last_checkpoint_and_says_the_step(studio):
    ended_job(studio)
    put_checkpoint(studio, 250, lora=lora_bytes(1))
    put_checkpoint(studio, 500, lora=lora_bytes(2))
    page = studio.signed_in("alice").get(f"/training/{OLD}").text
    assert f'action="/training/{OLD}/publish-checkpoint"' in page
    assert "Publish last checkpoint (step 500)" in page
    assert "<code>dog-v1-step500</code>" in page


def test_publishing_copies_the_last_checkpoints_lora_into_the_library(studio):
    ended_job(studio)
    put_checkpoint(studio, 250, lora=lora_bytes(1))
    put_checkpoint(studio, 500, lora=lora_bytes(2))
    alice = studio.signed_in("alice")
    response = alice.post(f"/training/{OLD}/publish-checkpoint")
    assert response.status_code == 303
    assert "<lora:dog-v1-step500:0.8>" in urllib.parse.unquote(response.headers["location"])
    published = studio.s3.get_object(Bucket=studio.settings.bucket,
                                     Key="loras/dog-v1-step500.safetensors")["Body"].read()
    assert published == lora_bytes(2)
    record = _record(studio)
    assert (record.published_lora, record.published_step) == ("dog-v1-step500", 500)
    assert "from the checkpoint at step 500" in alice.get(f"/training/{OLD}").text


def test_the_publish_is_owned_like_a_completed_jobs(studio):
    ended_job(studio)
    put_checkpoint(studio, 500, lora=lora_bytes())
    studio.signed_in("alice").post(f"/training/{OLD}/publish-checkpoint")
    owner = studio.portal.table.get(
        *keys.library_entry_key("loras/dog-v1-step500.safetensors"))
    assert owner["owner"] == "alice" and not owner["shared"]


def test_a_failed_job_with_a_checkpoint_can_publish_it(studio):
    ended_job(studio, status="Failed")
    put_checkpoint(studio, 250, lora=lora_bytes())
    response = studio.signed_in("alice").post(f"/training/{OLD}/publish-checkpoint")
    assert response.status_code == 303
    assert studio.keys("loras/") == ["loras/dog-v1-step250.safetensors"]


def test_a_checkpoint_still_uploading_is_passed_over_for_the_one_before(studio):
    ended_job(studio)
    put_checkpoint(studio, 250, lora=lora_bytes())
    put_checkpoint(studio, 500, lora=lora_bytes(2), state=False)  # state.json not synced yet
    studio.signed_in("alice").post(f"/training/{OLD}/publish-checkpoint")
    assert studio.keys("loras/") == ["loras/dog-v1-step250.safetensors"]


def test_another_user_cannot_publish_the_checkpoint(studio):
    ended_job(studio)
    put_checkpoint(studio, 500, lora=lora_bytes())
    response = studio.signed_in("bob").post(f"/training/{OLD}/publish-checkpoint")
    assert response.status_code == 404
    assert studio.keys("loras/") == []


def test_another_users_library_entry_is_not_replaced(studio):
    ended_job(studio)
    put_checkpoint(studio, 500, lora=lora_bytes())
    studio.portal.table.put({**keys.library_entry_key("loras/dog-v1-step500.safetensors").item(),
                             "owner": "bob", "shared": False, "created_at": "2026-01-01"})
    response = studio.signed_in("alice").post(f"/training/{OLD}/publish-checkpoint")
    assert response.status_code == 403
    assert "belongs to bob" in response.text
    assert studio.keys("loras/") == []


def test_a_job_without_a_checkpoint_gets_a_clear_refusal(studio):
    ended_job(studio)
    alice = studio.signed_in("alice")
    assert "before it saved a checkpoint" in alice.get(f"/training/{OLD}").text
    response = alice.post(f"/training/{OLD}/publish-checkpoint")
    assert response.status_code == 409
    assert "ended before it saved a checkpoint, so there is no LoRA to publish: start a new " \
        "job" in response.text
    assert studio.keys("loras/") == []


def test_checkpoints_without_a_lora_file_say_to_resume(studio):
    ended_job(studio)
    put_checkpoint(studio, 500)  # written by an image from before checkpoint LoRAs
    response = studio.signed_in("alice").post(f"/training/{OLD}/publish-checkpoint")
    assert response.status_code == 409
    assert "hold no LoRA file" in response.text and "resume the job" in response.text


@pytest.mark.parametrize(("content", "reason"), [
    (b"not a safetensors file", "bad header length"),
    (lora_bytes()[:-10], "truncated or padded"),
    (b"\x07\x00\x00\x00\x00\x00\x00\x00[1,2,3]", "not a JSON object"),
    (save({"unet.weight": np.zeros(2, dtype=np.float32)}), "holds no LoRA tensors"),
])
def test_an_unreadable_checkpoint_lora_is_refused_with_the_reason(studio, content, reason):
    ended_job(studio)
    put_checkpoint(studio, 500, lora=content)
    response = studio.signed_in("alice").post(f"/training/{OLD}/publish-checkpoint")
    assert response.status_code == 422
    text = html.unescape(response.text)
    assert "The LoRA of the checkpoint at step 500 cannot be read" in text
    assert reason in text
    assert studio.keys("loras/") == []


def test_a_running_job_cannot_publish_a_checkpoint(studio):
    ended_job(studio, status="InProgress")
    put_checkpoint(studio, 250, lora=lora_bytes())
    alice = studio.signed_in("alice")
    assert "publish-checkpoint" not in alice.get(f"/training/{OLD}").text
    response = alice.post(f"/training/{OLD}/publish-checkpoint")
    assert response.status_code == 409 and "once it has stopped" in response.text


def test_a_full_jobs_checkpoint_is_not_offered(studio):
    ended_job(studio, mode="full")
    put_checkpoint(studio, 250)
    alice = studio.signed_in("alice")
    assert "publish-checkpoint" not in alice.get(f"/training/{OLD}").text
    assert alice.post(f"/training/{OLD}/publish-checkpoint").status_code == 400


def test_a_resumed_job_publishes_from_the_shared_checkpoint_folder(studio):
    ended_job(studio)
    put_checkpoint(studio, 250, lora=lora_bytes())
    alice = studio.signed_in("alice")
    alice.post(f"/training/{OLD}/resume", data={"name": "dog-v1-more"})
    studio.sagemaker.jobs["easel-dog-v1-more"]["TrainingJobStatus"] = "Stopped"
    put_checkpoint(studio, 400, lora=lora_bytes(3))
    response = alice.post("/training/easel-dog-v1-more/publish-checkpoint")
    assert response.status_code == 303
    assert studio.keys("loras/") == ["loras/dog-v1-step400.safetensors"]
