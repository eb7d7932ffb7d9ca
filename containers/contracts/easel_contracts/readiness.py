"""The inference server's readiness: the states behind ``GET /ping`` and ``GET /health``.

``loading`` (reading the model) -> ``warming`` (first-use work and timing its speed) -> ``ready``;
``ready`` <-> ``degraded`` (serving, with a reason: e.g. the last request ran the GPU out of
memory); any state -> ``failed`` (with the reason; final: SageMaker replaces the instance).
``/ping`` answers 200 while the server serves (``ready``, ``degraded``) and 503 otherwise;
``/health`` answers the whole ``Health`` record with 200 whatever the state, so an operator can
read it.
Other parts add their states here, with their transitions.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from .workcap import MeasuredSpeed

State = Literal["loading", "warming", "ready", "degraded", "failed"]
SERVING: tuple[State, ...] = ("ready", "degraded")
TRANSITIONS: dict[str, frozenset[str]] = {
    "loading": frozenset({"warming", "ready", "failed"}),
    "warming": frozenset({"ready", "failed"}),
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


class Ping(BaseModel):
    """``GET /ping``'s body."""

    model_config = ConfigDict(extra="forbid")

    status: State
    detail: str | None = None


class QueueState(BaseModel):
    model_config = ConfigDict(extra="forbid")

    running: int = Field(ge=0)
    waiting: int = Field(ge=0)
    limit: int = Field(ge=1, description="generation requests admitted at once (EASEL_MAX_QUEUE)")
    queued_seconds: float | None = Field(
        description="estimated seconds of admitted work not yet done (None: no measured speed)")


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
