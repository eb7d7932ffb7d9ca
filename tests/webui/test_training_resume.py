"""Training (issue 18): a stopped job resumes from its last checkpoint as a new job, and the job
page shows the preview images as a step-labelled timeline."""

from __future__ import annotations

import re

import pytest

from easel_contracts import table as keys
from easel_contracts.training_record import TrainingJobRecord

from .conftest import BUCKET
from .test_training import _form, seed_alice_world

OLD = "easel-dog-v1"
CHECKPOINTS = f"training/{OLD}/checkpoints/"


@pytest.fixture
def studio(world):
    return seed_alice_world(world)


def _stopped(world, *, checkpoint: bool = True) -> None:
    alice = world.signed_in("alice")
    alice.post("/training", data=_form(spot="1"))
    world.sagemaker.jobs[OLD]["TrainingJobStatus"] = "Stopped"
    if checkpoint:
        world.put(CHECKPOINTS + "checkpoint-250/state.json", b"{}")
        world.put(CHECKPOINTS + "checkpoint-250/trainable.safetensors", b"x")


def test_a_stopped_job_offers_resume(studio):
    _stopped(studio)
    page = studio.signed_in("alice").get(f"/training/{OLD}").text
    assert f'action="/training/{OLD}/resume"' in page


def test_a_running_job_does_not_offer_resume(studio):
    alice = studio.signed_in("alice")
    alice.post("/training", data=_form())
    assert "/resume" not in alice.get(f"/training/{OLD}").text


def test_resume_starts_a_job_on_the_stopped_jobs_checkpoints_with_its_settings(studio):
    _stopped(studio)
    alice = studio.signed_in("alice")
    response = alice.post(f"/training/{OLD}/resume", data={"name": "dog-v1-more"})
    assert response.headers["location"].startswith("/training/easel-dog-v1-more")
    first, resumed = studio.sagemaker.named("create_training_job")
    assert resumed["TrainingJobName"] == "easel-dog-v1-more"
    # SageMaker copies CheckpointConfig.S3Uri into /opt/ml/checkpoints, where the job resumes
    assert resumed["CheckpointConfig"]["S3Uri"] == f"s3://{BUCKET}/{CHECKPOINTS}"
    assert resumed["HyperParameters"] == first["HyperParameters"]
    assert resumed["InputDataConfig"] == first["InputDataConfig"]
    assert resumed["EnableManagedSpotTraining"] is True


def test_the_resumed_jobs_record_names_its_origin_and_checkpoints(studio):
    _stopped(studio)
    alice = studio.signed_in("alice")
    alice.post(f"/training/{OLD}/resume", data={"name": "dog-v1-more"})
    item = studio.portal.table.get(*keys.training_job_key("easel-dog-v1-more"))
    record = TrainingJobRecord.model_validate(item)
    assert record.resumed_from == OLD
    assert record.checkpoint_s3_uri == f"s3://{BUCKET}/{CHECKPOINTS}"
    assert f'href="/training/{OLD}"' in alice.get("/training/easel-dog-v1-more").text


def test_the_resumed_job_reads_progress_from_the_shared_checkpoints(studio):
    _stopped(studio)
    alice = studio.signed_in("alice")
    alice.post(f"/training/{OLD}/resume", data={"name": "dog-v1-more"})
    studio.put(CHECKPOINTS + "progress.json",
                    b'{"step": 8, "total_steps": 10, "status": "running"}')
    assert alice.get("/training/easel-dog-v1-more/status").json()["percent"] == 80.0


def test_a_job_stopped_before_any_checkpoint_cannot_resume(studio):
    _stopped(studio, checkpoint=False)
    alice = studio.signed_in("alice")
    location = alice.post(f"/training/{OLD}/resume", data={"name": "again"}).headers["location"]
    assert "before%20it%20saved%20a%20checkpoint" in location
    assert len(studio.sagemaker.named("create_training_job")) == 1


def test_only_a_stopped_job_resumes(studio):
    alice = studio.signed_in("alice")
    alice.post("/training", data=_form())
    location = alice.post(f"/training/{OLD}/resume", data={"name": "again"}).headers["location"]
    assert "only%20a%20stopped%20job" in location


def test_another_user_cannot_resume_the_job(studio):
    _stopped(studio)
    bob = studio.signed_in("bob")
    location = bob.post(f"/training/{OLD}/resume", data={"name": "mine"}).headers["location"]
    assert "No%20such" in location
    assert len(studio.sagemaker.named("create_training_job")) == 1


def test_a_taken_name_for_the_resumed_job_is_refused(studio):
    _stopped(studio)
    alice = studio.signed_in("alice")
    location = alice.post(f"/training/{OLD}/resume", data={"name": "dog-v1"}).headers["location"]
    assert "already%20used" in location


def test_previews_show_as_a_step_labelled_timeline(studio):
    alice = studio.signed_in("alice")
    alice.post("/training", data=_form())
    for step in (100, 20, 60, 40, 80, 120, 140, 160):  # more than the six shown before
        studio.put(CHECKPOINTS + f"preview/step-{step}.png", b"\x89PNG")
    page = alice.get(f"/training/{OLD}").text
    timeline = page[page.index('id="timeline"'):]
    steps = [int(s) for s in re.findall(r"<figcaption>step (\d+)</figcaption>", timeline)]
    assert steps == [20, 40, 60, 80, 100, 120, 140, 160]
