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


def test_a_checkpoint_holds_only_the_trained_weights_and_accelerates_state(make_job):
    layout = make_job({"max_train_steps": "2", "checkpointing_steps": "1", "rank": "4"})
    run_in_process(layout)
    (_, folder), = list_checkpoints(layout.root / "checkpoints")
    assert sorted(p.name for p in folder.iterdir()) == [
        "lora.safetensors", "optimizer.bin", "random_states_0.pkl", "scheduler.bin",
        "state.json", "trainable.safetensors"]
    weights = load_file(str(folder / "trainable.safetensors"))
    assert weights and all("lora" in name for name in weights)
    assert all(t.dtype == torch.float32 for t in weights.values())
    assert json.loads((folder / "state.json").read_text())["format"] == 2


def _old_format_checkpoint(folder, *, step: int) -> None:
    """A checkpoint as Easel wrote it before accelerate's save_state (format 1)."""
    folder.mkdir(parents=True)
    (folder / "trainable.safetensors").write_bytes(b"")
    torch.save({"optimizer": {}, "lr_scheduler": {}, "torch_rng": torch.get_rng_state()},
               folder / "training_state.pt")
    (folder / "state.json").write_text(json.dumps(
        {"fingerprint": {}, "loss_curve": [0.1] * step, "world_size": 1, "step": step}))


def test_a_checkpoint_from_an_older_image_is_refused_with_the_way_out(make_job):
    layout = make_job({"max_train_steps": "3"})
    _old_format_checkpoint(layout.root / "checkpoints" / "checkpoint-2", step=2)
    with pytest.raises(TrainingInputError, match="older Easel training image.*new checkpoint S3"):
        run_in_process(layout)


class _RunsCode:
    """Unpickling this creates a folder: proof that a checkpoint file could run code."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return os.mkdir, (self.marker,)


def test_checkpoint_state_is_never_unpickled_freely(make_job, tmp_path):
    layout = make_job({"max_train_steps": "2", "checkpointing_steps": "1"})
    run_in_process(layout)
    (_, folder), = list_checkpoints(layout.root / "checkpoints")
    marker = tmp_path / "code-ran"
    torch.save(_RunsCode(marker), folder / "optimizer.bin")
    layout.write_hyperparameters({"instance_prompt": "a photo of sks dog", "resolution": "32",
                                  "max_train_steps": "3", "validation_steps": "0"})
    with pytest.raises(TrainingInputError, match="checkpoint-1 cannot be resumed"):
        run_in_process(layout)
    assert not marker.exists()


def test_checkpoint_from_other_settings_is_refused(make_job):
    layout = make_job({"max_train_steps": "2", "checkpointing_steps": "1", "rank": "4"})
    run_in_process(layout)
    layout.write_hyperparameters({"instance_prompt": "a photo of sks dog", "rank": "8",
                                  "resolution": "32", "max_train_steps": "3",
                                  "validation_steps": "0"})
    with pytest.raises(TrainingInputError, match="rank: checkpoint has 4, job has 8"):
        run_in_process(layout)
