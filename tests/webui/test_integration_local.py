"""The portal against the local AWS (moto server + SageMaker stand-in running the real `serve`
and `train` entry points on a tiny random-weight model): deploy, generate, train, publish, use.

Slow (real torch processes on the CPU): marked `slow`; skipped when the local runtime or the
container packages are missing.
"""

from __future__ import annotations

import base64
import io
import json
import tarfile
import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
import requests
from fastapi.testclient import TestClient

pytestmark = pytest.mark.slow

local_runtime = pytest.importorskip("local.runtime", reason="local/ runtime not available")
local_settings = pytest.importorskip("local.settings")
if local_settings.console_script("serve") is None or local_settings.console_script("train") is None:
    pytest.skip("the serve/train entry points are not installed", allow_module_level=True)
builder = pytest.importorskip("easel_inference.builder")

from easel_contracts import table as table_keys  # noqa: E402
from easel_webui.app import create_app  # noqa: E402
from easel_webui.settings import load_settings  # noqa: E402

from .conftest import CSRF_RE, login  # noqa: E402


def _png(seed: int) -> bytes:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (64, 64), (30 * seed % 255, 120, 200))
    ImageDraw.Draw(image).rectangle((8, 8, 30 + seed, 40), fill=(250, 200, 10))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def _wait(check: Any, *, timeout: float, interval: float = 1.0, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def local_aws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    settings = local_settings.StandInSettings(
        device="cpu", endpoint_startup_timeout_s=240, checkpoint_sync_interval_s=1)
    with local_runtime.LocalAws(tmp_path_factory.mktemp("portal-local"), settings=settings) as aws:
        yield aws


@pytest.fixture
def portal(local_aws: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> Any:
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    from stacks.config import load_config, portal_settings_json

    # the allowlists come from config, as `make local` passes them
    env = {**local_aws.env, "EASEL_PORTAL_CONFIG": portal_settings_json(load_config()),
           "EASEL_SECURE_COOKIES": "false",
           "EASEL_PASSWORD_HASH_TIME_COST": "1", "EASEL_PASSWORD_HASH_MEMORY_KIB": "1024"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    app = create_app(settings=load_settings(env))
    model_dir = builder.build_model_dir(tmp_path / "model", arch="sd15", size="tiny", name="tiny")
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz") as tar:
        for path in sorted(model_dir.rglob("*")):
            tar.add(path, arcname=path.relative_to(model_dir).as_posix(), recursive=False)
    s3 = boto3.client("s3")
    s3.put_object(Bucket=env["EASEL_BUCKET"], Key="models/tiny.tar.gz", Body=archive.getvalue())
    return app, env, s3


def _signed_in(app: Any, user: str, password: str) -> TestClient:
    client = TestClient(app, follow_redirects=False)
    assert login(client, user, password).status_code == 303
    client.headers["X-CSRF-Token"] = CSRF_RE.search(client.get("/account").text).group(1)
    return client


def test_deploy_generate_train_publish_and_use_the_lora(portal, local_aws):
    app, env, s3 = portal
    bucket = env["EASEL_BUCKET"]
    admin = _signed_in(app, "admin", local_aws.admin_password)

    # 1. deploy an endpoint from the tiny model through the form
    response = admin.post("/endpoints", data={
        "name": "tiny", "model": f"s3://{bucket}/models/tiny.tar.gz",
        "instance_type": "ml.g5.xlarge", "mode": "realtime", "min_instances": "1",
        "max_instances": "1", "idle_ttl_hours": "1"})
    assert "notice=" in response.headers["location"], response.headers["location"]
    logs = boto3.client("logs").describe_log_groups(
        logGroupNamePrefix="/aws/sagemaker/Endpoints/easel-tiny")["logGroups"]
    assert logs and logs[0]["retentionInDays"] == 30

    # 2. meanwhile: upload concept photos straight to S3 and start a training job
    admin.post("/users", data={"username": "alice", "password": "alice-password-1",
                               "role": "user"})
    alice = _signed_in(app, "alice", "alice-password-1")
    presigned = alice.post("/models/concepts/presign", json={
        "set": "dogs", "files": [{"name": f"{i}.png", "type": "image/png"} for i in range(5)]})
    for index, upload in enumerate(presigned.json()["uploads"]):
        answer = requests.post(upload["url"], data=upload["fields"],
                               files={"file": (f"{index}.png", _png(index))}, timeout=30)
        assert answer.status_code in (200, 204), answer.text
    verified = alice.post(presigned.json()["verify"], json={
        "set": "dogs", "names": [f"{i}.png" for i in range(5)]}).json()
    assert verified["rejected"] == [], verified
    submitted = alice.post("/training", data={
        "name": "dogs-lora", "model_s3_uri": f"s3://{bucket}/models/tiny.tar.gz",
        "checkpoint": "tiny", "concept_set": "dogs", "instance_prompt": "a photo of sks dog",
        "mode": "lora", "max_train_steps": "2", "learning_rate": "1e-4", "rank": "4",
        "resolution": "64", "output_name": "sks-dog", "instance_type": "ml.g5.2xlarge"})
    assert submitted.headers["location"].startswith("/training/easel-dogs-lora"), \
        submitted.headers["location"]

    # 3. the endpoint becomes usable; generate through the page's submit-and-poll route
    def in_service() -> bool:
        rows = admin.get("/endpoints/status").json()["endpoints"]
        row = next(r for r in rows if r["endpoint"] == "easel-tiny")
        assert row["status"] in ("Creating", "InService"), row
        return row["status"] == "InService"

    _wait(in_service, timeout=240, what="easel-tiny InService")
    payload = {"prompt": "a red fox", "steps": 1, "width": 64, "height": 64, "seed": 1}
    job = alice.post("/generate", json={"endpoint": "easel-tiny", "task": "txt2img",
                                        "payload": payload}).json()
    state = _wait(lambda: (s := alice.get(job["poll"]).json())["status"] != "running" and s,
                  timeout=120, interval=0.5, what="generation")
    assert state["status"] == "done", state
    # it went through the response stream: the server's step event reached the job's record
    record = app.state.portal.get().table.get(*table_keys.generation_job_key(job["job_id"]))
    assert record["progress"]["steps"] == 1 and record["progress"]["preview"]
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="outputs/alice/")
            .get("Contents", [])]
    assert any(k.endswith(".png") for k in keys) and any(k.endswith(".json") for k in keys)

    # 4. the A1111 API on the same endpoint
    token = base64.b64encode(b"alice:alice-password-1").decode()
    api = TestClient(app).post("/sdapi/v1/txt2img", json=payload,
                               headers={"Authorization": f"Basic {token}"})
    assert api.status_code == 200, api.text
    assert base64.b64decode(api.json()["images"][0]).startswith(b"\x89PNG")

    # 5. training completes with progress and previews; publish the LoRA
    def trained() -> dict | None:
        status = alice.get("/training/easel-dogs-lora/status").json()
        assert status["status"] in ("InProgress", "Completed"), status
        return status if status["status"] == "Completed" else None

    status = _wait(trained, timeout=300, interval=2, what="training job")
    assert status["percent"] == 100.0
    published = alice.post("/training/easel-dogs-lora/publish")
    assert "notice=" in published.headers["location"], published.headers["location"]
    assert s3.head_object(Bucket=bucket, Key="loras/sks-dog.safetensors")
    page = alice.get("/training/easel-dogs-lora")
    assert "easel-tiny" in page.text  # the endpoint serving the same base model

    # 6. use it: the running endpoint loads the new LoRA from loras/ without a redeploy
    with_lora = {**payload, "prompt": "a photo of sks dog <lora:sks-dog:0.8>"}
    job = alice.post("/generate", json={"endpoint": "easel-tiny", "task": "txt2img",
                                        "payload": with_lora}).json()
    state = _wait(lambda: (s := alice.get(job["poll"]).json())["status"] != "running" and s,
                  timeout=120, interval=0.5, what="generation with the LoRA")
    assert state["status"] == "done", state
    info = json.loads(state["info"]) if state["info"] else {}
    assert "sks-dog" in json.dumps(info)

    # 7. clean up through the portal
    assert admin.post("/endpoints/easel-tiny/delete").status_code == 303
