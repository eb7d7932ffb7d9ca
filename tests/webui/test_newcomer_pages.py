"""What the pages show a newcomer (issue 18's rough edges): a delete button per concept file,
counts in the right number, a status said once, a loss as a person reads it."""

from __future__ import annotations

import html
import json
import re

from easel_contracts.concept_uploads import MIN_CONCEPT_IMAGES

from .conftest import BUCKET


def test_each_concept_file_has_a_delete_button_that_deletes_it(world):
    world.add_user("alice")
    world.put("concepts/alice/dogs/1.png", b"\x89PNG")
    world.put("concepts/alice/dogs/1.txt", b"a dog")
    alice = world.signed_in("alice")
    page = alice.get("/models").text
    forms = re.findall(r'<form method="post" action="(/models/concepts/alice/dogs/files/delete)"'
                       r'.*?name="name" value="([^"]+)"', page, re.S)
    assert sorted(name for _, name in forms) == ["1.png", "1.txt"]
    action, name = forms[0]
    response = alice.post(action, data={"name": name})
    assert response.status_code == 303
    assert len(world.keys("concepts/alice/dogs/")) == 1


def test_concept_counts_are_singular_for_one(world):
    world.add_user("alice")
    world.put("concepts/alice/dogs/1.png", b"\x89PNG")
    world.put("concepts/alice/dogs/1.txt", b"a dog")
    world.put("concepts/alice/cats/1.png", b"\x89PNG")
    world.put("concepts/alice/cats/2.png", b"\x89PNG")
    page = html.unescape(world.signed_in("alice").get("/models").text)
    assert "1 image, 1 caption," in page
    assert "2 images, 0 captions," in page
    assert "1 captions" not in page and "1 images" not in page


def _job(world, *, status: str, secondary: str, progress: dict | None = None) -> str:
    world.put("models/tiny.tar.gz")
    for index in range(MIN_CONCEPT_IMAGES):
        world.put(f"concepts/admin/dogs/{index}.png", b"\x89PNG")
    admin = world.signed_in("admin")
    response = admin.post("/training", data={
        "name": "dog-v1", "model_s3_uri": f"s3://{BUCKET}/models/tiny.tar.gz",
        "instance_prompt": "a photo of sks dog", "mode": "lora",
        "instance_type": "ml.g5.2xlarge", "concept_set": "dogs"})
    assert response.status_code == 303, response.text[-2000:]
    world.sagemaker.jobs["easel-dog-v1"].update(TrainingJobStatus=status, SecondaryStatus=secondary)
    if progress is not None:
        world.put("training/easel-dog-v1/checkpoints/progress.json", json.dumps(progress).encode())
    return admin.get("/training/easel-dog-v1").text


def test_a_status_equal_to_its_secondary_status_is_said_once(world):
    page = _job(world, status="Completed", secondary="Completed")
    text = re.sub(r"<[^>]+>", " ", page)
    assert "Completed Completed" not in " ".join(text.split())
    assert 'class="job-status">Completed<' in page


def test_a_different_secondary_status_is_shown(world):
    page = _job(world, status="InProgress", secondary="Downloading")
    assert "Downloading" in page


def test_the_loss_is_shown_with_four_significant_digits(world):
    page = _job(world, status="InProgress", secondary="Training",
                progress={"step": 5, "total_steps": 10, "loss": 0.123456789012345678,
                          "status": "running"})
    assert "loss 0.1235" in page
    assert "0.12345678" not in page
