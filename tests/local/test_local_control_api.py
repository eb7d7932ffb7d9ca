"""SageMaker API errors arrive in AWS's shapes, so callers' error handling is exercised."""

from __future__ import annotations

import http.client
import json
from urllib.parse import urlparse

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from local_helpers import unique


def error_of(call) -> dict:
    with pytest.raises(ClientError) as raised:
        call()
    return raised.value.response["Error"]


def test_unknown_resources_are_validation_exceptions(clients):
    sm = clients.sagemaker
    assert error_of(lambda: sm.describe_model(ModelName="nope"))["Code"] == "ValidationException"
    assert (
        "Could not find endpoint"
        in error_of(lambda: sm.describe_endpoint(EndpointName="nope"))["Message"]
    )
    assert error_of(lambda: sm.describe_endpoint_config(EndpointConfigName="nope"))["Code"] == (
        "ValidationException"
    )
    assert error_of(lambda: sm.describe_training_job(TrainingJobName="nope"))["Code"] == (
        "ValidationException"
    )


def test_stopping_an_unknown_training_job_is_resource_not_found(clients):
    error = error_of(lambda: clients.sagemaker.stop_training_job(TrainingJobName="nope"))
    assert error["Code"] == "ResourceNotFound"


def test_creating_a_model_twice_is_refused(clients):
    name = unique("dup")
    arguments = {
        "ModelName": name,
        "PrimaryContainer": {"Image": "x"},
        "ExecutionRoleArn": clients.aws.names.execution_role_arn,
    }
    clients.sagemaker.create_model(**arguments)

    error = error_of(lambda: clients.sagemaker.create_model(**arguments))
    assert error["Code"] == "ValidationException"
    assert "already existing model" in error["Message"]


def test_endpoint_config_must_name_an_existing_model(clients):
    error = error_of(
        lambda: clients.sagemaker.create_endpoint_config(
            EndpointConfigName=unique("cfg"),
            ProductionVariants=[
                {
                    "VariantName": "v",
                    "ModelName": "missing-model",
                    "InstanceType": "ml.m5.large",
                    "InitialInstanceCount": 1,
                }
            ],
        )
    )
    assert error["Code"] == "ValidationException"
    assert "missing-model" in error["Message"]


def test_names_are_checked_against_the_service_pattern(clients):
    error = error_of(
        lambda: clients.sagemaker.create_model(
            ModelName="bad_name!",
            PrimaryContainer={"Image": "x"},
            ExecutionRoleArn=clients.aws.names.execution_role_arn,
        )
    )
    assert error["Code"] == "ValidationException"
    assert "ModelName" in error["Message"]


def test_requests_are_validated_against_the_botocore_model(clients):
    unchecked = boto3.client("sagemaker", config=Config(parameter_validation=False))

    error = error_of(lambda: unchecked.create_endpoint(EndpointName=unique("x")))
    assert error["Code"] == "ValidationException"
    assert "EndpointConfigName" in error["Message"]


def test_unknown_request_members_are_refused(clients):
    url = urlparse(clients.aws.env["AWS_ENDPOINT_URL_SAGEMAKER"])
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    connection.request(
        "POST",
        "/",
        body=json.dumps({"ModelName": "m", "Surprise": 1}),
        headers={
            "X-Amz-Target": "SageMaker.DescribeModel",
            "Content-Type": "application/x-amz-json-1.1",
        },
    )
    response = connection.getresponse()
    body = json.loads(response.read())
    connection.close()

    assert response.status == 400
    assert body["__type"] == "ValidationException"
    assert "Surprise" in body["message"]


def test_tags_can_be_added_listed_and_deleted(clients):
    name = unique("tagged")
    arn = clients.sagemaker.create_model(
        ModelName=name,
        PrimaryContainer={"Image": "x"},
        ExecutionRoleArn=clients.aws.names.execution_role_arn,
        Tags=[{"Key": "easel:deployment", "Value": "easel"}],
    )["ModelArn"]

    clients.sagemaker.add_tags(ResourceArn=arn, Tags=[{"Key": "owner", "Value": "ana"}])
    tags = {t["Key"]: t["Value"] for t in clients.sagemaker.list_tags(ResourceArn=arn)["Tags"]}
    assert tags == {"easel:deployment": "easel", "owner": "ana"}
    clients.sagemaker.delete_tags(ResourceArn=arn, TagKeys=["owner"])
    assert [t["Key"] for t in clients.sagemaker.list_tags(ResourceArn=arn)["Tags"]] == [
        "easel:deployment"
    ]


def test_listing_pages_with_next_token(clients):
    prefix = unique("page")
    for index in range(3):
        clients.sagemaker.create_model(
            ModelName=f"{prefix}-{index}",
            PrimaryContainer={"Image": "x"},
            ExecutionRoleArn=clients.aws.names.execution_role_arn,
        )
    paginator = clients.sagemaker.get_paginator("list_models")

    pages = list(paginator.paginate(NameContains=prefix, PaginationConfig={"PageSize": 2}))

    assert [len(p["Models"]) for p in pages] == [2, 1]
    names = [m["ModelName"] for p in pages for m in p["Models"]]
    assert sorted(names) == [f"{prefix}-{i}" for i in range(3)]


def test_unimplemented_operations_say_so(clients):
    error = error_of(lambda: clients.sagemaker.list_notebook_instances())
    assert error["Code"] == "UnknownOperationException"
