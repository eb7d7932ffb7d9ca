"""A streamed generation: the events the inference server writes to
``POST /invocations-response-stream`` (SageMaker's ``InvokeEndpointWithResponseStream``) and
the reader the portal and the local stand-in parse them with.

The request body is the ``/invocations`` envelope (``easel_contracts.invocations``) for a
generation task. Errors found before any work starts (a bad request, a full queue, a server that
is not ready) are answered as ``/invocations`` answers them: an HTTP error status and its JSON
body, which SageMaker turns into a ``ModelError``. Once the work starts, the answer is
``200`` with ``Transfer-Encoding: chunked`` and a body of JSON lines, one event a line:

- ``step`` after every denoising step: the step, the steps this run takes, the batch, an
  estimate of the seconds left and, at most every ``PREVIEW_EVERY_S``, a small preview image;
- ``result`` once, last, with the task's ``GenerationResponse``;
- ``error`` once, last, when the work stopped after it started (deadline, client gone, out of
  memory, an internal failure).

SageMaker hands the body on in ``PayloadPart`` events whose boundaries need not match the lines,
so readers buffer until a newline (``EventReader``). Closing the stream (the client leaves) stops
the work at its next step.
"""

from __future__ import annotations

import json
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from .invocations import GenerationResponse

STREAM_PATH = "/invocations-response-stream"
STREAM_CONTENT_TYPE = "application/jsonlines"
PREVIEW_EVERY_S = 1.0
"""At most one preview a second: a preview costs a small decode and ~2-8 KB of stream."""
PREVIEW_MAX_SIDE = 256
MAX_PREVIEW_B64_CHARS = 256 * 1024
MAX_EVENT_BYTES = 64 * 1024 * 1024
"""The longest line a reader buffers: a result of 16 x 8 large PNGs fits, a runaway does not."""

_EVENT = ConfigDict(extra="forbid")


class StepEvent(BaseModel):
    """One denoising step done."""

    model_config = _EVENT

    event: Literal["step"] = "step"
    step: int = Field(ge=1, description="steps done in this batch (1-based)")
    steps: int = Field(ge=1, description="steps this batch runs")
    batch: int = Field(default=1, ge=1, description="the batch (1-based) of n_iter")
    batches: int = Field(default=1, ge=1)
    eta_seconds: float | None = Field(default=None, ge=0,
                                      description="seconds left for the whole request")
    preview: str | None = Field(default=None, max_length=MAX_PREVIEW_B64_CHARS,
                                description="base64 JPEG: a cheap view of the current latents")

    @property
    def fraction(self) -> float:
        """How much of the whole request is done, 0..1."""
        return min(1.0, ((self.batch - 1) + self.step / self.steps) / self.batches)


class ResultEvent(BaseModel):
    model_config = _EVENT

    event: Literal["result"] = "result"
    answer: GenerationResponse


class ErrorEvent(BaseModel):
    """The work stopped after the stream began; ``status`` is the HTTP status ``/invocations``
    would have answered with."""

    model_config = _EVENT

    event: Literal["error"] = "error"
    status: int = Field(ge=400, le=599)
    error: str = Field(max_length=100)
    detail: str = Field(max_length=4000)
    field: str | None = Field(default=None, max_length=200)


StreamEvent = Annotated[StepEvent | ResultEvent | ErrorEvent, Field(discriminator="event")]
_EVENTS: TypeAdapter[StepEvent | ResultEvent | ErrorEvent] = TypeAdapter(StreamEvent)


class StreamError(ValueError):
    """A stream that is not this contract (a bad line, a line too long, no final event)."""


def encode_event(event: StepEvent | ResultEvent | ErrorEvent) -> bytes:
    """One event as one line of the stream."""
    return event.model_dump_json(exclude_none=True).encode("utf-8") + b"\n"


def parse_event(line: bytes | str) -> StepEvent | ResultEvent | ErrorEvent:
    try:
        return _EVENTS.validate_python(json.loads(line))
    except (ValueError, ValidationError) as exc:
        raise StreamError(f"a stream line is not a generation event: {exc}"[:500]) from None


class EventReader:
    """Events from stream parts as they arrive; parts may cut lines anywhere."""

    def __init__(self, *, max_line_bytes: int = MAX_EVENT_BYTES) -> None:
        self._buffer = bytearray()
        self._max = max_line_bytes

    def feed(self, part: bytes) -> list[StepEvent | ResultEvent | ErrorEvent]:
        self._buffer += part
        events = []
        while (end := self._buffer.find(b"\n")) >= 0:
            line = bytes(self._buffer[:end])
            del self._buffer[:end + 1]
            if line.strip():
                events.append(parse_event(line))
        if len(self._buffer) > self._max:
            raise StreamError(f"a stream line is longer than {self._max} bytes")
        return events

    def close(self) -> None:
        """The stream ended: nothing may be left half-read."""
        if self._buffer.strip():
            raise StreamError("the stream ended in the middle of an event")
