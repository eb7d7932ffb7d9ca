"""The inference server's readiness: the states behind ``GET /ping`` and ``GET /health``.

``loading`` (reading the model) -> ``warming`` (first-use work and timing its speed) -> ``ready``;
``ready`` <-> ``degraded`` (serving, with a reason: e.g. the last request ran the GPU out of
memory); any state -> ``failed`` (with the reason; final: SageMaker replaces the instance).
``/ping`` answers 200 while the server serves (``ready``, ``degraded``) and 503 otherwise;
``/health`` answers the whole ``Health`` record with 200 whatever the state, so an operator can
read it.
On a host with several GPUs a front process runs one worker process per GPU (``EASEL_WORKERS``);
each worker keeps these states, and the front's ``/ping`` and ``/health`` report the pool's
(``pool_state``): serving while at least one worker serves, with the ready and total counts.
Other parts add their states here, with their transitions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from .workcap import MeasuredSpeed

STARTUP_BUDGET_ENV = "EASEL_STARTUP_BUDGET_SECONDS"
"""The seconds SageMaker waits for the first 200 from /ping (the endpoint config's
ContainerStartupHealthCheckTimeoutInSeconds, which the portal also hands the container): the
warm-up fits in it."""

State = Literal["loading", "warming", "ready", "degraded", "failed"]
SERVING: tuple[State, ...] = ("ready", "degraded")
TRANSITIONS: dict[str, frozenset[str]] = {
    "loading": frozenset({"warming", "ready", "failed"}),
    "warming": frozenset({"warming", "ready", "failed"}),  # warming -> warming: the next size
    "ready": frozenset({"degraded", "failed"}),
    "degraded": frozenset({"ready", "degraded", "failed"}),
    "failed": frozenset(),
}


class BadTransition(ValueError):
    pass


def check_transition(old: State, new: State) -> None:
    if new not in TRANSITIONS[old]:
        raise BadTransition(f"readiness cannot go from {old} to {new}")


def ping_status(state: State) -> int:
    """The HTTP status of ``/ping`` in ``state`` (SageMaker routes traffic on 200 only)."""
    return 200 if state in SERVING else 503


def pool_state(states: Sequence[State]) -> State:
    """The state of a pool of workers: ``ready`` when all serve, ``degraded`` when some (it still
    serves), else the furthest any worker got (``warming``, ``loading``), ``failed`` when all
    failed. A computed summary, not a transition: a pool goes back to ``loading`` while its only
    worker restarts."""
    if not states:
        return "loading"
    serving = [state for state in states if state in SERVING]
    if serving:
        return "ready" if len(serving) == len(states) and "degraded" not in serving else "degraded"
    if all(state == "failed" for state in states):
        return "failed"
    return "warming" if "warming" in states else "loading"


class Ping(BaseModel):
    """``GET /ping``'s body."""

    model_config = ConfigDict(extra="forbid")

    status: State
    detail: str | None = None
    workers: int | None = Field(default=None, ge=1,
                                description="worker processes (one per GPU); None: one process")
    workers_ready: int | None = Field(default=None, ge=0, description="workers that serve")


class QueueState(BaseModel):
    model_config = ConfigDict(extra="forbid")

    running: int = Field(ge=0)
    waiting: int = Field(ge=0)
    limit: int = Field(ge=1, description="generation requests admitted at once (EASEL_MAX_QUEUE)")
    queued_seconds: float | None = Field(
        description="estimated seconds of admitted work not yet done (None: no measured speed)")


class WorkerHealth(BaseModel):
    """One worker of a pool, as the front sees it."""

    model_config = ConfigDict(extra="forbid")

    index: int = Field(ge=0)
    status: State
    detail: str | None = None
    pid: int | None = None
    devices: str | None = Field(default=None, description="its CUDA_VISIBLE_DEVICES")
    restarts: int = Field(ge=0, description="times it was restarted after its process ended")
    in_flight: int = Field(ge=0, description="requests the front has sent it, not yet answered")


class Health(BaseModel):
    """``GET /health``'s body."""

    model_config = ConfigDict(extra="forbid")

    status: State
    detail: str | None = None
    since: float = Field(description="epoch seconds when this state began")
    model: str | None = None
    deadline_seconds: float
    queue: QueueState
    speed: MeasuredSpeed | None = None
    workers: list[WorkerHealth] | None = Field(
        default=None, description="the pool's workers (one per GPU); None: one process")
