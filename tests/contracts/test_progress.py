import json
from typing import get_args

import pytest

from easel_contracts import progress as contract

RUNNING = {"step": 5, "total_steps": 10, "loss": 0.12, "images_per_second": 2.5,
           "eta_seconds": 2.0, "status": "running", "updated_at": "2026-12-05T23:59:00+00:00"}


def test_a_trainer_file_round_trips():
    parsed = contract.parse_progress(json.dumps(RUNNING))
    assert parsed.step == 5 and parsed.status == "running" and parsed.percent == 50.0
    assert contract.parse_progress(parsed.to_json()) == parsed


def test_fields_a_newer_trainer_adds_are_ignored():
    assert contract.parse_progress(json.dumps({**RUNNING, "epoch": 3})).step == 5


def test_only_step_and_status_are_required():
    parsed = contract.parse_progress(b'{"step": 0, "status": "failed"}')
    assert parsed.total_steps is None and parsed.percent == 0.0


def test_a_file_written_before_phases_reads_as_training():
    assert contract.parse_progress(json.dumps(RUNNING)).phase == "training"


def test_a_running_job_outside_its_steps_has_a_note_saying_what_it_does():
    parsed = contract.parse_progress(json.dumps({**RUNNING, "step": 0, "phase": "caching"}))
    assert parsed.phase == "caching"
    assert parsed.phase_note == contract.PHASE_LABELS["caching"]


@pytest.mark.parametrize(("status", "phase"), [("running", "training"), ("failed", "loading"),
                                               ("completed", "saving")])
def test_a_training_or_ended_job_has_no_phase_note(status, phase):
    assert contract.Progress(step=1, status=status, phase=phase).phase_note == ""


def test_every_phase_has_a_label():
    assert set(contract.PHASE_LABELS) == set(get_args(contract.ProgressPhase))


def test_percent_never_passes_100():
    assert contract.Progress(step=12, total_steps=10, status="completed").percent == 100.0


@pytest.mark.parametrize(("body", "says"), [
    (b"not json", "not JSON"),
    (b"[1, 2]", "not a JSON object"),
    (b'{"step": -1, "status": "running"}', "step"),
    (b'{"step": 1, "status": "exploded"}', "status"),
    (b'{"step": 0, "status": "running", "phase": "daydreaming"}', "phase"),
    (b'{"step": 1, "status": "running", "loss": NaN}', "loss"),
    (b'{"status": "running"}', "step"),
    (b"\xff\xfe", "not JSON"),
])
def test_a_bad_file_is_a_progress_error_naming_the_problem(body, says):
    with pytest.raises(contract.ProgressError, match=says):
        contract.parse_progress(body)


def test_an_oversized_file_is_refused():
    with pytest.raises(contract.ProgressError, match="larger than"):
        contract.parse_progress(b" " * (contract.PROGRESS_MAX_BYTES + 1))


def test_finite_or_none_drops_non_finite_losses():
    assert contract.finite_or_none(float("inf")) is None
    assert contract.finite_or_none(float("nan")) is None
    assert contract.finite_or_none(0.5) == 0.5


def test_failure_reason_keeps_what_sagemaker_keeps():
    # SageMaker shows the first 1024 characters of /opt/ml/output/failure as FailureReason:
    # https://docs.aws.amazon.com/sagemaker/latest/dg/your-algorithms-training-signal-success-failure.html
    assert contract.failure_reason("  " + "x" * 2000 + "\n") == "x" * 1024
