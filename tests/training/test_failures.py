"""Bad inputs fail early: non-zero exit, an actionable reason at the start of output/failure,
progress.json marked failed, and no result."""

from __future__ import annotations

import json

import pytest

from easel_training import cli
from easel_training.failure import write_failure
from easel_training.stopping import StopRequest


def _run_cli(layout, monkeypatch) -> tuple[int, str]:
    monkeypatch.setenv("EASEL_OPT_ML", str(layout.root))
    code = cli.main([])
    failure = layout.root / "output" / "failure"
    return code, failure.read_text(encoding="utf-8") if failure.exists() else ""


def _break_concepts_missing(layout):
    import shutil

    shutil.rmtree(layout.concepts)


def _break_concepts_empty(layout):
    for path in layout.concepts.iterdir():
        path.unlink()
    (layout.concepts / "readme.txt").write_text("no images here")


def _break_unreadable_image(layout):
    (layout.concepts / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")


def _break_tiny_image(layout):
    layout.add_images(1, size=(8, 8), start=40)


def _break_missing_model(layout):
    layout.model_channel.unlink()


@pytest.mark.parametrize(
    ("breakage", "code", "reason"),
    [
        (_break_concepts_missing, 2, "input channel 'concepts' is missing"),
        (_break_concepts_empty, 2, "input channel 'concepts' has no images"),
        (_break_unreadable_image, 2, "1 unreadable image(s) in channel 'concepts': broken.png"),
        (_break_tiny_image, 2, "smaller than 16 px on the shorter side: image-40.png (8x8)"),
        (_break_missing_model, 2, "input channel 'model' is missing"),
    ],
)
def test_bad_inputs_write_their_reason(make_job, monkeypatch, breakage, code, reason):
    layout = make_job()
    breakage(layout)
    exit_code, failure = _run_cli(layout, monkeypatch)
    assert exit_code == code
    assert reason in failure[:1024]
    assert "Traceback" not in failure
    assert not (layout.root / "model" / "Lora").exists()


@pytest.mark.parametrize(
    ("values", "reason"),
    [
        ({"checkpoint": "sd_xl_base"}, "'checkpoint': unknown model 'sd_xl_base'; the model "
                                       "channel holds: tiny"),
        ({"rank": "many"}, "'rank': must be an integer"),
        ({"use_8bit_adam": "true"}, "'use_8bit_adam': 8-bit Adam needs a CUDA GPU"),
        ({"mixed_precision": "fp16"}, "'mixed_precision': fp16 needs a CUDA GPU"),
    ],
)
def test_bad_settings_write_their_reason(make_job, monkeypatch, values, reason):
    layout = make_job(values)
    exit_code, failure = _run_cli(layout, monkeypatch)
    assert exit_code == 2
    assert reason in failure[:1024]


def test_invalid_json_is_reported(make_job, monkeypatch):
    layout = make_job()
    (layout.root / "input" / "config" / "hyperparameters.json").write_text("{not json")
    exit_code, failure = _run_cli(layout, monkeypatch)
    assert exit_code == 2 and "hyperparameters.json is not valid JSON" in failure


def test_error_mid_run_is_a_failure_not_a_success(make_job, monkeypatch):
    """A device error during a step (simulated) ends the job as failed with the reason."""
    from easel_training import trainer

    def broken_step(self, step):
        if step == 1:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return original(self, step)

    original = trainer.Trainer._train_step
    monkeypatch.setattr(trainer.Trainer, "_train_step", broken_step)
    layout = make_job()
    exit_code, failure = _run_cli(layout, monkeypatch)
    assert exit_code == 1
    assert failure.startswith("training failed with a GPU error")
    assert "illegal memory access" in failure[:1024]
    progress = json.loads((layout.root / "checkpoints" / "progress.json").read_text())
    assert progress["status"] == "failed"
    assert not (layout.root / "model" / "training_report.json").exists()


def test_non_finite_loss_fails_the_job(make_job, monkeypatch):
    import torch

    from easel_training import trainer

    def nan_step(self, step):
        original(self, step)
        return torch.tensor(float("nan"))

    original = trainer.Trainer._train_step
    monkeypatch.setattr(trainer.Trainer, "_train_step", nan_step)
    layout = make_job()
    exit_code, failure = _run_cli(layout, monkeypatch)
    assert exit_code == 1 and failure.startswith("the loss became nan")


def test_a_stale_failure_from_an_earlier_attempt_is_cleared(make_job, monkeypatch):
    layout = make_job()
    write_failure(layout.root / "output" / "failure", "old reason")
    exit_code, failure = _run_cli(layout, monkeypatch)
    assert exit_code == 0 and failure == ""


def test_first_failure_reason_wins(tmp_path):
    target = tmp_path / "output" / "failure"
    assert write_failure(target, "worker 1: disk full")
    assert not write_failure(target, "worker 0: stopped")
    assert target.read_text().startswith("worker 1: disk full")


def test_stop_request_flag():
    stop = StopRequest()
    assert not stop.requested
    stop.request()
    assert stop.requested
