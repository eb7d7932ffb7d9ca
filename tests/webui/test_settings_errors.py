"""Settings come from the environment with errors naming the variable; clients never see a
traceback."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from easel_webui.settings import SettingsError, load_settings

from .conftest import base_env


def test_settings_load_from_the_environment():
    settings = load_settings(base_env(EASEL_MAX_ENDPOINTS_PER_USER="3"))
    assert settings.bucket == "easel-test-data"
    assert settings.max_endpoints_per_user == 3
    assert settings.endpoint_instance_types["ml.g6.xlarge"].instance_storage is False


def test_missing_and_invalid_settings_name_the_variable():
    env = base_env()
    del env["EASEL_BUCKET"]
    with pytest.raises(SettingsError, match="EASEL_BUCKET: is required"):
        load_settings(env)
    with pytest.raises(SettingsError, match="EASEL_ENDPOINT_INSTANCE_TYPES: not valid JSON"):
        load_settings(base_env(EASEL_ENDPOINT_INSTANCE_TYPES="{"))
    bad_types = json.dumps({"ml.g5.xlarge": {"gpu_memory_gb": 24}})
    with pytest.raises(SettingsError, match=r"EASEL_ENDPOINT_INSTANCE_TYPES\[ml.g5.xlarge"):
        load_settings(base_env(EASEL_ENDPOINT_INSTANCE_TYPES=bad_types))
    with pytest.raises(SettingsError, match="EASEL_EXECUTION_ROLE_ARN"):
        load_settings(base_env(EASEL_EXECUTION_ROLE_ARN="not-an-arn"))


def test_unexpected_errors_answer_an_incident_id_without_a_traceback(world):
    admin = world.signed_in("admin")

    def explode(**kwargs):
        raise RuntimeError("internal detail that must not leak")

    world.sagemaker.describe_endpoint = explode
    world.in_service()
    client = TestClient(world.app, raise_server_exceptions=False, follow_redirects=False)
    client.cookies.update(admin.cookies)
    response = client.get("/endpoints")
    assert response.status_code == 500
    assert "incident" in response.text
    assert "internal detail" not in response.text and "Traceback" not in response.text
    api = client.get("/endpoints/status", headers={"Accept": "application/json"})
    assert api.status_code == 500 and set(api.json()) == {"error", "detail"}


def test_unknown_paths_are_a_clean_404(world):
    response = world.client().get("/no/such/page", headers={"Accept": "application/json"})
    assert response.status_code == 404
    assert response.json() == {"error": "not_found", "detail": "Not found."}


def test_security_headers_on_pages(world):
    response = world.client().get("/login")
    assert response.headers["x-frame-options"] == "DENY"
    assert "script-src 'self'" in response.headers["content-security-policy"]
    assert response.headers["cache-control"] == "no-store"


def test_health_checks_the_settings_without_calling_aws(monkeypatch):
    from easel_webui.app import create_app

    for name, value in base_env().items():
        monkeypatch.setenv(name, value)
    assert TestClient(create_app()).get("/health").json()["status"] == "ok"
    monkeypatch.delenv("EASEL_BUCKET")
    response = TestClient(create_app()).get("/health")
    assert response.status_code == 503
    assert response.json()["status"] == "misconfigured"


def test_oversized_bodies_are_refused_before_reading(world):
    admin = world.signed_in("admin")
    response = admin.post("/generate", content=b"{}", headers={
        "Content-Length": str(65 * 1024 * 1024), "Content-Type": "application/json"})
    assert response.status_code == 413


def test_portal_config_from_the_stack_sets_allowlists_and_caps():
    from stacks.config import load_config, portal_settings_json

    document = portal_settings_json(load_config())
    settings = load_settings(base_env(EASEL_PORTAL_CONFIG=document,
                                      EASEL_ENDPOINT_INSTANCE_TYPES="",
                                      EASEL_TRAINING_INSTANCE_TYPES=""))
    config = json.loads(document)
    assert set(settings.endpoint_instance_types) == set(config["endpoints"]["instance_types"])
    assert set(settings.training_instance_types) == set(config["training"]["instance_types"])
    assert settings.max_endpoints_per_user == config["endpoints"]["max_per_user"]
    assert settings.max_instances_per_endpoint == config["endpoints"]["max_instances"]
    assert settings.training_max_runtime_hours == config["training"]["max_runtime_hours"]
    # a single variable still overrides the document
    override = load_settings(base_env(EASEL_PORTAL_CONFIG=document,
                                      EASEL_MAX_ENDPOINTS_PER_USER="7"))
    assert override.max_endpoints_per_user == 7
    with pytest.raises(SettingsError, match="EASEL_PORTAL_CONFIG"):
        load_settings(base_env(EASEL_PORTAL_CONFIG="[1"))


def test_chunked_bodies_are_bounded_while_streaming(world):
    admin = world.signed_in("admin")

    def chunks():  # 80 MB with no Content-Length; the portal's limit is 64 MB
        for _ in range(80):
            yield b"x" * (1024 * 1024)

    response = admin.post("/generate", content=chunks(),
                          headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert response.json()["error"] == "too_large"
def test_the_portal_keeps_no_default_allowlist_of_its_own():
    env = base_env()
    del env["EASEL_ENDPOINT_INSTANCE_TYPES"], env["EASEL_TRAINING_INSTANCE_TYPES"]
    with pytest.raises(SettingsError) as caught:
        load_settings(env)
    message = str(caught.value)
    assert "EASEL_ENDPOINT_INSTANCE_TYPES: is required (set EASEL_PORTAL_CONFIG" in message
    assert "EASEL_TRAINING_INSTANCE_TYPES: is required" in message


def test_an_allowlisted_type_the_images_cannot_run_on_is_refused():
    v100 = json.dumps({"ml.p3.2xlarge": {"gpu_memory_gb": 16, "instance_storage": False,
                                          "hourly_usd": 3.825}})
    with pytest.raises(SettingsError, match=r"EASEL_TRAINING_INSTANCE_TYPES: .*ml\.p3\.2xlarge"):
        load_settings(base_env(EASEL_TRAINING_INSTANCE_TYPES=v100))
