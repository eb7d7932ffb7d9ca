"""Progress reporting: ``checkpoints/progress.json`` (the ``easel_contracts.progress.Progress``
contract) and metric lines on stdout.

The stdout lines look like ``easel-progress step=12 total_steps=1000 loss=0.1234
images_per_second=21.5 eta_seconds=46 phase=training`` so SageMaker metric definitions such as
``loss=([0-9.eE+-]+)`` pick them up.

The job says which phase it is in (``easel_contracts.progress.ProgressPhase``): the job enters
each phase through :meth:`ProgressReporter.enter`, which writes at once, so a person watching a
long start (loading a large base model, caching, a compiled first step) sees what it is doing.
"""

from __future__ import annotations

import math
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from easel_contracts.progress import (
    Progress,
    ProgressError,
    ProgressPhase,
    ProgressStatus,
    finite_or_none,
    parse_progress,
)


def write_text_atomically(path: Path, text: str) -> None:
    """Write to a hidden temporary beside ``path`` and rename it into place (syncs skip dot-files)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_progress(path: Path, progress: Progress) -> None:
    write_text_atomically(path, progress.to_json())


def mark_failed(path: Path) -> None:
    """Mark progress.json failed, keeping the step and numbers it had reached."""
    try:
        previous = parse_progress(path.read_bytes())
    except (OSError, ProgressError):
        previous = Progress(step=0, status="failed")
    write_progress(path, previous.model_copy(update={
        "status": "failed", "eta_seconds": None, "updated_at": datetime.now(UTC)}))


def format_metric_line(*, step: int, total_steps: int, loss: float | None,
                       images_per_second: float, eta_seconds: float | None,
                       phase: ProgressPhase) -> str:
    parts = [f"step={step}", f"total_steps={total_steps}"]
    if loss is not None and math.isfinite(loss):
        parts.append(f"loss={loss:.6f}")
    parts.append(f"images_per_second={images_per_second:.3f}")
    if eta_seconds is not None:
        parts.append(f"eta_seconds={eta_seconds:.0f}")
    parts.append(f"phase={phase}")
    return "easel-progress " + " ".join(parts)


class ProgressReporter:
    """Throttled writer of progress.json + stdout metric lines (main process only)."""

    def __init__(self, path: Path, *, total_steps: int, images_per_step: int = 1,
                 enabled: bool = True,
                 min_interval_s: float = 1.0, stream: TextIO | None = None,
                 clock=time.monotonic) -> None:
        self.path = path
        self.total_steps = total_steps
        self.images_per_step = images_per_step
        self.enabled = enabled
        self.min_interval_s = min_interval_s
        self.stream = stream or sys.stdout
        self.clock = clock
        self._last_report = -math.inf
        self._rate_mark: tuple[float, int] | None = None
        self.images_per_second = 0.0
        self.phase: ProgressPhase = "loading"

    def start_timing(self, *, step: int) -> None:
        """Mark the point from which throughput is measured (after model load/caching)."""
        self._rate_mark = (self.clock(), step)

    def due(self) -> bool:
        return self.enabled and self.clock() - self._last_report >= self.min_interval_s

    def enter(self, phase: ProgressPhase, *, step: int, loss: float | None = None) -> None:
        """Record that the job moved on to ``phase``, written at once (never throttled away)."""
        self.report(step=step, loss=loss, phase=phase, force=True)

    def report(self, *, step: int, loss: float | None, status: ProgressStatus = "running",
               phase: ProgressPhase | None = None, force: bool = False) -> None:
        """Write progress.json and a metric line when due; a change of phase is always written."""
        if phase is not None and phase != self.phase:
            self.phase = phase
            force = True
        if not self.enabled or not (force or self.due()):
            return
        now = self.clock()
        self._last_report = now
        if self._rate_mark is not None and step > self._rate_mark[1]:
            elapsed = now - self._rate_mark[0]
            steps = step - self._rate_mark[1]
            if elapsed > 0:
                self.images_per_second = steps * self.images_per_step / elapsed
        eta = None
        if status == "running" and self.images_per_second > 0:
            eta = (self.total_steps - step) * self.images_per_step / self.images_per_second
        elif status == "completed":
            eta = 0.0
        write_progress(self.path, Progress(
            step=step, total_steps=self.total_steps, loss=finite_or_none(loss),
            images_per_second=round(self.images_per_second, 3),
            eta_seconds=None if eta is None else round(eta, 1), status=status,
            phase=self.phase, updated_at=datetime.now(UTC).replace(microsecond=0)))
        line = format_metric_line(step=step, total_steps=self.total_steps, loss=loss,
                                  images_per_second=self.images_per_second, eta_seconds=eta,
                                  phase=self.phase)
        print(line, file=self.stream, flush=True)

    def status_only(self, status: ProgressStatus, *, step: int, loss: float | None = None) -> None:
        """Record a status change (failed/stopped/completed) immediately."""
        self.report(step=step, loss=loss, status=status, force=True)
