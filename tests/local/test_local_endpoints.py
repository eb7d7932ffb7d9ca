"""Endpoints: model data from S3 -> a running server process -> InService, or Failed."""

from __future__ import annotations

import json

import pytest
from botocore.exceptions import ClientError
from local_helpers import (
    create_model_and_config,
    deploy,
    process_is_running,
    unique,
    upload_model,
    wait_for,
    wait_while,
)

from local.processes import port_is_open


def invoke_echo(clients, name: str) -> dict:
    response = clients.runtime.invoke_endpoint(
        EndpointName=name, Body=json.dumps({"task": "txt2img"}), ContentType="application/json"
    )
    return json.loads(response["Body"].read())


def test_endpoint_from_model_tar_gz_goes_in_service_and_answers(clients):
    name = deploy(clients, unique("ep"), environment={"FAKE_GREETING": "hello"})

    described = clients.sagemaker.describe_endpoint(EndpointName=name)
    assert described["EndpointStatus"] == "InService"
    assert described["ProductionVariants"][0]["CurrentInstanceCount"] == 1
    reply = invoke_echo(clients, name)
    assert reply["model_files"] == ["Stable-diffusion/tiny.safetensors"]
    assert reply["greeting"] == "hello"  # the model's Environment reaches the process
    assert reply["device"] == "cpu"


def test_endpoint_from_uncompressed_s3_prefix(clients):
    name = unique("prefix")
    clients.s3.put_object(
        Bucket=clients.bucket, Key=f"models/{name}/Stable-diffusion/a.safetensors", Body=b"w"
    )
    clients.s3.put_object(Bucket=clients.bucket, Key=f"models/{name}/Lora/l.safetensors", Body=b"l")
    create_model_and_config(clients, name, container={
        "Image": "local/easel-inference:test",
        "ModelDataSource": {
            "S3DataSource": {
                "S3Uri": clients.s3_uri(f"models/{name}/"),
                "S3DataType": "S3Prefix",
                "CompressionType": "None",
            }
        },
    })
    clients.sagemaker.create_endpoint(EndpointName=name, EndpointConfigName=name)
    clients.sagemaker.get_waiter("endpoint_in_service").wait(
        EndpointName=name, WaiterConfig={"Delay": 0.5, "MaxAttempts": 120}
    )

    assert invoke_echo(clients, name)["model_files"] == [
        "Lora/l.safetensors",
        "Stable-diffusion/a.safetensors",
    ]


def test_model_whose_server_cannot_start_fails_with_the_log_tail(clients):
    name = deploy(clients, unique("broken"), files={"README.txt": b"no checkpoint here"})

    described = clients.sagemaker.describe_endpoint(EndpointName=name)
    assert described["EndpointStatus"] == "Failed"
    assert "exited with code 3" in described["FailureReason"]
    assert "no Stable-diffusion folder" in described["FailureReason"]


def test_missing_model_archive_fails_with_the_s3_location(clients):
    name = unique("nodata")
    create_model_and_config(
        clients, name, instance_type="ml.m5.large",
        container={"Image": "x", "ModelDataUrl": clients.s3_uri("models/none.tar.gz")},
    )
    clients.sagemaker.create_endpoint(EndpointName=name, EndpointConfigName=name)
    described = wait_while(clients, name, "Creating", timeout=30)
    assert described["EndpointStatus"] == "Failed"
    reason = described["FailureReason"]
    assert clients.s3_uri("models/none.tar.gz") in reason


def test_delete_endpoint_ends_its_process_and_closes_its_port(clients):
    name = deploy(clients, unique("del"), environment={"FAKE_SPAWN_CHILD": "1"})
    reply = invoke_echo(clients, name)
    assert process_is_running(reply["pid"]) and port_is_open(reply["port"])

    clients.sagemaker.delete_endpoint(EndpointName=name)
    wait_for(lambda: name not in {e["EndpointName"] for e in
                                  clients.sagemaker.list_endpoints(MaxResults=100)["Endpoints"]},
             timeout=30)

    assert not process_is_running(reply["pid"])
    assert not process_is_running(reply["child_pid"])  # its whole process group ended
    assert not port_is_open(reply["port"])
    with pytest.raises(ClientError) as raised:
        clients.sagemaker.describe_endpoint(EndpointName=name)
    assert raised.value.response["Error"]["Code"] == "ValidationException"


def test_update_endpoint_switches_to_the_new_config_and_ends_the_old_process(clients):
    name = deploy(clients, unique("upd"), environment={"FAKE_GREETING": "v1"})
    old = invoke_echo(clients, name)
    new_model = unique("upd-model")
    create_model_and_config(clients, new_model, container={
        "Image": "x",
        "ModelDataUrl": upload_model(clients, new_model),
        "Environment": {"FAKE_GREETING": "v2"},
    })

    clients.sagemaker.update_endpoint(EndpointName=name, EndpointConfigName=new_model)
    described = wait_while(clients, name, "Updating", timeout=30)

    assert described["EndpointStatus"] == "InService"
    assert described["EndpointConfigName"] == new_model
    assert invoke_echo(clients, name)["greeting"] == "v2"
    assert not process_is_running(old["pid"])


def test_endpoint_listing_filters_by_status_and_name(clients):
    healthy = deploy(clients, unique("listok"))
    broken = deploy(clients, unique("listbad"), files={"x.txt": b"x"})

    failed = clients.sagemaker.list_endpoints(StatusEquals="Failed", MaxResults=100)["Endpoints"]
    names = {e["EndpointName"] for e in failed}
    assert broken in names and healthy not in names
    by_name = clients.sagemaker.list_endpoints(NameContains=healthy)["Endpoints"]
    assert [e["EndpointName"] for e in by_name] == [healthy]


def test_a_failed_update_keeps_the_old_config_serving(clients):
    name = deploy(clients, unique("rollback"), environment={"FAKE_GREETING": "old"})
    broken = unique("broken-model")
    create_model_and_config(clients, broken, container={
        "Image": "x",
        "ModelDataUrl": upload_model(clients, broken, {"x.txt": b"x"}),
    })

    clients.sagemaker.update_endpoint(EndpointName=name, EndpointConfigName=broken)
    described = wait_while(clients, name, "Updating", timeout=30)
    assert described["EndpointStatus"] == "InService"
    assert described["EndpointConfigName"] == name
    assert "no Stable-diffusion folder" in described["FailureReason"]
    assert invoke_echo(clients, name)["greeting"] == "old"


def test_a_deploy_reports_download_and_load_progress(clients, caplog):
    name = unique("progress")
    with caplog.at_level("INFO", logger="local.sagemaker.endpoints"):
        deploy(clients, name)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"endpoint {name}:")]
    assert any("downloading s3://" in line and "done in" in line for line in lines), lines
    assert any("unpacking model.tar.gz done in" in line for line in lines), lines
    assert any("starting the inference server done in" in line for line in lines), lines
    assert lines[-1] == f"endpoint {name}: InService"
