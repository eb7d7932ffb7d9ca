"""Prior preservation: class images generated with the base model when the class channel is
absent (kept with the checkpoints), taken from the channel when present, and weighted in the
loss."""

from __future__ import annotations

import json

from PIL import Image

from .conftest import SIZE, run_in_process

PRIOR = {"with_prior_preservation": "true", "class_prompt": "a photo of a dog",
         "num_class_images": "2", "class_inference_steps": "1", "max_train_steps": "2"}


def _report(layout) -> dict:
    return json.loads((layout.root / "model" / "training_report.json").read_text())


def test_missing_class_images_are_generated_with_the_base_model(make_job):
    layout = make_job(PRIOR)
    outcome = run_in_process(layout)
    assert outcome.status == "completed"
    generated = sorted((layout.root / "checkpoints" / "class_images").glob("*.png"))
    assert [p.name for p in generated] == ["class-00000.png", "class-00001.png"]
    for path in generated:
        with Image.open(path) as image:
            assert image.size == (SIZE, SIZE)
    assert _report(layout)["num_class_images"] == 2


def test_class_channel_images_are_used_without_generating(make_job):
    layout = make_job(PRIOR)
    layout.add_images(2, folder=layout.class_channel, start=50)
    run_in_process(layout)
    assert not (layout.root / "checkpoints" / "class_images").exists()
    assert _report(layout)["num_class_images"] == 2


def test_prior_loss_weight_enters_the_loss(make_job):
    curves = {}
    for weight in ("0", "1"):
        layout = make_job({**PRIOR, "prior_loss_weight": weight, "max_train_steps": "1"})
        layout.add_images(2, folder=layout.class_channel, start=50)
        run_in_process(layout)
        curves[weight] = _report(layout)["loss_curve"]
    # Same seed, same instance samples: the first loss differs by the (positive) prior term.
    assert curves["1"][0] > curves["0"][0] + 1e-3
