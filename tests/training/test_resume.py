"""Checkpoints: an interrupted run resumed from its checkpoint ends with the weights of an
uninterrupted run (bit for bit), and checkpoints from other settings are refused."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from easel_training.checkpoint import list_checkpoints
from easel_training.errors import TrainingInputError
from easel_training.stopping import StopRequest

from .conftest import run_in_process

# Settings that exercise every piece of state a resume must restore: optimizer moments, a
# non-constant schedule, LoRA dropout (global RNG), flips/crops and two images per step.
RESUME_SETTINGS = {
    "max_train_steps": "4", "lr_scheduler": "cosine", "lr_warmup_steps": "1",
    "lora_dropout": "0.1", "random_flip": "true", "center_crop": "false",
    "train_batch_size": "2", "learning_rate": "0.01", "rank": "4",
}


class StopAfter(StopRequest):
    """A stop request that arrives after ``steps`` training steps have run."""

    def __init__(self, steps: int) -> None:
        super().__init__()
        self.remaining = steps

    @property
    def requested(self) -> bool:  # polled once before each step
        self.remaining -= 1
        return self.remaining < 0


def test_resumed_run_equals_uninterrupted_run(make_job):
    straight = make_job(RESUME_SETTINGS, images=3, image_size=(40, 32))
    run_in_process(straight)
    reference = load_file(str(straight.root / "model" / "Lora" / "easel-lora.safetensors"))

    interrupted = make_job(RESUME_SETTINGS, images=3, image_size=(40, 32))
    first = run_in_process(interrupted, stop=StopAfter(2))
    assert first.status == "stopped" and first.step == 2
    assert [step for step, _ in list_checkpoints(interrupted.root / "checkpoints")] == [2]
    assert not (interrupted.root / "model" / "Lora").exists()
    second = run_in_process(interrupted)  # a restarted job: same folders, fresh process state
    assert second.status == "completed" and second.step == 4
    resumed = load_file(str(second.result))
    assert resumed.keys() == reference.keys()
    for name, tensor in reference.items():
        assert torch.equal(resumed[name], tensor), name
    report = json.loads((interrupted.root / "model" / "training_report.json").read_text())
    assert report["resumed_from_step"] == 2 and len(report["loss_curve"]) == 4
    straight_report = json.loads((straight.root / "model" / "training_report.json").read_text())
    assert report["loss_curve"] == straight_report["loss_curve"]


def test_periodic_checkpoints_keep_the_latest(make_job):
    layout = make_job({"max_train_steps": "5", "checkpointing_steps": "1",
                       "checkpoints_total_limit": "2"})
    run_in_process(layout)
    assert [s for s, _ in list_checkpoints(layout.root / "checkpoints")] == [3, 4]


def test_checkpoint_from_other_settings_is_refused(make_job):
    layout = make_job({"max_train_steps": "2", "checkpointing_steps": "1", "rank": "4"})
    run_in_process(layout)
    layout.write_hyperparameters({"instance_prompt": "a photo of sks dog", "rank": "8",
                                  "resolution": "32", "max_train_steps": "3",
                                  "validation_steps": "0"})
    with pytest.raises(TrainingInputError, match="rank: checkpoint has 4, job has 8"):
        run_in_process(layout)
