"""Portal test world: moto for S3/DynamoDB/Secrets Manager/Logs, recording fakes for SageMaker."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from fastapi.testclient import TestClient
from moto import mock_aws

from easel_contracts import table as keys
from easel_webui.app import create_app
from easel_webui.aws import Clients
from easel_webui.settings import Settings, load_settings

from .fakes import FakeAutoscaling, FakeCloudWatch, FakeRuntime, FakeSageMaker

REGION = "us-east-1"
BUCKET = "easel-test-data"
TABLE = "easel-test-table"
ADMIN_SECRET = "easel-test-admin"
SESSION_SECRET = "easel-test-session"
ADMIN_PASSWORD = "Adm1nPasswordForTestsOnly"
ROLE_ARN = "arn:aws:iam::123456789012:role/easel-sagemaker"
# One boto3 session for the test process: clients made from it skip reloading service models.
SESSION = boto3.session.Session()
CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')
# how long a test's teardown waits for the generation jobs its portal started
JOB_WAIT_SECONDS = 30.0


def base_env(**overrides: str) -> dict[str, str]:
    env = {
        "EASEL_BUCKET": BUCKET, "EASEL_TABLE": TABLE, "EASEL_ADMIN_SECRET": ADMIN_SECRET,
        "EASEL_SESSION_SECRET": SESSION_SECRET, "EASEL_EXECUTION_ROLE_ARN": ROLE_ARN,
        "EASEL_DEPLOYMENT_ID": "easel", "AWS_DEFAULT_REGION": REGION,
        "EASEL_INFERENCE_IMAGE": "123456789012.dkr.ecr.us-east-1.amazonaws.com/inf:abc",
        "EASEL_TRAINING_IMAGE": "123456789012.dkr.ecr.us-east-1.amazonaws.com/train:abc",
        "EASEL_SECURE_COOKIES": "false", "EASEL_SECRET_CACHE_SECONDS": "30",
        "EASEL_PASSWORD_HASH_TIME_COST": "1", "EASEL_PASSWORD_HASH_MEMORY_KIB": "1024",
        "EASEL_ENDPOINT_INSTANCE_TYPES": json.dumps({
            "ml.g5.xlarge": {"gpu_memory_gb": 24, "instance_storage": True, "hourly_usd": 1.408},
            "ml.g4dn.xlarge": {"gpu_memory_gb": 16, "instance_storage": True,
                               "hourly_usd": 0.736},
            # declared without local storage so tests exercise the EBS volume path
            "ml.g6.xlarge": {"gpu_memory_gb": 24, "instance_storage": False,
                             "hourly_usd": 1.1644},
        }),
        "EASEL_TRAINING_INSTANCE_TYPES": json.dumps({
            "ml.g5.2xlarge": {"gpu_memory_gb": 24, "instance_storage": True, "hourly_usd": 1.515},
            "ml.g6e.2xlarge": {"gpu_memory_gb": 48, "instance_storage": True, "hourly_usd": 2.808},
        }),
    }
    env.update(overrides)
    return env


def create_resources() -> None:
    s3 = SESSION.client("s3", region_name=REGION)
    s3.create_bucket(Bucket=BUCKET)
    ddb = SESSION.client("dynamodb", region_name=REGION)
    string = "S"
    ddb.create_table(
        TableName=TABLE, BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": n, "AttributeType": string}
                              for n in ("pk", "sk", "gsi1pk", "gsi1sk")],
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"},
                   {"AttributeName": "sk", "KeyType": "RANGE"}],
        GlobalSecondaryIndexes=[{
            "IndexName": "gsi1",
            "KeySchema": [{"AttributeName": "gsi1pk", "KeyType": "HASH"},
                          {"AttributeName": "gsi1sk", "KeyType": "RANGE"}],
            "Projection": {"ProjectionType": "ALL"},
        }],
    )
    sm = SESSION.client("secretsmanager", region_name=REGION)
    sm.create_secret(Name=ADMIN_SECRET,
                     SecretString=json.dumps({"username": "admin", "password": ADMIN_PASSWORD}))
    sm.create_secret(Name=SESSION_SECRET, SecretString="k" * 64)


@dataclass
class World:
    settings: Settings
    app: Any
    sagemaker: FakeSageMaker
    runtime: FakeRuntime
    autoscaling: FakeAutoscaling
    cloudwatch: FakeCloudWatch

    @property
    def portal(self) -> Any:
        return self.app.state.portal.get()

    @property
    def s3(self) -> Any:
        return self.portal.clients.s3

    def client(self) -> TestClient:
        return TestClient(self.app, follow_redirects=False)

    def add_user(self, name: str, password: str = "user-password-123", role: str = "user") -> str:
        self.portal.auth.create_user(username=name, password=password, role=role, by="test")
        return password

    def signed_in(self, name: str = "admin", password: str | None = None) -> TestClient:
        client = self.client()
        response = login(client, name, password or (ADMIN_PASSWORD if name == "admin"
                                                    else "user-password-123"))
        assert response.status_code == 303, response.text
        client.headers["X-CSRF-Token"] = csrf_of(client)
        return client

    def put(self, key: str, data: bytes = b"x") -> None:
        self.s3.put_object(Bucket=BUCKET, Key=key, Body=data)

    def keys(self, prefix: str) -> list[str]:
        answer = self.s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
        return [o["Key"] for o in answer.get("Contents", [])]

    def in_service(self, name: str = "easel-demo", *, mode: str = "realtime") -> str:
        """Record an endpoint as deployed by the portal and mark it InService."""
        self.portal.table.put({
            **keys.endpoint_key(name).item(), **keys.endpoint_index(name), "endpoint": name, "creator": "admin", "mode": mode, "instance_type": "ml.g5.xlarge",
            "min_instances": 1, "max_instances": 1, "idle_ttl_hours": 4,
            "model_s3_uri": f"s3://{BUCKET}/models/tiny.tar.gz", "model_name": f"{name}-m",
            "endpoint_config_name": f"{name}-c", "created_at": "2026-01-01T00:00:00Z",
            "last_used_at": 0, "scaling_status": "applied",
        })
        self.sagemaker.set_status(name, "InService")
        return name


def login(client: TestClient, username: str, password: str) -> Any:
    page = client.get("/login")
    token = CSRF_RE.search(page.text).group(1)
    return client.post("/login", data={"username": username, "password": password,
                                       "csrf_token": token})


def csrf_of(client: TestClient) -> str:
    page = client.get("/account")
    assert page.status_code == 200, page.text
    return CSRF_RE.search(page.text).group(1)


def make_world(**env: str) -> World:
    settings = load_settings(base_env(**env))
    fakes = (FakeSageMaker(), FakeRuntime(), FakeAutoscaling(), FakeCloudWatch())
    clients = Clients(region=REGION, session=SESSION, sagemaker=fakes[0], runtime=fakes[1],
                      autoscaling=fakes[2], cloudwatch=fakes[3])
    app = create_app(settings=settings, clients=clients)
    return World(settings, app, *fakes)


def finish_worlds(*worlds: World, timeout: float = JOB_WAIT_SECONDS) -> None:
    """Shut the worlds' portals down, waiting for the generation jobs they started, while
    their moto context still stands (a job thread outliving its test would write its images
    into the next test's bucket); fail, naming them, if jobs are still running after
    ``timeout`` seconds."""
    left = [job for world in worlds for job in world.app.state.portal.close(timeout)]
    if left:
        pytest.fail(f"generation jobs still running {timeout:g} s after the test ended: "
                    f"{', '.join(left)}", pytrace=False)


@pytest.fixture
def world() -> Any:
    with mock_aws():
        create_resources()
        built = make_world()
        yield built
        finish_worlds(built)


@pytest.fixture
def world_factory() -> Any:
    """Build a world with different settings (inside one moto context)."""
    built: list[World] = []

    def factory(**env: str) -> World:
        built.append(make_world(**env))
        return built[-1]

    with mock_aws():
        create_resources()
        yield factory
        finish_worlds(*built)
