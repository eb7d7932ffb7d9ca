"""The streamed generation's events: one a line, read back whatever the part boundaries."""

from __future__ import annotations

import pytest

from easel_contracts.invocations import GenerationResponse
from easel_contracts.streaming import (
    ErrorEvent,
    EventReader,
    ResultEvent,
    StepEvent,
    StreamError,
    encode_event,
)


def _stream() -> bytes:
    answer = GenerationResponse(images=["aGk="], parameters={}, info="{}")
    return b"".join(encode_event(event) for event in (
        StepEvent(step=1, steps=2, eta_seconds=1.5, preview="abc"), StepEvent(step=2, steps=2),
        ResultEvent(answer=answer)))


@pytest.mark.parametrize("size", [1, 3, 7, 1000])
def test_events_are_read_back_whatever_the_part_size(size: int) -> None:
    raw = _stream()
    reader = EventReader()
    events = []
    for start in range(0, len(raw), size):
        events += reader.feed(raw[start:start + size])
    reader.close()
    assert [event.event for event in events] == ["step", "step", "result"]
    assert events[0].preview == "abc" and events[2].answer.images == ["aGk="]


def test_a_stream_cut_in_the_middle_of_an_event_is_an_error() -> None:
    reader = EventReader()
    reader.feed(_stream()[:-5])
    with pytest.raises(StreamError, match="middle of an event"):
        reader.close()


def test_a_line_longer_than_the_bound_is_refused_before_it_ends() -> None:
    reader = EventReader(max_line_bytes=100)
    with pytest.raises(StreamError, match="longer than 100 bytes"):
        reader.feed(b'{"event": "step", "preview": "' + b"a" * 200)


def test_a_line_that_is_no_event_is_an_error() -> None:
    with pytest.raises(StreamError):
        EventReader().feed(b'{"event": "progress"}\n')


def test_fraction_counts_finished_batches() -> None:
    assert StepEvent(step=5, steps=10, batch=2, batches=4).fraction == pytest.approx(0.375)


def test_an_error_event_keeps_the_status_and_field() -> None:
    event = ErrorEvent(status=504, error="Stopped", detail="stopped after step 3", field="steps")
    (back,) = EventReader().feed(encode_event(event))
    assert back == event
