"""InvokeEndpoint and InvokeEndpointAsync against endpoint processes."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import boto3
import pytest
from botocore.exceptions import ClientError
from local_helpers import deploy, unique, wait_for


@pytest.fixture(scope="module")
def endpoint_name(fake_aws) -> str:
    """One real-time + async capable endpoint for the module."""
    from local_helpers import Clients

    with pytest.MonkeyPatch.context() as patch:
        from local_helpers import clients_for

        clients: Clients = clients_for(fake_aws, patch)
        return deploy(
            clients,
            unique("inv"),
            async_output=clients.s3_uri("async/out/"),
        )


def test_model_errors_keep_the_original_status_and_message(clients, endpoint_name):
    with pytest.raises(ClientError) as raised:
        clients.runtime.invoke_endpoint(EndpointName=endpoint_name, Body=b'{"task": "bad-request"}')

    response = raised.value.response
    assert response["Error"]["Code"] == "ModelError"
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 424
    assert response["OriginalStatusCode"] == 400
    assert "payload.prompt is required" in response["OriginalMessage"]


def test_invocation_timeout_is_a_model_error(clients, endpoint_name):
    body = json.dumps({"task": "sleep", "payload": {"seconds": 5}})  # the limit here is 3 s
    with pytest.raises(ClientError) as raised:
        clients.runtime.invoke_endpoint(EndpointName=endpoint_name, Body=body)

    assert raised.value.response["Error"]["Code"] == "ModelError"
    assert "timed out" in raised.value.response["OriginalMessage"]


def test_request_body_over_six_megabytes_is_refused(clients, endpoint_name):
    with pytest.raises(ClientError) as raised:
        clients.runtime.invoke_endpoint(
            EndpointName=endpoint_name, Body=b"x" * (6 * 1024 * 1024 + 1)
        )

    assert raised.value.response["Error"]["Code"] == "ValidationError"
    assert "6291456" in raised.value.response["Error"]["Message"]


def test_response_over_six_megabytes_is_a_model_error(clients, endpoint_name):
    body = json.dumps({"task": "big", "payload": {"bytes": 6 * 1024 * 1024 + 10}})
    with pytest.raises(ClientError) as raised:
        clients.runtime.invoke_endpoint(EndpointName=endpoint_name, Body=body)

    assert raised.value.response["Error"]["Code"] == "ModelError"


def test_invoking_an_unknown_endpoint_is_a_validation_error(clients):
    with pytest.raises(ClientError) as raised:
        clients.runtime.invoke_endpoint(EndpointName="does-not-exist", Body=b"{}")

    assert raised.value.response["Error"]["Code"] == "ValidationError"
    assert "does-not-exist" in raised.value.response["Error"]["Message"]


def test_async_invocation_writes_its_output_to_s3(clients, endpoint_name):
    request = {"task": "txt2img", "payload": {"prompt": "a red fox"}}
    clients.s3.put_object(
        Bucket=clients.bucket, Key="async/in/fox.json", Body=json.dumps(request).encode()
    )

    response = clients.runtime.invoke_endpoint_async(
        EndpointName=endpoint_name,
        InputLocation=clients.s3_uri("async/in/fox.json"),
        ContentType="application/json",
    )

    assert response["OutputLocation"].startswith(clients.s3_uri("async/out/"))
    key = response["OutputLocation"].split(f"{clients.bucket}/", 1)[1]
    wait_for(lambda: key in clients.keys("async/out/"), timeout=20)
    output = json.loads(clients.s3.get_object(Bucket=clients.bucket, Key=key)["Body"].read())
    assert output["echo"] == request


def test_async_invocation_failure_writes_the_error_file(clients, endpoint_name):
    clients.s3.put_object(Bucket=clients.bucket, Key="async/in/fail.json", Body=b'{"task": "fail"}')

    response = clients.runtime.invoke_endpoint_async(
        EndpointName=endpoint_name, InputLocation=clients.s3_uri("async/in/fail.json")
    )

    key = response["FailureLocation"].split(f"{clients.bucket}/", 1)[1]
    wait_for(lambda: key in clients.keys("async/out/"), timeout=20)
    failure = json.loads(clients.s3.get_object(Bucket=clients.bucket, Key=key)["Body"].read())
    assert failure["OriginalStatusCode"] == 500
    assert "could not run this request" in failure["OriginalMessage"]
    assert response["OutputLocation"].split(f"{clients.bucket}/", 1)[1] not in clients.keys(
        "async/out/"
    )


def test_async_invocation_needs_an_async_endpoint_config(clients):
    name = deploy(clients, unique("rt-only"))
    clients.s3.put_object(Bucket=clients.bucket, Key="async/in/x.json", Body=b"{}")

    with pytest.raises(ClientError) as raised:
        clients.runtime.invoke_endpoint_async(
            EndpointName=name, InputLocation=clients.s3_uri("async/in/x.json")
        )

    assert raised.value.response["Error"]["Code"] == "ValidationError"
    assert "AsyncInferenceConfig" in raised.value.response["Error"]["Message"]


def test_invocations_are_counted_in_cloudwatch(clients, endpoint_name):
    clients.runtime.invoke_endpoint(EndpointName=endpoint_name, Body=b'{"task": "t"}')
    cloudwatch = boto3.client("cloudwatch")
    now = datetime.now(UTC)

    datapoints = cloudwatch.get_metric_statistics(
        Namespace="AWS/SageMaker",
        MetricName="Invocations",
        Dimensions=[
            {"Name": "EndpointName", "Value": endpoint_name},
            {"Name": "VariantName", "Value": "AllTraffic"},
        ],
        StartTime=now - timedelta(minutes=10),
        EndTime=now + timedelta(minutes=1),
        Period=60,
        Statistics=["Sum"],
    )["Datapoints"]

    assert sum(point["Sum"] for point in datapoints) >= 1
