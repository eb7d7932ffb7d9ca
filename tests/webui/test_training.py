"""Training: the concepts path is checked before any job exists; progress; publish a LoRA."""

from __future__ import annotations

import html
import io
import json
import os
import re
import tarfile
import urllib.parse

import pytest

from easel_contracts.concept_uploads import MIN_CONCEPT_IMAGES
from easel_contracts.hyperparameters import HyperParameters, field_schemas
from easel_contracts.progress import PHASE_LABELS
from easel_contracts.training_record import TrainingJobRecord

from .conftest import BUCKET

MODEL = f"s3://{BUCKET}/models/tiny.tar.gz"


def _form(**fields):
    data = {"name": "dog-v1", "model_s3_uri": MODEL, "instance_prompt": "a photo of sks dog",
            "mode": "lora", "max_train_steps": "10", "learning_rate": "1e-4", "rank": "4",
            "instance_type": "ml.g5.2xlarge", "concept_set": "dogs"}
    data.update(fields)
    return data


@pytest.fixture
def alice_world(world):
    return seed_alice_world(world)


def seed_alice_world(world):
    """Users alice and bob, a base model, and concept sets (good and bad ones)."""
    world.add_user("alice")
    world.add_user("bob")
    world.put("models/tiny.tar.gz")
    for index in range(MIN_CONCEPT_IMAGES):
        world.put(f"concepts/alice/dogs/{index}.png", b"\x89PNG fake")
        world.put(f"concepts/bob/cats/{index}.png", b"\x89PNG fake")
    world.put("concepts/alice/dogs/1.txt", b"a dog")
    world.put("concepts/alice/captions-only/1.txt", b"text only")
    world.put("concepts/alice/too-few/1.png", b"\x89PNG fake")
    world.put("outputs/alice/x/1.png", b"\x89PNG fake")
    return world


@pytest.mark.parametrize(("fields", "message"), [
    ({"concept_set": "", "concepts_s3_uri": ""}, "choose an uploaded set"),
    ({"concept_set": "nothing-here"}, "is empty or does not exist"),
    ({"concept_set": "captions-only"}, "holds 0 images"),
    ({"concept_set": "too-few"}, f"holds 1 images (png, jpg, webp, bmp); training needs at "
                                 f"least {MIN_CONCEPT_IMAGES}"),
    ({"concept_set": "", "concepts_s3_uri": "s3://other-bucket/concepts/alice/dogs/"},
     "can only read the data bucket"),
    ({"concept_set": "", "concepts_s3_uri": f"s3://{BUCKET}/outputs/alice/x/"},
     "inside a prefix the training job can read"),
    ({"concept_set": "", "concepts_s3_uri": f"s3://{BUCKET}/concepts/bob/cats/"},
     "use a path under concepts/alice/"),
    ({"concept_set": "bob/cats"}, "only train on your own concept sets"),
    ({"concept_set": "", "concepts_s3_uri": f"s3://{BUCKET}/concepts/alice/../bob/cats/"},
     "must not contain '..'"),
    ({"concept_set": "", "concepts_s3_uri": "not-a-uri"}, "is not an s3://bucket/key URI"),
    ({"concept_set": "dogs", "concepts_s3_uri": f"s3://{BUCKET}/concepts/alice/dogs/"},
     "not both"),
])
def test_each_bad_concepts_path_is_refused_and_no_job_is_created(alice_world, fields, message):
    alice = alice_world.signed_in("alice")
    response = alice.post("/training", data=_form(**fields))
    assert response.status_code == 400
    assert message in html.unescape(response.text), response.text[-3000:]
    assert alice_world.sagemaker.named("create_training_job") == []
    assert alice_world.portal.table.query_index("training") == []


def test_other_bad_inputs_name_the_field(alice_world):
    alice = alice_world.signed_in("alice")
    for fields, word in [({"instance_type": "ml.m5.large"}, "instance type"),
                         ({"mode": "dreambooth"}, "mode"),
                         ({"max_train_steps": "0"}, "max train steps"),
                         ({"learning_rate": "abc"}, "learning rate"),
                         ({"instance_prompt": ""}, "instance prompt"),
                         ({"name": "Bad Name"}, "job name")]:
        response = alice.post("/training", data=_form(**fields))
        assert response.status_code == 400, fields
        assert word in html.unescape(response.text), fields
    assert alice_world.sagemaker.named("create_training_job") == []


def test_a_refused_form_comes_back_with_every_field_as_submitted(alice_world):
    alice = alice_world.signed_in("alice")
    alice_world.put("models/other.tar.gz")
    fields = {"name": "dog-v2", "model_s3_uri": f"s3://{BUCKET}/models/other.tar.gz",
              "checkpoint": "base", "concept_set": "captions-only",
              "instance_prompt": "a photo of <sks> & dog", "class_prompt": "a photo of a dog",
              "with_prior_preservation": "true", "mode": "full", "output_name": "sks-dog", "max_train_steps": "1234",
              "learning_rate": "2e-6", "rank": "8", "resolution": "512",
              "instance_type": "ml.g6e.2xlarge"}
    response = alice.post("/training", data=_form(**fields))
    assert response.status_code == 400
    page = response.text
    assert "holds 0 images" in html.unescape(page)
    for name in ("name", "checkpoint", "instance_prompt", "class_prompt", "output_name",
                 "max_train_steps", "learning_rate", "rank", "resolution"):
        assert f'name="{name}"' in page
        assert f'value="{html.escape(fields[name], quote=True)}"' in page, name
    for value in (fields["model_s3_uri"], "alice/captions-only", "full", "ml.g6e.2xlarge"):
        assert f'value="{value}" selected' in page, value
    assert 'name="with_prior_preservation" value="true" checked' in page
    assert 'name="spot" value="1" >' in page or 'name="spot" value="1">' in page  # unticked


def test_valid_submission_creates_the_training_job(alice_world):
    alice = alice_world.signed_in("alice")
    response = alice.post("/training", data=_form(spot="1"))
    assert response.headers["location"].startswith("/training/easel-dog-v1")
    (job,) = alice_world.sagemaker.named("create_training_job")
    assert job["TrainingJobName"] == "easel-dog-v1"
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"]
                for c in job["InputDataConfig"]}
    assert channels == {"concepts": f"s3://{BUCKET}/concepts/alice/dogs/", "model": MODEL}
    hp = job["HyperParameters"]
    assert hp["mode"] == "lora" and hp["max_train_steps"] == "10" and hp["rank"] == "4"
    assert all(isinstance(v, str) for v in hp.values())
    assert job["CheckpointConfig"]["S3Uri"] == f"s3://{BUCKET}/training/easel-dog-v1/checkpoints/"
    assert job["OutputDataConfig"]["S3OutputPath"] == f"s3://{BUCKET}/training/"
    assert job["EnableManagedSpotTraining"] is True
    stop = job["StoppingCondition"]
    assert stop["MaxRuntimeInSeconds"] == 4 * 3600
    assert stop["MaxWaitTimeInSeconds"] >= stop["MaxRuntimeInSeconds"]
    tags = {t["Key"]: t["Value"] for t in job["Tags"]}
    assert tags == {"easel:deployment": "easel", "easel:creator": "alice"}


def test_progress_bar_and_previews_from_checkpoints(alice_world):
    alice = alice_world.signed_in("alice")
    alice.post("/training", data=_form())
    prefix = "training/easel-dog-v1/checkpoints/"
    alice_world.put(prefix + "progress.json", json.dumps(
        {"step": 5, "total_steps": 10, "loss": 0.12, "status": "running"}).encode())
    alice_world.put(prefix + "preview/step-5.png", b"\x89PNG")
    alice_world.put(prefix + "preview/step-10.png", b"\x89PNG")
    status = alice.get("/training/easel-dog-v1/status").json()
    assert status["percent"] == 50.0
    assert [p["step"] for p in status["previews"]] == [5, 10]
    page = alice.get("/training/easel-dog-v1")
    assert 'value="50.0"' in page.text and "step 5/10" in page.text
    listing = alice.get("/training")
    assert "easel-dog-v1" in listing.text


def test_before_its_first_step_the_job_says_what_it_is_doing(alice_world):
    alice = alice_world.signed_in("alice")
    alice.post("/training", data=_form())
    alice_world.put("training/easel-dog-v1/checkpoints/progress.json", json.dumps(
        {"step": 0, "total_steps": 10, "status": "running", "phase": "first_step"}).encode())
    label = PHASE_LABELS["first_step"]
    assert alice.get("/training/easel-dog-v1/status").json()["phase_label"] == label
    assert label in alice.get("/training/easel-dog-v1").text
    assert label in alice.get("/training").text


def test_a_training_job_shows_its_steps_not_a_phase(alice_world):
    alice = alice_world.signed_in("alice")
    alice.post("/training", data=_form())
    alice_world.put("training/easel-dog-v1/checkpoints/progress.json", json.dumps(
        {"step": 3, "total_steps": 10, "status": "running"}).encode())
    assert alice.get("/training/easel-dog-v1/status").json()["phase_label"] == ""


@pytest.mark.parametrize(("body", "says"), [
    (b"{not json", "not JSON"),
    (b'{"step": "five", "status": "running"}', "step"),
    (b'{"step": 5, "total_steps": 10, "status": "exploded"}', "status"),
])
def test_a_bad_progress_file_is_a_clear_state_not_an_error(alice_world, body, says):
    alice = alice_world.signed_in("alice")
    alice.post("/training", data=_form())
    alice_world.put("training/easel-dog-v1/checkpoints/progress.json", body)
    status = alice.get("/training/easel-dog-v1/status")
    assert status.status_code == 200
    state = status.json()
    assert state["progress"] == {} and state["percent"] == 0.0
    assert state["progress_problem"].startswith("Progress is not available")
    assert says in state["progress_problem"]
    page = alice.get("/training/easel-dog-v1")
    assert page.status_code == 200 and "Progress is not available" in page.text
    assert alice.get("/training").status_code == 200


def test_no_progress_file_yet_is_not_a_problem(alice_world):
    alice = alice_world.signed_in("alice")
    alice.post("/training", data=_form())
    state = alice.get("/training/easel-dog-v1/status").json()
    assert state["progress"] == {} and state["progress_problem"] == ""


def test_failure_reason_is_shown(alice_world):
    alice = alice_world.signed_in("alice")
    alice.post("/training", data=_form())
    alice_world.sagemaker.jobs["easel-dog-v1"].update(
        TrainingJobStatus="Failed", FailureReason="AlgorithmError: out of memory")
    assert "AlgorithmError: out of memory" in alice.get("/training/easel-dog-v1").text


def _result_archive(name: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        data = b"\x08\x00\x00\x00\x00\x00\x00\x00{}      "
        info = tarfile.TarInfo(f"Lora/{name}.safetensors")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_completed_lora_is_published_with_one_click(alice_world):
    alice = alice_world.signed_in("alice")
    alice.post("/training", data=_form(output_name="sks-dog"))
    early = alice.post("/training/easel-dog-v1/publish")
    assert "error=" in early.headers["location"]
    alice_world.sagemaker.jobs["easel-dog-v1"]["TrainingJobStatus"] = "Completed"
    alice_world.put("training/easel-dog-v1/output/model.tar.gz", _result_archive("sks-dog"))
    alice_world.in_service()  # serves models/tiny.tar.gz, the job's base model
    response = alice.post("/training/easel-dog-v1/publish")
    assert "notice=" in response.headers["location"]
    assert alice_world.keys("loras/") == ["loras/sks-dog.safetensors"]
    page = alice.get("/training/easel-dog-v1")
    assert "&lt;lora:sks-dog:0.8&gt;" in page.text
    assert "easel-demo" in page.text  # which endpoints can use it


class _ReadSpy:
    """Wraps an S3 body and records the size asked of each read."""

    def __init__(self, body, sizes):
        self._body, self._sizes = body, sizes

    def read(self, size=-1):
        self._sizes.append(size)
        return self._body.read(size)

    def close(self):
        self._body.close()


def test_publish_streams_the_result_archive_instead_of_reading_it_whole(alice_world,
                                                                         monkeypatch):
    alice = alice_world.signed_in("alice")
    alice.post("/training", data=_form(output_name="big"))
    alice_world.sagemaker.jobs["easel-dog-v1"]["TrainingJobStatus"] = "Completed"
    weights = os.urandom(3 * 1024 * 1024)  # incompressible: the archive is as big as the LoRA
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("Lora/big.safetensors")
        info.size = len(weights)
        tar.addfile(info, io.BytesIO(weights))
    alice_world.put("training/easel-dog-v1/output/model.tar.gz", buffer.getvalue())
    s3 = alice_world.s3
    real_get_object = s3.get_object
    sizes: list[int] = []

    def spying_get_object(**kwargs):
        answer = real_get_object(**kwargs)
        if kwargs["Key"].endswith("output/model.tar.gz"):
            answer["Body"] = _ReadSpy(answer["Body"], sizes)
        return answer

    monkeypatch.setattr(s3, "get_object", spying_get_object)
    response = alice.post("/training/easel-dog-v1/publish")
    assert "notice=" in response.headers["location"], response.headers["location"]
    assert sizes, "the archive was not read through get_object"
    assert all(0 < size <= 1024 * 1024 for size in sizes), max(sizes)
    published = s3.get_object(Bucket=BUCKET, Key="loras/big.safetensors")["Body"].read()
    assert published == weights


def test_publish_of_a_corrupt_archive_is_a_clear_error(alice_world):
    alice = alice_world.signed_in("alice")
    alice.post("/training", data=_form(output_name="sks-dog"))
    alice_world.sagemaker.jobs["easel-dog-v1"]["TrainingJobStatus"] = "Completed"
    alice_world.put("training/easel-dog-v1/output/model.tar.gz", b"not a gzip file at all")
    response = alice.post("/training/easel-dog-v1/publish")
    assert "error=" in response.headers["location"]
    assert "not a readable model.tar.gz" in urllib.parse.unquote_plus(
        response.headers["location"])
    assert alice_world.keys("loras/") == []


def test_full_result_offers_deploy_to_admins(alice_world):
    admin = alice_world.signed_in("admin")
    for index in range(MIN_CONCEPT_IMAGES):
        alice_world.put(f"concepts/admin/set/{index}.png", b"\x89PNG")
    admin.post("/training", data=_form(mode="full", concept_set="set", name="full-one"))
    alice_world.sagemaker.jobs["easel-full-one"]["TrainingJobStatus"] = "Completed"
    page = admin.get("/training/easel-full-one")
    assert "/endpoints?model=s3%3A%2F%2F" in page.text
    deploy = admin.get("/endpoints?model=" + f"s3://{BUCKET}/training/easel-full-one/output/"
                       "model.tar.gz")
    assert "training/easel-full-one/output/model.tar.gz" in deploy.text


def test_users_see_only_their_jobs(alice_world):
    alice = alice_world.signed_in("alice")
    alice.post("/training", data=_form())
    bob = alice_world.signed_in("bob")
    assert "easel-dog-v1" not in bob.get("/training").text
    assert bob.get("/training/easel-dog-v1").status_code == 404
    assert bob.post("/training/easel-dog-v1/publish").status_code in (303, 404)
    assert "easel-dog-v1" in alice_world.signed_in("admin").get("/training").text


def test_owner_can_stop_a_running_job_others_cannot(alice_world):
    alice = alice_world.signed_in("alice")
    alice.post("/training", data=_form())
    assert "Stop the job" in alice.get("/training/easel-dog-v1").text
    bob = alice_world.signed_in("bob")
    assert "error=No%20such" in bob.post("/training/easel-dog-v1/stop").headers["location"]
    assert alice_world.sagemaker.named("stop_training_job") == []
    assert "notice=" in alice.post("/training/easel-dog-v1/stop").headers["location"]
    assert alice_world.sagemaker.named("stop_training_job") == [
        {"TrainingJobName": "easel-dog-v1"}]


def _inputs(page):
    """name -> the attributes of each input/select of the page's training form."""
    found = {}
    for tag in re.findall(r"<(?:input|select)\b[^>]*>", page):
        attributes = dict(re.findall(r'(\w[\w-]*)="([^"]*)"', tag))
        if "name" in attributes and attributes.get("type") != "hidden":
            found[attributes["name"]] = attributes
    return found


def test_the_form_offers_every_hyperparameter_with_the_contracts_bounds(alice_world):
    page = alice_world.signed_in("alice").get("/training").text
    inputs = _inputs(page)
    assert set(HyperParameters.model_fields) <= set(inputs)
    schemas = field_schemas()
    for name, schema in schemas.items():
        if schema["type"] in ("integer", "number") and "enum" not in schema:
            assert inputs[name]["type"] == "number", name
            if "maximum" in schema:
                assert float(inputs[name]["max"]) == schema["maximum"], name
            if "minimum" in schema:
                assert float(inputs[name]["min"]) == schema["minimum"], name
    assert inputs["max_train_steps"]["value"] == str(schemas["max_train_steps"]["default"])
    assert inputs["resolution"]["value"] == "" and inputs["resolution"]["step"] == "8"
    assert inputs["cache_latents"]["type"] == "checkbox" and "checked" in re.search(
        r'<input type="checkbox" name="cache_latents"[^>]*>', page).group(0)
    assert html.unescape(schemas["lora_dropout"]["description"]).replace("`", "") in \
        html.unescape(page)


def test_an_unticked_box_turns_a_default_on_setting_off(alice_world):
    alice = alice_world.signed_in("alice")
    # what a browser sends for an unticked box: only the hidden "false" before it
    alice.post("/training", data=_form(cache_latents="false", random_flip="true"))
    (job,) = alice_world.sagemaker.named("create_training_job")
    assert job["HyperParameters"]["cache_latents"] == "false"
    assert job["HyperParameters"]["random_flip"] == "true"


def test_empty_fields_take_the_contracts_defaults_and_the_output_name_is_the_job_name(
        alice_world):
    alice = alice_world.signed_in("alice")
    alice.post("/training", data=_form(learning_rate="", rank="", max_train_steps="",
                                       resolution=""))
    (job,) = alice_world.sagemaker.named("create_training_job")
    hp = HyperParameters.from_strings(job["HyperParameters"])
    assert hp.max_train_steps == HyperParameters.model_fields["max_train_steps"].default
    assert hp.learning_rate is None and hp.resolution is None
    assert hp.output_name == "dog-v1"
    item = alice_world.portal.table.get("training#easel-dog-v1", "meta")
    assert TrainingJobRecord.model_validate(item).output_name == "dog-v1"


def test_every_bad_hyperparameter_is_named_at_once(alice_world):
    alice = alice_world.signed_in("alice")
    response = alice.post("/training", data=_form(rank="0", resolution="500",
                                                  with_prior_preservation="true"))
    assert response.status_code == 400
    text = html.unescape(response.text)
    assert "rank: must be at least 1" in text
    assert "resolution: must be a multiple of 8" in text
    assert alice_world.sagemaker.named("create_training_job") == []


def test_prior_preservation_without_a_class_prompt_is_refused(alice_world):
    alice = alice_world.signed_in("alice")
    response = alice.post("/training", data=_form(with_prior_preservation="true"))
    assert response.status_code == 400
    assert "class prompt: required when with_prior_preservation" in html.unescape(response.text)


# ---- the memory plan: a family the chosen type cannot train is refused before any job exists

def _put_model_with_manifest(world, name: str, family: str) -> str:
    from easel_contracts.model_manifest import ManifestCheckpoint, ModelManifest

    manifest = ModelManifest(name=name, layout="archive", written_by="upload_model",
                             checkpoints=(ManifestCheckpoint(
                                 name=name, path=f"Stable-diffusion/{name}.safetensors",
                                 family=family),))
    world.put(f"models/{name}/model.tar.gz")
    world.put(f"models/{name}/easel-model.json", manifest.to_json().encode())
    return f"s3://{BUCKET}/models/{name}/model.tar.gz"


def test_a_family_the_type_cannot_train_is_refused_naming_a_type_that_fits(alice_world):
    alice = alice_world.signed_in("alice")
    model = _put_model_with_manifest(alice_world, "flux", "flux_dev")
    response = alice.post("/training", data=_form(model_s3_uri=model))
    assert response.status_code == 400
    page = html.unescape(response.text)
    assert "FLUX.1 dev lora training at 1024px needs about" in page
    assert "ml.g5.2xlarge has 24 GB per GPU" in page and "choose ml.g6e.2xlarge" in page
    assert alice_world.sagemaker.named("create_training_job") == []


def test_a_type_that_fits_with_gradient_checkpointing_gets_it_turned_on(alice_world):
    alice = alice_world.signed_in("alice")
    model = _put_model_with_manifest(alice_world, "flux", "flux_dev")
    alice.post("/training", data=_form(model_s3_uri=model, instance_type="ml.g6e.2xlarge"))
    (job,) = alice_world.sagemaker.named("create_training_job")
    assert job["HyperParameters"]["gradient_checkpointing"] == "true"


def test_full_fine_tuning_of_a_lora_only_family_is_refused(alice_world):
    alice = alice_world.signed_in("alice")
    model = _put_model_with_manifest(alice_world, "sd35", "sd35_medium")
    response = alice.post("/training", data=_form(model_s3_uri=model, mode="full",
                                                  instance_type="ml.g6e.2xlarge"))
    assert response.status_code == 400
    assert "mode: SD3.5 medium trains LoRAs only" in html.unescape(response.text)
    assert alice_world.sagemaker.named("create_training_job") == []


def test_the_form_shows_each_familys_defaults(alice_world):
    page = html.unescape(alice_world.signed_in("alice").get("/training").text)
    assert "FLUX.1 schnell 4" in page  # preview steps
    assert "SD3.5 medium 4.5" in page  # preview guidance


def test_a_tiny_model_of_a_large_family_is_planned_by_its_size(alice_world):
    from easel_contracts.model_manifest import ManifestCheckpoint, ManifestFile, ModelManifest

    alice = alice_world.signed_in("alice")
    manifest = ModelManifest(
        name="tiny-flux", layout="archive", written_by="upload_model",
        checkpoints=(ManifestCheckpoint(name="tiny-flux", family="flux_dev",
                                        path="Stable-diffusion/tiny-flux.safetensors"),),
        files=(ManifestFile(path="Stable-diffusion/tiny-flux.safetensors", bytes=2_000_000),))
    alice_world.put("models/tiny-flux/model.tar.gz")
    alice_world.put("models/tiny-flux/easel-model.json", manifest.to_json().encode())
    response = alice.post("/training", data=_form(
        model_s3_uri=f"s3://{BUCKET}/models/tiny-flux/model.tar.gz"))
    assert response.headers.get("location", "").startswith("/training/easel-"), \
        html.unescape(response.text)[-2000:]
    assert len(alice_world.sagemaker.named("create_training_job")) == 1
