"""Live progress, interrupt and skip of a generation job on a real-time endpoint.

The job's invoking task reads the endpoint's response stream (``easel_contracts.streaming``).
On step events it writes the job's progress to the job's table record, at most every
``PROGRESS_WRITE_S`` (so any portal task can answer ``/sdapi/v1/progress``), and each write
reads back the record's flags: an interrupt (``interrupt_requested``) or a skip asked for
(``skip_requested`` counted past ``skips_done``) makes the task close the stream, which stops
the work on the endpoint at its next step. Interrupt ends the job with the images finished so
far; skip drops the image being made and goes on with the next batch of ``n_iter``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Literal

from easel_contracts import table as keys
from easel_contracts.streaming import StepEvent

PROGRESS_WRITE_S = 0.5
"""At most two progress writes a second per job."""
MAX_PREVIEW_CHARS = 96 * 1024
"""A larger preview is not kept: the record must stay well inside DynamoDB's 400 KB item."""
Stop = Literal["interrupt", "skip"]


class JobControl:
    """One job's progress writer and flag reader, called on the invoking task's thread."""

    def __init__(self, table: Any, job_id: str, *, batches: int,
                 clock: Callable[[], float] = time.monotonic,
                 interval: float = PROGRESS_WRITE_S) -> None:
        self.table = table
        self.key = keys.generation_job_key(job_id)
        self.batches = batches
        self.batch = 0  # the batch of n_iter being made (0-based)
        self.clock = clock
        self.interval = interval
        self.stop: Stop | None = None  # why the current stream was closed
        self.interrupted = False
        self.skipped = 0
        self._last_write: float | None = None

    def next_batch(self, batch: int) -> None:
        self.batch, self.stop = batch, None

    def on_step(self, event: StepEvent) -> bool:
        """Record a step (throttled); False when the stream must close (a flag was set)."""
        now = self.clock()
        if self._last_write is not None and now - self._last_write < self.interval:
            return True
        self._last_write = now
        record = self.table.update(*self.key, {"progress": self.progress(event, now)})
        return self._act(record or {})

    def check(self) -> bool:
        """Read the flags now (before a batch starts); False when it must not start."""
        return self._act(self.table.get(*self.key) or {})

    def _act(self, record: dict[str, Any]) -> bool:
        if record.get("interrupt_requested"):
            self.stop, self.interrupted = "interrupt", True
            return False
        asked = int(record.get("skip_requested", 0))
        if asked > int(record.get("skips_done", 0)):
            self.table.update(*self.key, {"skips_done": asked})
            self.stop = "skip"
            self.skipped += 1
            return False
        return True

    def progress(self, event: StepEvent, now: float) -> dict[str, Any]:
        """The record's ``progress``: this step within the whole job (all its batches)."""
        left_here = event.steps - event.step
        left = left_here + (self.batches - self.batch - 1) * event.steps
        eta = None
        if event.eta_seconds is not None:
            per_step = event.eta_seconds / left_here if left_here else None
            eta = round(per_step * left, 1) if per_step is not None else 0.0
        return {
            "step": event.step, "steps": event.steps, "batch": self.batch + 1,
            "batches": self.batches,
            "fraction": round((self.batch + event.step / event.steps) / self.batches, 4),
            "eta": eta, "at": time.time(),
            "preview": (event.preview if event.preview and len(event.preview) <= MAX_PREVIEW_CHARS
                        else None),
        }


def a1111_progress(record: dict[str, Any] | None, *, with_image: bool = True) -> dict[str, Any]:
    """``/sdapi/v1/progress`` in A1111's shape from a job record (None: nothing running)."""
    state: dict[str, Any] = {
        "skipped": False, "interrupted": False, "stopping_generation": False, "job": "",
        "job_count": 0, "job_timestamp": "0", "job_no": 0, "sampling_step": 0,
        "sampling_steps": 0}
    if not record:
        return {"progress": 0.0, "eta_relative": 0.0, "state": state, "current_image": None,
                "textinfo": "idle"}
    progress = record.get("progress") or {}
    state.update(
        job=record["job_id"], job_count=int(progress.get("batches", 1)),
        job_timestamp=record.get("created_at", "0"),
        job_no=max(0, int(progress.get("batch", 1)) - 1),
        sampling_step=int(progress.get("step", 0)),
        sampling_steps=int(progress.get("steps", 0)),
        interrupted=bool(record.get("interrupt_requested")),
        skipped=int(record.get("skip_requested", 0)) > int(record.get("skips_done", 0)),
    )
    step_text = (f"step {state['sampling_step']} of {state['sampling_steps']}, batch "
                 f"{state['job_no'] + 1} of {state['job_count']}" if progress else "starting")
    return {
        "progress": float(progress.get("fraction", 0.0)),
        "eta_relative": float(progress.get("eta") or 0.0),
        "state": state,
        "current_image": progress.get("preview") if with_image else None,
        "textinfo": f"{record['endpoint']}: {step_text}",
    }
