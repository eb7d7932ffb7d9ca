"""InvokeEndpointWithResponseStream through boto3 against the local stand-in: botocore's own
event-stream parser reads the PayloadPart events; closing the stream closes the model's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from botocore.exceptions import ClientError, EventStreamError
from local_helpers import deploy, unique, wait_for


@pytest.fixture(scope="module")
def endpoint_name(fake_aws) -> str:
    from local_helpers import clients_for

    with pytest.MonkeyPatch.context() as patch:
        return deploy(clients_for(fake_aws, patch), unique("stream"))


def _invoke(clients, endpoint: str, **payload):
    return clients.runtime.invoke_endpoint_with_response_stream(
        EndpointName=endpoint, ContentType="application/json",
        Body=json.dumps({"task": "txt2img", "payload": payload}))


def test_the_models_lines_arrive_as_payload_parts(clients, endpoint_name):
    response = _invoke(clients, endpoint_name, parts=4)
    assert response["InvokedProductionVariant"] == "AllTraffic"
    assert response["ContentType"] == "application/jsonlines"
    events = list(response["Body"])
    assert all(set(event) == {"PayloadPart"} for event in events)
    text = b"".join(event["PayloadPart"]["Bytes"] for event in events)
    assert [json.loads(line)["part"] for line in text.splitlines()] == [0, 1, 2, 3]


def test_parts_arrive_while_the_model_still_works(clients, endpoint_name, tmp_path: Path):
    record = tmp_path / "record.txt"
    response = _invoke(clients, endpoint_name, parts=3, delay=1.0, record=str(record))
    first = next(iter(response["Body"]))
    assert json.loads(first["PayloadPart"]["Bytes"])["part"] == 0
    assert record.read_text().splitlines() == ["sent 0"]  # the rest is not sent yet
    list(response["Body"])


def test_closing_the_stream_closes_the_models_stream(clients, endpoint_name, tmp_path: Path):
    record = tmp_path / "record.txt"
    response = _invoke(clients, endpoint_name, parts=40, delay=0.1, record=str(record))
    body = response["Body"]
    next(iter(body))
    body.close()
    wait_for(lambda: record.exists() and "client left" in record.read_text(), timeout=20)
    sent = [line for line in record.read_text().splitlines() if line.startswith("sent")]
    assert len(sent) < 40


def test_a_model_refusal_before_streaming_is_a_model_error(clients, endpoint_name):
    with pytest.raises(ClientError) as raised:
        clients.runtime.invoke_endpoint_with_response_stream(
            EndpointName=endpoint_name, Body=b'{"task": "bad-request"}')
    assert raised.value.response["Error"]["Code"] == "ModelError"
    assert raised.value.response["OriginalStatusCode"] == 400


def test_a_broken_model_stream_ends_with_a_model_stream_error(clients, endpoint_name):
    response = _invoke(clients, endpoint_name, parts=3, **{"break": True})
    with pytest.raises(EventStreamError) as raised:
        list(response["Body"])
    assert raised.value.response["Error"]["Code"] == "ModelStreamError"


def test_streaming_an_unknown_endpoint_is_a_validation_error(clients):
    with pytest.raises(ClientError) as raised:
        clients.runtime.invoke_endpoint_with_response_stream(EndpointName="nope", Body=b"{}")
    assert raised.value.response["Error"]["Code"] == "ValidationError"
