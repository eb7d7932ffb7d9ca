from fastapi.testclient import TestClient

from easel_webui import __version__
from easel_webui.app import create_app

from .conftest import base_env


def test_health_route_answers_ok_with_version(monkeypatch):
    for name, value in base_env().items():
        monkeypatch.setenv(name, value)
    response = TestClient(create_app()).get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "version": __version__}
