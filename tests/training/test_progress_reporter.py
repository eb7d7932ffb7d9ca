"""ProgressReporter: a change of phase is written at once, whatever the throttle says."""

from __future__ import annotations

import io

from easel_contracts.progress import parse_progress
from easel_training.progress import ProgressReporter


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _reporter(tmp_path, stream):
    return ProgressReporter(tmp_path / "progress.json", total_steps=10, min_interval_s=60.0,
                            stream=stream, clock=Clock())


def test_a_phase_change_is_written_inside_the_throttle_interval(tmp_path):
    reporter = _reporter(tmp_path, io.StringIO())
    reporter.enter("loading", step=0)
    reporter.report(step=0, loss=None, phase="caching")  # same instant: not due, but new phase
    assert parse_progress(reporter.path.read_bytes()).phase == "caching"


def test_the_same_phase_stays_throttled(tmp_path):
    reporter = _reporter(tmp_path, io.StringIO())
    reporter.enter("training", step=1, loss=0.5)
    reporter.report(step=2, loss=0.4, phase="training")
    assert parse_progress(reporter.path.read_bytes()).step == 1


def test_the_metric_line_names_the_phase(tmp_path):
    stream = io.StringIO()
    _reporter(tmp_path, stream).enter("first_step", step=0)
    assert stream.getvalue().rstrip().endswith("phase=first_step")
