"""Back-pressure, deadlines and readiness of the one generation worker.

Every generation request is admitted before it queues (``Admission.admit``): the queue holds at
most ``EASEL_MAX_QUEUE`` requests, and with a speed timed at warm-up a request that cannot finish
by its deadline is refused up front (``easel_contracts.workcap``). An admitted request becomes a
``Job`` that the worker checks before it starts, between batches and after every step: once the
deadline has passed or the client has gone, the work stops there.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from easel_contracts.invocations import GenerationRequest
from easel_contracts.readiness import QueueState, State, check_transition
from easel_contracts.workcap import DEADLINE_ENV, MeasuredSpeed, WorkRefusal, check_work, work_of

from .errors import ApiError

Clock = Callable[[], float]


class Stopped(ApiError):
    """The work stopped between steps: its deadline passed or its client left."""

    status = 504


class Refused(ApiError):
    """Refused before any work: too much work for the deadline (400), or the queue is full (503,
    with ``Retry-After``)."""

    def __init__(self, refusal: WorkRefusal) -> None:
        super().__init__(refusal.detail, field=refusal.field)
        self.refusal = refusal
        self.status = 400 if refusal.error == "TooMuchWork" else 503

    def body(self) -> dict[str, object]:
        return self.refusal.model_dump(mode="json", exclude_none=True)

    def headers(self) -> dict[str, str]:
        after = self.refusal.retry_after_seconds
        return {"Retry-After": str(after)} if after is not None else {}


@dataclass
class Job:
    """One admitted generation request."""

    arrived: float
    deadline_s: float
    clock: Clock
    estimate_s: float | None = None
    started: float | None = None
    reason: str | None = None

    @property
    def deadline(self) -> float:
        return self.arrived + self.deadline_s

    def cancel(self, reason: str) -> None:
        """Ask the worker to stop at its next check (e.g. the client closed the connection)."""
        self.reason = reason

    def check(self, where: str) -> None:
        """Raise ``Stopped`` if the work must stop ``where`` it is."""
        if self.reason:
            raise Stopped(f"stopped {where}: {self.reason}")
        now = self.clock()
        if now > self.deadline:
            raise Stopped(
                f"stopped {where}: its deadline of {self.deadline_s:g} s ({DEADLINE_ENV}) passed "
                f"{now - self.arrived:.0f} s after it arrived; ask for less work (size, steps, "
                "images) or use an asynchronous endpoint")

    def remaining_s(self, now: float) -> float:
        if self.estimate_s is None:
            return 0.0
        if self.started is None:
            return self.estimate_s
        return max(0.0, self.estimate_s - (now - self.started))


@dataclass
class Admission:
    """The generation queue: at most ``limit`` jobs (running and waiting) at once."""

    limit: int
    deadline_s: float
    jobs: list[Job] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def admit(self, request: GenerationRequest, *, now: float, clock: Clock,
              speed: MeasuredSpeed | None) -> Job:
        """A job for ``request``, queued; raises ``Refused`` when it must not queue."""
        with self._lock:
            queued = sum(job.remaining_s(now) for job in self.jobs)
            if len(self.jobs) >= self.limit:
                wait = max(1, math.ceil(queued)) if speed is not None else 5
                raise Refused(WorkRefusal(
                    error="Busy",
                    detail=(f"the endpoint is busy: {len(self.jobs)} generation requests are "
                            f"queued, the most it takes (EASEL_MAX_QUEUE); retry in {wait} s"),
                    estimated_seconds=0.0, deadline_seconds=self.deadline_s,
                    queued_seconds=round(queued, 3), retry_after_seconds=wait))
            estimate = None
            if speed is not None:
                refusal = check_work(request, speed, deadline_s=self.deadline_s,
                                     queued_s=queued)
                if refusal is not None:
                    raise Refused(refusal)
                estimate = speed.seconds_for(work_of(request))
            job = Job(arrived=now, deadline_s=self.deadline_s, clock=clock, estimate_s=estimate)
            self.jobs.append(job)
            return job

    def started(self, job: Job, now: float) -> None:
        with self._lock:
            job.started = now

    def done(self, job: Job) -> None:
        with self._lock:
            if job in self.jobs:
                self.jobs.remove(job)

    def record(self, now: float, *, timed: bool) -> QueueState:
        with self._lock:
            running = sum(job.started is not None for job in self.jobs)
            queued = sum(job.remaining_s(now) for job in self.jobs)
            return QueueState(running=running, waiting=len(self.jobs) - running,
                               limit=self.limit,
                               queued_seconds=round(queued, 3) if timed else None)


class Readiness:
    """The server's readiness state and its reason (``easel_contracts.readiness``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.state: State = "loading"
        self.detail: str | None = None
        self.since = time.time()

    def move(self, state: State, detail: str | None = None) -> None:
        with self._lock:
            if state == self.state and detail == self.detail:
                return
            check_transition(self.state, state)
            self.state, self.detail, self.since = state, detail, time.time()

    def recover(self) -> None:
        """A request served well: ``degraded`` goes back to ``ready``."""
        with self._lock:
            if self.state == "degraded":
                self.state, self.detail, self.since = "ready", None, time.time()
